import { readFileSync } from 'node:fs';
import { freemem, totalmem } from 'node:os';
import { environment } from '../config/environment.ts';

// How much memory the host can still give: what the warm and paused tiers (memory kept for
// hibernated machines, a cache whose contents are durable elsewhere) read before keeping more, and
// while they hold something, so that they give it back before the host runs short.

const MiB = 1024 ** 2;

/**
 * The kernel's estimate of memory available for new work without swapping (`MemAvailable`: free
 * pages plus reclaimable caches), in bytes. Guest RAM files in tmpfs are not reclaimable, so a
 * paused machine's RAM lowers it. Falls back to the free memory node reports where /proc is absent.
 */
export function availableHostMemoryBytes(): number {
  try {
    const kilobytes = /^MemAvailable:\s+(\d+)\s+kB/m.exec(readFileSync('/proc/meminfo', 'latin1'))?.[1];
    if (kilobytes !== undefined) return Number(kilobytes) * 1024;
  } catch {
    // not Linux, or /proc not mounted: the next best estimate
  }
  return freemem();
}

/** `TORPOR_WARM_MEMORY=auto` (the default of `torpor serve`): 1/8 of the host's RAM, in MiB. */
export function automaticWarmMemoryMiB(): number {
  return Math.floor(totalmem() / MiB / 8);
}

/** Bytes of available memory the tiers leave to everything else: TORPOR_WARM_RESERVE, else 1/16 of RAM, at least 512 MiB. */
export function warmReserveBytes(): number {
  const configured = environment().TORPOR_WARM_RESERVE;
  if (configured !== undefined) return configured * MiB;
  return Math.max(512 * MiB, Math.floor(totalmem() / 16));
}

/** How many bytes the host is short of the reserve now (0 when it has at least that much available). */
export function hostMemoryShortfallBytes(): number {
  return Math.max(0, warmReserveBytes() - availableHostMemoryBytes());
}
