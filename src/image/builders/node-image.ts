import { mkdir, copyFile, chmod, realpath } from 'node:fs/promises';
import { join, dirname } from 'node:path';
import { writeBusyboxRoot } from './root-skeleton.ts';
import { runCommand } from '../../util/command.ts';
import type { ImageConfig } from '../image-config.ts';

/**
 * `node`: the base userland plus the host's own Node.js and the shared libraries it links
 * (found with ldd). The guest then runs the same Node as the host, so agents built with torpor's
 * SDK behave the same inside and out, and the build needs nothing beyond what the host has.
 */
export async function buildNodeRoot(root: string): Promise<ImageConfig> {
  await writeBusyboxRoot(root);
  const nodeBinary = await realpath(process.execPath);
  await mkdir(join(root, 'usr/local/bin'), { recursive: true });
  await copyFile(nodeBinary, join(root, 'usr/local/bin/node'));
  await chmod(join(root, 'usr/local/bin/node'), 0o755);
  await copySharedLibraries(root, nodeBinary);
  return {
    cmd: ['node'],
    env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', `NODE_VERSION=${process.versions.node}`],
    workingDir: '/',
    exposedPorts: [],
  };
}

/**
 * The shared libraries ldd lists for a program or library, copied to their own paths in the image.
 * `allowFailure`: a file ldd cannot read (static, not ELF) simply has none.
 */
export async function copySharedLibraries(root: string, program: string, options: { allowFailure?: boolean } = {}): Promise<void> {
  const { stdout } = await runCommand('ldd', [program], { allowFailure: options.allowFailure ?? false });
  for (const line of stdout.split('\n')) {
    // "libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (!match) continue;
    const library = match[1]!;
    await mkdir(join(root, dirname(library)), { recursive: true });
    await copyFile(await realpath(library), join(root, library));
  }
}
