import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { isNodeError } from '../util/errors.ts';

/**
 * Every file of a chunk store's two-level directory (`<root>/<prefix>/<name>`): chunks (`.zst`) and
 * temporaries (names starting with a dot), for the caller to sort. A store not created yet has none;
 * a stray file or a vanished entry where a prefix directory should be is passed over.
 */
export async function chunkDirectoryFiles(root: string): Promise<Array<{ name: string; path: string }>> {
  const files: Array<{ name: string; path: string }> = [];
  let directories: string[];
  try {
    directories = await readdir(root);
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return files;
    throw error;
  }
  for (const directory of directories) {
    let names: string[];
    try {
      names = await readdir(join(root, directory));
    } catch (error) {
      if (isNodeError(error, 'ENOTDIR') || isNodeError(error, 'ENOENT')) continue;
      throw error;
    }
    for (const name of names) files.push({ name, path: join(root, directory, name) });
  }
  return files;
}
