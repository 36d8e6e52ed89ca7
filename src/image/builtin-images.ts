import { mkdtemp, rm, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../state/paths.ts';
import { addImageFromDirectory } from './image-store.ts';
import { buildBaseRoot } from './builders/base-image.ts';
import { buildNodeRoot } from './builders/node-image.ts';
import { buildTorporRoot, type NestedTorporInputs } from './builders/torpor-image.ts';
import type { ImageConfig, ImageRecord } from './image-config.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { TorporError } from '../util/errors.ts';

/** What a builder may need from layers above image/ (runtime/ passes it); asked for only by the builder that needs it. */
export interface BuiltinImageInputs {
  nestedTorpor?: () => Promise<NestedTorporInputs>;
}

/** Images torpor builds itself, on first use, from what the host has: no registry needed. */
export const builtinImages: Record<string, { description: string; build: (root: string, inputs: BuiltinImageInputs) => Promise<ImageConfig> }> = {
  base: { description: 'busybox userland (a few MiB)', build: buildBaseRoot },
  node: { description: 'busybox plus the host Node.js', build: buildNodeRoot },
  torpor: {
    description: 'torpor itself with QEMU, the guest kernel and the kvm modules, to run machines nested (run it with --memory 2g)',
    build: async (root, inputs) => {
      if (!inputs.nestedTorpor)
        throw new TorporError('image-inputs-missing', 'the torpor image is built from the host by the runtime', { hint: 'run it with `torpor run torpor`' });
      return buildTorporRoot(root, await inputs.nestedTorpor());
    },
  },
};

export async function ensureBuiltinImage(name: string, progress: Progress = silentProgress, inputs: BuiltinImageInputs = {}): Promise<ImageRecord> {
  const builder = builtinImages[name]!;
  progress(`building image ${name}: ${builder.description}`);
  await mkdir(paths.images(), { recursive: true });
  const root = await mkdtemp(join(paths.images(), '.build-'));
  try {
    const config = await builder.build(root, inputs);
    const record = await addImageFromDirectory(root, { name, config, source: `builtin:${name}`, progress });
    progress(`image ${name} ready (${(record.sizeBytes / 1048576).toFixed(0)} MiB ext4, ${record.digest.slice(0, 19)})`);
    return record;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
