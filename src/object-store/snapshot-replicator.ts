import { ChunkCorruptError } from '../snapshot/chunk-operations.ts';
import { beginActivity, installManifest, snapshotStoreRoot } from '../snapshot/replication-hooks.ts';
import { readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { TorporError } from '../util/errors.ts';
import type { ChunkCache } from './chunk-cache.ts';
import { chunksOf, validateManifest } from './manifest-validation.ts';
import type { ObjectStore } from './object-store.ts';

// Moves snapshots between the local snapshot store and the object store. Where manifests are
// recorded is the caller's business (the cluster's catalog in PostgreSQL, or store.putManifest).

export interface TransferProgress {
  phase: 'push' | 'pull';
  doneChunks: number;
  totalChunks: number;
  /** bytes moved over the network so far */
  bytes: number;
}

export interface TransferOptions {
  signal?: AbortSignal;
  onProgress?(progress: TransferProgress): void;
}

export interface SnapshotReplicator {
  /** upload every chunk of a local snapshot the object store lacks; returns the manifest to record in the catalog */
  push(snapshotName: string, options?: TransferOptions): Promise<{ manifest: SnapshotManifest; uploadedChunks: number; uploadedBytes: number; skippedChunks: number }>;
  /** make the local snapshot store hold this snapshot: write the manifest locally, fetch missing chunks into the local cache */
  pull(manifest: SnapshotManifest, options?: TransferOptions): Promise<{ downloadedChunks: number; downloadedBytes: number; cachedChunks: number }>;
}

export interface ReplicatorOptions {
  /** chunk transfers in flight at once (default 8: S3 latency, not bandwidth, bounds small objects) */
  parallelism?: number;
  /**
   * A chunk the store already has is uploaded again when its copy is older than this (default 6 h),
   * which renews its age: collectRemoteGarbage's grace must exceed this plus the longest push, so
   * that gc never deletes a chunk a push has just decided to reuse (architecture/object-store.md).
   */
  refreshAfterSeconds?: number;
}

export const defaultRefreshAfterSeconds = 6 * 3600;
/** Largest device state blob a pull accepts (QEMU's is ~50 KB without RAM). */
const maxDeviceStateBytes = 64 * 1024 * 1024;

async function forEachLimited<T>(items: T[], limit: number, signal: AbortSignal | undefined, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failed = false;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length && !failed) {
      signal?.throwIfAborted();
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  });
  const results = await Promise.allSettled(runners);
  const rejected = results.find((result) => result.status === 'rejected');
  if (rejected) throw (rejected as PromiseRejectedResult).reason;
}

/** Expected decompressed length of each chunk of a manifest (the last chunk of a file may be short). */
function expectedLengths(manifest: SnapshotManifest): Map<string, { expectedLength?: number; maxLength: number }> {
  const lengths = new Map<string, { expectedLength?: number; maxLength: number }>();
  for (const file of [manifest.memory, manifest.disk]) {
    if (!file) continue;
    file.chunks.forEach((id, index) => {
      if (id) lengths.set(id, { expectedLength: Math.min(file.chunkSize, file.size - index * file.chunkSize), maxLength: file.chunkSize });
    });
  }
  // Bases of page deltas: whole chunks (or deltas) of the same file, of any length up to a chunk.
  for (const file of [manifest.memory, manifest.disk]) {
    for (const base of Object.values(file?.deltaBases ?? {})) if (!lengths.has(base)) lengths.set(base, { maxLength: file!.chunkSize });
  }
  if (!lengths.has(manifest.deviceState)) lengths.set(manifest.deviceState, { maxLength: maxDeviceStateBytes });
  return lengths;
}

/** How many deltas deep each delta of a manifest is (its base a whole chunk: 1). */
function deltaDepths(manifest: SnapshotManifest): Map<string, number> {
  const bases = { ...manifest.memory.deltaBases, ...manifest.disk?.deltaBases };
  const depths = new Map<string, number>();
  for (const id of Object.keys(bases)) {
    let depth = 0;
    for (let current: string | undefined = id; current !== undefined && depth <= 8; current = bases[current]) depth++;
    depths.set(id, depth);
  }
  return depths;
}

/** zstd's worst case for incompressible input is a few bytes per 128 KiB block; allow the seek table and some slack. */
const largestEncoding = (decompressed: number) => decompressed + Math.ceil(decompressed / 1024) + 64 * 1024;

function abortError(signal: AbortSignal): TorporError {
  return new TorporError('aborted', 'the transfer was cancelled', { cause: signal.reason });
}

