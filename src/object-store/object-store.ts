import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { environment } from '../config/environment.ts';
import { TorporError } from '../util/errors.ts';
import { chunkIdPattern, validateManifest } from './manifest-validation.ts';
import type { SnapshotManifest } from '../snapshot/snapshot-store.ts';

// An S3-compatible bucket as a second home for snapshot chunks. Key layout (architecture/object-store.md):
//   <prefix>/format.json              {"format":"torpor-snapshot-chunks","version":1}
//   <prefix>/chunks/<id>              a chunk file exactly as the local store has it (seekable zstd)
//   <prefix>/manifests/<name>.json    for stores without a catalog (the cluster keeps them in PostgreSQL)
// Chunks are named by the hash of their content, so every put of a key writes the same bytes: puts
// are idempotent and need no conditional request, which not every S3 implementation has.

export interface ObjectStoreOptions {
  /** e.g. http://127.0.0.1:9000; default: the SDK's (AWS S3) */
  endpoint?: string;
  region?: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  /** ENDPOINT/BUCKET/KEY instead of BUCKET.ENDPOINT/KEY (MinIO, Ceph RGW, test servers) */
  forcePathStyle?: boolean;
  /** largest object this store reads (a hostile or broken store must not fill memory); default 64 MiB */
  maxObjectBytes?: number;
}

export interface RemoteObject {
  bytes: number;
  lastModified: Date;
}

export interface RemoteChunk extends RemoteObject {
  id: string;
}

/** What a store has moved, for benchmarks and "bytes read per wake". */
export interface TransferCounters {
  requests: number;
  bytesRead: number;
  bytesWritten: number;
}

export interface ObjectStore {
  readonly url: string;
  readonly counters: TransferCounters;
  headChunk(id: string): Promise<RemoteObject | undefined>;
  putChunk(id: string, data: Uint8Array): Promise<void>;
  /** the whole chunk file; `object-missing` when absent, `object-too-large` past maxBytes */
  getChunk(id: string, options?: { maxBytes?: number; signal?: AbortSignal }): Promise<Buffer>;
  /** bytes [start, end) of a chunk file; totalBytes is the object's size. (No suffix ranges: s3rver lacks them.) */
  getChunkRange(id: string, range: { start: number; end: number }): Promise<{ data: Buffer; totalBytes: number }>;
  listChunks(): AsyncIterable<RemoteChunk>;
  deleteChunk(id: string): Promise<void>;
  putManifest(manifest: SnapshotManifest): Promise<void>;
  /** a validated manifest; `object-missing` when there is none of that name */
  getManifest(name: string): Promise<SnapshotManifest>;
  listManifestNames(): AsyncIterable<string>;
  deleteManifest(name: string): Promise<void>;
  /** checks (and on an empty prefix writes) format.json: a store laid out by another version is refused */
  ensureFormat(): Promise<void>;
  close(): void;
}

export const storeFormat = { format: 'torpor-snapshot-chunks', version: 1 } as const;
const defaultMaxObjectBytes = 64 * 1024 * 1024;
const manifestNamePattern = /^[A-Za-z0-9][A-Za-z0-9._@+=:,-]{0,199}$/;

/** `s3://bucket/some/prefix` -> bucket and a prefix that is empty or ends with `/`. */
export function parseStoreUrl(url: string): { bucket: string; prefix: string } {
  const match = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(\/.*)?$/.exec(url);
  const prefix = (match?.[2] ?? '').replace(/^\/+|\/+$/g, '');
  if (!match || prefix.split('/').some((part) => part === '..' || part === '.') || /\/\/|[\x00-\x1f\\]/.test(prefix)) {
    throw new TorporError('store-url-invalid', `${JSON.stringify(url)} is not an object store URL`, {
      hint: 'use s3://BUCKET or s3://BUCKET/PREFIX (a lowercase S3 bucket name; the endpoint comes from TORPOR_S3_ENDPOINT)',
      status: 400,
      exitCode: 2,
    });
  }
  return { bucket: match[1]!, prefix: prefix === '' ? '' : `${prefix}/` };
}

