import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ensureGuestArtifacts } from '../host/guest-artifacts.ts';
import { lazyMemoryHelpers } from '../snapshot/lazy-memory.ts';
import { extentsHelper } from '../snapshot/extents.ts';
import { projectRoot } from '../util/project-root.ts';
import type { NestedTorporInputs } from '../image/builders/torpor-image.ts';
import type { Progress } from '../util/progress.ts';

/**
 * What the `torpor` image copies from this host, made here first: the initramfs (the image has no
 * musl-gcc), the native helpers (no C compiler either) and the CLI bundles (no esbuild, no sources).
 */
export async function nestedTorporInputs(progress: Progress): Promise<NestedTorporInputs> {
  const artifacts = await ensureGuestArtifacts(progress);
  const helpers = [...(await lazyMemoryHelpers()), await extentsHelper()].filter((path): path is string => Boolean(path));
  const { ensureBundles } = (await import(pathToFileURL(join(projectRoot(), 'bin', 'bundles.mjs')).href)) as {
    ensureBundles: () => Promise<{ cli: string }>;
  };
  const bundles = await ensureBundles();
  return { kernel: artifacts.kernel, cacheFiles: [artifacts.initramfsPath, ...helpers], bundleDirectory: dirname(bundles.cli) };
}
