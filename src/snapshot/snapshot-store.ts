import { link, mkdir, open, readdir, readFile, rename, rm, stat, unlink, writeFile, type FileHandle } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { paths } from '../state/paths.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import { pathIsPresent } from '../util/path-exists.ts';
import { syncDirectory } from '../util/atomic-file.ts';
import { chunksWithData, dataExtents } from './extents.ts';
import {
  ChunkCorruptError,
  deltaChainOf,
  chunkIdOf,
  chunkPath,
  loadChunk,
  writeTemporaryChunk,
  type CaptureChunkResult,
  type MaterializeChunkResult,
} from './chunk-operations.ts';
import { sharedPool } from './worker-pool.ts';
import { discardChunks, publishChunks, type WrittenChunk } from './chunk-publication.ts';
import { beginActivity, withExclusiveStore } from './store-activity.ts';
import { pinnedChunks } from './chunk-pins.ts';
import { chunkDirectoryFiles } from './chunk-files.ts';
import { SeekableDecoder, SeekableEncoder, SeekableFormatError, framesCovering, parseSeekTable, type SeekTable } from './seekable-zstd.ts';
import { isDelta, maximumDeltaDepth } from './chunk-delta.ts';

export { startSnapshotWorkers, stopSnapshotWorkers } from './worker-pool.ts';

// Measured in bench/snapshot-store.ts (see architecture/snapshots.md): 256 KiB chunks keep the bytes
// a re-snapshot must store small, 64 KiB frames make a range read cost one 64 KiB decompression,
// and zstd level 1 compresses within a few percent of level 3 at close to twice the speed, which
// matters because the guest is paused while its memory is captured.
export const defaultChunkSize = 256 * 1024;
export const defaultFrameSize = 64 * 1024;
export const defaultCompressionLevel = 1;

export interface CaptureInput {
  /** user-visible, unique; e.g. "web@1" */
  name: string;
  /** sparse RAM file (tmpfs); read with pread, never mmap (mmap allocates every page of tmpfs) */
  memoryFile: string;
  /** sparse writable disk layer */
  diskFile?: string;
  /**
   * The guest runs during the capture and QEMU copies each disk range before the guest first
   * overwrites (or discards) it since the pause to `file`, at the same offset (its copy-before-write
   * filter, architecture/lazy-memory.md). `allocated()` lists the ranges of `file` copied so far.
   */
  diskCopies?: { file: string; allocated: () => Promise<{ start: number; end: number }[]> };
  /** QEMU migration stream (device state only) */
  deviceState: Buffer;
  /** machine config etc.; stored verbatim in the manifest */
  metadata: Record<string, unknown>;
  /** the snapshot this one derives from: lineage only, dedup works across the whole store anyway */
  parent?: string;
  /** overwrite an existing name atomically (hibernating the same session again) */
  replace?: boolean;
  /**
   * Chunks of the RAM file whose id is known without reading them: `ids[index]` is taken as is
   * unless it is undefined. A lazily restored machine's RAM file holds only the chunks it faulted
   * in, the others are holes that must not be read as zeros (their id is the one in the snapshot
   * it came from); with write tracking, chunks not written since the last snapshot keep its id.
   */
  knownMemory?: {
    chunkSize: number;
    ids: (string | null | undefined)[];
    /** per chunk, the id it had in the snapshot before (the page map's, or the last capture's): a changed chunk may be stored as a delta against it */
    previous?: (string | null)[];
    /** the bases of the deltas among `ids` (from the manifests they came from); absent: read from the chunk files */
    deltaBases?: Record<string, string>;
  };
  /**
   * The guest runs during the capture (copy-before-write, see architecture/lazy-memory.md): a
   * chunk it writes is first copied, as it was at the pause, to `file` (same offset) and flagged in
   * `copied()`. Chunks flagged once the capture read them are read again from the copy.
   */
  memoryCopies?: { file: string; copied: () => Promise<Uint8Array> };
  /** tuning for benchmarks; the defaults are measured */
  chunkSize?: number;
  compressionLevel?: number;
}

export interface ChunkedFile {
  size: number;
  chunkSize: number;
  /** chunk ids in file order; null = all-zero chunk (a hole when materialized) */
  chunks: (string | null)[];
  /**
   * Chunks stored as 4 KiB page deltas (chunk-delta.ts): delta id -> the id of its base chunk, for
   * every delta among `chunks` and their bases (version 2). Readers need the bases; gc keeps them.
   */
  deltaBases?: Record<string, string>;
}

// A type, not an interface: callers read it as a Record<string, unknown> of numbers.
export type CaptureStats = {
  /** bytes read (data extents rounded out to chunks; holes are never read) */
  scannedBytes: number;
  /** of which in the RAM file (a lazily restored machine with write tracking reads only what changed) */
  memoryScannedBytes?: number;
  /** bytes in non-zero 4 KiB pages */
  nonZeroBytes: number;
  newChunks: number;
  newCompressedBytes: number;
  reusedChunks: number;
  zeroChunks: number;
  milliseconds: { extents: number; chunks: number; sync: number; manifest: number; total: number };
  /** summed over worker threads: where the CPU time went */
  threadMilliseconds: { hash: number; compress: number; write: number };
};

