import { createHash } from 'node:crypto';
import { chmod, chown, copyFile, link, mkdir, readFile, rm, symlink, writeFile, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import { runCommand } from '../../../util/command.ts';
import { mediaTypes } from '../oci-image.ts';

// Test images built from scratch with GNU tar and hand-written JSON: no network, no docker.

export type FixtureCompression = 'none' | 'gzip' | 'zstd';

const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

async function put(root: string, path: string, content: string, mode = 0o644, owner: [number, number] = [0, 0]): Promise<void> {
  await mkdir(dirname(join(root, path)), { recursive: true });
  await writeFile(join(root, path), content);
  await chown(join(root, path), owner[0], owner[1]);
  await chmod(join(root, path), mode);
}

/**
 * Three layers that exercise what an importer must get right: whiteouts, an opaque directory, a
 * directory replaced by a file, hard links, absolute and relative symlinks, setuid, owner
 * 1000:1000, an xattr, a device node and a fifo.
 */
export async function writeFixtureLayerTrees(workDirectory: string): Promise<string[]> {
  const first = join(workDirectory, 'tree-1');
  const second = join(workDirectory, 'tree-2');
  const third = join(workDirectory, 'tree-3');
  await put(first, 'etc/hostname', 'first\n');
  await put(first, 'etc/removed', 'whited out by layer 2\n');
  await put(first, 'opaque/old', 'hidden by the opaque marker\n');
  await put(first, 'opaque/sub/older', 'also hidden\n');
  await put(first, 'home/user/notes.txt', 'owned by 1000\n', 0o640, [1000, 1000]);
  await chown(join(first, 'home/user'), 1000, 1000);
  await chmod(join(first, 'home/user'), 0o750);
  await put(first, 'usr/bin/tool', '#!/bin/sh\necho tool\n', 0o4755);
  await link(join(first, 'usr/bin/tool'), join(first, 'usr/bin/tool-hardlink'));
  await symlink('/usr/bin/tool', join(first, 'usr/bin/tool-absolute'));
  await put(first, 'data/with-xattr', 'has user.test\n');
  await runCommand('setfattr', ['-n', 'user.test', '-v', 'hello-xattr', join(first, 'data/with-xattr')]);
  await put(first, 'replaced/inner', 'directory replaced by a file in layer 2\n');
  await mkdir(join(first, 'tmp'), { recursive: true });
  await chmod(join(first, 'tmp'), 0o1777);
  await mkdir(join(first, 'dev'));
  await runCommand('mknod', ['-m', '666', join(first, 'dev/null'), 'c', '1', '3']);
  await runCommand('mkfifo', ['-m', '600', join(first, 'dev/fifo')]);

  await put(second, 'etc/hostname', 'second\n');
  await put(second, 'etc/.wh.removed', '');
  await put(second, 'opaque/.wh..wh..opq', '');
  await put(second, 'opaque/new', 'written by layer 2\n');
  await put(second, 'replaced', 'now a file\n', 0o600);
  await mkdir(join(second, 'usr/bin'), { recursive: true });
  await symlink('tool', join(second, 'usr/bin/tool-relative'));
  await put(second, 'home/user/.wh.does-not-exist', '');

  await put(third, 'var/log/app.log', 'layer 3\n', 0o644, [1000, 1000]);
  await link(join(third, 'var/log/app.log'), join(third, 'var/log/app.log.1'));
  return [first, second, third];
}

/** A tar of a directory by GNU tar, with xattrs and numeric owners, optionally compressed. */
export async function tarDirectory(directory: string, output: string, compression: FixtureCompression = 'none'): Promise<{ path: string; diffId: string }> {
  const plain = compression === 'none' ? output : `${output}.plain`;
  await runCommand('tar', [
    '--create',
    `--file=${plain}`,
    `--directory=${directory}`,
    '--format=posix',
    '--xattrs',
    '--xattrs-include=*',
    '--numeric-owner',
    '--sort=name',
    '--pax-option=delete=atime,delete=ctime',
    '.',
  ]);
  const bytes = await readFile(plain);
  if (compression !== 'none') {
    await writeFile(output, compression === 'gzip' ? gzipSync(bytes) : zstdCompress(bytes));
    await rm(plain);
  }
  return { path: output, diffId: sha256(bytes) };
}

export interface FixtureImage {
  /** Layer tars (already compressed as their media type says) with their uncompressed digests. */
  layers: Array<{ path: string; diffId: string; compression: FixtureCompression }>;
  architecture?: string;
  config?: Record<string, unknown>;
}

export const fixtureRuntimeConfig = {
  Entrypoint: ['/usr/bin/tool'],
  Cmd: ['--serve'],
  Env: ['PATH=/usr/bin:/bin', 'MODE=test'],
  WorkingDir: '/home/user',
  User: '1000:1000',
  ExposedPorts: { '8080/tcp': {}, '53/udp': {} },
};

const layerMediaType = (compression: FixtureCompression) =>
  compression === 'none' ? 'application/vnd.oci.image.layer.v1.tar' : `application/vnd.oci.image.layer.v1.tar+${compression}`;

async function writeBlob(layout: string, data: Buffer): Promise<{ digest: string; size: number }> {
  const digest = sha256(data);
  await mkdir(join(layout, 'blobs/sha256'), { recursive: true });
  await writeFile(join(layout, 'blobs/sha256', digest.slice(7)), data);
  return { digest, size: data.length };
}

async function writeImageManifest(layout: string, image: FixtureImage): Promise<{ digest: string; size: number }> {
  const config = Buffer.from(
    JSON.stringify({
      architecture: image.architecture ?? 'amd64',
      os: 'linux',
      config: image.config ?? fixtureRuntimeConfig,
      rootfs: { type: 'layers', diff_ids: image.layers.map((layer) => layer.diffId) },
    }),
  );
  const configBlob = await writeBlob(layout, config);
  const layers = [];
  for (const layer of image.layers) {
    const blob = await writeBlob(layout, await readFile(layer.path));
    layers.push({ mediaType: layerMediaType(layer.compression), ...blob });
  }
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: mediaTypes.ociManifest,
      config: { mediaType: mediaTypes.ociConfig, ...configBlob },
      layers,
    }),
  );
  return writeBlob(layout, manifest);
}

