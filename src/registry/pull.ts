import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { resolveImage } from '../image/image-store.ts';
import type { ImageRecord } from '../image/image-config.ts';
import { importLayers } from '../image/import/import-image.ts';
import { fileLayer } from '../image/import/image-layout.ts';
import { importLimits, limitExceeded, type ImportLimits } from '../image/import/import-limits.ts';
import {
  assertDigest,
  imageConfigFromOci,
  isIndex,
  layerCompressionOf,
  manifestMediaTypes,
  indexMediaTypes,
  parseManifest,
  selectPlatform,
  type Descriptor,
  type ImageManifest,
  type OciImageConfig,
} from '../image/import/oci-image.ts';
import { TorporError } from '../util/errors.ts';
import type { Progress } from '../util/progress.ts';
import { fetchBlob } from './blob-cache.ts';
import { findCredentials } from './credentials.ts';
import { type PullReporter, silentReporter } from './pull-progress.ts';
import { canonicalName, familiarName, parseReference, type ImageReference } from './reference.ts';
import { RegistryClient, registryErrorText, type RetryPolicy } from './registry-client.ts';

export interface PullOptions {
  insecure?: boolean;
  /** The store name; by default docker's short form (alpine:latest, localhost:5000/app:1). */
  name?: string;
  reporter?: PullReporter;
  retry?: RetryPolicy;
  /** Size limits for the layers (defaults and TORPOR_MAX_LAYER_BYTES, TORPOR_MAX_LAYER_MEMBERS and TORPOR_MAX_IMAGE_BYTES environment variables otherwise). */
  limits?: Partial<ImportLimits>;
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const PARALLEL_DOWNLOADS = 3;

interface FetchedManifest {
  digest: string;
  mediaType: string;
  body: unknown;
}

async function fetchManifest(client: RegistryClient, reference: ImageReference, tagOrDigest: string): Promise<FetchedManifest> {
  const response = await client.send(`/${reference.repository}/manifests/${tagOrDigest}`, {
    scope: `repository:${reference.repository}:pull`,
    headers: { accept: [...manifestMediaTypes, ...indexMediaTypes].join(', ') },
  });
  const name = `${reference.registry}/${reference.repository}${tagOrDigest.startsWith('sha256:') ? '@' : ':'}${tagOrDigest}`;
  if (response.status === 404) {
    throw new TorporError('image-not-found', `${name} not found (${await registryErrorText(response)})`, {
      hint: 'check the repository name and tag; a private repository needs `torpor login` first',
    });
  }
  if (!response.ok) {
    throw new TorporError('registry-error', `fetching the manifest of ${name} failed: ${await registryErrorText(response)}`, { hint: 'try again later' });
  }
  const bytes = Buffer.from(await response.arrayBuffer());
  if (bytes.length > MAX_MANIFEST_BYTES)
    throw new TorporError('image-invalid', `the manifest of ${name} is implausibly large (${bytes.length} bytes)`, { hint: 'the registry is misbehaving' });
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  // A pinned digest is only worth something if what arrived hashes to it.
  const expected = tagOrDigest.startsWith('sha256:') ? tagOrDigest : response.headers.get('docker-content-digest');
  if (expected && expected.startsWith('sha256:') && expected !== digest) {
    throw new TorporError('manifest-digest-mismatch', `the manifest of ${name} hashes to ${digest}, not ${expected}`, {
      hint: 'the registry or a proxy served the wrong content; nothing was stored',
    });
  }
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new TorporError('image-invalid', `the manifest of ${name} is not JSON`, { hint: 'the registry is misbehaving' });
  }
  const mediaType = (body as { mediaType?: string }).mediaType ?? response.headers.get('content-type')?.split(';')[0] ?? '';
  return { digest, mediaType, body };
}

