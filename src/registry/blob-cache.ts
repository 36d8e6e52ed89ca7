import { processExists } from '../util/process-identity.ts';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { paths } from '../state/paths.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import { pathIsPresent } from '../util/path-exists.ts';
import { syncDirectory } from '../util/atomic-file.ts';
import type { Descriptor } from '../image/import/oci-image.ts';
import { digestHex } from '../image/digest.ts';
import { backoff, isTransientNetworkError, registryErrorText, type RegistryClient } from './registry-client.ts';

// Layout:  images/layers/sha256/<hex>          verified blobs, shared by every image that has them
//          images/downloads/<hex>.partial       bytes received so far (resumed with an HTTP Range)
//          images/downloads/<hex>.lock          held by the one process downloading that blob

export const layerCacheDirectory = () => join(paths.images(), 'layers', 'sha256');
export const downloadsDirectory = () => join(paths.images(), 'downloads');

// Registries and manifests are untrusted: a digest is checked before it names a file here.
const hexOf = (digest: string) => digestHex(digest, 'blob digest');

export async function cachedBlob(digest: string): Promise<string | undefined> {
  const path = join(layerCacheDirectory(), hexOf(digest));
  return (await pathIsPresent(path)) ? path : undefined;
}

/** One downloader per blob across processes: a lock file holding the owner's PID, taken over when that process is gone. */
async function lockBlob(digest: string): Promise<() => Promise<void>> {
  const lock = join(downloadsDirectory(), `${hexOf(digest)}.lock`);
  for (;;) {
    try {
      const handle = await open(lock, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => rm(lock, { force: true });
    } catch (error) {
      if (!isNodeError(error, 'EEXIST')) throw error;
    }
    const owner = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
    if (owner && !processExists(owner)) await rm(lock, { force: true });
    else await sleep(200);
  }
}

async function hashFile(path: string, hash: ReturnType<typeof createHash>): Promise<void> {
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
}

export interface BlobProgress {
  (event: { state: 'cached' | 'downloading' | 'resuming' | 'verifying' | 'done'; done: number; total: number }): void;
}

/**
 * A blob of the repository, from the cache or downloaded into it. Bytes land in a partial file
 * that a later attempt (or a later pull) continues with a Range request; the blob enters the cache
 * only once its sha256 matches the digest, so the cache never holds a corrupt layer.
 */
export async function fetchBlob(client: RegistryClient, repository: string, descriptor: Descriptor, progress: BlobProgress = () => {}): Promise<string> {
  const existing = await cachedBlob(descriptor.digest);
  if (existing) {
    progress({ state: 'cached', done: descriptor.size, total: descriptor.size });
    return existing;
  }
  await mkdir(downloadsDirectory(), { recursive: true });
  await mkdir(layerCacheDirectory(), { recursive: true });
  const unlock = await lockBlob(descriptor.digest);
  try {
    const raced = await cachedBlob(descriptor.digest);
    if (raced) {
      progress({ state: 'cached', done: descriptor.size, total: descriptor.size });
      return raced;
    }
    return await download(client, repository, descriptor, progress);
  } finally {
    await unlock();
  }
}

async function download(client: RegistryClient, repository: string, descriptor: Descriptor, progress: BlobProgress): Promise<string> {
  const partial = join(downloadsDirectory(), `${hexOf(descriptor.digest)}.partial`);
  const final = join(layerCacheDirectory(), hexOf(descriptor.digest));
  const scope = `repository:${repository}:pull`;
  const short = descriptor.digest.slice(0, 19);
  let failures = 0;
  let lastError: unknown;
  for (;;) {
    let offset = await stat(partial).then(
      (info) => info.size,
      () => 0,
    );
    if (offset > descriptor.size) {
      await truncate(partial, 0);
      offset = 0;
    }
    let hash = createHash('sha256');
    if (offset > 0) await hashFile(partial, hash);
    let received = offset;
    if (offset < descriptor.size) {
      progress({ state: offset > 0 ? 'resuming' : 'downloading', done: offset, total: descriptor.size });
      const response = await client.send(`/${repository}/blobs/${descriptor.digest}`, { scope, headers: offset > 0 ? { range: `bytes=${offset}-` } : {} });
      if (response.status === 404) {
        throw new TorporError('blob-unknown', `the registry has no blob ${short} of ${repository}: ${await registryErrorText(response)}`, {
          hint: 'the image is incomplete in the registry; push it again',
        });
      }
      if (response.status === 416) {
        await response.body?.cancel();
        await truncate(partial, 0);
        continue;
      }
      if (!response.ok) {
        throw new TorporError('registry-error', `fetching blob ${short} failed: ${await registryErrorText(response)}`, { hint: 'try again later' });
      }
      if (offset > 0 && response.status !== 206) {
        // The server ignored the Range and sends everything: start over rather than append a second copy.
        offset = 0;
        received = 0;
        hash = createHash('sha256');
      }
      const handle = await open(partial, offset > 0 ? 'a' : 'w');
      try {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
          received += chunk.length;
          if (received > descriptor.size) {
            await handle.close().catch(() => {});
            await rm(partial, { force: true });
            throw new TorporError('blob-digest-mismatch', `blob ${short} is larger than the ${descriptor.size} bytes the manifest says`, {
              hint: 'the registry or a proxy served the wrong content; nothing was stored',
            });
          }
          hash.update(chunk);
          await handle.write(chunk);
          progress({ state: 'downloading', done: received, total: descriptor.size });
        }
        await handle.sync();
      } catch (error) {
        if (error instanceof TorporError) throw error;
        lastError = error;
      } finally {
        await handle.close().catch(() => {});
      }
      if (received < descriptor.size) {
        // Cut off mid-blob: keep what arrived and ask for the rest.
        failures++;
        if (failures >= client.retryPolicy.attempts || (lastError && !isTransientNetworkError(lastError))) {
          throw new TorporError(
            'download-failed',
            `download of blob ${short} keeps breaking off (${received} of ${descriptor.size} bytes after ${failures} attempts)`,
            {
              hint: 'run the pull again: it resumes where it stopped',
              cause: lastError,
            },
          );
        }
        await backoff(client.retryPolicy, failures);
        continue;
      }
    }
    progress({ state: 'verifying', done: received, total: descriptor.size });
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== descriptor.digest) {
      await rm(partial, { force: true });
      throw new TorporError('blob-digest-mismatch', `blob ${short} is corrupt: its content hashes to ${actual.slice(0, 19)}`, {
        hint: 'the registry or a proxy served the wrong content; nothing was stored',
      });
    }
    await rename(partial, final);
    await syncDirectory(layerCacheDirectory());
    progress({ state: 'done', done: descriptor.size, total: descriptor.size });
    return final;
  }
}
