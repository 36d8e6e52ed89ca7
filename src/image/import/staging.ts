import { processExists } from '../../util/process-identity.ts';
import { mkdir, readdir, rm, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { paths } from '../../state/paths.ts';
import { isNodeError } from '../../util/errors.ts';

const PREFIX = '.import-';

/** Removes staging directories left by imports that were killed (their PID is in the name). */
async function sweepAbandoned(): Promise<void> {
  let names: string[];
  try {
    names = await readdir(paths.images());
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return;
    throw error;
  }
  for (const name of names) {
    const match = name.startsWith(PREFIX) ? /^(\d+)-/.exec(name.slice(PREFIX.length)) : null;
    if (match && !processExists(Number(match[1]))) await rm(join(paths.images(), name), { recursive: true, force: true });
  }
}

/**
 * Runs `work` with a private directory under the store (same filesystem as the images, and as
 * root, so ownership and device nodes survive), and removes it whatever happens.
 */
export async function withStagingDirectory<T>(work: (directory: string) => Promise<T>): Promise<T> {
  await mkdir(paths.images(), { recursive: true });
  await sweepAbandoned();
  const directory = join(paths.images(), `${PREFIX}${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(directory, { mode: 0o700 });
  try {
    return await work(directory);
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
}

/** An empty root directory, mode 0755 as a root filesystem's top needs to be when no layer says otherwise. */
export async function makeRootDirectory(staging: string): Promise<string> {
  const root = join(staging, 'rootfs');
  await mkdir(root);
  await chmod(root, 0o755);
  return root;
}