/**
 * A snapshot as stored: `snapshots/<name>.json` in the state directory, pointing at shared chunks.
 *
 * Versioning (the `version` field): a new optional field needs no new version, as long as a
 * manifest without it still means what it meant before (readers ignore fields they do not know).
 * Anything an existing reader would misread needs `version: 2` and a reader that still handles 1
 * (or refuses it with a hint): renaming or removing a field, or changing what a chunk id means
 * (hash, chunk size, compression, the null = zero-chunk rule). Chunks are shared by every
 * manifest, so a chunk format change is a store-wide change: new chunk ids, never rewritten old ones.
 * `metadata.machine` is the runtime's machine config (see `machineConfigSchema`, versioned there).
 */
export interface SnapshotManifest {
  /** 2 when a chunked file has `deltaBases`: an older torpor then refuses the manifest (and its gc stops) instead of losing the bases */
  version: 1 | 2;
  name: string;
  id: string;
  createdAt: string;
  parent?: string;
  metadata: Record<string, unknown>;
  memory: ChunkedFile;
  disk?: ChunkedFile;
  /** chunk id of the device state blob */
  deviceState: string;
  stats: CaptureStats;
}

export interface MaterializeTarget {
  /** absent: the RAM is not written (a lazy restore serves it on demand) */
  memoryFile?: string;
  diskFile?: string;
  /**
   * The caller made `diskFile` empty at its full size already, and a QEMU may have it open: it is
   * written in place, never truncated (a truncation would show that QEMU a disk of size 0).
   */
  diskFileCreated?: boolean;
  deviceStateFile?: string;
  /**
   * Write the device state first, with `diskFile` created at its full size beside it, and call this
   * then: before the RAM and the disk's contents (a restore loads the device state meanwhile).
   */
  onDeviceStateWritten?: () => void;
  /**
   * an already materialized snapshot (e.g. the boot template's RAM, and its disk layer when kept):
   * chunks it shares are copied, not decompressed (each still checked against its id)
   */
  base?: { manifest: SnapshotManifest; memoryFile: string; layerFile?: string };
}

export interface MaterializeStats {
  chunksFromStore: number;
  chunksFromBase: number;
  writtenBytes: number;
  milliseconds: { memory: number; disk: number; deviceState: number; total: number };
}

const storeRoot = () => paths.snapshots();
const chunksDirectory = (root: string) => join(root, 'chunks');
const manifestsDirectory = (root: string) => join(root, 'manifests');

const namePattern = /^[A-Za-z0-9][A-Za-z0-9._@+=:,-]{0,199}$/;

function validateName(name: string): void {
  if (!namePattern.test(name)) {
    throw new TorporError('snapshot-name-invalid', `invalid snapshot name ${JSON.stringify(name)}`, {
      hint: 'use letters, digits and . _ @ + = : , - (up to 200 characters, starting with a letter or digit)',
    });
  }
}

function manifestPath(root: string, name: string): string {
  return join(manifestsDirectory(root), `${name}.json`);
}

function isNoSpace(error: unknown): boolean {
  return isNodeError(error) && (error.code === 'ENOSPC' || error.code === 'EDQUOT');
}

function noSpaceError(name: string, root: string, cause: unknown): TorporError {
  return new TorporError('snapshot-no-space', `no space left to store snapshot ${name} in ${root}`, {
    hint: 'free disk space: remove snapshots you no longer need (`torpor snapshots rm NAME`), then `torpor snapshots gc`; earlier snapshots are intact',
    cause,
  });
}

interface ChunkCaptureOutcome {
  chunks: (string | null)[];
  results: CaptureChunkResult[];
  scannedBytes: number;
  extentsMs: number;
}

/**
 * The disk half of copy-before-write. QEMU copies whole clusters; a chunk with any copied range
 * was (maybe) read torn above. Such chunks are completed in the copy file: the live bytes of their
 * ranges not copied, read before the copy is looked at again (a range not copied by then was not
 * written since the pause when it was read), are written into the copy, then the chunk is
 * captured from there. QEMU may still copy one of those ranges later: it writes the same bytes.
 */
