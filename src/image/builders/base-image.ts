import { writeBusyboxRoot } from './root-skeleton.ts';
import type { ImageConfig } from '../image-config.ts';

export const baseImageConfig: ImageConfig = {
  cmd: ['/bin/sh'],
  env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
  workingDir: '/',
  exposedPorts: [],
};

/** `base`: busybox only, a few MiB, built from Debian's busybox-static with no registry. */
export async function buildBaseRoot(root: string): Promise<ImageConfig> {
  await writeBusyboxRoot(root);
  return baseImageConfig;
}
