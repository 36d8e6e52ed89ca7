import { createHash } from 'node:crypto';
import { lstat, readdir, readlink } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';

/**
 * A content digest of a directory tree: paths, types, modes, owners, link targets and file bytes,
 * in sorted order, with no timestamps. Two imports of the same content get the same digest, so an
 * image is stored once however often it is imported.
 */
export async function digestTree(root: string): Promise<{ digest: string; bytes: number; entries: number }> {
  const hash = createHash('sha256');
  let bytes = 0;
  let entries = 0;
  const walk = async (relative: string): Promise<void> => {
    const names = (await readdir(join(root, relative))).sort();
    for (const name of names) {
      const path = join(relative, name);
      const info = await lstat(join(root, path));
      entries++;
      hash.update(`${path}\0${info.mode}\0${info.uid}\0${info.gid}\0`);
      if (info.isSymbolicLink()) hash.update(`link\0${await readlink(join(root, path))}\0`);
      else if (info.isFile()) {
        bytes += info.size;
        hash.update(`file\0${info.size}\0`);
        for await (const chunk of createReadStream(join(root, path))) hash.update(chunk as Buffer);
      } else if (info.isDirectory()) {
        hash.update('dir\0');
        await walk(path);
      } else {
        hash.update(`special\0${info.rdev}\0`);
      }
    }
  };
  await walk('');
  return { digest: `sha256:${hash.digest('hex')}`, bytes, entries };
}
