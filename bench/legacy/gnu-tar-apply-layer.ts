// The layer applier torpor used until 2026-11-29 (a listing pass with its own header reader, then
// GNU tar extracting the same bytes), kept only so bench/image-import.ts can compare against it.
// Not safe: the two parsers disagree on malformed headers (see architecture/images.md).
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { TorporError } from '../../src/util/errors.ts';
import { readTarEntries, type TarEntryType } from './gnu-tar-listing.ts';
import { ancestorsOf, baseNameOf, memberPath, parentOf } from '../../src/image/import/member-path.ts';

/** One filesystem layer: a tar stream (already decompressed), opened once per pass. */
export interface LayerSource {
  /** How errors name this layer, e.g. "layer 2/3 (sha256:ab12…)". */
  description: string;
  open(): Promise<Readable>;
  /** The sha256 of the uncompressed tar (the config's diff_id), checked while listing when known. */
  diffId?: string;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';

type DiskType = 'absent' | 'directory' | 'symlink' | 'other';

interface LayerPlan {
  /** Final type of every path this layer writes, in archive order of first appearance. */
  writes: Map<string, TarEntryType>;
  hardLinks: Array<{ path: string; target: string }>;
  whiteouts: string[];
  opaqueDirectories: string[];
}

function unsafe(layer: string, message: string): TorporError {
  return new TorporError('layer-unsafe-path', `${layer}: ${message}`, { hint: 'the image is malformed or malicious; nothing was imported' });
}

async function* hashing(stream: AsyncIterable<Buffer>, hash: ReturnType<typeof createHash>): AsyncGenerator<Buffer> {
  for await (const chunk of stream) {
    hash.update(chunk);
    yield chunk;
  }
}

async function planLayer(layer: LayerSource): Promise<LayerPlan> {
  const plan: LayerPlan = { writes: new Map(), hardLinks: [], whiteouts: [], opaqueDirectories: [] };
  const hash = createHash('sha256');
  const stream = await layer.open();
  try {
    for await (const entry of readTarEntries(hashing(stream, hash))) {
      const path = memberPath(entry.name, { layer: layer.description });
      const base = baseNameOf(path);
      if (base === OPAQUE_MARKER) {
        plan.opaqueDirectories.push(parentOf(path));
        continue;
      }
      if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) continue; // other aufs bookkeeping files carry no meaning
      if (base.startsWith(WHITEOUT_PREFIX)) {
        const parent = parentOf(path);
        const hidden = base.slice(WHITEOUT_PREFIX.length);
        plan.whiteouts.push(parent ? `${parent}/${hidden}` : hidden);
        continue;
      }
      if (path === '') {
        if (entry.type !== 'directory') throw unsafe(layer.description, `the root must be a directory, not a ${entry.type}`);
        continue;
      }
      if (entry.type === 'hardlink') {
        const target = memberPath(entry.linkTarget, { layer: layer.description, what: `hard link target of ${JSON.stringify(entry.name)}` });
        if (target === '') throw unsafe(layer.description, `hard link ${JSON.stringify(entry.name)} points at the root directory`);
        plan.hardLinks.push({ path, target });
      }
      plan.writes.delete(path); // a later member with the same name replaces the earlier one
      plan.writes.set(path, entry.type);
    }
  } catch (error) {
    throw asLayerError(layer, error);
  } finally {
    stream.destroy();
  }
  const diffId = `sha256:${hash.digest('hex')}`;
  if (layer.diffId && layer.diffId !== diffId) {
    throw new TorporError('layer-digest-mismatch', `${layer.description}: uncompressed content is ${diffId}, but the image config says ${layer.diffId}`, {
      hint: 'the layer is corrupt or does not belong to this image; nothing was imported',
    });
  }
  return plan;
}

function asLayerError(layer: LayerSource, error: unknown): unknown {
  if (error instanceof TorporError) {
    return error.message.startsWith(layer.description)
      ? error
      : new TorporError(error.code, `${layer.description}: ${error.message}`, { hint: error.hint, cause: error });
  }
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (/^Z_|^ERR_ZSTD|zstd/i.test(code) || /incorrect header|unexpected end|invalid|corrupt|zstd/i.test(String((error as Error).message))) {
    return new TorporError('layer-corrupt', `${layer.description}: cannot decompress: ${(error as Error).message}`, {
      hint: 'the layer is truncated or corrupt',
      cause: error,
    });
  }
  return error;
}

/**
 * What a path is in the tree under construction, never following a symbolic link: a path below
 * a symlink or a file does not exist in the tree, even if the host would resolve it.
 */