async function mapLimited<T, R>(items: T[], limit: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const index = next++;
      try {
        results[index] = await work(items[index]!, index);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * `torpor pull REF`: resolves the reference to one linux/amd64 manifest, downloads the config and
 * layers into the verified blob cache (identical layers are fetched and kept once), applies the
 * layers and stores the image under its short name.
 */
export async function pullImage(text: string, options: PullOptions = {}): Promise<ImageRecord & { reference: string }> {
  const reference = parseReference(text);
  const reporter = options.reporter ?? silentReporter;
  const client = new RegistryClient(reference.registry, {
    insecure: options.insecure,
    credentials: await findCredentials(reference.registry),
    retry: options.retry,
  });
  reporter.step(`pulling ${canonicalName(reference)}`);
  let manifest = await fetchManifest(client, reference, reference.digest ?? reference.tag!);
  if (isIndex(manifest.body as { mediaType?: string }, manifest.mediaType)) {
    const chosen: Descriptor = selectPlatform(manifest.body as { schemaVersion: number; manifests: Descriptor[] }, canonicalName(reference));
    reporter.step(`platform linux/amd64: ${chosen.digest}`);
    manifest = await fetchManifest(client, reference, chosen.digest);
    if (isIndex(manifest.body as { mediaType?: string }, manifest.mediaType)) {
      throw new TorporError('image-invalid', `${canonicalName(reference)}: an index points at another index`, { hint: 'the image is malformed' });
    }
  }
  const image: ImageManifest = parseManifest(manifest.body, `manifest ${manifest.digest}`);
  for (const layer of image.layers) {
    if (!layerCompressionOf(layer.mediaType ?? '')) {
      throw new TorporError('layer-unsupported', `layer ${layer.digest.slice(0, 19)} has media type ${layer.mediaType}, which torpor cannot unpack`, {
        hint: 'only tar layers (plain, gzip or zstd) are supported; encrypted and foreign layers are not',
      });
    }
  }
  const configPath = await fetchBlob(client, reference.repository, image.config);
  const config = JSON.parse(await readFile(configPath, 'utf8')) as OciImageConfig;
  const runtimeConfig = imageConfigFromOci(config);
  const diffIds = config.rootfs?.diff_ids ?? [];
  for (const diffId of diffIds) assertDigest(diffId, `${canonicalName(reference)}: the image config's diff_ids`);
  if (diffIds.length !== image.layers.length) {
    throw new TorporError('image-invalid', `the image has ${image.layers.length} layers but its config lists ${diffIds.length} diff_ids`, {
      hint: 'the image is malformed',
    });
  }
  const total = image.layers.reduce((sum, layer) => sum + layer.size, 0);
  // Compressed bytes never exceed what they expand to: a manifest over the image limit is refused before any download.
  const limits = importLimits(options.limits);
  if (!Number.isSafeInteger(total) || image.layers.some((layer) => !Number.isSafeInteger(layer.size) || layer.size < 0)) {
    throw new TorporError('image-invalid', `${canonicalName(reference)}: the manifest gives impossible layer sizes`, {
      hint: 'the image metadata is malformed or malicious',
    });
  }
  if (total > limits.maxImageBytes)
    throw limitExceeded(`${canonicalName(reference)}: the compressed layers (${total} bytes)`, 'maxImageBytes', limits.maxImageBytes);
  reporter.step(`${image.layers.length} layer${image.layers.length === 1 ? '' : 's'}, ${(total / 1048576).toFixed(1)} MiB`);
  const paths = await mapLimited(image.layers, PARALLEL_DOWNLOADS, (layer) => {
    const id = layer.digest.slice(0, 19);
    return fetchBlob(client, reference.repository, layer, (event) =>
      reporter.layer(id, event.state === 'cached' ? 'already here' : event.state, event.done, event.total),
    );
  }).finally(() => reporter.endLayers());
  const pinned = { ...reference, tag: undefined, digest: manifest.digest };
  const record = await importLayers(
    image.layers.map((layer, index) => fileLayer(paths[index]!, `layer ${index + 1}/${image.layers.length} (${layer.digest.slice(0, 19)})`, diffIds[index])),
    {
      name: options.name ?? familiarName(reference),
      config: runtimeConfig,
      source: `registry:${canonicalName(pinned)}`,
      progress: (message) => reporter.step(message),
      limits: options.limits,
    },
  );
  reporter.step(`pulled ${record.name} (${record.digest})`);
  return { ...record, reference: canonicalName(pinned) };
}

/** What `run REF` uses for a registry name: the image pulled before, or a pull now. */
export async function resolveOrPull(text: string, progress: Progress): Promise<ImageRecord> {
  const name = familiarName(parseReference(text));
  const existing = await resolveImage(name);
  if (existing) return existing;
  return pullImage(text, { reporter: { step: progress, layer() {}, endLayers() {} } });
}
