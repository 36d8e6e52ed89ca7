import { TorporError } from '../../util/errors.ts';
import { assertDigest as checkDigest } from '../digest.ts';
import type { ImageConfig } from '../image-config.ts';

// The parts of the OCI image spec (and Docker's schema 2, which it grew from) that an importer
// or a registry client reads. Shared by the docker-save and OCI-layout importers and by pull.

export const mediaTypes = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
} as const;

export const manifestMediaTypes: readonly string[] = [mediaTypes.ociManifest, mediaTypes.dockerManifest];
export const indexMediaTypes: readonly string[] = [mediaTypes.ociIndex, mediaTypes.dockerManifestList];

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface OciImageConfig {
  architecture?: string;
  os?: string;
  config?: {
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    Env?: string[] | null;
    WorkingDir?: string;
    User?: string;
    ExposedPorts?: Record<string, unknown> | null;
  };
  rootfs?: { type: string; diff_ids: string[] };
}

export const wantedPlatform = { os: 'linux', architecture: 'amd64' } as const;

/** A digest from image metadata (manifest, index, config, docker-save manifest): checked by the one digest check. */
export function assertDigest(digest: unknown, context: string): asserts digest is string {
  checkDigest(digest, context, { code: 'image-invalid', hint: 'the image metadata is malformed or malicious' });
}

/** Whether a JSON document is an index (a list of per-platform manifests) rather than one image. */
export function isIndex(document: { mediaType?: string; manifests?: unknown }, contentType?: string): boolean {
  const type = document.mediaType ?? contentType ?? '';
  return indexMediaTypes.includes(type) || (!type && Array.isArray(document.manifests));
}

export function parseManifest(document: unknown, context: string): ImageManifest {
  const manifest = document as ImageManifest;
  if (!manifest || typeof manifest !== 'object' || !manifest.config || !Array.isArray(manifest.layers)) {
    throw new TorporError('image-invalid', `${context}: not an image manifest (no config or layers)`, {
      hint: 'the image metadata is malformed or uses the old schema 1 format',
    });
  }
  assertDigest(manifest.config.digest, `${context} config`);
  for (const layer of manifest.layers) assertDigest(layer.digest, `${context} layer`);
  return manifest;
}

/** Picks the linux/amd64 image from an index, as `docker pull` does on this machine. */
export function selectPlatform(index: ImageIndex, context: string): Descriptor {
  const candidates = (index.manifests ?? []).filter(
    (descriptor) => descriptor.platform?.os === wantedPlatform.os && descriptor.platform?.architecture === wantedPlatform.architecture,
  );
  // Attestation manifests (buildkit) are tagged unknown/unknown and never match above.
  const chosen = candidates[0];
  if (!chosen) {
    const available = (index.manifests ?? [])
      .map((descriptor) => [descriptor.platform?.os, descriptor.platform?.architecture, descriptor.platform?.variant].filter(Boolean).join('/'))
      .filter((platform) => platform && platform !== 'unknown/unknown');
    throw new TorporError('image-platform-missing', `${context} has no linux/amd64 image (it has: ${available.join(', ') || 'none'})`, {
      hint: 'torpor runs linux/amd64 guests; pick an image built for that platform',
    });
  }
  assertDigest(chosen.digest, context);
  return chosen;
}

export function layerCompressionOf(mediaType: string): 'gzip' | 'zstd' | 'none' | undefined {
  if (/zstd/.test(mediaType)) return 'zstd';
  if (/gzip/.test(mediaType)) return 'gzip';
  if (/tar$/.test(mediaType) || mediaType === 'application/vnd.docker.image.rootfs.diff.tar') return 'none';
  return undefined;
}

/** The run-time part of an OCI/Docker image config, in torpor's shape. */
export function imageConfigFromOci(config: OciImageConfig): ImageConfig {
  if ((config.os && config.os !== wantedPlatform.os) || (config.architecture && config.architecture !== wantedPlatform.architecture)) {
    throw new TorporError('image-platform-missing', `the image is built for ${config.os ?? '?'}/${config.architecture ?? '?'}, not linux/amd64`, {
      hint: 'torpor runs linux/amd64 guests; pick an image built for that platform',
    });
  }
  const runtime = config.config ?? {};
  return {
    entrypoint: runtime.Entrypoint ?? undefined,
    cmd: runtime.Cmd ?? undefined,
    env: runtime.Env ?? [],
    workingDir: runtime.WorkingDir || undefined,
    user: runtime.User || undefined,
    exposedPorts: Object.keys(runtime.ExposedPorts ?? {}).sort(),
  };
}
