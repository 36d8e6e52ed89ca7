import { copyFile, rm } from 'node:fs/promises';
import { runCommand } from '../util/command.ts';
import { TorporError } from '../util/errors.ts';
import { readSnapshot, removeSnapshot } from '../snapshot/snapshot-store.ts';
import { type MachineConfig } from './machine-record.ts';
import { machineFiles } from './machine-files.ts';
import { releaseMachine } from './machine-removal.ts';
import type { SupervisorPool } from './supervisor-pool.ts';
import { templateMemoryFile } from './template-memory.ts';
import { effectiveState } from './machine-status.ts';
import { connectToSupervisor, sendControl } from './supervisor-client.ts';
import { createMachineFromSnapshot, type RestoreOptions } from './machine-creation.ts';
import { startMachine } from './machine-start.ts';
import { materializeForRestore, restoreSources } from './restore-materialization.ts';
import type { SnapshotSummary } from './control-protocol.ts';
import { prepareLazyRestore } from './lazy-restore.ts';
import { pathExists } from '../util/path-exists.ts';
import type { StartTimeline } from './start-timeline.ts';

export type { RestoreOptions } from './machine-creation.ts';

/** Saves a running machine whole (memory, processes, files) into the snapshot store. */
export async function snapshotMachine(
  config: MachineConfig,
  options: { name: string; stop?: boolean; keepPaused?: boolean; replace?: boolean },
): Promise<SnapshotSummary> {
  const state = await effectiveState(config);
  if (state.status !== 'running') {
    throw new TorporError('not-running', `machine ${config.name} is ${state.status}: only a running machine can be snapshotted`, {
      hint: `torpor start ${config.name}`,
    });
  }
  const client = await connectToSupervisor(config.id);
  try {
    const reply = await sendControl(client, {
      op: 'snapshot',
      name: options.name,
      stop: options.stop,
      keepPaused: options.keepPaused,
      replace: options.replace,
    });
    return reply.snapshot!;
  } catch (error) {
    throw new TorporError('snapshot-failed', `snapshot of ${config.name} failed: ${(error as Error).message}`, {
      hint: 'the machine keeps running; see `torpor doctor` for disk space',
    });
  } finally {
    client.close();
  }
}

/** Continues a machine kept paused after its hibernation snapshot (the paused tier): no restore, same QEMU. */
export async function resumeMachine(config: MachineConfig): Promise<void> {
  const state = await effectiveState(config);
  if (state.status !== 'paused') {
    throw new TorporError('not-paused', `machine ${config.name} is ${state.status}: only a paused machine can be resumed`, {
      hint: state.status === 'running' ? 'it runs already' : `restore it from its snapshot instead (torpor snapshot restore)`,
    });
  }
  const client = await connectToSupervisor(config.id);
  try {
    await sendControl(client, { op: 'resume' });
  } catch (error) {
    throw new TorporError('resume-failed', `resume of ${config.name} failed: ${(error as Error).message}`, {
      hint: `remove it (torpor rm -f ${config.name}) and restore its snapshot`,
    });
  } finally {
    client.close();
  }
}

/** Removes a snapshot; for a boot template also the RAM it keeps in tmpfs (its chunks go at the next gc). */
export async function deleteSnapshot(name: string): Promise<void> {
  await removeSnapshot(name);
  await rm(templateMemoryFile(name), { force: true });
}

/** Creates a machine from a snapshot and starts it (the guest continues where the snapshot left it). */
export async function restoreMachine(
  snapshotName: string,
  options: RestoreOptions & { pool?: SupervisorPool; timeline?: StartTimeline } = {},
): Promise<MachineConfig> {
  const manifest = await readSnapshot(snapshotName);
  options.timeline?.mark('restore: manifest read');
  const config = await createMachineFromSnapshot(manifest, options);
  options.timeline?.mark('restore: machine created');
  await startMachine(config.id, { pool: options.pool, timeline: options.timeline, manifest });
  return config;
}

/** N live copies of a running machine, each independent from then on (own RAM file, disk, clock, RNG, name). */
export async function forkMachine(
  config: MachineConfig,
  options: { count: number; namePrefix?: string },
): Promise<{ forks: MachineConfig[]; snapshot: SnapshotSummary }> {
  const snapshotName = `${config.name}@fork-${Date.now().toString(36)}`;
  const snapshot = await snapshotMachine(config, { name: snapshotName });
  const manifest = await readSnapshot(snapshotName);
  const prefix = options.namePrefix ?? `${config.name}-fork`;
  const forks: MachineConfig[] = [];
  for (let index = 1; index <= options.count; index++) {
    // Published ports stay with the original: two machines cannot bind one host port.
    forks.push(await createMachineFromSnapshot(manifest, { name: `${prefix}-${index}`, ports: [] }));
  }
  // Decompress once, into the first fork's files; the others get sparse copies of them (a copy of
  // the non-zero pages is several times cheaper than decompressing them again), made before any
  // fork runs and writes its RAM.
  try {
    await materializeForks(forks);
  } catch (error) {
    for (const fork of forks) await releaseMachine(fork);
    throw error;
  }
  // Two at a time: each restore is one QEMU starting up, and this host has few cores.
  const queue = [...forks];
  const startNext = async (): Promise<void> => {
    const fork = queue.shift();
    if (!fork) return;
    await startMachine(fork.id, { materialized: true });
    await startNext();
  };
  await Promise.all([startNext(), startNext()]);
  return { forks, snapshot };
}

async function materializeForks(forks: MachineConfig[]): Promise<void> {
  await materializeForRestore(forks[0]!);
  const first = machineFiles(forks[0]!.id);
  // A lazy first fork has an empty RAM file: each other fork gets its own page map instead of a copy.
  const { manifest, base } = await restoreSources(forks[0]!);
  const lazy = await pathExists(`${first.memoryFile}.map`);
  await Promise.all(
    forks.slice(1).map(async (fork) => {
      const files = machineFiles(fork.id);
      if (!lazy || !(await prepareLazyRestore(manifest, fork.id, files.memoryFile, base)))
        await runCommand('cp', ['--sparse=always', first.memoryFile, files.memoryFile]);
      await runCommand('cp', ['--sparse=always', first.layerDisk, files.layerDisk]);
      await copyFile(first.deviceState, files.deviceState);
    }),
  );
}
