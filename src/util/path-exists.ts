import { access, stat } from 'node:fs/promises';
import { isNodeError } from './errors.ts';

/** Whether a path can be reached by this process (any error, a missing file or a forbidden one, is "no"). */
export async function pathExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * Whether something is at `path`, where a wrong "no" would do harm (overwrite, re-create): false
 * only when nothing is there (ENOENT); any other failure (no permission, an I/O error) is thrown.
 * `look` is `stat` (a symlink counts by its target) or `lstat` (the link itself counts).
 */
export async function pathIsPresent(path: string, look: (path: string) => Promise<unknown> = stat): Promise<boolean> {
  try {
    await look(path);
    return true;
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return false;
    throw error;
  }
}
