import { access, mkdir, copyFile, rm } from 'node:fs/promises';
import { runCommand } from '../util/command.ts';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { memoryDirectory } from '../state/paths.ts';
import { TorporError } from '../util/errors.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { AgentClient } from '../guest/agent-client.ts';
import { materializeSnapshot, readSnapshot, removeSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import type { PortMapping } from '../vm/machine-spec.ts';
import { machineConfigSchema, machineFiles, writeMachineState, type MachineConfig } from './machine-record.ts';
import { releaseMachine } from './machine-removal.ts';
import type { SupervisorPool } from './supervisor-pool.ts';
import { bootTemplateName, findBootTemplate } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';
import { claimName, effectiveState, sendControl, startMachine } from './machines.ts';
import { validateMachineName, randomMachineName } from './run-options.ts';
import type { SnapshotSummary } from './control-protocol.ts';
import { prepareLazyRestore, releaseLazyMemory } from './lazy-restore.ts';
import { takeWarm } from './warm-memory.ts';

/** Saves a running machine whole (memory, processes, files) into the snapshot store. */
export async function snapshotMachine(
  config: MachineConfig,
  options: { name: string; stop?: boolean; replace?: boolean },
): Promise<SnapshotSummary> {
  const state = await effectiveState(config);
  if (state.status !== 'running') {
    throw new TorporError('not-running', `machine ${config.name} is ${state.status}: only a running machine can be snapshotted`, {
      hint: `torpor start ${config.name}`,
    });
  }
  const client = await AgentClient.connect(machineFiles(config.id).controlSocket, { timeoutMs: 2000 });
  try {
    const reply = await sendControl(client, { op: 'snapshot', name: options.name, stop: options.stop, replace: options.replace });
    return reply.snapshot!;
  } catch (error) {
    throw new TorporError('snapshot-failed', `snapshot of ${config.name} failed: ${(error as Error).message}`, {
      hint: 'the machine keeps running; see `torpor doctor` for disk space',
    });
  } finally {
    client.close();
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

export interface RestoreOptions {
  name?: string;
  ports?: PortMapping[];
  autoRemove?: boolean;
  /** Boot templates carry no main process; the restored machine starts this one. */
  startMain?: boolean;
  /** Overrides for a boot-template start: the new machine's own command, env, name... */
  configure?: (config: MachineConfig) => MachineConfig;
}

/**
 * Creates a machine from a snapshot: materializes its RAM into tmpfs and its disk layer, then lets
 * a supervisor load the device state and continue the guest where it was.
 */
export async function createMachineFromSnapshot(manifest: SnapshotManifest, options: RestoreOptions = {}): Promise<MachineConfig> {
  const parsed = machineConfigSchema.safeParse((manifest.metadata as { machine?: unknown }).machine);
  if (!parsed.success) throw new TorporError('snapshot-invalid', `snapshot ${manifest.name} has no machine description`, { hint: 'it was not made by `torpor snapshot`' });
  const original = parsed.data;
  for (const [what, path, hint] of [
    ['image', original.image.diskPath, `import or pull image ${original.image.reference} again (digest ${original.image.digest})`],
    ['guest kernel', original.kernelPath, 'apt-get install -y linux-image-cloud-amd64 (the snapshot needs the same kernel)'],
    ['initramfs', original.initramfsPath, 'the guest agent changed since the snapshot; snapshots restore only with the agent they were taken with'],
  ] as const) {
    if (!(await exists(path))) {
      throw new TorporError('snapshot-dependency-missing', `cannot restore ${manifest.name}: its ${what} is gone (${path})`, { hint });
    }
  }
  const name = options.name ?? randomMachineName();
  validateMachineName(name);
  const id = randomBytes(6).toString('hex');
  await claimName(name, id);
  const files = machineFiles(id);
  try {
    const mainStream = (manifest.metadata as { mainStream?: number }).mainStream;
    let config: MachineConfig = {
      ...original,
      id,
      name,
      hostname: options.name ? name : original.hostname,
      createdAt: new Date().toISOString(),
      ports: options.ports ?? original.ports,
      autoRemove: options.autoRemove ?? false,
      restore: { snapshot: manifest.name, mainStream, startMain: options.startMain ?? mainStream === undefined },
    };
    if (options.configure) config = options.configure(config);
    await mkdir(files.directory, { recursive: true });
    // Memory and disk are materialized when the machine starts (`materializeForRestore`).
    await writeJsonAtomic(files.config, config);
    await writeMachineState(id, { status: 'created' });
    return config;
  } catch (error) {
    await releaseMachine({ id, name });
    throw error;
  }
}

async function restoreSources(config: MachineConfig): Promise<{ manifest: SnapshotManifest; base?: { manifest: SnapshotManifest; memoryFile: string } }> {
  const manifest = await readSnapshot(config.restore!.snapshot);
  const templateName = bootTemplateName(config);
  const templateFile = templateMemoryFile(templateName);
  let base: { manifest: SnapshotManifest; memoryFile: string } | undefined;
  if (await exists(templateFile)) {
    const templateManifest = await findBootTemplate(templateName);
    if (templateManifest) base = { manifest: templateManifest, memoryFile: templateFile };
  }
  return { manifest, base };
}

/**
 * Writes the snapshot's disk layer and device state into a machine's own files, and its RAM: lazily
 * where the host can (an empty RAM file and a page map; QEMU's preloaded pager fills it as the guest
 * touches it), else materialized into tmpfs. Chunks the machine's boot template shares are copied
 * from the template's RAM kept in tmpfs, which is faster than decompressing them.
 */
export async function materializeForRestore(config: MachineConfig): Promise<void> {
  const { manifest, base } = await restoreSources(config);
  const files = machineFiles(config.id);
  const memoryFile = join(memoryDirectory(), `${config.id}.ram`);
  // A hibernation kept warm: its RAM file and disk layer are this snapshot's; only the device state is read.
  const warm = await takeWarm(manifest.id, memoryFile, files.layerDisk);
  if (warm && (!warm.loaded || (await prepareLazyRestore(manifest, config.id, memoryFile, base, warm.loaded)))) {
    try {
      await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
    } catch (error) {
      await releaseLazyMemory(config.id, memoryFile);
      throw error;
    }
    return;
  }
  const lazy = await prepareLazyRestore(manifest, config.id, memoryFile, base);
  try {
    await materializeSnapshot(manifest, { memoryFile: lazy ? undefined : memoryFile, diskFile: files.layerDisk, deviceStateFile: files.deviceState, base });
  } catch (error) {
    if (lazy) await releaseLazyMemory(config.id, memoryFile);
    throw error;
  }
}

/** Removes a snapshot; for a boot template also the RAM it keeps in tmpfs (its chunks go at the next gc). */
export async function deleteSnapshot(name: string): Promise<void> {
  await removeSnapshot(name);
  await rm(templateMemoryFile(name), { force: true });
}

export async function restoreMachine(snapshotName: string, options: RestoreOptions & { pool?: SupervisorPool } = {}): Promise<MachineConfig> {
  const manifest = await readSnapshot(snapshotName);
  const config = await createMachineFromSnapshot(manifest, options);
  await startMachine(config.id, { pool: options.pool });
  return config;
}

/** N live copies of a running machine, each independent from then on (own RAM file, disk, clock, RNG, name). */
export async function forkMachine(config: MachineConfig, options: { count: number; namePrefix?: string }): Promise<{ forks: MachineConfig[]; snapshot: SnapshotSummary }> {
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
  const firstMemory = join(memoryDirectory(), `${forks[0]!.id}.ram`);
  // A lazy first fork has an empty RAM file: each other fork gets its own page map instead of a copy.
  const { manifest, base } = await restoreSources(forks[0]!);
  const lazy = await exists(`${firstMemory}.map`);
  await Promise.all(
    forks.slice(1).map(async (fork) => {
      const files = machineFiles(fork.id);
      const memoryFile = join(memoryDirectory(), `${fork.id}.ram`);
      if (!lazy || !(await prepareLazyRestore(manifest, fork.id, memoryFile, base))) await runCommand('cp', ['--sparse=always', firstMemory, memoryFile]);
      await runCommand('cp', ['--sparse=always', first.layerDisk, files.layerDisk]);
      await copyFile(first.deviceState, files.deviceState);
    }),
  );
}