async function completeFromDiskCopies(
  file: string,
  size: number,
  chunkSize: number,
  copies: NonNullable<CaptureInput['diskCopies']>,
  indices: number[],
  replaceChunk: (position: number, index: number, source: string) => Promise<void>,
  addChunk: (index: number) => Promise<void>,
): Promise<void> {
  const affected = chunksWithData(await copies.allocated(), chunkSize).filter((index) => index * chunkSize < size);
  if (affected.length === 0) return;
  const live = new Map<number, Buffer>();
  const input = await open(file, 'r');
  try {
    for (const index of affected) {
      const buffer = Buffer.alloc(Math.min(chunkSize, size - index * chunkSize));
      await input.read(buffer, 0, buffer.length, index * chunkSize);
      live.set(index, buffer);
    }
  } finally {
    await input.close();
  }
  const copied = await copies.allocated();
  const output = await open(copies.file, 'r+');
  try {
    for (const index of affected) {
      const buffer = live.get(index)!;
      const start = index * chunkSize;
      const end = start + buffer.length;
      let position = start;
      for (const extent of copied) {
        if (extent.end <= position) continue;
        if (extent.start >= end) break;
        if (extent.start > position) await output.write(buffer, position - start, extent.start - position, position);
        position = Math.max(position, extent.end);
        if (position >= end) break;
      }
      if (position < end) await output.write(buffer, position - start, end - position, position);
    }
  } finally {
    await output.close();
  }
  const positions = new Map(indices.map((index, position) => [index, position]));
  for (const index of affected) {
    const position = positions.get(index);
    if (position !== undefined) await replaceChunk(position, index, copies.file);
    else await addChunk(index);
  }
}

async function captureFile(
  file: string,
  size: number,
  chunkSize: number,
  compressionLevel: number,
  chunks: string,
  written: WrittenChunk[],
  known?: CaptureInput['knownMemory'],
  copies?: CaptureInput['memoryCopies'],
  diskCopies?: CaptureInput['diskCopies'],
): Promise<ChunkCaptureOutcome> {
  const started = performance.now();
  const extents = await dataExtents(file);
  const extentsMs = performance.now() - started;
  const ids: (string | null)[] = new Array(Math.ceil(size / chunkSize)).fill(null);
  const isUnloaded = (index: number) => known !== undefined && known.ids[index] !== undefined;
  if (known) {
    if (known.chunkSize !== chunkSize || known.ids.length !== ids.length) {
      throw new TorporError('snapshot-invalid', 'a lazily restored machine can only be captured with the chunk size of the snapshot it came from');
    }
    for (let index = 0; index < ids.length; index++) if (isUnloaded(index)) ids[index] = known.ids[index] ?? null;
  }
  const indices = chunksWithData(extents, chunkSize).filter((index) => index * chunkSize < size && !isUnloaded(index));
  const pool = sharedPool();
  let scannedBytes = 0;
  const captureChunkAt = async (index: number, source: string) => {
    const offset = index * chunkSize;
    const length = Math.min(chunkSize, size - offset);
    scannedBytes += length;
    const deltaBase = known?.previous?.[index] ?? undefined;
    const result = await pool.capture({
      file: source,
      offset,
      length,
      chunksDirectory: chunks,
      compressionLevel,
      frameSize: defaultFrameSize,
      ...(deltaBase ? { deltaBase } : {}),
    });
    ids[index] = result.id;
    // Recorded as each arrives, so that a failed capture can remove everything it wrote.
    if (result.id && result.temporaryPath) written.push({ id: result.id, temporaryPath: result.temporaryPath });
    return result;
  };
  const settled = await Promise.allSettled(indices.map((index) => captureChunkAt(index, file)));
  const failure = settled.find((outcome) => outcome.status === 'rejected');
  if (failure) throw (failure as PromiseRejectedResult).reason;
  const results = settled.map((outcome) => (outcome as PromiseFulfilledResult<CaptureChunkResult>).value);
  // A read that may have seen the guest's writes after the pause: what it stored goes, the chunk is read again from `source`.
  const replaceChunk = async (position: number, index: number, source: string) => {
    const torn = results[position]!;
    if (torn.temporaryPath) {
      const at = written.findIndex((entry) => entry.temporaryPath === torn.temporaryPath);
      if (at >= 0) await discardChunks(written.splice(at, 1));
    }
    scannedBytes -= Math.min(chunkSize, size - index * chunkSize);
    results[position] = await captureChunkAt(index, source);
  };
  if (copies) {
    // Flags read after every read above: a chunk written while (or after) it was read was copied
    // first, so the copy holds it as it was at the pause; what was read from the guest's file may
    // be torn. Read those again from the copy and forget what the torn reads wrote.
    const copied = await copies.copied();
    for (let position = 0; position < indices.length; position++) {
      const index = indices[position]!;
      if (copied[index]) await replaceChunk(position, index, copies.file);
    }
  }
  if (diskCopies)
    await completeFromDiskCopies(file, size, chunkSize, diskCopies, indices, replaceChunk, async (index) => {
      results.push(await captureChunkAt(index, diskCopies.file));
    });
  // Chunks taken as known count as reused (they are in the store already, pinned meanwhile).
  if (known) {
    for (let index = 0; index < ids.length; index++) {
      if (isUnloaded(index) && ids[index]) results.push({ id: ids[index], nonZeroBytes: 0, compressedBytes: 0, hashMs: 0, compressMs: 0, writeMs: 0 });
    }
  }
  return { chunks: ids, results, scannedBytes, extentsMs };
}

