import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { createGunzip } from 'node:zlib';
import { PassThrough, type Readable } from 'node:stream';
import { DecompressStream } from 'zstd-napi';
import { TorporError } from '../../util/errors.ts';

export type Compression = 'none' | 'gzip' | 'zstd';

/** Recognizes a compressed stream by its first bytes, as GNU tar and containerd do, whatever the file is named. */
export function compressionOf(head: Buffer): Compression | 'xz' | 'bzip2' {
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.readUInt32LE(0) === 0xfd2fb528 && head.length >= 4) return 'zstd';
  if (head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
  if (head.subarray(0, 3).toString('latin1') === 'BZh') return 'bzip2';
  return 'none';
}

export async function detectFileCompression(path: string): Promise<Compression> {
  const handle = await open(path, 'r');
  const head = Buffer.alloc(8);
  try {
    await handle.read(head, 0, 8, 0);
  } finally {
    await handle.close();
  }
  const compression = compressionOf(head);
  if (compression === 'xz' || compression === 'bzip2') {
    throw new TorporError('compression-unsupported', `${path} is ${compression}-compressed, which torpor does not read`, {
      hint: `decompress it first (for example \`${compression === 'xz' ? 'xz' : 'bzip2'} -d ${path}\`) and import the plain tar`,
    });
  }
  return compression;
}

export function decompressor(compression: Compression): NodeJS.ReadWriteStream & Readable {
  if (compression === 'gzip') return createGunzip({ chunkSize: 256 * 1024 });
  if (compression === 'zstd') return new DecompressStream();
  return new PassThrough({ highWaterMark: 256 * 1024 });
}

/** The uncompressed bytes of a (possibly compressed) tar file; stream errors surface on the returned stream. */
export async function openDecompressed(path: string): Promise<Readable> {
  const compression = await detectFileCompression(path);
  const source = createReadStream(path, { highWaterMark: 256 * 1024 });
  const output = decompressor(compression);
  source.on('error', (error) => output.destroy(error));
  output.on('close', () => source.destroy());
  return source.pipe(output);
}
