import { closeSync, existsSync, fstatSync, mkdirSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { xxh3 } from '@node-rs/xxhash';
import { SeekableDecoder, SeekableEncoder } from './seekable-zstd.ts';

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
  if (existsSync(chunkPath(task.chunksDirectory, id))) return result;
  const encoded = encoderFor(task.frameSize, task.compressionLevel).encode(data);
  const compressed = performance.now();
  result.compressMs = compressed - started - result.hashMs;
  result.temporaryPath = writeTemporaryChunk(task.chunksDirectory, id, encoded);
  result.writeMs = performance.now() - compressed;
  result.compressedBytes = encoded.length;
  return result;
}

/** Reads, decompresses and verifies a chunk; throws ChunkCorruptError unless it is intact. */
export function loadChunk(chunksDirectory: string, id: string, expectedLength?: number): Buffer {
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
  try {
    data = decoder.decodeAll(file);
  } catch (error) {
    throw new ChunkCorruptError(id, `chunk ${id} cannot be decoded: ${(error as Error).message}`);
  }
  if (expectedLength !== undefined && data.length !== expectedLength) {
    throw new ChunkCorruptError(id, `chunk ${id} holds ${data.length} bytes, expected ${expectedLength}`);
  }
  if (chunkIdOf(data) !== id) throw new ChunkCorruptError(id, `chunk ${id} does not match its hash`);
  return data;
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