function checkChunkId(id: string): void {
  // The id becomes part of a key and of a local path: only what a hash can be.
  if (!chunkIdPattern.test(id)) throw new TorporError('chunk-id-invalid', `${JSON.stringify(id)} is not a chunk id`, { status: 400 });
}

function checkManifestName(name: string): void {
  if (!manifestNamePattern.test(name)) throw new TorporError('snapshot-name-invalid', `invalid snapshot name ${JSON.stringify(name)}`, { status: 400 });
}

/** Options from TORPOR_S3_* (the SDK's own AWS_* chain applies to whatever is not set). */
export function objectStoreOptionsFromEnvironment(): ObjectStoreOptions {
  const settings = environment();
  return {
    endpoint: settings.TORPOR_S3_ENDPOINT,
    region: settings.TORPOR_S3_REGION,
    accessKeyId: settings.TORPOR_S3_ACCESS_KEY_ID,
    secretAccessKey: settings.TORPOR_S3_SECRET_ACCESS_KEY,
    forcePathStyle: settings.TORPOR_S3_FORCE_PATH_STYLE,
  };
}

/** The store TORPOR_STORE names, or undefined when it is unset (single-host mode). */
export function objectStoreFromEnvironment(): ObjectStore | undefined {
  const url = environment().TORPOR_STORE;
  return url ? openObjectStore(url, objectStoreOptionsFromEnvironment()) : undefined;
}

