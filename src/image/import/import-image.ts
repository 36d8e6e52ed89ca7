import { mkdir } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { addImageFromDirectory } from '../image-store.ts';
import type { ImageConfig, ImageRecord } from '../image-config.ts';
import { createHash } from 'node:crypto';
import { type Progress, silentProgress } from '../../util/progress.ts';
import { applyLayer, asLayerError, extractStream, type LayerSource } from './apply-layer.ts';
import { ExtractThread } from './extract-thread.ts';
import { openDecompressed } from './compression.ts';
import { ImageBudget, importLimits, type ImportLimits } from './import-limits.ts';
import { detectImportFormat, type DetectedFormat } from './detect-format.ts';
import { fileLayer, readDockerArchive, readOciLayout, type LayeredImage } from './image-layout.ts';
import { environment } from '../../config/environment.ts';
import { makeRootDirectory, withStagingDirectory } from './staging.ts';

/** What `run` starts in an image that says nothing: a shell, with the usual PATH. */
export const defaultRootfsConfig: ImageConfig = {
  cmd: ['/bin/sh'],
  env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  exposedPorts: [],
};

export interface ImportOptions {
  name?: string;
  progress?: Progress;
  /** Overrides what the archive says (a rootfs tar says nothing). */
  config?: ImageConfig;
  /** Size limits (defaults and TORPOR_MAX_LAYER_BYTES, TORPOR_MAX_LAYER_MEMBERS and TORPOR_MAX_IMAGE_BYTES environment variables otherwise). */
  limits?: Partial<ImportLimits>;
}

/**
 * Extraction on a worker thread is opt-in (TORPOR_IMPORT_THREAD=1): measured on this 2-core
 * shared machine (bench/image-import.ts) it cost ~1.5-2 s more CPU per 118 MiB image (its own
 * TypeScript load and a cold JIT) and did not make imports faster; inline is the default.
 */
function useThread(): boolean {
  return environment().TORPOR_IMPORT_THREAD;
}

/**
 * Builds an image from layers: applies them in order onto an empty root in a staging directory
 * under the store, then stores the result. The staging directory goes whatever happens.
 */
export async function importLayers(
  layers: LayerSource[],
  options: { name?: string; config: ImageConfig; source: string; progress?: Progress; limits?: Partial<ImportLimits> },
): Promise<ImageRecord> {
  const progress = options.progress ?? silentProgress;
  const limits = importLimits(options.limits);
  const budget = new ImageBudget(limits);
  return withStagingDirectory(async (staging) => {
    const root = await makeRootDirectory(staging);
    const thread = useThread() ? new ExtractThread() : undefined;
    try {
      for (const layer of layers) {
        progress(`applying ${layer.description}`);
        await applyLayer(root, layer, { limits, budget, thread });
      }
    } finally {
      await thread?.close();
    }
    return addImageFromDirectory(root, { name: options.name, config: options.config, source: options.source, progress });
  });
}

/**
 * Unpacks an image archive (docker save, OCI layout tar) with the same reader and writer as
 * layers, minus owners, modes, devices and xattrs: only metadata and blobs live here, read
 * through archiveFile(), which refuses anything that resolves outside.
 */
async function unpackArchive(archive: string, staging: string, limits: ImportLimits): Promise<string> {
  const directory = join(staging, 'archive');
  await mkdir(directory, { mode: 0o700 });
  const description = basename(archive);
  const archiveLimits = { ...limits, maxLayerBytes: limits.maxImageBytes };
  const stream = await openDecompressed(archive);
  try {
    await extractStream(
      stream,
      {
        root: directory,
        policy: { description, owners: false, modes: false, devices: false, xattrs: false },
        layerSemantics: false,
        maxMembers: archiveLimits.maxLayerMembers,
      },
      { limits: archiveLimits, budget: new ImageBudget(archiveLimits), hash: createHash('sha256') },
    );
  } catch (error) {
    throw asLayerError(description, error);
  } finally {
    stream.destroy();
  }
  return directory;
}

async function readLayered(format: DetectedFormat['format'], directory: string, sourceName: string): Promise<LayeredImage> {
  return format === 'oci-layout' ? readOciLayout(directory, sourceName) : readDockerArchive(directory, sourceName);
}

/**
 * `torpor image import PATH`: a rootfs tar (plain, gzip or zstd), a rootfs directory, a
 * `docker save` archive or an OCI layout (directory or tar), recognized by content.
 */
export async function importImage(path: string, options: ImportOptions = {}): Promise<ImageRecord> {
  const progress = options.progress ?? silentProgress;
  const limits = options.limits;
  const absolute = resolve(path);
  const detected = await detectImportFormat(absolute, importLimits(limits));
  progress(`importing ${basename(absolute)} as ${detected.format.replace('-', ' ')}${detected.archived ? ' (archived)' : ''}`);
  const sourceName = basename(absolute);
  switch (detected.format) {
    case 'rootfs-directory':
      return addImageFromDirectory(absolute, { name: options.name, config: options.config ?? defaultRootfsConfig, source: `directory:${absolute}`, progress });
    case 'rootfs-tar':
      return importLayers([fileLayer(absolute, sourceName, undefined)], {
        name: options.name,
        config: options.config ?? defaultRootfsConfig,
        source: `tar:${sourceName}`,
        progress,
        limits,
      });
    case 'docker-archive':
    case 'oci-layout': {
      if (!detected.archived) {
        const image = await readLayered(detected.format, absolute, sourceName);
        return importLayers(image.layers, { name: options.name, config: options.config ?? image.config, source: image.source, progress, limits });
      }
      return withStagingDirectory(async (staging) => {
        progress(`unpacking ${sourceName}`);
        const image = await readLayered(detected.format, await unpackArchive(absolute, staging, importLimits(limits)), sourceName);
        return importLayers(image.layers, { name: options.name, config: options.config ?? image.config, source: image.source, progress, limits });
      });
    }
  }
}
