import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { xxh3 } from '@node-rs/xxhash';
import { SeekableDecoder, SeekableEncoder } from './seekable-zstd.ts';
import { applyDelta, changedPages, decodeDeltaHeader, encodeDeltaHeader, gatherPages, isDelta, maximumDeltaDepth } from './chunk-delta.ts';

// The per-chunk work of capture and materialize. Kept free of async and of shared state so the same
// functions run in a worker thread (chunk-worker.ts) or inline, and a worker needs no coordination.

export const pageSize = 4096;

export interface CaptureChunkTask {
  file: string;
  offset: number;
  length: number;
  chunksDirectory: string;
  compressionLevel: number;
  frameSize: number;
  /** the chunk at this place in the previous snapshot: store only the changed 4 KiB pages when that is much smaller */
  deltaBase?: string;
}

export interface CaptureChunkResult {
  /** null: every byte is zero, nothing stored */
  id: string | null;
  nonZeroBytes: number;
  /** set when the chunk was not in the store: written here, to be synced and renamed by the caller */
  temporaryPath?: string;
  compressedBytes: number;
  hashMs: number;
  compressMs: number;
  writeMs: number;
  /** the chunk is stored as a delta (written now or found): every (delta, base) pair a reader of it needs */
  deltaChain?: [string, string][];
}

export interface MaterializeChunkTask {
  id: string;
  chunksDirectory: string;
  target: string;
  offset: number;
  length: number;
  /** a file that already holds this range, probably with the same content (the parent's RAM) */
  base?: { file: string; offset: number };
}

export interface MaterializeChunkResult {
  source: 'base' | 'store';
  writtenBytes: number;
  readMs: number;
  decompressMs: number;
  writeMs: number;
}

/** Thrown for a chunk whose bytes do not match its name or cannot be decoded. */
export class ChunkCorruptError extends Error {
  readonly chunkId: string;
  constructor(chunkId: string, message: string) {
    super(message);
    this.chunkId = chunkId;
  }
}

/** A chunk's id: the xxh3-128 of its uncompressed bytes, as 32 hex digits (part of the store format). */
export function chunkIdOf(data: Uint8Array): string {
  return xxh3.xxh128(data).toString(16).padStart(32, '0');
}

/** chunks/ab/ab01...: a fan-out keeps directories small enough for any file system and for `ls`. */
export function chunkPath(chunksDirectory: string, id: string): string {
  return join(chunksDirectory, id.slice(0, 2), `${id}.zst`);
}

const zeroPage = Buffer.alloc(pageSize);
let zeroChunk = Buffer.alloc(0);
function zeroesOf(length: number): Buffer {
  if (zeroChunk.length < length) zeroChunk = Buffer.alloc(length);
  return zeroChunk.subarray(0, length);
}

function isZeroPage(data: Buffer, offset: number): boolean {
  const end = Math.min(offset + pageSize, data.length);
  return data.compare(zeroPage, 0, end - offset, offset, end) === 0;
}

/** Bytes in the non-zero 4 KiB pages of `data` (the pages a snapshot has to keep). */
export function countNonZeroBytes(data: Buffer): number {
  let count = 0;
  for (let offset = 0; offset < data.length; offset += pageSize) {
    if (!isZeroPage(data, offset)) count += Math.min(pageSize, data.length - offset);
  }
  return count;
}

/**
 * Writes only the non-zero pages of `data`: the target was created sparse, so skipped pages stay
 * holes. Writing zero pages to tmpfs would allocate them and waste the RAM the snapshot saved.
 */
export function writeNonZeroPages(fd: number, data: Buffer, fileOffset: number): number {
  let written = 0;
  let runStart = -1;
  const flush = (end: number) => {
    if (runStart < 0) return;
    let position = runStart;
    while (position < end) position += writeSync(fd, data, position, end - position, fileOffset + position);
    written += end - runStart;
    runStart = -1;
  };
  for (let offset = 0; offset < data.length; offset += pageSize) {
    if (isZeroPage(data, offset)) flush(offset);
    else if (runStart < 0) runStart = offset;
  }
  flush(data.length);
  return written;
}

function readFully(fd: number, buffer: Buffer, position: number): number {
  let total = 0;
  while (total < buffer.length) {
    const count = readSync(fd, buffer, total, buffer.length - total, position + total);
    if (count === 0) break;
    total += count;
  }
  return total;
}

