import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { paths } from '../state/paths.ts';

/** Where an image name's digest is recorded (one small file per name, replaced atomically when the name moves). */
export const refPath = (name: string) => join(paths.images(), 'refs', encodeURIComponent(name));

/**
 * The digest a name points at now, read without the image store's schemas (a `run` that claims a
 * spare machine checks the spare still has this image, and must stay fast); undefined if unknown.
 */
export async function currentImageDigest(reference: string): Promise<string | undefined> {
  if (reference.startsWith('sha256:')) return reference;
  if (reference === '.' || reference === '..' || reference === '') return undefined;
  return (await readFile(refPath(reference), 'utf8').catch(() => '')).trim() || undefined;
}