/**
 * The delta -> base map a new manifest records: pairs the capture's threads reported (deltas they
 * wrote or found), pairs of the manifests known chunks came from, and for known chunks without
 * such a map, the chunk files' headers. Only pairs reachable from `ids` are kept.
 */
function deltaBasesOf(
  chunks: string,
  outcomes: (ChunkCaptureOutcome | undefined)[],
  ids: (string | null)[],
  known: Record<string, string> | undefined,
  coveredByKnown: Set<string> | undefined,
): Record<string, string> {
  const pairs = new Map<string, string>(Object.entries(known ?? {}));
  const fromThreads = new Set<string>();
  for (const outcome of outcomes) {
    for (const result of outcome?.results ?? []) {
      if (result.id) fromThreads.add(result.id);
      for (const [delta, base] of result.deltaChain ?? []) pairs.set(delta, base);
    }
  }
  const result: Record<string, string> = {};
  const visit = (start: string) => {
    for (let id: string | undefined = start, steps = 0; id && steps <= maximumDeltaDepth; steps++) {
      let base = pairs.get(id);
      if (base === undefined && !fromThreads.has(id) && !coveredByKnown?.has(id)) {
        for (const [delta, next] of deltaChainOf(chunks, id)) pairs.set(delta, next);
        base = pairs.get(id);
      }
      if (base === undefined) return;
      result[id] = base;
      id = base;
    }
  };
  for (const id of new Set(ids)) if (id) visit(id);
  return result;
}

/** Stores a snapshot: only chunks the store lacks are compressed and written. Durable when it resolves. */
export async function captureSnapshot(input: CaptureInput): Promise<SnapshotManifest> {
  const started = performance.now();
  validateName(input.name);
  if (input.parent !== undefined) validateName(input.parent);
  const root = storeRoot();
  const chunks = chunksDirectory(root);
  const finalPath = manifestPath(root, input.name);
  const chunkSize = input.chunkSize ?? defaultChunkSize;
  const compressionLevel = input.compressionLevel ?? defaultCompressionLevel;
  if (chunkSize % 4096 !== 0 || chunkSize <= 0) throw new TorporError('snapshot-invalid', `chunk size ${chunkSize} is not a multiple of 4096`);
  if (!input.replace && (await pathIsPresent(finalPath))) throw existsError(input.name);

  try {
    await mkdir(chunks, { recursive: true });
    await mkdir(manifestsDirectory(root), { recursive: true });
  } catch (error) {
    if (isNoSpace(error)) throw noSpaceError(input.name, root, error);
    throw error;
  }
  const endActivity = await beginActivity(root, 'capture');
  const written: WrittenChunk[] = [];
  try {
    const memorySize = (await stat(input.memoryFile)).size;
    let diskSize = 0;
    const captureDisk = async (diskFile: string) => {
      diskSize = (await stat(diskFile)).size;
      return captureFile(diskFile, diskSize, chunkSize, compressionLevel, chunks, written, undefined, undefined, input.diskCopies);
    };
    const chunksStarted = performance.now();
    const settled = await Promise.allSettled([
      captureFile(input.memoryFile, memorySize, chunkSize, compressionLevel, chunks, written, input.knownMemory, input.memoryCopies),
      input.diskFile ? captureDisk(input.diskFile) : Promise.resolve(undefined),
    ]);
    for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason;
    const memory = (settled[0] as PromiseFulfilledResult<ChunkCaptureOutcome>).value;
    const disk = (settled[1] as PromiseFulfilledResult<ChunkCaptureOutcome | undefined>).value;
    // The device state is ~50 KB: not worth a thread round trip.
    const deviceStateId = chunkIdOf(input.deviceState);
    let deviceStateBytes = 0;
    if (!(await pathIsPresent(chunkPath(chunks, deviceStateId)))) {
      const encoded = new SeekableEncoder(defaultFrameSize, compressionLevel).encode(input.deviceState);
      written.push({ id: deviceStateId, temporaryPath: writeTemporaryChunk(chunks, deviceStateId, encoded) });
      deviceStateBytes = encoded.length;
    }
    const chunksDone = performance.now();

    const stats: CaptureStats = {
      scannedBytes: 0,
      memoryScannedBytes: memory.scannedBytes,
      nonZeroBytes: 0,
      newChunks: deviceStateBytes ? 1 : 0,
      newCompressedBytes: deviceStateBytes,
      reusedChunks: deviceStateBytes ? 0 : 1,
      zeroChunks: 0,
      milliseconds: { extents: Math.max(memory.extentsMs, disk?.extentsMs ?? 0), chunks: chunksDone - chunksStarted, sync: 0, manifest: 0, total: 0 },
      threadMilliseconds: { hash: 0, compress: 0, write: 0 },
    };
    // The same content twice in one capture can be written by two threads at once: count it once.
    const counted = new Set<string>([deviceStateId]);
    for (const outcome of [memory, disk]) {
      if (!outcome) continue;
      stats.scannedBytes += outcome.scannedBytes;
      stats.zeroChunks += outcome.chunks.filter((id) => id === null).length;
      for (const result of outcome.results) {
        stats.nonZeroBytes += result.nonZeroBytes;
        stats.threadMilliseconds.hash += result.hashMs;
        stats.threadMilliseconds.compress += result.compressMs;
        stats.threadMilliseconds.write += result.writeMs;
        if (result.id === null) continue;
        if (result.temporaryPath && !counted.has(result.id)) {
          stats.newChunks++;
          stats.newCompressedBytes += result.compressedBytes;
        } else {
          stats.reusedChunks++;
        }
        counted.add(result.id);
      }
    }

    await publishChunks(chunks, written);
    const synced = performance.now();
    stats.milliseconds.sync = synced - chunksDone;

    const deltaBases = deltaBasesOf(
      chunks,
      [memory, disk],
      [...memory.chunks, ...(disk?.chunks ?? [])],
      input.knownMemory?.deltaBases,
      input.knownMemory?.deltaBases ? new Set(input.knownMemory.ids.filter((id): id is string => typeof id === 'string')) : undefined,
    );
    const hasDeltas = Object.keys(deltaBases).length > 0;
    const manifest: SnapshotManifest = {
      version: hasDeltas ? 2 : 1,
      name: input.name,
      id: randomBytes(8).toString('hex'),
      createdAt: new Date().toISOString(),
      ...(input.parent !== undefined ? { parent: input.parent } : {}),
      metadata: input.metadata,
      memory: { size: memorySize, chunkSize, chunks: memory.chunks, ...(hasDeltas ? { deltaBases } : {}) },
      ...(disk ? { disk: { size: diskSize, chunkSize, chunks: disk.chunks } } : {}),
      deviceState: deviceStateId,
      stats,
    };
    // The stored manifest's total stops here; the returned one also counts publishing it.
    stats.milliseconds.total = performance.now() - started;
    await publishManifest(root, finalPath, manifest, input.replace === true);
    const published = performance.now();
    stats.milliseconds.manifest = published - synced;
    stats.milliseconds.total = published - started;
    return manifest;
  } catch (error) {
    // Chunks already renamed stay (another capture may use them meanwhile); gc removes them if not.
    await discardChunks(written);
    if (error instanceof TorporError) throw error;
    if (isNoSpace(error)) throw noSpaceError(input.name, root, error);
    throw error;
  } finally {
    await endActivity();
  }
}

