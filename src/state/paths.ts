import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Where torpor keeps everything. One directory, so that several independent installations
 * (tests, users) never see each other's machines; override with TORPOR_HOME.
 */
export function stateHome(): string {
  if (process.env.TORPOR_HOME) return process.env.TORPOR_HOME;
  const dataHome = process.env.XDG_DATA_HOME || join(homedir(), '.local', 'share');
  return join(dataHome, 'torpor');
}

/** Guest RAM lives in tmpfs so a snapshot can take it without copying through QEMU. */
export function memoryDirectory(): string {
  return process.env.TORPOR_MEMORY_DIR || '/dev/shm/torpor';
}

/**
 * Host-level build products (guest agent, initramfs, the KVM probe's verdict): they depend only on
 * this host, so every state directory shares them. Override with TORPOR_CACHE.
 */
export function cacheHome(): string {
  if (process.env.TORPOR_CACHE) return process.env.TORPOR_CACHE;
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'torpor');
}

export const paths = {
  artifacts: () => cacheHome(),
  images: () => join(stateHome(), 'images'),
  machines: () => join(stateHome(), 'machines'),
  machine: (id: string) => join(stateHome(), 'machines', id),
  names: () => join(stateHome(), 'names'),
  snapshots: () => join(stateHome(), 'snapshots'),
};
