import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile, realpath, stat } from 'node:fs/promises';
import { join, relative, isAbsolute } from 'node:path';
import { TorporError, isNodeError } from '../../util/errors.ts';
import type { ImageConfig } from '../image-config.ts';
import type { LayerSource } from './apply-layer.ts';
import { openDecompressed } from './compression.ts';
import {
  assertDigest,
  imageConfigFromOci,
  isIndex,
  parseManifest,
  selectPlatform,
  type Descriptor,
  type ImageIndex,
  type OciImageConfig,
} from './oci-image.ts';

/** An image read from disk (OCI layout or docker save): its layers in order and its run-time config. */
export interface LayeredImage {
  config: ImageConfig;
  layers: LayerSource[];
  /** Where it came from, for the store's SOURCE column. */
  source: string;
}

/**
 * A file inside an unpacked image archive, refused when it is a symlink or resolves outside the
 * archive: a crafted archive must not make torpor read host files as layers.
 */
export async function archiveFile(directory: string, name: string): Promise<string> {
  if (isAbsolute(name) || name.split('/').includes('..')) {
    throw new TorporError('image-invalid', `the archive refers to ${JSON.stringify(name)}, outside itself`, { hint: 'the archive is malformed or malicious' });
  }
  const path = join(directory, name);
  let real: string;
  try {
    // `docker save` links a layer that appears twice to its first copy; a link is followed only
    // when it resolves to a regular file inside the archive.
    real = await realpath(path);
    const inside = relative(await realpath(directory), real);
    const info = await stat(real);
    if (!info.isFile() || inside === '' || inside.startsWith('..') || isAbsolute(inside)) throw new Error('not a regular file inside the archive');
  } catch (error) {
    const missing = isNodeError(error, 'ENOENT');
    throw new TorporError('image-invalid', `the archive's ${name} is ${missing ? 'missing' : 'not a regular file inside the archive'}`, {
      hint: missing ? 'the archive is incomplete; export it again' : 'the archive is malformed or malicious',
    });
  }
  return real;
}

export async function readJsonFile<T>(path: string, what: string): Promise<T> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T;
  } catch (error) {
    throw new TorporError('image-invalid', `${what} is not valid JSON: ${(error as Error).message}`, { hint: 'the archive is malformed' });
  }
}

export async function sha256OfFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 1024 * 1024 })) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

async function blob(layout: string, descriptor: Descriptor, what: string): Promise<string> {
  assertDigest(descriptor.digest, what);
  const path = await archiveFile(layout, `blobs/sha256/${descriptor.digest.slice('sha256:'.length)}`);
  const actual = await sha256OfFile(path);
  if (actual !== descriptor.digest) {
    throw new TorporError('blob-digest-mismatch', `${what} ${descriptor.digest} is corrupt (its content hashes to ${actual})`, {
      hint: 'the image layout is damaged; export it again',
    });
  }
  return path;
}

export function fileLayer(path: string, description: string, diffId: string | undefined): LayerSource {
  return { description, diffId, open: () => openDecompressed(path) };
}

const shortDigest = (digest: string) => digest.slice(0, 19);

/** Reads an OCI image layout directory (oci-layout, index.json, blobs/sha256/…), choosing linux/amd64 from an index. */
export async function readOciLayout(layout: string, sourceName: string): Promise<LayeredImage> {
  const marker = await readJsonFile<{ imageLayoutVersion?: string }>(await archiveFile(layout, 'oci-layout'), 'oci-layout');
  if (!marker.imageLayoutVersion) throw new TorporError('image-invalid', 'oci-layout has no imageLayoutVersion', { hint: 'the layout is malformed' });
  let document = await readJsonFile<ImageIndex>(await archiveFile(layout, 'index.json'), 'index.json');
  let descriptor: Descriptor | undefined;
  // An index may name one image, several platforms, or another index; walk down to one manifest.
  for (let depth = 0; depth < 4; depth++) {
    const manifests = document.manifests ?? [];
    if (manifests.length === 0) throw new TorporError('image-invalid', 'the OCI layout holds no image', { hint: 'export the image again' });
    descriptor = manifests.length === 1 && !manifests[0]!.platform ? manifests[0]! : selectPlatform(document, 'the OCI layout');
    const body = await readJsonFile<ImageIndex & { config?: unknown }>(await blob(layout, descriptor, 'manifest'), `manifest ${descriptor.digest}`);
    if (!isIndex(body, descriptor.mediaType)) {
      return readOciManifest(layout, body, descriptor, sourceName);
    }
    document = body;
  }
  throw new TorporError('image-invalid', 'the OCI layout nests indexes too deeply', { hint: 'the layout is malformed' });
}

async function readOciManifest(layout: string, body: unknown, descriptor: Descriptor, sourceName: string): Promise<LayeredImage> {
  const manifest = parseManifest(body, `manifest ${descriptor.digest}`);
  const config = await readJsonFile<OciImageConfig>(await blob(layout, manifest.config, 'image config'), 'the image config');
  const diffIds = config.rootfs?.diff_ids ?? [];
  for (const diffId of diffIds) assertDigest(diffId, "the image config's diff_ids");
  const layers: LayerSource[] = [];
  for (const [index, layer] of manifest.layers.entries()) {
    const path = await blob(layout, layer, `layer ${index + 1}`);
    layers.push(fileLayer(path, `layer ${index + 1}/${manifest.layers.length} (${shortDigest(layer.digest)})`, diffIds[index]));
  }
  return { config: imageConfigFromOci(config), layers, source: `oci:${sourceName}@${descriptor.digest}` };
}

interface DockerArchiveEntry {
  Config: string;
  RepoTags?: string[] | null;
  Layers: string[];
}

/** Reads a `docker save` archive (manifest.json, a config json and one tar per layer), unpacked. */
export async function readDockerArchive(directory: string, sourceName: string): Promise<LayeredImage> {
  const entries = await readJsonFile<DockerArchiveEntry[]>(await archiveFile(directory, 'manifest.json'), 'manifest.json');
  if (!Array.isArray(entries) || entries.length === 0 || !entries[0]!.Config || !Array.isArray(entries[0]!.Layers)) {
    throw new TorporError('image-invalid', 'manifest.json of the docker archive lists no image', {
      hint: 'create the archive with `docker save IMAGE -o FILE.tar`',
    });
  }
  if (entries.length > 1) {
    throw new TorporError(
      'image-ambiguous',
      `the docker archive holds ${entries.length} images (${entries.map((entry) => entry.RepoTags?.[0] ?? entry.Config).join(', ')})`,
      {
        hint: 'save one image per archive: `docker save IMAGE -o FILE.tar`',
      },
    );
  }
  const entry = entries[0]!;
  const config = await readJsonFile<OciImageConfig>(await archiveFile(directory, entry.Config), 'the image config');
  const diffIds = config.rootfs?.diff_ids ?? [];
  for (const diffId of diffIds) assertDigest(diffId, "the image config's diff_ids");
  if (diffIds.length !== entry.Layers.length) {
    throw new TorporError('image-invalid', `the docker archive lists ${entry.Layers.length} layers but its config has ${diffIds.length} diff_ids`, {
      hint: 'the archive is malformed',
    });
  }
  const layers: LayerSource[] = [];
  for (const [index, name] of entry.Layers.entries()) {
    layers.push(fileLayer(await archiveFile(directory, name), `layer ${index + 1}/${entry.Layers.length} (${shortDigest(diffIds[index]!)})`, diffIds[index]));
  }
  return { config: imageConfigFromOci(config), layers, source: `docker-archive:${entry.RepoTags?.[0] ?? sourceName}` };
}