function existsError(name: string): TorporError {
  return new TorporError('snapshot-exists', `a snapshot named ${name} already exists`, {
    hint: `choose another name, replace it (--replace), or remove it first: torpor snapshots rm ${name}`,
  });
}

/**
 * The manifest goes last: before it is in place the snapshot does not exist. link() publishes the
 * name only if nobody else took it meanwhile (two racing captures: exactly one wins); with
 * `replace` a rename swaps the old manifest for the new one atomically.
 */
async function publishManifest(root: string, finalPath: string, manifest: SnapshotManifest, replace: boolean): Promise<void> {
  const directory = manifestsDirectory(root);
  const temporary = join(directory, `.${manifest.name}.${manifest.id}.tmp`);
  const handle = await open(temporary, 'wx', 0o644);
  try {
    await handle.writeFile(JSON.stringify(manifest) + '\n');
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  try {
    if (replace) {
      await rename(temporary, finalPath);
    } else {
      await link(temporary, finalPath);
      await unlink(temporary);
    }
  } catch (error) {
    await rm(temporary, { force: true });
    if (isNodeError(error, 'EEXIST')) throw existsError(manifest.name);
    throw error;
  }
  await syncDirectory(directory);
}

function parseManifest(text: string, name: string): SnapshotManifest {
  const manifest = JSON.parse(text) as SnapshotManifest;
  if ((manifest.version !== 1 && manifest.version !== 2) || !manifest.memory || typeof manifest.deviceState !== 'string') {
    throw new TorporError('snapshot-corrupt', `snapshot ${name} has an unreadable manifest`, { hint: `remove it: torpor snapshots rm ${name}` });
  }
  return manifest;
}

/** The manifest of a stored snapshot; `snapshot-unknown` (with a hint) when there is none of that name. */
export async function readSnapshot(name: string): Promise<SnapshotManifest> {
  validateName(name);
  let text: string;
  try {
    text = await readFile(manifestPath(storeRoot(), name), 'utf8');
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) {
      throw new TorporError('snapshot-unknown', `no snapshot named ${name}`, { hint: 'see `torpor snapshots ls` for the snapshots there are' });
    }
    throw error;
  }
  return parseManifest(text, name);
}

