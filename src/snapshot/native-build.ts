import { createHash, randomBytes } from 'node:crypto';
import { access, mkdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { paths } from '../state/paths.ts';
import { commandExists, runCommand } from '../util/command.ts';

/**
 * Compiles a C source of native/ once per source version (and per compiler flags) into the host
 * cache; undefined without a C compiler. Keyed by a hash of source and flags, so an edited source
 * is rebuilt and two versions of torpor on one host never use each other's binary.
 */
export async function buildNative(source: string, name: string, flags: string[], libraries: string[] = []): Promise<string | undefined> {
  const text = await readFile(source);
  const key = createHash('sha256')
    .update(text)
    .update(JSON.stringify([flags, libraries]))
    .digest('hex')
    .slice(0, 16);
  const binary = join(paths.artifacts(), `${name}-${key}`);
  try {
    await access(binary);
    return binary;
  } catch {}
  if (!(await commandExists('cc'))) return undefined;
  await mkdir(dirname(binary), { recursive: true });
  // A private name, then rename: two processes building at once each publish a complete binary.
  const temporary = `${binary}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    await runCommand('cc', ['-O2', ...flags, '-o', temporary, source, ...libraries]);
    await rename(temporary, binary);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
  return binary;
}
