import { existsSync } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { environment } from '../config/environment.ts';
import { syncDirectory, writeFileAtomic } from '../util/atomic-file.ts';
import { isNodeError } from '../util/errors.ts';
import { listSnapshots, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import {
  ChunkCorruptError,
  deltaBaseOf,
  landChunks,
  maximumDeltaDepth,
  localChunkPath,
  localChunks,
  pinnedChunks,
  snapshotStoreRoot,
  touchChunks,
  verifyChunkFile,
  withExclusiveStore,
} from '../snapshot/replication-hooks.ts';
import { chunksOf } from './manifest-validation.ts';
import type { ObjectStore } from './object-store.ts';

// The local chunk directory doubles as the cache of the object store: a snapshot captured here is
// already "cached", and a pull adds what it lacked. With a byte budget, the least recently used
// chunks are evicted, but only chunks the object store holds, that no running machine has pinned
// (a lazily restored guest may still fault them in) and that no local snapshot not yet pushed
// references: eviction never loses the only copy of anything.
//
// Recency is the chunk file's max(atime, mtime): captures write it, pulls and pushes touch it
// (utimes), and reads update atime (relatime: at least once after each touch).

export interface ChunkCache {
  /** bytes the cache may hold; undefined: no limit (nothing is ever evicted) */
  readonly budgetBytes: number | undefined;
  has(id: string): Promise<boolean>;
  /** the chunk file's bytes, as the object store should hold them */
  read(id: string): Promise<Buffer>;
  /** verifies every chunk (hash, sizes) before any lands; ChunkCorruptError names the first bad one */
  add(chunks: { id: string; encoded: Uint8Array; expectedLength?: number; maxLength: number }[]): Promise<void>;
  touch(ids: string[]): Promise<void>;
  /** records that every chunk of this snapshot is in the object store (its chunks become evictable) */
  markPushed(manifest: SnapshotManifest): Promise<void>;
  usage(): Promise<{ chunks: number; bytes: number }>;
  /** evicts down to the budget (or to `targetBytes`); returns what went */
  evict(store: ObjectStore, options?: { targetBytes?: number }): Promise<{ evictedChunks: number; freedBytes: number; keptBytes: number }>;
}

const pushedDirectory = () => join(snapshotStoreRoot(), 'pushed');
const pushedPath = (name: string) => join(pushedDirectory(), `${name}.json`);

async function pushedId(name: string): Promise<string | undefined> {
  try {
    return (JSON.parse(await readFile(pushedPath(name), 'utf8')) as { id?: string }).id;
  } catch (error) {
    if (isNodeError(error, 'ENOENT') || error instanceof SyntaxError) return undefined;
    throw error;
  }
}

/** Chunks no eviction may take: pinned by a running machine, or only here (a local snapshot not pushed). */
async function protectedChunks(): Promise<Set<string>> {
  const kept = await pinnedChunks(snapshotStoreRoot());
  for (const manifest of await listSnapshots()) {
    if ((await pushedId(manifest.name)) === manifest.id) continue;
    for (const id of chunksOf(manifest)) kept.add(id);
  }
  return kept;
}

export function createChunkCache(options: { budgetBytes?: number } = {}): ChunkCache {
  const budgetBytes = options.budgetBytes ?? environment().TORPOR_CHUNK_CACHE_BYTES;
  return {
    budgetBytes,
    async has(id) {
      try {
        await stat(localChunkPath(id));
        return true;
      } catch (error) {
        if (isNodeError(error, 'ENOENT')) return false;
        throw error;
      }
    },
    read: (id) => readFile(localChunkPath(id)),
    async add(chunks) {
      // Whole chunks first; then page deltas, each once its base is in the local store (verified),
      // in rounds, since a delta's base may be a delta of the same batch (chains are short).
      let pending = chunks;
      for (let round = 0; pending.length > 0; round++) {
        const ready = pending.filter((chunk) => {
          const base = deltaBaseOf(chunk.encoded);
          return base === undefined || existsSync(localChunkPath(base));
        });
        if (ready.length === 0 || round > maximumDeltaDepth) {
          const stuck = pending[0]!;
          throw new ChunkCorruptError(stuck.id, `chunk ${stuck.id} is a delta of ${deltaBaseOf(stuck.encoded)}, which neither the snapshot nor this node holds`);
        }
        for (const chunk of ready) verifyChunkFile(chunk.id, chunk.encoded, chunk);
        await landChunks(ready);
        pending = pending.filter((chunk) => !ready.includes(chunk));
      }
    },
    touch: touchChunks,
    async markPushed(manifest) {
      await writeFileAtomic(pushedPath(manifest.name), JSON.stringify({ id: manifest.id, at: new Date().toISOString() }) + '\n');
    },
    async usage() {
      const chunks = await localChunks();
      return { chunks: chunks.length, bytes: chunks.reduce((sum, chunk) => sum + chunk.bytes, 0) };
    },
    async evict(store, evictOptions = {}) {
      const target = evictOptions.targetBytes ?? budgetBytes;
      const chunks = await localChunks();
      let total = chunks.reduce((sum, chunk) => sum + chunk.bytes, 0);
      if (target === undefined || total <= target) return { evictedChunks: 0, freedBytes: 0, keptBytes: total };
      // Ask the store outside the lock (network round trips must not hold captures back).
      const protectedNow = await protectedChunks();
      const chosen: typeof chunks = [];
      let planned = total;
      for (const chunk of chunks.sort((a, b) => a.usedAt - b.usedAt)) {
        if (planned <= target) break;
        if (protectedNow.has(chunk.id)) continue;
        const remote = await store.headChunk(chunk.id);
        if (!remote || remote.bytes !== chunk.bytes) continue;
        chosen.push(chunk);
        planned -= chunk.bytes;
      }
      // Then delete under the store's exclusive lock (as gc does), re-checking what a capture or a
      // restore may have started to rely on meanwhile.
      return withExclusiveStore(snapshotStoreRoot(), async () => {
        const protectedLater = await protectedChunks();
        let evictedChunks = 0;
        let freedBytes = 0;
        const directories = new Set<string>();
        for (const chunk of chosen) {
          if (protectedLater.has(chunk.id)) continue;
          await rm(chunk.path, { force: true });
          directories.add(dirname(chunk.path));
          evictedChunks++;
          freedBytes += chunk.bytes;
        }
        await Promise.all([...directories].map((directory) => syncDirectory(directory)));
        total -= freedBytes;
        return { evictedChunks, freedBytes, keptBytes: total };
      });
    },
  };
}