async function manifestNames(root: string): Promise<string[]> {
  try {
    return (await readdir(manifestsDirectory(root))).filter((file) => file.endsWith('.json') && !file.startsWith('.')).map((file) => file.slice(0, -5));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return [];
    throw error;
  }
}

/** All snapshots, oldest first. */
export async function listSnapshots(): Promise<SnapshotManifest[]> {
  const root = storeRoot();
  const manifests: SnapshotManifest[] = [];
  for (const name of await manifestNames(root)) {
    try {
      manifests.push(await readSnapshot(name));
    } catch (error) {
      // Removed between readdir and read.
      if (error instanceof TorporError && error.code === 'snapshot-unknown') continue;
      throw error;
    }
  }
  return manifests.sort((a, b) => a.createdAt.localeCompare(b.createdAt) || a.name.localeCompare(b.name));
}

/**
 * Forgets a snapshot; its chunks go at the next gc unless another snapshot uses them. Parents can
 * be removed too: chunks are shared by content, so a child never depends on its parent's manifest.
 */
export async function removeSnapshot(name: string): Promise<void> {
  validateName(name);
  const root = storeRoot();
  try {
    await unlink(manifestPath(root, name));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) {
      throw new TorporError('snapshot-unknown', `no snapshot named ${name}`, { hint: 'see `torpor snapshots ls` for the snapshots there are' });
    }
    throw error;
  }
  await syncDirectory(manifestsDirectory(root));
}

function corruptError(manifest: SnapshotManifest, error: ChunkCorruptError): TorporError {
  return new TorporError('snapshot-corrupt', `snapshot ${manifest.name} is damaged: ${error.message}`, {
    hint: `the store's files were changed or lost (disk error?); the snapshot cannot be restored: remove it (torpor snapshots rm ${manifest.name}) and snapshot the machine again`,
    cause: error,
  });
}

/** An empty file of `size` bytes (a hole), replacing whatever was there. */
export async function createSparse(file: string, size: number): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const handle = await open(file, 'w', 0o600);
  try {
    await handle.truncate(size);
  } finally {
    await handle.close();
  }
}

async function materializeFile(
  layout: ChunkedFile,
  target: string,
  chunks: string,
  base?: { layout: ChunkedFile; file: string },
  created = false,
): Promise<MaterializeChunkResult[]> {
  if (!created) await createSparse(target, layout.size);
  const pool = sharedPool();
  const sameLayout = base && base.layout.chunkSize === layout.chunkSize;
  const jobs: Promise<MaterializeChunkResult>[] = [];
  layout.chunks.forEach((id, index) => {
    if (id === null) return;
    const offset = index * layout.chunkSize;
    jobs.push(
      pool.materialize({
        id,
        chunksDirectory: chunks,
        target,
        offset,
        length: Math.min(layout.chunkSize, layout.size - offset),
        base: sameLayout && base.layout.chunks[index] === id ? { file: base.file, offset } : undefined,
      }),
    );
  });
  // allSettled: every thread must be done with the target before a failure removes it.
  const settled = await Promise.allSettled(jobs);
  const failure = settled.find((outcome) => outcome.status === 'rejected');
  if (failure) throw (failure as PromiseRejectedResult).reason;
  return settled.map((outcome) => (outcome as PromiseFulfilledResult<MaterializeChunkResult>).value);
}

/**
 * Writes a snapshot back out: the RAM file sparse (zero pages stay holes), the disk layer sparse,
 * the device state whole. Every chunk is verified against its hash; on any failure the targets are
 * removed, so a half-written or wrong RAM file is never left behind.
 */
