import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { paths } from '../state/paths.ts';
import { projectRoot } from '../util/project-root.ts';
import { runCommand, commandExists } from '../util/command.ts';

const helperSource = join(projectRoot(), 'native', 'extents.c');

/** A byte range [start, end) that holds data (anything not reported as a hole). */
export interface Extent {
  start: number;
  end: number;
}

let helperPath: Promise<string | undefined> | undefined;

async function buildHelper(): Promise<string | undefined> {
  const source = await readFile(helperSource);
  const key = createHash('sha256').update(source).digest('hex').slice(0, 16);
  const binary = join(paths.artifacts(), `extents-${key}`);
  try {
    await access(binary);
    return binary;
  } catch {}
  const compiler = (await commandExists('cc')) ? 'cc' : (await commandExists('musl-gcc')) ? 'musl-gcc' : undefined;
  if (!compiler) return undefined;
  await mkdir(dirname(binary), { recursive: true });
  // A private name, then rename: two processes building at once each publish a complete binary.
  const temporary = `${binary}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await runCommand(compiler, ['-O2', '-o', temporary, helperSource]);
    await rename(temporary, binary);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  return binary;
}

/** The compiled helper, built once per source version into the cache; undefined without a C compiler. */
export function extentsHelper(): Promise<string | undefined> {
  helperPath ??= buildHelper().catch((error: unknown) => {
    helperPath = undefined;
    throw error;
  });
  return helperPath;
}

/**
 * The data extents of a file. Without a C compiler the whole file counts as data: the store then
 * reads every byte and drops zero chunks itself, slower but the same result.
 */
export async function dataExtents(file: string): Promise<Extent[]> {
  return extents(file, []);
}

/**
 * Every range of the file the file system allocated, also unwritten ranges (which read as zeros
 * and which `dataExtents` leaves out): where QEMU's copy-before-write copied something, even zeros.
 * Without the helper, the whole file.
 */
export async function allocatedExtents(file: string): Promise<Extent[]> {
  return extents(file, ['--allocated']);
}

async function extents(file: string, options: string[]): Promise<Extent[]> {
  const helper = await extentsHelper();
  if (!helper) {
    const { size } = await stat(file);
    return size > 0 ? [{ start: 0, end: size }] : [];
  }
  const { stdout } = await runCommand(helper, [...options, file]);
  const extents: Extent[] = [];
  for (const line of stdout.split('\n')) {
    if (!line) continue;
    const space = line.indexOf(' ');
    extents.push({ start: Number(line.slice(0, space)), end: Number(line.slice(space + 1)) });
  }
  return extents;
}

/** Indices of the fixed-size chunks that overlap any extent, ascending. */
export function chunksWithData(extents: Extent[], chunkSize: number): number[] {
  const chunks: number[] = [];
  for (const extent of extents) {
    if (extent.end <= extent.start) continue;
    let first = Math.floor(extent.start / chunkSize);
    const last = Math.floor((extent.end - 1) / chunkSize);
    if (chunks.length > 0 && chunks[chunks.length - 1] >= first) first = chunks[chunks.length - 1] + 1;
    for (let index = first; index <= last; index++) chunks.push(index);
  }
  return chunks;
}
