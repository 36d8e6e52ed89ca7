import { TorporError } from '../util/errors.ts';
import { chunksOf } from './manifest-validation.ts';
import type { ObjectStore, RemoteChunk } from './object-store.ts';
import { defaultRefreshAfterSeconds } from './snapshot-replicator.ts';

// Garbage collection of the object store, safe with many nodes pushing at once and no lock:
//  1. list the chunk objects first, keeping those older than the grace period;
//  2. only then ask for the referenced chunks (the catalog's manifests, committed before step 2);
//  3. delete the old, unreferenced ones.
// A push that reused an existing chunk saw it younger than refreshAfterSeconds (else it uploaded it
// again, renewing its age), and commits its manifest within the push. A chunk older than
// grace > refresh + longest push at step 1 was therefore last reused by a push whose manifest was
// committed before step 1 began, and step 2 sees it. New chunks of a push in flight are younger than the grace.

export interface RemoteGarbageOptions {
  /** every chunk id some manifest (in the catalog, or the store's manifests/) references; read after the listing */
  referencedChunks(): AsyncIterable<string> | Iterable<string> | Promise<Iterable<string>>;
  /** only chunks older than this are deleted (default 24 h); must exceed the replicator's refresh age by the longest push */
  graceSeconds?: number;
  /** the replicators' refreshAfterSeconds (default 6 h) */
  refreshAfterSeconds?: number;
  /** list what would go without deleting it */
  dryRun?: boolean;
  now?: () => number;
}

export const defaultGraceSeconds = 24 * 3600;

/** The chunks referenced by the manifests kept in the store itself (a store without a catalog). */
export async function* chunksOfStoredManifests(store: ObjectStore): AsyncIterable<string> {
  for await (const name of store.listManifestNames()) {
    let manifest;
    try {
      manifest = await store.getManifest(name);
    } catch (error) {
      // Deleted between listing and reading: references nothing any more. Anything else (an
      // unreadable manifest) stops gc: better no gc than deleting chunks a snapshot needs.
      if (error instanceof TorporError && error.code === 'object-missing') continue;
      throw error;
    }
    yield* chunksOf(manifest);
  }
}

export async function collectRemoteGarbage(
  store: ObjectStore,
  options: RemoteGarbageOptions,
): Promise<{ deletedChunks: number; deletedBytes: number; keptChunks: number; youngChunks: number }> {
  const graceSeconds = options.graceSeconds ?? defaultGraceSeconds;
  const refreshAfterSeconds = options.refreshAfterSeconds ?? defaultRefreshAfterSeconds;
  if (!(graceSeconds > refreshAfterSeconds)) {
    throw new TorporError('gc-grace-too-short', `a grace of ${graceSeconds} s is not longer than the chunk refresh age (${refreshAfterSeconds} s)`, {
      hint: 'use a grace longer than refreshAfterSeconds plus the longest push (default grace 24 h, refresh 6 h)',
      exitCode: 2,
    });
  }
  const now = (options.now ?? Date.now)();
  const old: RemoteChunk[] = [];
  let youngChunks = 0;
  for await (const chunk of store.listChunks()) {
    if (now - chunk.lastModified.getTime() > graceSeconds * 1000) old.push(chunk);
    else youngChunks++;
  }
  const referenced = new Set<string>();
  for await (const id of await options.referencedChunks()) referenced.add(id);
  let deletedChunks = 0;
  let deletedBytes = 0;
  for (const chunk of old) {
    if (referenced.has(chunk.id)) continue;
    if (!options.dryRun) await store.deleteChunk(chunk.id);
    deletedChunks++;
    deletedBytes += chunk.bytes;
  }
  return { deletedChunks, deletedBytes, keptChunks: old.length - deletedChunks + youngChunks, youngChunks };
}