export function createSnapshotReplicator(store: ObjectStore, cache: ChunkCache, options: ReplicatorOptions = {}): SnapshotReplicator {
  const parallelism = options.parallelism ?? 8;
  const refreshAfterMs = (options.refreshAfterSeconds ?? defaultRefreshAfterSeconds) * 1000;

  return {
    async push(snapshotName, transfer = {}) {
      const manifest = await readSnapshot(snapshotName);
      await store.ensureFormat();
      const ids = chunksOf(manifest);
      let uploadedChunks = 0;
      let uploadedBytes = 0;
      let skippedChunks = 0;
      let done = 0;
      try {
        await forEachLimited(ids, parallelism, transfer.signal, async (id) => {
          const local = await cache.read(id).catch((error: unknown) => {
            throw new TorporError('snapshot-corrupt', `snapshot ${snapshotName} lacks its chunk ${id} here`, {
              hint: 'it was evicted or lost: pull the snapshot from the store first, or snapshot the machine again',
              cause: error,
            });
          });
          const remote = await store.headChunk(id);
          // Same name means same content; a different size means a torn or foreign object: replace it.
          if (remote && remote.bytes === local.length && Date.now() - remote.lastModified.getTime() < refreshAfterMs) {
            skippedChunks++;
          } else {
            await store.putChunk(id, local);
            uploadedChunks++;
            uploadedBytes += local.length;
          }
          done++;
          transfer.onProgress?.({ phase: 'push', doneChunks: done, totalChunks: ids.length, bytes: uploadedBytes });
        });
      } catch (error) {
        if (transfer.signal?.aborted) throw abortError(transfer.signal);
        throw error;
      }
      await cache.markPushed(manifest);
      await cache.touch(ids);
      if (cache.budgetBytes !== undefined) await cache.evict(store);
      return { manifest, uploadedChunks, uploadedBytes, skippedChunks };
    },

    async pull(untrusted, transfer = {}) {
      const manifest = validateManifest(untrusted);
      const ids = chunksOf(manifest);
      const lengths = expectedLengths(manifest);
      // An activity keeps the local gc from deleting fetched chunks before the manifest lands.
      const end = await beginActivity(snapshotStoreRoot(), 'pull');
      let downloadedChunks = 0;
      let downloadedBytes = 0;
      let cachedChunks = 0;
      try {
        let missing: string[] = [];
        for (const id of ids) {
          if (await cache.has(id)) cachedChunks++;
          else missing.push(id);
        }
        await cache.touch(ids.filter((id) => !missing.includes(id)));
        // Bases before their deltas (the manifest says which are deltas), so a delta's base has landed,
        // verified, by the time the delta is checked through it, whatever batch each falls in.
        const depth = deltaDepths(manifest);
        missing = missing.sort((a, b) => (depth.get(a) ?? 0) - (depth.get(b) ?? 0));
        let done = cachedChunks;
        // Fetched and verified in batches, so memory stays bounded and a kill leaves at most one batch of temporaries.
        const batchSize = Math.max(parallelism * 4, 32);
        for (let start = 0; start < missing.length; start += batchSize) {
          const batch = missing.slice(start, start + batchSize);
          const fetched: { id: string; encoded: Buffer; expectedLength?: number; maxLength: number }[] = [];
          await forEachLimited(batch, parallelism, transfer.signal, async (id) => {
            const limits = lengths.get(id)!;
            const encoded = await store.getChunk(id, { maxBytes: largestEncoding(limits.maxLength), signal: transfer.signal });
            downloadedChunks++;
            downloadedBytes += encoded.length;
            fetched.push({ id, encoded, ...limits });
            done++;
            transfer.onProgress?.({ phase: 'pull', doneChunks: done, totalChunks: ids.length, bytes: downloadedBytes });
          });
          transfer.signal?.throwIfAborted();
          await cache.add(fetched);
        }
        await installManifest(manifest);
        await cache.markPushed(manifest);
      } catch (error) {
        if (transfer.signal?.aborted) throw abortError(transfer.signal);
        if (error instanceof ChunkCorruptError) {
          throw new TorporError('store-chunk-corrupt', `snapshot ${manifest.name}: the object store returned a damaged chunk: ${error.message}`, {
            hint: 'nothing of it was kept; push the snapshot again from a node that has it, and check the bucket for tampering',
            cause: error,
          });
        }
        if (error instanceof TorporError && error.code === 'object-missing') {
          throw new TorporError('store-chunk-missing', `snapshot ${manifest.name} cannot be pulled: ${error.message}`, { hint: error.hint, cause: error });
        }
        throw error;
      } finally {
        await end();
      }
      if (cache.budgetBytes !== undefined) await cache.evict(store);
      return { downloadedChunks, downloadedBytes, cachedChunks };
    },
  };
}
