import { mkdtemp, rm, mkdir, readdir, lstat, chmod } from 'node:fs/promises';
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

// Directories the skeleton makes private or sticky on purpose.
const deliberateModes = new Set(['root', 'tmp', 'var/tmp']);

/**
 * The CLI runs under umask 077 (its state is private), so what a builder creates is owner-only:
 * `/run`, `/etc/passwd`, `/usr/local/bin` ... were root-only in the guest, and any non-root process
 * there (`run -u nobody`, a QEMU that dropped root in the `torpor` image) could reach nothing.
 * Gives what the owner may read or run to everyone, as a 022 umask would have.
 */
export async function applyImagePermissions(root: string): Promise<void> {
  const entries = await readdir(root, { recursive: true });
  for (const relative of ['', ...entries]) {
    if (deliberateModes.has(relative)) continue;
    const path = relative ? join(root, relative) : root;
    const info = await lstat(path);
    if (info.isSymbolicLink()) continue;
    const owner = (info.mode >> 6) & 0o7;
    const wanted = (info.mode & 0o7777) | ((owner & 0o5) << 3) | (owner & 0o5);
    if (wanted !== (info.mode & 0o7777)) await chmod(path, wanted);
  }
}

export async function ensureBuiltinImage(name: string, progress: Progress = silentProgress, inputs: BuiltinImageInputs = {}): Promise<ImageRecord> {
  const builder = builtinImages[name]!;
  progress(`building image ${name}: ${builder.description}`);
  await mkdir(paths.images(), { recursive: true });
  const root = await mkdtemp(join(paths.images(), '.build-'));
  try {
    const config = await builder.build(root, inputs);
    await applyImagePermissions(root);
    const record = await addImageFromDirectory(root, { name, config, source: `builtin:${name}`, progress });
    progress(`image ${name} ready (${(record.sizeBytes / 1048576).toFixed(0)} MiB ext4, ${record.digest.slice(0, 19)})`);
    return record;
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}
