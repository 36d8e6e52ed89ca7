import { createChunkCache } from '../chunk-cache.ts';
import { openObjectStore } from '../object-store.ts';
import { createSnapshotReplicator } from '../snapshot-replicator.ts';

// A pull in its own process, for the test that kills it with SIGKILL midway. Prints a line per
// fetched chunk, one at a time (parallelism 1) and slowly enough to be caught in the middle.

const { url, ...options } = JSON.parse(process.env.PULL_STORE!) as { url: string; endpoint: string; region: string; accessKeyId: string; secretAccessKey: string; forcePathStyle: boolean };
const store = openObjectStore(url, options);
await createSnapshotReplicator(store, createChunkCache(), { parallelism: 1 }).pull(JSON.parse(process.env.PULL_MANIFEST!), {
  onProgress: (progress) => {
    process.stdout.write(`${progress.doneChunks}\n`);
    // Busy-wait a little per chunk: the kill should land while chunks are still arriving.
    const until = Date.now() + 20;
    while (Date.now() < until);
  },
});
store.close();
