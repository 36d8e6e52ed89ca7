import { resolveImage } from '../image/image-store.ts';
import { builtinImages, ensureBuiltinImage } from '../image/builtin-images.ts';
import type { ImageRecord } from '../image/image-config.ts';
import { namesRegistry } from '../registry/reference.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { nestedTorporInputs } from './nested-image-inputs.ts';

/**
 * Resolves the image a machine is asked to run: a stored image; else a built-in one, built the
 * first time it is asked for; else, for a name with a registry host (docker.io/library/alpine,
 * localhost:5000/app), a pull, like `docker run`. It sits above image/ and registry/ because it
 * needs both (registry/ imports image/'s store).
 */
export async function resolveOrBuildImage(reference: string, progress: Progress = silentProgress): Promise<ImageRecord | undefined> {
  const existing = await resolveImage(reference);
  if (existing) return existing;
  if (reference in builtinImages) return ensureBuiltinImage(reference, progress, { nestedTorpor: () => nestedTorporInputs(progress) });
  // The registry client loads only when a pull is needed: most runs name a local image.
  if (namesRegistry(reference)) return (await import('../registry/pull.ts')).resolveOrPull(reference, progress);
  return undefined;
}
