import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { createGzip } from 'node:zlib';
import { resolveImage } from '../image/image-store.ts';
import type { ImageConfig } from '../image/image-config.ts';
import { withStagingDirectory } from '../image/import/staging.ts';
import { mediaTypes } from '../image/import/oci-image.ts';
import { assertDigest } from '../image/digest.ts';
import { TorporError } from '../util/errors.ts';
import { findCredentials } from './credentials.ts';
import { exportExt4Tree } from './ext4-export.ts';
import { type PullReporter, silentReporter } from './pull-progress.ts';
import { canonicalName, parseReference, type ImageReference } from './reference.ts';
import { RegistryClient, registryErrorText, type RetryPolicy } from './registry-client.ts';

export interface PushOptions {
  insecure?: boolean;
  reporter?: PullReporter;
  retry?: RetryPolicy;
}

const layerMediaType = 'application/vnd.oci.image.layer.v1.tar+gzip';

/** A reproducible gzip layer of a tree: sorted, numeric owners, xattrs, timestamps clamped to 0. */
async function writeLayer(root: string, output: string): Promise<{ digest: string; diffId: string; size: number }> {
  const tar = spawn(
    'tar',
    [
      '--create',
      '--file=-',
      `--directory=${root}`,
      '--format=posix',
      '--xattrs',
      '--xattrs-include=*',
      '--numeric-owner',
      '--sort=name',
      '--mtime=@0',
      '--pax-option=delete=atime,delete=ctime,exthdr.name=%d/PaxHeaders/%f',
      '.',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  tar.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  const exited = new Promise<number>((resolve, reject) => {
    tar.on('error', reject);
    tar.on('close', (code) => resolve(code ?? 128));
  });
  const uncompressed = createHash('sha256');
  const compressed = createHash('sha256');
  const tap = (hash: ReturnType<typeof createHash>) =>
    new Transform({
      transform(chunk, _encoding, done) {
        hash.update(chunk);
        done(null, chunk);
      },
    });
  await pipeline(tar.stdout!, tap(uncompressed), createGzip({ level: 6 }), tap(compressed), createWriteStream(output));
  if ((await exited) !== 0) throw new Error(`tar failed while building the layer: ${stderr.trim()}`);
  return { digest: `sha256:${compressed.digest('hex')}`, diffId: `sha256:${uncompressed.digest('hex')}`, size: (await stat(output)).size };
}

/** No `created` time: the same tree and config then give the same manifest digest wherever it is pushed from. */
function ociConfig(config: ImageConfig, diffId: string): Buffer {
  const runtime: Record<string, unknown> = { Env: config.env };
  if (config.entrypoint) runtime.Entrypoint = config.entrypoint;
  if (config.cmd) runtime.Cmd = config.cmd;
  if (config.workingDir) runtime.WorkingDir = config.workingDir;
  if (config.user) runtime.User = config.user;
  if (config.exposedPorts.length) runtime.ExposedPorts = Object.fromEntries(config.exposedPorts.map((port) => [port, {}]));
  return Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: runtime,
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created_by: 'torpor push' }],
    }),
  );
}

async function uploadBlob(
  client: RegistryClient,
  reference: ImageReference,
  blob: { digest: string; size: number; body: () => Buffer | AsyncIterable<Uint8Array> },
): Promise<'exists' | 'uploaded'> {
  assertDigest(blob.digest, 'blob to upload');
  const scope = `repository:${reference.repository}:pull,push`;
  const head = await client.send(`/${reference.repository}/blobs/${blob.digest}`, { scope, method: 'HEAD' });
  await head.body?.cancel();
  if (head.ok) return 'exists';
  const start = await client.send(`/${reference.repository}/blobs/uploads/`, { scope, method: 'POST', headers: { 'content-length': '0' } });
  await start.body?.cancel();
  const location = start.headers.get('location');
  if (start.status !== 202 || !location) {
    throw new TorporError('push-failed', `${canonicalName(reference)}: the registry refused to start an upload (HTTP ${start.status})`, {
      hint: 'check that you may push to this repository (`torpor login`)',
    });
  }
  const url = new URL(location, await client.apiRoot());
  url.searchParams.set('digest', blob.digest);
  const put = await client.sendTo(url.toString(), {
    scope,
    method: 'PUT',
    body: blob.body,
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(blob.size) },
  });
  if (put.status !== 201) {
    throw new TorporError('push-failed', `uploading blob ${blob.digest.slice(0, 19)} failed: ${await registryErrorText(put)}`, {
      hint: 'try again; blobs already uploaded are skipped',
    });
  }
  await put.body?.cancel();
  return 'uploaded';
}

/**
 * `torpor push NAME [DESTINATION]`: publishes a stored image as a single-layer OCI image. The
 * layer is rebuilt from the ext4 (reproducibly, so pushing again uploads nothing new).
 */
export async function pushImage(localName: string, destination: string = localName, options: PushOptions = {}): Promise<{ reference: string; digest: string }> {
  const record = await resolveImage(localName);
  if (!record) throw new TorporError('image-unknown', `no such image: ${localName}`, { hint: 'see `torpor images`', status: 404 });
  const reference = parseReference(destination);
  if (reference.digest) throw new TorporError('invalid-reference', 'push needs a tag, not a digest', { hint: 'torpor push NAME registry/repository:tag' });
  const reporter = options.reporter ?? silentReporter;
  const client = new RegistryClient(reference.registry, {
    insecure: options.insecure,
    credentials: await findCredentials(reference.registry),
    retry: options.retry,
  });
  return withStagingDirectory(async (staging) => {
    reporter.step(`exporting ${localName} (${record.digest.slice(0, 19)})`);
    await exportExt4Tree(record.diskPath, join(staging, 'rootfs'));
    reporter.step('building the layer');
    const layerPath = join(staging, 'layer.tar.gz');
    const layer = await writeLayer(join(staging, 'rootfs'), layerPath);
    const config = ociConfig(record.config, layer.diffId);
    const configDigest = `sha256:${createHash('sha256').update(config).digest('hex')}`;
    const id = layer.digest.slice(0, 19);
    reporter.layer(id, 'uploading', 0, layer.size);
    const layerResult = await uploadBlob(client, reference, { digest: layer.digest, size: layer.size, body: () => createReadStream(layerPath) });
    reporter.layer(id, layerResult === 'exists' ? 'already there' : 'uploaded', layer.size, layer.size);
    reporter.endLayers();
    await uploadBlob(client, reference, { digest: configDigest, size: config.length, body: () => config });
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mediaTypes.ociManifest,
        config: { mediaType: mediaTypes.ociConfig, digest: configDigest, size: config.length },
        layers: [{ mediaType: layerMediaType, digest: layer.digest, size: layer.size }],
      }),
    );
    const digest = `sha256:${createHash('sha256').update(manifest).digest('hex')}`;
    const put = await client.send(`/${reference.repository}/manifests/${reference.tag}`, {
      scope: `repository:${reference.repository}:pull,push`,
      method: 'PUT',
      body: () => manifest,
      headers: { 'content-type': mediaTypes.ociManifest },
    });
    if (put.status !== 201) {
      throw new TorporError('push-failed', `the registry refused the manifest of ${canonicalName(reference)}: ${await registryErrorText(put)}`, {
        hint: 'check that you may push to this repository',
      });
    }
    await put.body?.cancel();
    reporter.step(`pushed ${canonicalName(reference)}@${digest}`);
    return { reference: canonicalName(reference), digest };
  });
}