export async function materializeSnapshot(nameOrManifest: string | SnapshotManifest, target: MaterializeTarget): Promise<{ stats: MaterializeStats }> {
  const started = performance.now();
  const manifest = typeof nameOrManifest === 'string' ? await readSnapshot(nameOrManifest) : nameOrManifest;
  const root = storeRoot();
  const chunks = chunksDirectory(root);
  const created: string[] = [];
  const endActivity = await beginActivity(root, 'materialize');
  const stats: MaterializeStats = { chunksFromStore: 0, chunksFromBase: 0, writtenBytes: 0, milliseconds: { memory: 0, disk: 0, deviceState: 0, total: 0 } };
  const add = (results: MaterializeChunkResult[]) => {
    for (const result of results) {
      if (result.source === 'base') stats.chunksFromBase++;
      else stats.chunksFromStore++;
      stats.writtenBytes += result.writtenBytes;
    }
  };
  const writeDeviceState = async (file: string) => {
    const deviceStarted = performance.now();
    const deviceState = loadChunk(chunks, manifest.deviceState);
    created.push(file);
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, deviceState);
    stats.milliseconds.deviceState = performance.now() - deviceStarted;
  };
  let diskFileCreated = target.diskFileCreated;
  try {
    if (target.onDeviceStateWritten && target.deviceStateFile) {
      const diskFile = manifest.disk && target.diskFile && !diskFileCreated ? target.diskFile : undefined;
      if (diskFile) created.push(diskFile);
      await Promise.all([writeDeviceState(target.deviceStateFile), diskFile ? createSparse(diskFile, manifest.disk!.size) : undefined]);
      if (diskFile) diskFileCreated = true;
      target.onDeviceStateWritten();
    }
    if (target.memoryFile) {
      created.push(target.memoryFile);
      const memoryStarted = performance.now();
      const base = target.base ? { layout: target.base.manifest.memory, file: target.base.memoryFile } : undefined;
      // Memory and disk one after the other: each already keeps every thread busy.
      add(await materializeFile(manifest.memory, target.memoryFile, chunks, base));
      stats.milliseconds.memory = performance.now() - memoryStarted;
    }
    if (manifest.disk && target.diskFile) {
      created.push(target.diskFile);
      const diskStarted = performance.now();
      const base = target.base?.layerFile && target.base.manifest.disk ? { layout: target.base.manifest.disk, file: target.base.layerFile } : undefined;
      add(await materializeFile(manifest.disk, target.diskFile, chunks, base, diskFileCreated));
      stats.milliseconds.disk = performance.now() - diskStarted;
    }
    if (target.deviceStateFile && !target.onDeviceStateWritten) await writeDeviceState(target.deviceStateFile);
  } catch (error) {
    await Promise.all(created.map((file) => rm(file, { force: true })));
    if (error instanceof ChunkCorruptError) throw corruptError(manifest, error);
    if (isNoSpace(error)) {
      throw new TorporError('materialize-no-space', `no space left to restore snapshot ${manifest.name}`, {
        hint: 'free memory in /dev/shm (stop machines you do not need) or disk space for the disk layer',
        cause: error,
      });
    }
    throw error;
  } finally {
    await endActivity();
  }
  stats.milliseconds.total = performance.now() - started;
  return { stats };
}

// Seek tables of recently read chunks: a lazy restore reads many ranges of the same chunk.
const seekTables = new Map<string, SeekTable>();
const seekTableCacheLimit = 4096;
const rangeDecoder = new SeekableDecoder();

async function seekTableOf(path: string, id: string, handle: FileHandle): Promise<SeekTable> {
  const cached = seekTables.get(id);
  if (cached) return cached;
  const { size } = await handle.stat();
  let tailSize = Math.min(size, 4096);
  for (;;) {
    const tail = Buffer.alloc(tailSize);
    await handle.read(tail, 0, tailSize, size - tailSize);
    try {
      const table = parseSeekTable(tail, size);
      if (seekTables.size >= seekTableCacheLimit) seekTables.delete(seekTables.keys().next().value!);
      seekTables.set(id, table);
      return table;
    } catch (error) {
      // A long table (many frames) needs a longer tail; the footer says how long.
      if (error instanceof SeekableFormatError && /needs (\d+) bytes/.test(error.message) && tailSize < size) {
        tailSize = Math.min(size, Number(/needs (\d+) bytes/.exec(error.message)![1]));
        continue;
      }
      throw new ChunkCorruptError(id, `chunk ${id} (${path}): ${(error as Error).message}`);
    }
  }
}

/**
 * Bytes [offset, offset + length) of a snapshot's guest RAM, decompressing only the 64 KiB frames
 * that hold them (what a lazy, userfaultfd-driven restore needs). Frames are verified by their
 * checksums; a damaged one fails with 'snapshot-corrupt'.
 */
export async function readMemoryRange(manifest: SnapshotManifest, offset: number, length: number): Promise<Buffer> {
  const layout = manifest.memory;
  if (offset < 0 || length < 0 || offset + length > layout.size) {
    throw new TorporError('range-invalid', `range ${offset}+${length} is outside the ${layout.size}-byte memory of ${manifest.name}`);
  }
  const output = Buffer.alloc(length);
  const chunks = chunksDirectory(storeRoot());
  try {
    for (let position = offset; position < offset + length;) {
      const index = Math.floor(position / layout.chunkSize);
      const chunkStart = index * layout.chunkSize;
      const chunkEnd = Math.min(chunkStart + layout.chunkSize, layout.size, offset + length);
      const id = layout.chunks[index];
      if (id) {
        const path = chunkPath(chunks, id);
        let handle: FileHandle;
        try {
          handle = await open(path, 'r');
        } catch (error) {
          if (isNodeError(error, 'ENOENT')) throw new ChunkCorruptError(id, `chunk ${id} is missing from the store (${path})`);
          throw error;
        }
        try {
          const head = Buffer.alloc(4);
          await handle.read(head, 0, 4, 0);
          if (isDelta(head)) {
            // A delta has no frames of the whole chunk to pick from: rebuild the chunk (verified).
            const data = loadChunk(chunks, id, Math.min(layout.chunkSize, layout.size - chunkStart));
            data.copy(output, position - offset, position - chunkStart, chunkEnd - chunkStart);
            position = chunkEnd;
            continue;
          }
          const table = await seekTableOf(path, id, handle);
          for (const entry of framesCovering(table, position - chunkStart, chunkEnd - position)) {
            const compressed = Buffer.alloc(entry.compressedSize);
            await handle.read(compressed, 0, entry.compressedSize, entry.compressedOffset);
            let frame: Buffer;
            try {
              frame = rangeDecoder.decodeFrame(entry, compressed);
            } catch (error) {
              throw new ChunkCorruptError(id, `chunk ${id}: ${(error as Error).message}`);
            }
            const frameStart = chunkStart + entry.decompressedOffset;
            const from = Math.max(position, frameStart);
            const to = Math.min(chunkEnd, frameStart + entry.decompressedSize);
            frame.copy(output, from - offset, from - frameStart, to - frameStart);
          }
        } finally {
          await handle.close();
        }
      }
      position = chunkEnd;
    }
  } catch (error) {
    if (error instanceof ChunkCorruptError) throw corruptError(manifest, error);
    throw error;
  }
  return output;
}

