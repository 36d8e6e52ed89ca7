import { stat, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../state/paths.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { isNodeError } from '../util/errors.ts';
import { chunkDirectoryFiles } from './chunk-files.ts';
import { ChunkCorruptError, chunkIdOf, chunkPath, loadChunk, writeTemporaryChunk } from './chunk-operations.ts';
import { applyDelta, decodeDeltaHeader, isDelta } from './chunk-delta.ts';
import { discardChunks, publishChunks, type WrittenChunk } from './chunk-publication.ts';
import { SeekableDecoder, parseSeekTable } from './seekable-zstd.ts';
import type { SnapshotManifest } from './snapshot-store.ts';

// What src/object-store/ needs from the local snapshot store, and nothing more: where chunks live,
// landing chunks that came from elsewhere (verified, then written the way a capture writes its own),
// and installing a manifest that came from elsewhere. The object store layer validates manifests
// from outside (object-store/manifest-validation.ts) before it calls installManifest.

export { beginActivity, withExclusiveStore } from './store-activity.ts';
export { pinnedChunks } from './chunk-pins.ts';
export { ChunkCorruptError } from './chunk-operations.ts';
export { maximumDeltaDepth } from './chunk-delta.ts';

export const snapshotStoreRoot = () => paths.snapshots();
export const localChunksDirectory = () => join(snapshotStoreRoot(), 'chunks');
export const localChunkPath = (id: string) => chunkPath(localChunksDirectory(), id);

const decoder = new SeekableDecoder();

/**
 * Checks that `encoded` is a chunk file whose content hashes to `id` (and, when given, holds exactly
 * `expectedLength` bytes); throws ChunkCorruptError otherwise. The seek table's sizes are checked
 * against `maxLength` before anything is decompressed, so a hostile file cannot make us allocate
 * more than that. A 4 KiB page delta (snapshot/chunk-delta.ts) is checked through its base, which
 * must already be in the local store (verified): its rebuilt content must hash to `id`.
 */
export function verifyChunkFile(id: string, encoded: Uint8Array, limits: { expectedLength?: number; maxLength: number }): void {
  let data: Buffer;
  try {
    const delta = isDelta(encoded) ? decodeDeltaHeader(encoded) : undefined;
    const pages = delta ? encoded.subarray(delta.headerSize) : encoded;
    const table = parseSeekTable(pages, pages.length);
    if (table.decompressedSize > limits.maxLength) throw new Error(`it claims ${table.decompressedSize} bytes, more than the ${limits.maxLength} allowed`);
    if (delta) {
      if (delta.chunkLength > limits.maxLength) throw new Error(`its delta claims ${delta.chunkLength} bytes, more than the ${limits.maxLength} allowed`);
      // loadChunk verifies the base (and its own bases) against their ids.
      data = applyDelta(loadChunk(localChunksDirectory(), delta.baseId, delta.chunkLength), delta, decoder.decodeAll(pages));
    } else {
      data = decoder.decodeAll(encoded);
    }
    if (limits.expectedLength !== undefined && data.length !== limits.expectedLength) {
      throw new Error(`it holds ${data.length} bytes, expected ${limits.expectedLength}`);
    }
  } catch (error) {
    if (error instanceof ChunkCorruptError) {
      throw error.chunkId === id ? error : new ChunkCorruptError(id, `chunk ${id} is a delta whose base cannot be read: ${error.message}`);
    }
    throw new ChunkCorruptError(id, `chunk ${id} cannot be decoded: ${(error as Error).message}`);
  }
  if (chunkIdOf(data) !== id) throw new ChunkCorruptError(id, `chunk ${id} does not match its hash`);
}

/** The base a chunk file names when it is a 4 KiB page delta (undefined for a whole chunk or a malformed file). */
export function deltaBaseOf(encoded: Uint8Array): string | undefined {
  if (!isDelta(encoded)) return undefined;
  try {
    return decodeDeltaHeader(encoded).baseId;
  } catch {
    return undefined;
  }
}

/**
 * Writes verified chunk files into the local store: temporary names, fsync, rename (publishChunks),
 * so a process killed midway leaves temporaries that gc removes, never a torn chunk under its name.
 * Call inside beginActivity, so that gc does not remove them before their manifest exists.
 */
export async function landChunks(chunks: { id: string; encoded: Uint8Array }[]): Promise<void> {
  const directory = localChunksDirectory();
  const written: WrittenChunk[] = [];
  try {
    for (const chunk of chunks) written.push({ id: chunk.id, temporaryPath: writeTemporaryChunk(directory, chunk.id, chunk.encoded) });
  } catch (error) {
    await discardChunks(written);
    throw error;
  }
  await publishChunks(directory, written);
}

/** Writes (or replaces) a manifest that came from the catalog or the object store; the snapshot then exists locally. */
export async function installManifest(manifest: SnapshotManifest): Promise<void> {
  await writeFileAtomic(join(snapshotStoreRoot(), 'manifests', `${manifest.name}.json`), JSON.stringify(manifest) + '\n');
}

export interface LocalChunk {
  id: string;
  path: string;
  bytes: number;
  /** last use as the file system saw it: max(atime, mtime) in ms */
  usedAt: number;
}

/** Every chunk file in the local store (temporaries excluded). */
export async function localChunks(): Promise<LocalChunk[]> {
  const found: LocalChunk[] = [];
  for (const { name, path } of await chunkDirectoryFiles(localChunksDirectory())) {
    if (name.startsWith('.') || !name.endsWith('.zst')) continue;
    try {
      const status = await stat(path);
      found.push({ id: name.slice(0, -4), path, bytes: status.size, usedAt: Math.max(status.atimeMs, status.mtimeMs) });
    } catch (error) {
      if (!isNodeError(error, 'ENOENT')) throw error;
    }
  }
  return found;
}

/** Marks chunks as just used (the cache's LRU order); relatime alone updates atime at most daily. */
export async function touchChunks(ids: string[]): Promise<void> {
  const now = new Date();
  await Promise.all(
    ids.map((id) =>
      utimes(localChunkPath(id), now, now).catch((error: unknown) => {
        if (!isNodeError(error, 'ENOENT')) throw error;
      }),
    ),
  );
}
