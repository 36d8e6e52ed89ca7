import { open, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { syncDirectory } from '../util/atomic-file.ts';
import { chunkPath } from './chunk-operations.ts';

export interface WrittenChunk {
  id: string;
  temporaryPath: string;
}

async function dataSync(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

/** Runs `work` over `items` with at most `limit` in flight (the libuv pool has 4 threads). */
async function forEachLimited<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const runners = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) await work(items[next++]);
  });
  await Promise.all(runners);
}

/**
 * Makes a capture's new chunks durable and gives them their names: sync every temporary file, then
 * rename, then sync the directories that hold the renames. Until the rename a chunk does not exist
 * for anyone else; after this returns it survives a crash. Duplicates (the same content written
 * by two threads) keep one copy.
 */
export async function publishChunks(chunksDirectory: string, written: WrittenChunk[]): Promise<void> {
  const unique = new Map<string, string>();
  const duplicates: string[] = [];
  for (const chunk of written) {
    if (unique.has(chunk.id)) duplicates.push(chunk.temporaryPath);
    else unique.set(chunk.id, chunk.temporaryPath);
  }
  try {
    await Promise.all(duplicates.map((path) => rm(path, { force: true })));
    const entries = [...unique];
    await forEachLimited(entries, 16, ([, temporary]) => dataSync(temporary));
    const directories = new Set<string>();
    await forEachLimited(entries, 16, async ([id, temporary]) => {
      const final = chunkPath(chunksDirectory, id);
      await rename(temporary, final);
      directories.add(dirname(final));
    });
    await forEachLimited([...directories], 16, (directory) => syncDirectory(directory));
    // A fan-out directory created by this capture is itself an entry of the chunks directory.
    await syncDirectory(chunksDirectory);
  } catch (error) {
    await discardChunks(written);
    throw error;
  }
}

/** Removes temporary chunk files of a capture that failed (renamed ones are left for gc). */
export async function discardChunks(written: WrittenChunk[]): Promise<void> {
  await Promise.all(written.map((chunk) => rm(chunk.temporaryPath, { force: true })));
}