/** Every chunk a snapshot needs: its chunks, the bases of its deltas, the device state. */
export function referencedChunks(manifest: SnapshotManifest): string[] {
  const ids: string[] = [manifest.deviceState];
  for (const id of manifest.memory.chunks) if (id) ids.push(id);
  for (const id of manifest.disk?.chunks ?? []) if (id) ids.push(id);
  for (const file of [manifest.memory, manifest.disk]) ids.push(...Object.values(file?.deltaBases ?? {}));
  return ids;
}

interface StoredChunk {
  id: string;
  path: string;
  bytes: number;
}

async function storedChunks(chunks: string): Promise<{ files: StoredChunk[]; temporaries: string[] }> {
  const files: StoredChunk[] = [];
  const temporaries: string[] = [];
  for (const { name, path } of await chunkDirectoryFiles(chunks)) {
    if (name.startsWith('.')) temporaries.push(path);
    else if (name.endsWith('.zst')) files.push({ id: name.slice(0, -4), path, bytes: (await stat(path)).size });
  }
  return { files, temporaries };
}

/**
 * Deletes the chunks no manifest references (and temporary files of captures that died). Holds the
 * store exclusively, so a capture that just decided to reuse a chunk cannot lose it.
 */
export async function collectGarbage(): Promise<{ removedChunks: number; freedBytes: number }> {
  const root = storeRoot();
  return withExclusiveStore(root, async () => {
    // An unreadable manifest throws here: better no gc than deleting chunks a snapshot needs.
    const referenced = new Set<string>();
    for (const manifest of await listSnapshots()) for (const id of referencedChunks(manifest)) referenced.add(id);
    // Chunks that running, lazily restored machines may still fault in.
    for (const id of await pinnedChunks(root)) referenced.add(id);
    const chunks = chunksDirectory(root);
    const { files, temporaries } = await storedChunks(chunks);
    let removedChunks = 0;
    let freedBytes = 0;
    const touched = new Set<string>();
    for (const file of files) {
      if (referenced.has(file.id)) continue;
      await rm(file.path, { force: true });
      removedChunks++;
      freedBytes += file.bytes;
      touched.add(dirname(file.path));
    }
    for (const temporary of temporaries) {
      freedBytes += await stat(temporary).then(
        (status) => status.size,
        () => 0,
      );
      await rm(temporary, { force: true });
      touched.add(dirname(temporary));
    }
    await Promise.all([...touched].map((directory) => syncDirectory(directory)));
    return { removedChunks, freedBytes };
  });
}

export interface SnapshotUsage {
  name: string;
  /** compressed bytes of all chunks it references */
  referencedBytes: number;
  /** compressed bytes only it references: what removing it (and a gc) would free */
  exclusiveBytes: number;
}

/** Chunks and bytes in the store, and per snapshot what it references and what it alone holds. */
export async function storeUsage(): Promise<{ chunks: number; bytes: number; snapshots: SnapshotUsage[] }> {
  const root = storeRoot();
  const { files } = await storedChunks(chunksDirectory(root));
  const sizes = new Map(files.map((file) => [file.id, file.bytes]));
  const manifests = await listSnapshots();
  const users = new Map<string, number>();
  const perSnapshot = manifests.map((manifest) => new Set(referencedChunks(manifest)));
  for (const ids of perSnapshot) for (const id of ids) users.set(id, (users.get(id) ?? 0) + 1);
  const snapshots = manifests.map((manifest, index) => {
    let referencedBytes = 0;
    let exclusiveBytes = 0;
    for (const id of perSnapshot[index]) {
      const bytes = sizes.get(id) ?? 0;
      referencedBytes += bytes;
      if (users.get(id) === 1) exclusiveBytes += bytes;
    }
    return { name: manifest.name, referencedBytes, exclusiveBytes };
  });
  return { chunks: files.length, bytes: files.reduce((sum, file) => sum + file.bytes, 0), snapshots };
}
