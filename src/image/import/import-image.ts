import { mkdir } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { addImageFromDirectory } from '../image-store.ts';
import type { ImageConfig, ImageRecord } from '../image-config.ts';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { type Progress, silentProgress } from '../../util/progress.ts';
import { applyLayer, type LayerSource } from './apply-layer.ts';
import { detectImportFormat, type DetectedFormat } from './detect-format.ts';
import { fileLayer, readDockerArchive, readOciLayout, type LayeredImage } from './image-layout.ts';
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
}

/**
 * Builds an image from layers: applies them in order onto an empty root in a staging directory
 * under the store, then stores the result. The staging directory goes whatever happens.
 */
export async function importLayers(
  layers: LayerSource[],
  options: { name?: string; config: ImageConfig; source: string; progress?: Progress },
): Promise<ImageRecord> {
  const progress = options.progress ?? silentProgress;
  return withStagingDirectory(async (staging) => {
    const root = await makeRootDirectory(staging);
    for (const layer of layers) {
      progress(`applying ${layer.description}`);
      await applyLayer(root, layer);
    }
    return addImageFromDirectory(root, { name: options.name, config: options.config, source: options.source, progress });
  });
}

async function unpackArchive(archive: string, staging: string): Promise<string> {
  // Only image metadata and blobs live here; they are read through archiveFile(), which refuses
  // symlinks and anything outside, so GNU tar's own checks ('..' members) are enough.
  const directory = join(staging, 'archive');
  await mkdir(directory);
  const result = await runCommand('tar', ['--extract', `--file=${archive}`, `--directory=${directory}`, '--no-same-owner', '--no-same-permissions'], { allowFailure: true });
  if (result.code !== 0) {
    throw new TorporError('import-unreadable', `cannot unpack ${archive}: ${result.stderr.trim().split('\n')[0]}`, { hint: 'check that the archive is complete' });
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
  const absolute = resolve(path);
  const detected = await detectImportFormat(absolute);
  progress(`importing ${basename(absolute)} as ${detected.format.replace('-', ' ')}${detected.archived ? ' (archived)' : ''}`);
  const sourceName = basename(absolute);
  switch (detected.format) {
    case 'rootfs-directory':
      return addImageFromDirectory(absolute, { name: options.name, config: options.config ?? defaultRootfsConfig, source: `directory:${absolute}`, progress });
    case 'rootfs-tar':
      return importLayers([fileLayer(absolute, sourceName, undefined)], {
        name: options.name, config: options.config ?? defaultRootfsConfig, source: `tar:${sourceName}`, progress,
      });
    case 'docker-archive':
    case 'oci-layout': {
      if (!detected.archived) {
        const image = await readLayered(detected.format, absolute, sourceName);
        return importLayers(image.layers, { name: options.name, config: options.config ?? image.config, source: image.source, progress });
      }
      return withStagingDirectory(async (staging) => {
        progress(`unpacking ${sourceName}`);
        const image = await readLayered(detected.format, await unpackArchive(absolute, staging), sourceName);
        return importLayers(image.layers, { name: options.name, config: options.config ?? image.config, source: image.source, progress });
      });
    }
  }
}