export function openObjectStore(url: string, options: ObjectStoreOptions = {}): ObjectStore {
  const { bucket, prefix } = parseStoreUrl(url);
  if ((options.accessKeyId === undefined) !== (options.secretAccessKey === undefined)) {
    throw new TorporError('store-credentials-incomplete', 'an S3 access key id needs its secret access key, and the other way round', {
      hint: 'set both TORPOR_S3_ACCESS_KEY_ID and TORPOR_S3_SECRET_ACCESS_KEY, or neither (then the AWS SDK looks for credentials)',
      exitCode: 2,
    });
  }
  // The SDK warns on every process under Node 22 about its future releases; nothing a torpor user can act on.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const client = new S3Client({
    endpoint: options.endpoint,
    region: options.region ?? process.env.AWS_REGION ?? 'us-east-1',
    forcePathStyle: options.forcePathStyle ?? false,
    credentials: options.accessKeyId && options.secretAccessKey ? { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey } : undefined,
    // Newer SDKs add CRC checksums (and aws-chunked bodies) to every request by default; Ceph RGW,
    // older MinIO and R2 handle them unevenly. Chunks carry their own checksums (hash id, zstd, seek table).
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 4,
  });
  const maxObjectBytes = options.maxObjectBytes ?? defaultMaxObjectBytes;
  const counters: TransferCounters = { requests: 0, bytesRead: 0, bytesWritten: 0 };
  const chunkKey = (id: string) => `${prefix}chunks/${id}`;
  const manifestKey = (name: string) => `${prefix}manifests/${name}.json`;
  const where = `s3://${bucket}/${prefix}`;
  let formatChecked = false;

  async function send<T>(command: object, what: string, signal?: AbortSignal): Promise<T> {
    counters.requests++;
    try {
      return (await client.send(command as never, { abortSignal: signal })) as T;
    } catch (error) {
      throw storeError(error, what, where);
    }
  }

  async function head(key: string, what: string): Promise<RemoteObject | undefined> {
    try {
      const answer = await send<{ ContentLength?: number; LastModified?: Date }>(new HeadObjectCommand({ Bucket: bucket, Key: key }), what);
      return { bytes: answer.ContentLength ?? 0, lastModified: answer.LastModified ?? new Date(0) };
    } catch (error) {
      if (error instanceof TorporError && error.code === 'object-missing') return undefined;
      throw error;
    }
  }

  async function get(key: string, what: string, maxBytes: number, range?: string, signal?: AbortSignal): Promise<{ data: Buffer; totalBytes: number }> {
    const answer = await send<{ Body?: AsyncIterable<Uint8Array> & { destroy?(): void }; ContentLength?: number; ContentRange?: string }>(
      new GetObjectCommand({ Bucket: bucket, Key: key, Range: range }),
      what,
      signal,
    );
    const tooLarge = () =>
      new TorporError('object-too-large', `${what} in ${where} is larger than ${maxBytes} bytes`, {
        hint: 'the object store holds something torpor did not write there (or a damaged object): check the bucket and prefix',
      });
    if ((answer.ContentLength ?? 0) > maxBytes) {
      answer.Body?.destroy?.();
      throw tooLarge();
    }
    const parts: Buffer[] = [];
    let length = 0;
    try {
      for await (const part of answer.Body ?? []) {
        length += part.length;
        // The header may lie or be absent (chunked transfer): count what actually arrives.
        if (length > maxBytes) {
          answer.Body?.destroy?.();
          throw tooLarge();
        }
        parts.push(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
      }
    } catch (error) {
      if (error instanceof TorporError) throw error;
      throw storeError(error, what, where);
    }
    counters.bytesRead += length;
    const total = /\/(\d+)$/.exec(answer.ContentRange ?? '');
    return { data: Buffer.concat(parts, length), totalBytes: total ? Number(total[1]) : length };
  }

  async function* list(keyPrefix: string, what: string): AsyncIterable<{ key: string; bytes: number; lastModified: Date }> {
    let token: string | undefined;
    do {
      const page = await send<{ Contents?: { Key?: string; Size?: number; LastModified?: Date }[]; IsTruncated?: boolean; NextContinuationToken?: string }>(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: keyPrefix, ContinuationToken: token }),
        what,
      );
      for (const item of page.Contents ?? []) {
        if (item.Key) yield { key: item.Key, bytes: item.Size ?? 0, lastModified: item.LastModified ?? new Date(0) };
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
  }

  async function put(key: string, body: Uint8Array, what: string, contentType: string): Promise<void> {
    await send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length, ContentType: contentType }), what);
    counters.bytesWritten += body.length;
  }

  return {
    url: where,
    counters,
    async headChunk(id) {
      checkChunkId(id);
      return head(chunkKey(id), `chunk ${id}`);
    },
    async putChunk(id, data) {
      checkChunkId(id);
      await put(chunkKey(id), data, `chunk ${id}`, 'application/zstd');
    },
    async getChunk(id, options = {}) {
      checkChunkId(id);
      return (await get(chunkKey(id), `chunk ${id}`, Math.min(options.maxBytes ?? maxObjectBytes, maxObjectBytes), undefined, options.signal)).data;
    },
    async getChunkRange(id, range) {
      checkChunkId(id);
      if (!(Number.isSafeInteger(range.start) && Number.isSafeInteger(range.end) && range.start >= 0 && range.end > range.start)) {
        throw new TorporError('range-invalid', `range ${range.start}-${range.end} of chunk ${id} is empty or negative`);
      }
      // A server that ignores Range answers with the whole object: the size limit refuses it.
      return get(chunkKey(id), `chunk ${id}`, range.end - range.start, `bytes=${range.start}-${range.end - 1}`);
    },
    async *listChunks() {
      for await (const item of list(`${prefix}chunks/`, 'chunk listing')) {
        const id = item.key.slice(`${prefix}chunks/`.length);
        // Anything else under chunks/ is not ours to touch (nor to delete in gc).
        if (chunkIdPattern.test(id)) yield { id, bytes: item.bytes, lastModified: item.lastModified };
      }
    },
    async deleteChunk(id) {
      checkChunkId(id);
      await send(new DeleteObjectCommand({ Bucket: bucket, Key: chunkKey(id) }), `chunk ${id}`);
    },
    async putManifest(manifest) {
      validateManifest(manifest);
      await put(manifestKey(manifest.name), Buffer.from(JSON.stringify(manifest) + '\n'), `manifest ${manifest.name}`, 'application/json');
    },
    async getManifest(name) {
      checkManifestName(name);
      const { data } = await get(manifestKey(name), `manifest ${name}`, 16 * 1024 * 1024);
      let parsed: unknown;
      try {
        parsed = JSON.parse(data.toString('utf8'));
      } catch {
        throw new TorporError('manifest-invalid', `manifest ${name} in ${where} is not JSON`, { hint: 'the object was damaged or not written by torpor' });
      }
      const manifest = validateManifest(parsed);
      if (manifest.name !== name) throw new TorporError('manifest-invalid', `manifest ${name} in ${where} names another snapshot (${manifest.name})`);
      return manifest;
    },
    async *listManifestNames() {
      for await (const item of list(`${prefix}manifests/`, 'manifest listing')) {
        const file = item.key.slice(`${prefix}manifests/`.length);
        if (file.endsWith('.json') && manifestNamePattern.test(file.slice(0, -5))) yield file.slice(0, -5);
      }
    },
    async deleteManifest(name) {
      checkManifestName(name);
      await send(new DeleteObjectCommand({ Bucket: bucket, Key: manifestKey(name) }), `manifest ${name}`);
    },
    async ensureFormat() {
      if (formatChecked) return;
      const key = `${prefix}format.json`;
      let found: unknown;
      try {
        found = JSON.parse((await get(key, 'format.json', 4096)).data.toString('utf8'));
      } catch (error) {
        if (!(error instanceof TorporError && error.code === 'object-missing')) {
          if (error instanceof TorporError) throw error;
          found = null;
        }
      }
      if (found === undefined) {
        await put(key, Buffer.from(JSON.stringify(storeFormat) + '\n'), 'format.json', 'application/json');
      } else {
        const format = found as { format?: unknown; version?: unknown } | null;
        if (format?.format !== storeFormat.format || format.version !== storeFormat.version) {
          throw new TorporError('store-format-unknown', `${where} holds data in a layout this torpor does not read (${JSON.stringify(found)})`, {
            hint: `use another prefix, or a torpor that reads format ${JSON.stringify(format?.version)}; see architecture/object-store.md`,
          });
        }
      }
      formatChecked = true;
    },
    close() {
      client.destroy();
    },
  };
}

