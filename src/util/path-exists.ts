import { access } from 'node:fs/promises';

/** Whether a path can be reached by this process (any error, a missing file or a forbidden one, is "no"). */
export async function pathExists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}