const encoders = new Map<string, SeekableEncoder>();
function encoderFor(frameSize: number, level: number): SeekableEncoder {
  const key = `${frameSize}/${level}`;
  let encoder = encoders.get(key);
  if (!encoder) encoders.set(key, (encoder = new SeekableEncoder(frameSize, level)));
  return encoder;
}
const decoder = new SeekableDecoder();

let readBuffer = Buffer.alloc(0);
function scratch(length: number): Buffer {
  if (readBuffer.length < length) readBuffer = Buffer.allocUnsafe(length);
  return readBuffer.subarray(0, length);
}

/**
 * Writes an encoded chunk beside its final name, not yet synced: the caller syncs a whole capture's
 * new chunks at once (parallel fdatasync batches into few journal commits, where one fsync per
 * chunk in each thread serialized on them) and only then renames them to their final names, so a
 * torn file never carries a chunk's name: a later capture trusts any chunk it finds.
 */
export function writeTemporaryChunk(chunksDirectory: string, id: string, encoded: Uint8Array): string {
  const directory = join(chunksDirectory, id.slice(0, 2));
  mkdirSync(directory, { recursive: true });
  const temporary = join(directory, `.${id}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  let fd = -1;
  try {
    fd = openSync(temporary, 'wx', 0o444);
    let position = 0;
    while (position < encoded.length) position += writeSync(fd, encoded, position, encoded.length - position, position);
    closeSync(fd);
    fd = -1;
  } catch (error) {
    if (fd >= 0) closeSync(fd);
    try {
      unlinkSync(temporary);
    } catch {}
    throw error;
  }
  return temporary;
}

/**
 * Reads one chunk of a file and hashes it; unless it is all zeroes or the store already has its id,
 * compresses it into a temporary file that the capture publishes later. Runs in a worker thread.
 */
export function captureChunk(task: CaptureChunkTask): CaptureChunkResult {
  const data = scratch(task.length);
  const fd = openSync(task.file, 'r');
  let read: number;
  try {
    read = readFully(fd, data, task.offset);
  } finally {
    closeSync(fd);
  }
  // A file shorter than its recorded size reads as zeros past the end, like a hole.
  if (read < data.length) data.fill(0, read);
  const result: CaptureChunkResult = { id: null, nonZeroBytes: 0, compressedBytes: 0, hashMs: 0, compressMs: 0, writeMs: 0 };
  if (data.equals(zeroesOf(data.length))) return result;
  const started = performance.now();
  result.nonZeroBytes = countNonZeroBytes(data);
  const id = chunkIdOf(data);
  result.id = id;
  result.hashMs = performance.now() - started;
  if (existsSync(chunkPath(task.chunksDirectory, id))) {
    // Found, perhaps as a delta another capture wrote: this snapshot then needs its bases too.
    const chain = deltaChainOf(task.chunksDirectory, id);
    if (chain.length) result.deltaChain = chain;
    return result;
  }
  let encoded: Uint8Array = encoderFor(task.frameSize, task.compressionLevel).encode(data);
  const delta = task.deltaBase && task.deltaBase !== id ? encodeDelta(task, data, encoded.length) : undefined;
  if (delta) {
    encoded = delta.encoded;
    result.deltaChain = delta.chain;
  }
  const compressed = performance.now();
  result.compressMs = compressed - started - result.hashMs;
  result.temporaryPath = writeTemporaryChunk(task.chunksDirectory, id, encoded);
  result.writeMs = performance.now() - compressed;
  result.compressedBytes = encoded.length;
  return result;
}

/**
 * The chunk as the changed pages against its base, when that stores less than half of the whole
 * chunk compressed (each delta costs a restore one more file to read and decompress) and the base
 * chain stays short. Undefined: store the whole chunk.
 */
function encodeDelta(task: CaptureChunkTask, data: Buffer, wholeBytes: number): { encoded: Buffer; chain: [string, string][] } | undefined {
  if (data.length % pageSize !== 0 || !existsSync(chunkPath(task.chunksDirectory, task.deltaBase!))) return undefined;
  let base: LoadedChunk;
  try {
    base = loadResolved(task.chunksDirectory, task.deltaBase!, data.length, 0);
  } catch {
    return undefined; // a damaged base: the whole chunk is stored, the restore of the base's snapshot reports it
  }
  if (base.chain.length >= maximumDeltaDepth - 1) return undefined;
  const pages = changedPages(data, base.data);
  if (pages.length * pageSize * 4 > data.length) return undefined;
  const encoded = Buffer.concat([
    encodeDeltaHeader(task.deltaBase!, data.length, pages),
    encoderFor(task.frameSize, task.compressionLevel).encode(gatherPages(data, pages)),
  ]);
  if (encoded.length * 2 > wholeBytes) return undefined;
  return { encoded, chain: [[chunkIdOf(data), task.deltaBase!], ...base.chain] };
}

/** The (delta, base) pairs a stored chunk needs, read from the files' headers ([] for a whole chunk). */
export function deltaChainOf(chunksDirectory: string, id: string): [string, string][] {
  const chain: [string, string][] = [];
  const head = Buffer.alloc(64);
  for (let current = id; chain.length <= maximumDeltaDepth;) {
    let fd: number;
    try {
      fd = openSync(chunkPath(chunksDirectory, current), 'r');
    } catch {
      return chain; // missing: its reader reports that
    }
    let read: number;
    try {
      read = readFully(fd, head, 0);
    } finally {
      closeSync(fd);
    }
    if (!isDelta(head.subarray(0, read))) return chain;
    const base = head.toString('latin1', 16, 48);
    chain.push([current, base]);
    current = base;
  }
  return chain;
}

interface LoadedChunk {
  data: Buffer;
  /** (delta, base) pairs read to rebuild it */
  chain: [string, string][];
}

function loadResolved(chunksDirectory: string, id: string, expectedLength: number | undefined, depth: number): LoadedChunk {
  const path = chunkPath(chunksDirectory, id);
  let file: Buffer;
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new ChunkCorruptError(id, `chunk ${id} is missing from the store (${path})`);
    throw error;
  }
  try {
    file = Buffer.allocUnsafe(fstatSync(fd).size);
    readFully(fd, file, 0);
  } finally {
    closeSync(fd);
  }
  let data: Buffer;
  let chain: [string, string][] = [];
  try {
    if (isDelta(file)) {
      if (depth >= maximumDeltaDepth) throw new Error(`its chain of deltas is longer than ${maximumDeltaDepth}`);
      const header = decodeDeltaHeader(file);
      const base = loadResolved(chunksDirectory, header.baseId, header.chunkLength, depth + 1);
      data = applyDelta(base.data, header, decoder.decodeAll(file.subarray(header.headerSize)));
      chain = [[id, header.baseId], ...base.chain];
    } else {
      data = decoder.decodeAll(file);
    }
  } catch (error) {
    if (error instanceof ChunkCorruptError) throw error;
    throw new ChunkCorruptError(id, `chunk ${id} cannot be decoded: ${(error as Error).message}`);
  }
  if (expectedLength !== undefined && data.length !== expectedLength) {
    throw new ChunkCorruptError(id, `chunk ${id} holds ${data.length} bytes, expected ${expectedLength}`);
  }
  if (chunkIdOf(data) !== id) throw new ChunkCorruptError(id, `chunk ${id} does not match its hash`);
  return { data, chain };
}

/** Reads, decompresses (through its base chunks, for a delta) and verifies a chunk; throws ChunkCorruptError unless it is intact. */
export function loadChunk(chunksDirectory: string, id: string, expectedLength?: number): Buffer {
  return loadResolved(chunksDirectory, id, expectedLength, 0).data;
}

/**
 * Writes one chunk's non-zero pages into the target file, taking the bytes from the base file when
 * they hash to the chunk's id there, else from the store (checked against the id). Runs in a worker thread.
 */
export function materializeChunk(task: MaterializeChunkTask): MaterializeChunkResult {
  const result: MaterializeChunkResult = { source: 'store', writtenBytes: 0, readMs: 0, decompressMs: 0, writeMs: 0 };
  let started = performance.now();
  let data: Buffer | undefined;
  if (task.base) {
    // Copying the parent's bytes beats decompressing, but only when they really are the same chunk:
    // the base file is outside the store and might have been written since it was materialized.
    const candidate = scratch(task.length);
    const fd = openSync(task.base.file, 'r');
    let read: number;
    try {
      read = readFully(fd, candidate, task.base.offset);
    } finally {
      closeSync(fd);
    }
    if (read < candidate.length) candidate.fill(0, read);
    if (chunkIdOf(candidate) === task.id) {
      data = candidate;
      result.source = 'base';
    }
    result.readMs = performance.now() - started;
  }
  if (!data) {
    started = performance.now();
    data = loadChunk(task.chunksDirectory, task.id, task.length);
    result.decompressMs = performance.now() - started;
  }
  started = performance.now();
  const fd = openSync(task.target, 'r+');
  try {
    result.writtenBytes = writeNonZeroPages(fd, data, task.offset);
  } finally {
    closeSync(fd);
  }
  result.writeMs = performance.now() - started;
  return result;
}
