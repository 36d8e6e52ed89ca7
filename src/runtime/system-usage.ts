import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { paths, stateHome, memoryDirectory } from '../state/paths.ts';
import { listImages } from '../image/image-store.ts';
import { collectGarbage, storeUsage } from '../snapshot/snapshot-store.ts';
import { isLive } from './machine-files.ts';
import { listMachines } from './machine-status.ts';
import { removeMachine } from './machine-stop.ts';
import { machineFiles } from './machine-files.ts';
import { clearSpares, spareMemory } from './spare-fill.ts';
import { pruneStaleClaims } from '../network/uid-claims.ts';
import { networkFilterAvailability, removeMachineRules } from '../network/firewall.ts';
import { machineMemoryBytes } from './paused-machines.ts';
import { warmMemoryUsage } from './warm-memory.ts';
import { allocatedBytes, dropTemplateMemory, freeOrphanedTemplateMemory, templateMemoryFiles, type TemplateMemoryFile } from './template-memory.ts';

/** Bytes a directory tree really takes on disk (blocks, not sizes: disks and RAM files are sparse). */
export async function allocatedSize(path: string): Promise<number> {
  let status;
  try {
    status = await lstat(path);
  } catch {
    return 0;
  }
  if (!status.isDirectory()) return status.blocks * 512;
  let total = status.blocks * 512;
  for (const name of await readdir(path).catch(() => [] as string[])) total += await allocatedSize(join(path, name));
  return total;
}

export interface SystemUsage {
  stateDirectory: string;
  memoryDirectory: string;
  stateDirectoryBytes: number;
  machines: { count: number; live: number; bytes: number; reclaimableBytes: number };
  images: { count: number; bytes: number };
  snapshots: { count: number; chunks: number; chunkBytes: number; bytes: number };
  /** Spare machines (spare-pool.ts): started, waiting for a `run`; what they hold in host memory (QEMU and supervisor RSS) */
  spares: { count: number; live: number; memoryBytes: number };
  /** Machines kept paused (hibernated sessions under `torpor serve`'s warm budget): their RAM file and QEMU's anonymous memory */
  paused: { count: number; memoryBytes: number };
  /** RAM in tmpfs: live machines' guest memory, stopped machines' leftovers, boot template caches */
  memory: {
    machines: { count: number; bytes: number; reclaimableBytes: number };
    templates: { count: number; bytes: number; files: TemplateMemoryFile[] };
    /** the warm tier: hibernated machines' RAM files kept for their next restore */
    warm: { count: number; bytes: number };
  };
}

/** What this state directory and its tmpfs RAM hold (`torpor system df`). */
export async function systemUsage(): Promise<SystemUsage> {
  const machines = await listMachines();
  let machineBytes = 0;
  let reclaimableMachineBytes = 0;
  let ramCount = 0;
  let ramBytes = 0;
  let reclaimableRam = 0;
  for (const { config, state } of machines) {
    const bytes = await allocatedSize(machineFiles(config.id).directory);
    const ram = await allocatedBytes(machineFiles(config.id).memoryFile);
    machineBytes += bytes;
    if (ram > 0) {
      ramCount++;
      ramBytes += ram;
    }
    if (!isLive(state.status) && state.status !== 'created') {
      reclaimableMachineBytes += bytes;
      reclaimableRam += ram;
    }
  }
  const store = await storeUsage();
  const templates = await templateMemoryFiles();
  const spares = machines.filter(({ config }) => config.spare);
  let spareMemoryBytes = 0;
  for (const spare of spares) spareMemoryBytes += (await spareMemory(spare)).totalBytes;
  const paused = machines.filter(({ state }) => state.status === 'paused');
  let pausedBytes = 0;
  for (const { config } of paused) pausedBytes += await machineMemoryBytes(config.id);
  return {
    stateDirectory: stateHome(),
    memoryDirectory: memoryDirectory(),
    stateDirectoryBytes: await allocatedSize(stateHome()),
    machines: {
      count: machines.length,
      live: machines.filter(({ state }) => isLive(state.status)).length,
      bytes: machineBytes,
      reclaimableBytes: reclaimableMachineBytes,
    },
    spares: { count: spares.length, live: spares.filter(({ state }) => isLive(state.status)).length, memoryBytes: spareMemoryBytes },
    paused: { count: paused.length, memoryBytes: pausedBytes },
    images: { count: (await listImages()).length, bytes: await allocatedSize(paths.images()) },
    snapshots: { count: store.snapshots.length, chunks: store.chunks, chunkBytes: store.bytes, bytes: await allocatedSize(paths.snapshots()) },
    memory: {
      machines: { count: ramCount, bytes: ramBytes, reclaimableBytes: reclaimableRam },
      templates: { count: templates.length, bytes: templates.reduce((sum, file) => sum + file.allocatedBytes, 0), files: templates },
      warm: await warmMemoryUsage(),
    },
  };
}

export interface PruneResult {
  machines: { removed: string[]; bytes: number };
  /** spare machines ended (they are started again by the next `run` that wants one) */
  spares: string[];
  snapshotChunks: { removed: number; bytes: number };
  templateMemory: { files: number; bytes: number; kept?: string };
  orphanedTemplateMemory: { files: number; bytes: number };
  /** uids of killed machines' QEMUs whose host-wide claim and nftables rules were removed */
  networkClaims: number[];
}

/**
 * Frees what nothing needs (`torpor system prune`): stopped machines (their directories and RAM),
 * snapshot chunks no snapshot references, this state directory's boot template RAM caches (they
 * are rebuilt from the snapshot store on the next start that misses them), and template RAM of
 * state directories that no longer exist. Running machines, images and snapshots are kept.
 */
export async function pruneSystem(): Promise<PruneResult> {
  const removed: string[] = [];
  let machineBytes = 0;
  const spares = await clearSpares();
  const machines = await listMachines();
  for (const { config, state } of machines) {
    // `created` is left alone: a `torpor run` may be between creating its machine and starting it.
    if (state.status !== 'exited' && state.status !== 'failed') continue;
    const bytes = (await allocatedSize(machineFiles(config.id).directory)) + (await allocatedBytes(machineFiles(config.id).memoryFile));
    await removeMachine(config);
    removed.push(config.name);
    machineBytes += bytes;
  }
  const garbage = await collectGarbage();
  // A machine being started may be copying from the template RAM right now.
  const starting = machines.some(({ state }) => state.status === 'starting');
  const templateMemory = starting ? { files: 0, bytes: 0, kept: 'a machine is starting and may be reading it' } : await dropTemplateMemory();
  return {
    machines: { removed, bytes: machineBytes },
    spares,
    snapshotChunks: { removed: garbage.removedChunks, bytes: garbage.freedBytes },
    templateMemory,
    orphanedTemplateMemory: await freeOrphanedTemplateMemory(),
    // Without nftables there are no rules to remove, only the claims.
    networkClaims: await pruneStaleClaims(networkFilterAvailability().available ? removeMachineRules : async () => {}),
  };
}