/** SDK and network errors as TorporErrors a user can act on. */
export function storeError(error: unknown, what: string, where: string): TorporError {
  if (error instanceof TorporError) return error;
  const name = (error as { name?: string }).name ?? '';
  const status = error instanceof S3ServiceException ? error.$metadata.httpStatusCode : (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  if (name === 'AbortError') return new TorporError('aborted', `reading ${what} from ${where} was cancelled`, { cause: error });
  if (name === 'NoSuchKey' || name === 'NotFound' || (status === 404 && name !== 'NoSuchBucket')) {
    return new TorporError('object-missing', `${what} is not in ${where}`, {
      hint: 'the object store lost it or it was never uploaded: push the snapshot again from a node that has it',
      status: 404,
      cause: error,
    });
  }
  if (name === 'NoSuchBucket') {
    return new TorporError('store-bucket-missing', `the bucket of ${where} does not exist`, { hint: 'create the bucket, or fix TORPOR_STORE', cause: error });
  }
  if (['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'AccessDenied', 'Forbidden', 'InvalidToken', 'ExpiredToken'].includes(name) || status === 403 || status === 401) {
    return new TorporError('store-access-denied', `the object store ${where} refused the credentials (${name || status})`, {
      hint: 'check TORPOR_S3_ACCESS_KEY_ID and TORPOR_S3_SECRET_ACCESS_KEY (or AWS_*), TORPOR_S3_REGION, and that the key may read and write the bucket',
      cause: error,
    });
  }
  const code = (error as { code?: string }).code;
  if (code === 'ECONNREFUSED' || code === 'ENOTFOUND' || code === 'ETIMEDOUT' || code === 'ECONNRESET' || name === 'TimeoutError') {
    return new TorporError('store-unreachable', `cannot reach the object store ${where} (${code ?? name})`, {
      hint: 'check TORPOR_S3_ENDPOINT and the network; the local snapshot store still works',
      cause: error,
    });
  }
  return new TorporError('store-failed', `the object store ${where} failed on ${what}: ${(error as Error).message ?? String(error)}`, { cause: error });
}
