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
import { standbyRequestOf } from './standby-qemu.ts';
import { environment } from '../config/environment.ts';

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

/**
 * N live copies of a running machine, each independent from then on (own RAM file, disk, clock, RNG, name).
 *
 * With a pool (`torpor serve`), each child takes a spare supervisor from it, one holding a standby QEMU
 * of the children's shape where there is one: those children start all at once (no QEMU start-up to
 * compete for the CPU, only device state and the guest), and the pool learns the shape, `count` times,
 * for the next fork. Without a pool (the CLI), each child starts a new supervisor and QEMU.
 */
export async function forkMachine(
  config: MachineConfig,
  options: {
    count: number;
    namePrefix?: string;
    pool?: SupervisorPool;
    /** where the fork's own time goes (benchmarks) */ timeline?: StartTimeline;
    /** one per child, in order: where each child's start went (benchmarks) */ childTimelines?: StartTimeline[];
  },
): Promise<{ forks: MachineConfig[]; snapshot: SnapshotSummary }> {
  const { timeline, pool } = options;
  const snapshotName = `${config.name}@fork-${Date.now().toString(36)}`;
  const snapshot = await snapshotMachine(config, { name: snapshotName });
  timeline?.mark('fork: parent snapshotted');
  const manifest = await readSnapshot(snapshotName);
  const prefix = options.namePrefix ?? `${config.name}-fork`;
  // All records at once (each claims its own name); if one cannot be made, none is kept.
  // Published ports stay with the original: two machines cannot bind one host port.
  const created = await Promise.allSettled(
    Array.from({ length: options.count }, (_, index) => createMachineFromSnapshot(manifest, { name: `${prefix}-${index + 1}`, ports: [] })),
  );
  const forks = created.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
  const refused = created.find((result) => result.status === 'rejected');
  if (refused) {
    for (const fork of forks) await releaseMachine(fork);
    throw refused.reason;
  }
  timeline?.mark('fork: records created');
  // Decompress once, into the first fork's files; the others get sparse copies of them (a copy of
  // the non-zero pages is several times cheaper than decompressing them again), made before any
  // fork runs and writes its RAM. The children's starts begin meanwhile (checks, uid claims, network
  // rules: none needs the files); each tells its supervisor to launch once they are made.
  const filesMade = materializeForks(forks).then(() => timeline?.mark('fork: files made'));
  filesMade.catch(() => {});
  // The children's shape (all alike; the layer gets the snapshot's disk size), for the pool: spares
  // holding a standby of it are taken first.
  const request = pool && environment().TORPOR_STANDBY_QEMU ? standbyRequestOf(forks[0]!, manifest.disk?.size ?? 0) : undefined;
  const taken = forks.map(() => pool?.takeFor(request, { refill: false }) ?? { standby: false });
  timeline?.mark('fork: supervisors taken');
  const errors: unknown[] = [];
  const start = (index: number) =>
    startMachine(forks[index]!.id, { materialized: filesMade, supervisor: taken[index]!.supervisor, timeline: options.childTimelines?.[index] }).catch(
      (error: unknown) => {
        errors.push(error);
        // A start refused before it used its spare (a check) leaves it waiting for an id: end it.
        taken[index]!.supervisor?.stdin?.end();
      },
    );
  // Children adopting a standby start all at once; the others two at a time (each starts a QEMU,
  // and this host has few cores). A child whose start failed does not stop the others.
  const queue = forks.map((_, index) => index).filter((index) => !taken[index]!.standby);
  const startNext = async (): Promise<void> => {
    const index = queue.shift();
    if (index === undefined) return;
    await start(index);
    await startNext();
  };
  await Promise.all([...forks.map((_, index) => (taken[index]!.standby ? start(index) : undefined)), startNext(), startNext()]);
  // Learned (and the pool refilled) after the children started, so that no spare or standby starts while they do.
  pool?.want(request, options.count);
  // Files that could not be made: no child started; none is kept (as before any start began).
  const filesError = await filesMade.then(
    () => undefined,
    (error: unknown) => error ?? new Error('the fork files could not be made'),
  );
  if (filesError) {
    for (const fork of forks) await releaseMachine(fork);
    throw filesError;
  }
  // A child whose own start failed stays (its log says why); the fork reports the first failure.
  if (errors.length > 0) throw errors[0];
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
