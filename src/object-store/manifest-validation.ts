import { TorporError } from '../util/errors.ts';
import type { SnapshotManifest } from '../snapshot/snapshot-store.ts';

// A manifest that comes from the object store or the catalog is input from elsewhere: another node,
// or whoever can write the bucket. Every field that becomes a key, a path or an allocation size is
// checked before use, so a hostile manifest cannot name `../../etc/passwd` as a chunk or make a pull
// allocate terabytes. (The local store trusts its own manifests; these come from outside.)

/** xxh3-128 in hex, as chunk-operations.ts names chunks (part of the store format). */
export const chunkIdPattern = /^[0-9a-f]{32}$/;
const namePattern = /^[A-Za-z0-9][A-Za-z0-9._@+=:,-]{0,199}$/;
/** 1 TiB: far beyond any guest RAM or disk layer torpor makes, small enough to keep arithmetic exact. */
const largestFile = 2 ** 40;

function invalid(what: string): TorporError {
  return new TorporError('manifest-invalid', `snapshot manifest rejected: ${what}`, {
    hint: 'the manifest did not come from torpor or was damaged; it cannot be restored (push the snapshot again from a node that has it)',
    status: 422,
  });
}

function checkChunkedFile(value: unknown, field: string): void {
  if (typeof value !== 'object' || value === null) throw invalid(`${field} is missing`);
  const file = value as { size?: unknown; chunkSize?: unknown; chunks?: unknown };
  if (typeof file.size !== 'number' || !Number.isSafeInteger(file.size) || file.size < 0 || file.size > largestFile) throw invalid(`${field}.size is not a size`);
  // Chunks are 256 KiB today; accept powers of two from 4 KiB to 64 MiB, refuse anything else.
  if (typeof file.chunkSize !== 'number' || !Number.isSafeInteger(file.chunkSize) || file.chunkSize < 4096 || file.chunkSize > 64 * 1024 * 1024 || (file.chunkSize & (file.chunkSize - 1)) !== 0) {
    throw invalid(`${field}.chunkSize is not a chunk size`);
  }
  if (!Array.isArray(file.chunks) || file.chunks.length !== Math.ceil(file.size / file.chunkSize)) throw invalid(`${field}.chunks does not match its size`);
  for (const id of file.chunks) {
    if (id !== null && (typeof id !== 'string' || !chunkIdPattern.test(id))) throw invalid(`${field} names a chunk ${JSON.stringify(id).slice(0, 80)} that is not a chunk id`);
  }
  // Version 2: the bases of 4 KiB page deltas, delta id -> base id (chains included, so a few per chunk at most).
  const bases = (value as { deltaBases?: unknown }).deltaBases;
  if (bases === undefined) return;
  if (typeof bases !== 'object' || bases === null || Array.isArray(bases)) throw invalid(`${field}.deltaBases is not a map of chunk ids`);
  const pairs = Object.entries(bases);
  if (pairs.length > file.chunks.length * 4) throw invalid(`${field}.deltaBases holds more pairs than its chunks can have`);
  for (const [delta, base] of pairs) {
    if (!chunkIdPattern.test(delta) || typeof base !== 'string' || !chunkIdPattern.test(base)) throw invalid(`${field}.deltaBases names something that is not a chunk id`);
  }
}

/** The manifest, typed, or `manifest-invalid` naming the first field that is wrong. */
export function validateManifest(value: unknown): SnapshotManifest {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw invalid('not an object');
  const manifest = value as Record<string, unknown>;
  if (manifest.version !== 1 && manifest.version !== 2) throw invalid(`version ${JSON.stringify(manifest.version)} is not 1 or 2 (a newer torpor wrote it?)`);
  if (typeof manifest.name !== 'string' || !namePattern.test(manifest.name)) throw invalid(`name ${JSON.stringify(manifest.name)?.slice(0, 80)} is not a snapshot name`);
  if (typeof manifest.id !== 'string' || !/^[A-Za-z0-9_-]{1,100}$/.test(manifest.id)) throw invalid('id is not an id');
  if (typeof manifest.createdAt !== 'string' || Number.isNaN(Date.parse(manifest.createdAt))) throw invalid('createdAt is not a time');
  if (manifest.parent !== undefined && (typeof manifest.parent !== 'string' || !namePattern.test(manifest.parent))) throw invalid('parent is not a snapshot name');
  if (typeof manifest.metadata !== 'object' || manifest.metadata === null) throw invalid('metadata is missing');
  checkChunkedFile(manifest.memory, 'memory');
  if (manifest.disk !== undefined) checkChunkedFile(manifest.disk, 'disk');
  if (typeof manifest.deviceState !== 'string' || !chunkIdPattern.test(manifest.deviceState)) throw invalid('deviceState is not a chunk id');
  return value as unknown as SnapshotManifest;
}

/** Every chunk a snapshot needs (device state, RAM, disk layer), each once. */
export function chunksOf(manifest: SnapshotManifest): string[] {
  const ids = new Set<string>([manifest.deviceState]);
  for (const id of manifest.memory.chunks) if (id) ids.add(id);
  for (const id of manifest.disk?.chunks ?? []) if (id) ids.add(id);
  // The bases of 4 KiB page deltas (version 2): a delta cannot be read without them.
  for (const file of [manifest.memory, manifest.disk]) for (const base of Object.values(file?.deltaBases ?? {})) ids.add(base);
  return [...ids];
}
