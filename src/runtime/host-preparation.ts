import { mkdir, statfs } from 'node:fs/promises';
import { createServer } from 'node:net';
import { paths, memoryDirectory } from '../state/paths.ts';
import { TorporError } from '../util/errors.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { ensureGuestArtifacts } from '../host/guest-artifacts.ts';
import { chooseAccelerator, type AcceleratorChoice } from '../vm/accelerator-probe.ts';
import { releaseWarmMemory } from './warm-memory.ts';
import type { PortMapping } from '../vm/machine-spec.ts';

export interface PreparedHost {
  kernelPath: string;
  initramfsPath: string;
  key: string;
  accelerator: AcceleratorChoice;
  /** The guest kernel can take the image as DAX memory (vm/image-memory.ts). */
  imageMemory: boolean;
}

let hostPreparation: Promise<PreparedHost> | undefined;

/** Builds the guest artifacts (first time only) and decides KVM or TCG (probed once, cached). */
export function prepareHost(progress: Progress = silentProgress): Promise<PreparedHost> {
  hostPreparation ??= (async () => {
    const artifacts = await ensureGuestArtifacts(progress);
    const accelerator = await chooseAccelerator({
      kernelPath: artifacts.kernel.imagePath,
      initramfsPath: artifacts.initramfsPath,
      cacheDirectory: paths.artifacts(),
    });
    return {
      kernelPath: artifacts.kernel.imagePath,
      initramfsPath: artifacts.initramfsPath,
      key: artifacts.key,
      accelerator,
      imageMemory: artifacts.imageMemory,
    };
  })();
  hostPreparation.catch(() => (hostPreparation = undefined));
  return hostPreparation;
}

/** Fails with `tmpfs-full` (and what to do) when the RAM tmpfs cannot hold another guest's memory. */
export async function ensureMemoryRoom(memoryMiB: number): Promise<void> {
  await mkdir(memoryDirectory(), { recursive: true });
  let info = await statfs(memoryDirectory());
  let freeMiB = Math.floor((info.bavail * info.bsize) / 1024 ** 2);
  // Warm hibernations are a cache: they give way to a machine that needs the room.
  if (freeMiB < memoryMiB && (await releaseWarmMemory((memoryMiB - freeMiB) * 1024 ** 2)) > 0) {
    info = await statfs(memoryDirectory());
    freeMiB = Math.floor((info.bavail * info.bsize) / 1024 ** 2);
  }
  if (freeMiB < memoryMiB) {
    throw new TorporError('tmpfs-full', `not enough space in ${memoryDirectory()} for the guest's RAM: need ${memoryMiB} MiB, ${freeMiB} MiB free`, {
      hint: 'stop other machines (`torpor system pool clear` ends spare ones), use a smaller --memory, or enlarge the tmpfs (mount -o remount,size=8G /dev/shm); TORPOR_MEMORY_DIR picks another tmpfs',
    });
  }
}

/** Fails with `port-in-use` when a published TCP host port cannot be bound. */
export async function ensurePortsFree(ports: PortMapping[]): Promise<void> {
  for (const port of ports.filter((mapping) => mapping.protocol === 'tcp')) {
    await new Promise<void>((resolve, reject) => {
      const server = createServer();
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(
          new TorporError('port-in-use', `host port ${port.hostPort} is not available (${error.code})`, {
            hint: 'pick another host port with -p HOST:GUEST, or stop what uses it',
          }),
        ),
      );
      server.listen({ port: port.hostPort, host: port.hostAddress || undefined, exclusive: true }, () => server.close(() => resolve()));
    });
  }
}
