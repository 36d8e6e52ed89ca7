import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { ContextLogError, StorageUnavailableError } from './errors.ts';

/** A reference to content-addressed bytes; what a log row holds in place of an oversized entry. */
export interface BlobReference {
  digest: string;
  size: number;
}

export interface BlobStore {
  /** Stores the bytes durably (they survive a crash once this resolves) and returns their address. */
  put(bytes: Uint8Array): Promise<BlobReference>;
  get(reference: BlobReference): Promise<Uint8Array>;
}

export class MissingBlobError extends ContextLogError {
  constructor(digest: string) {
    super('missing-blob', 500, `Blob ${digest} referenced by the log is missing from the blob store; restore the blob directory from backup.`, { digest });
  }
}

export function blobDigest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

const digestPattern = /^sha256:[0-9a-f]{64}$/;

/**
 * Blobs as files named by their SHA-256, fanned out by the first two hex digits. A blob is written
 * to a temporary file, fsynced, renamed into place and the directory fsynced: a crash leaves either
 * no blob or the whole blob, never a torn one, and same content is stored once.
 */
export class FileBlobStore implements BlobStore {
  readonly directory: string;

  constructor(directory: string) {
    this.directory = directory;
  }

  private pathOf(digest: string): string {
    if (!digestPattern.test(digest)) throw new StorageUnavailableError(`malformed blob digest ${JSON.stringify(digest)}`);
    const hex = digest.slice('sha256:'.length);
    return join(this.directory, 'sha256', hex.slice(0, 2), hex);
  }

  async put(bytes: Uint8Array): Promise<BlobReference> {
    const digest = blobDigest(bytes);
    const path = this.pathOf(digest);
    const existing = await stat(path).catch(() => undefined);
    if (existing?.size === bytes.byteLength) return { digest, size: bytes.byteLength };
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    const handle = await open(temporary, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600);
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } finally {
      await handle.close();
    }
    try {
      await rename(temporary, path);
    } catch (error) {
      await rm(temporary, { force: true });
      throw error;
    }
    const directoryHandle = await open(dirname(path), constants.O_RDONLY);
    try {
      await directoryHandle.sync();
    } finally {
      await directoryHandle.close();
    }
    return { digest, size: bytes.byteLength };
  }

  async get(reference: BlobReference): Promise<Uint8Array> {
    let bytes: Buffer;
    try {
      bytes = await readFile(this.pathOf(reference.digest));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') throw new MissingBlobError(reference.digest);
      throw error;
    }
    // Verify on read: a blob is the only copy of an entry, so silent corruption must surface.
    if (blobDigest(bytes) !== reference.digest) {
      throw new StorageUnavailableError(`blob ${reference.digest} is corrupt (its content no longer matches its digest)`);
    }
    return bytes;
  }
}