function diskTypeReader(root: string): (path: string) => DiskType {
  const cache = new Map<string, DiskType>();
  const read = (path: string): DiskType => {
    if (path === '') return 'directory';
    const cached = cache.get(path);
    if (cached) return cached;
    let type: DiskType;
    if (read(parentOf(path)) !== 'directory') type = 'absent';
    else {
      const info = lstatSync(join(root, path), { throwIfNoEntry: false });
      type = !info ? 'absent' : info.isDirectory() ? 'directory' : info.isSymbolicLink() ? 'symlink' : 'other';
    }
    cache.set(path, type);
    return type;
  };
  return read;
}

function removeUnder(root: string, path: string): void {
  rmSync(join(root, path), { recursive: true, force: true });
}

/**
 * Prepares the tree for the layer (whiteouts, opaque directories, type changes) and refuses any
 * member that would be written through a symbolic link, so that GNU tar, which follows symlinks
 * in existing parent directories, only ever writes inside the root.
 */
function prepareTree(root: string, layer: LayerSource, plan: LayerPlan): void {
  let diskType = diskTypeReader(root);
  const requireRealDirectory = (path: string, why: string) => {
    for (const ancestor of ancestorsOf(path)) {
      const type = plan.writes.get(ancestor) ?? diskType(ancestor);
      if (type === 'symlink') throw unsafe(layer.description, `${why} ${JSON.stringify(path)} would go through the symbolic link ${JSON.stringify(ancestor)}`);
      if (type !== 'directory' && type !== 'absent')
        throw unsafe(layer.description, `${why} ${JSON.stringify(path)} is below ${JSON.stringify(ancestor)}, which is not a directory`);
    }
  };
  // Whiteouts hide lower layers only, so they are applied before this layer's own members land.
  for (const directory of plan.opaqueDirectories) {
    if (directory !== '') requireRealDirectory(`${directory}/x`, 'opaque directory');
    if (diskType(directory) !== 'directory') continue;
    for (const name of readdirSync(join(root, directory))) removeUnder(root, directory ? `${directory}/${name}` : name);
  }
  for (const path of plan.whiteouts) {
    const onDisk = (() => {
      for (const ancestor of ancestorsOf(path)) if (diskType(ancestor) !== 'directory') return false;
      return true;
    })();
    if (onDisk) removeUnder(root, path);
  }
  diskType = diskTypeReader(root);
  for (const [path, type] of plan.writes) {
    requireRealDirectory(path, 'member');
    const existing = diskType(path);
    // A directory replaces whatever was there (even a symlink); anything else replaces a directory whole.
    if (existing === 'absent') continue;
    if (type === 'directory' ? existing !== 'directory' : existing === 'directory') removeUnder(root, path);
  }
  for (const { path, target } of plan.hardLinks) {
    requireRealDirectory(target, 'hard link target');
    const targetType = plan.writes.get(target) ?? diskType(target);
    if (targetType === 'directory') throw unsafe(layer.description, `hard link ${JSON.stringify(path)} points at the directory ${JSON.stringify(target)}`);
  }
}

async function extract(root: string, layer: LayerSource): Promise<void> {
  const stream = await layer.open();
  const tar = spawn(
    'tar',
    [
      '--extract',
      '--file=-',
      `--directory=${root}`,
      '--numeric-owner',
      '--same-owner',
      '--same-permissions',
      '--xattrs',
      '--xattrs-include=*',
      '--exclude=.wh.*',
      '--warning=no-timestamp',
      '--warning=no-unknown-keyword',
    ],
    { stdio: ['pipe', 'ignore', 'pipe'] },
  );
  let stderr = '';
  tar.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number>((resolve, reject) => {
    tar.on('error', (error: NodeJS.ErrnoException) =>
      reject(error.code === 'ENOENT' ? new TorporError('missing-program', 'GNU tar is not installed', { hint: 'apt-get install -y tar' }) : error),
    );
    tar.on('close', (code) => resolve(code ?? 128));
  });
  let streamError: unknown;
  stream.on('error', (error) => {
    streamError = error;
    tar.stdin!.destroy();
  });
  tar.stdin!.on('error', () => {}); // tar exiting early is reported through its exit code
  stream.pipe(tar.stdin!);
  const code = await exited;
  stream.destroy();
  if (streamError) throw asLayerError(layer, streamError);
  if (code !== 0) {
    throw new TorporError('layer-extract-failed', `${layer.description}: tar could not extract it: ${stderr.trim().split('\n').slice(0, 5).join('; ')}`, {
      hint: 'the layer may be corrupt; nothing was imported',
    });
  }
}

/** Applies one layer onto `root` with OCI semantics (whiteouts, opaque directories, replacement). */
export async function applyLayer(root: string, layer: LayerSource): Promise<void> {
  const plan = await planLayer(layer);
  prepareTree(root, layer, plan);
  await extract(root, layer);
}