/**
 * An OCI image layout: one image, or (several images) an index of per-architecture manifests,
 * tagged `tag` through index.json as skopeo and umoci expect.
 */
export async function writeOciLayout(layout: string, images: FixtureImage[], tag = 'latest'): Promise<void> {
  await mkdir(layout, { recursive: true });
  await writeFile(join(layout, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const refName = { 'org.opencontainers.image.ref.name': tag };
  let top;
  if (images.length === 1) {
    top = { mediaType: mediaTypes.ociManifest, ...(await writeImageManifest(layout, images[0]!)), annotations: refName };
  } else {
    const manifests = [];
    for (const image of images) {
      manifests.push({
        mediaType: mediaTypes.ociManifest,
        ...(await writeImageManifest(layout, image)),
        platform: { os: 'linux', architecture: image.architecture ?? 'amd64' },
      });
    }
    const index = await writeBlob(layout, Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: mediaTypes.ociIndex, manifests })));
    top = { mediaType: mediaTypes.ociIndex, ...index, annotations: refName };
  }
  await writeFile(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, mediaType: mediaTypes.ociIndex, manifests: [top] }));
}

/** A `docker save` archive directory in the classic layout (<id>/layer.tar, <id>.json, manifest.json). */
export async function writeDockerArchive(directory: string, image: FixtureImage, repoTag = 'fixture:latest'): Promise<void> {
  await mkdir(directory, { recursive: true });
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: image.config ?? fixtureRuntimeConfig,
      rootfs: { type: 'layers', diff_ids: image.layers.map((layer) => layer.diffId) },
    }),
  );
  const configName = `${sha256(config).slice(7)}.json`;
  await writeFile(join(directory, configName), config);
  const layerNames = [];
  for (const layer of image.layers) {
    const name = `${layer.diffId.slice(7, 71)}/layer.tar`;
    await mkdir(join(directory, dirname(name)), { recursive: true });
    await copyFile(layer.path, join(directory, name));
    layerNames.push(name);
  }
  await writeFile(join(directory, 'manifest.json'), JSON.stringify([{ Config: configName, RepoTags: [repoTag], Layers: layerNames }]));
  await writeFile(join(directory, 'repositories'), '{}');
}

export async function tarOf(directory: string, output: string): Promise<string> {
  await runCommand('tar', ['--create', `--file=${output}`, `--directory=${directory}`, '.']);
  return output;
}

/** A tar written header by header, for archives GNU tar refuses to create (escaping paths). */
export function handWrittenTar(
  entries: Array<{ name: string; type?: 'file' | 'directory' | 'symlink' | 'hardlink'; content?: string; linkTarget?: string; mode?: number }>,
): Buffer {
  const blocks: Buffer[] = [];
  const octal = (value: number, length: number) => value.toString(8).padStart(length - 1, '0') + '\0';
  for (const entry of entries) {
    const header = Buffer.alloc(512);
    const content = Buffer.from(entry.content ?? '');
    const flag = { file: '0', directory: '5', symlink: '2', hardlink: '1' }[entry.type ?? 'file'];
    header.write(entry.name, 0, 100, 'utf8');
    header.write(octal(entry.mode ?? (entry.type === 'directory' ? 0o755 : 0o644), 8), 100, 'ascii');
    header.write(octal(0, 8), 108, 'ascii');
    header.write(octal(0, 8), 116, 'ascii');
    header.write(octal(entry.type === 'file' || !entry.type ? content.length : 0, 12), 124, 'ascii');
    header.write(octal(0, 12), 136, 'ascii');
    header.write(flag, 156, 'ascii');
    header.write(entry.linkTarget ?? '', 157, 100, 'utf8');
    header.write('ustar\u000000', 257, 'latin1');
    header.fill(32, 148, 156);
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(octal(sum, 7) + ' ', 148, 'ascii');
    blocks.push(header);
    if (content.length) blocks.push(content, Buffer.alloc((512 - (content.length % 512)) % 512));
  }
  blocks.push(Buffer.alloc(1024));
  return Buffer.concat(blocks);
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
