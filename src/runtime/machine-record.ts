import { z } from 'zod';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paths, memoryDirectory } from '../state/paths.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { isNodeError } from '../util/errors.ts';
import { networkPolicySchema } from '../network/policy.ts';

const portSchema = z.object({
  hostAddress: z.string(),
  hostPort: z.number().int(),
  guestPort: z.number().int(),
  protocol: z.enum(['tcp', 'udp']),
});

/**
 * What the user asked for: fixed when the machine is created.
 *
 * Persisted twice: as each machine's `config.json`, and inside every snapshot's manifest
 * (`metadata.machine`), which may be restored long after it was taken. Versioning: a new field must
 * be optional (or defaulted here) so that older configs and snapshots still parse; renaming or
 * removing a field, or changing a field's meaning, breaks every stored snapshot and needs a
 * conversion of the old shape in `createMachineFromSnapshot` (which refuses what it cannot parse
 * with `snapshot-invalid`). The devices a config implies (vm/qemu-command.ts) are part of the
 * snapshot format too: a restore must build the same devices.
 */
export const machineConfigSchema = z.object({
  id: z.string(),
  name: z.string(),
  createdAt: z.string(),
  image: z.object({ reference: z.string(), digest: z.string(), diskPath: z.string() }),
  command: z.array(z.string()),
  env: z.array(z.string()),
  workingDir: z.string(),
  user: z.string(),
  hostname: z.string(),
  tty: z.boolean(),
  interactive: z.boolean(),
  cpus: z.number().int().positive(),
  memoryMiB: z.number().int().positive(),
  ports: z.array(portSchema),
  network: z.boolean(),
  /** What the guest may reach when `network` is on; absent (machines and snapshots made before it existed) means the default filter. */
  networkPolicy: networkPolicySchema.optional(),
  autoRemove: z.boolean(),
  accelerator: z.enum(['kvm', 'tcg']),
  kernelPath: z.string(),
  initramfsPath: z.string(),
  kernelArguments: z.array(z.string()),
  bootTimeoutMs: z.number().int().positive(),
  /** Boot, then save the ready guest as this snapshot and stop: how boot templates are made. */
  captureTemplate: z.string().optional(),
  /** Start from a snapshot instead of a cold boot (restore, fork, boot template). */
  restore: z
    .object({
      snapshot: z.string(),
      /** The guest stream of the main process that was running when the snapshot was taken. */
      mainStream: z.number().int().optional(),
      /** A boot template has no main process yet: start it after the restore. */
      startMain: z.boolean(),
    })
    .optional(),
});
export type MachineConfig = z.infer<typeof machineConfigSchema>;

export const machineStatuses = ['created', 'starting', 'running', 'stopping', 'exited', 'failed'] as const;
export type MachineStatus = (typeof machineStatuses)[number];

/** The statuses in which a machine has (or should have) a supervisor and a QEMU process. */
export const liveStatuses: readonly MachineStatus[] = ['starting', 'running', 'stopping'];

/** Whether a machine in this status holds processes (and so cannot be started or removed as is). */
export function isLive(status: MachineStatus): boolean {
  return liveStatuses.includes(status);
}

/**
 * What is happening to it: written by its supervisor, read by everyone else (`state.json`). Only
 * live machines read it, so a change needs no migration, but a new field must stay optional: a
 * running supervisor of the previous version may still write the old shape.
 */
export const machineStateSchema = z.object({
  status: z.enum(machineStatuses),
  supervisorPid: z.number().int().optional(),
  qemuPid: z.number().int().optional(),
  startedAt: z.string().optional(),
  readyAt: z.string().optional(),
  finishedAt: z.string().optional(),
  bootMs: z.number().optional(),
  exitCode: z.number().int().optional(),
  error: z.string().optional(),
  /** Set when the start should wait for a client to attach to the main process first (foreground run). */
  waitForAttach: z.boolean().optional(),
  /** Restore only once: a later `start` boots cold on the machine's own disk. */
  restored: z.boolean().optional(),
  /** The uid its QEMU runs as, which its network rules match (released when it stops). */
  networkUid: z.number().int().optional(),
  /** The snapshot this machine was saved into when it stopped (snapshot --stop, hibernation). */
  snapshot: z.string().optional(),
});
export type MachineState = z.infer<typeof machineStateSchema>;

/**
 * Every file a machine owns, in one place: its directory in the state directory, and its RAM file
 * in tmpfs (guest RAM lives there so a snapshot can take it without copying it through QEMU).
 */
export const machineFiles = (id: string) => {
  const directory = paths.machine(id);
  return {
    directory,
    memoryFile: join(memoryDirectory(), `${id}.ram`),
    config: join(directory, 'config.json'),
    state: join(directory, 'state.json'),
    layerDisk: join(directory, 'layer.ext4'),
    agentSocket: join(directory, 'agent.sock'),
    qmpSocket: join(directory, 'qmp.sock'),
    controlSocket: join(directory, 'control.sock'),
    consoleLog: join(directory, 'console.log'),
    processLog: join(directory, 'process.log'),
    supervisorLog: join(directory, 'supervisor.log'),
    deviceState: join(directory, 'device-state.bin'),
    /** QEMU's migration socket, when torpor is not root (as root it is under /run: see network/machine-confinement.ts). */
    qemuDirectory: join(directory, 'qemu'),
  };
};

/** Reads and validates a machine's config.json (throws if it is missing or malformed). */
export async function readMachineConfig(id: string): Promise<MachineConfig> {
  return machineConfigSchema.parse(JSON.parse(await readFile(machineFiles(id).config, 'utf8')));
}

/** Reads a machine's state.json; a machine without one is "created". */
export async function readMachineState(id: string): Promise<MachineState> {
  try {
    return machineStateSchema.parse(JSON.parse(await readFile(machineFiles(id).state, 'utf8')));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return { status: 'created' };
    throw error;
  }
}

/** Replaces a machine's state.json atomically (readers never see half a file). */
export async function writeMachineState(id: string, state: MachineState): Promise<void> {
  await writeJsonAtomic(machineFiles(id).state, state);
}
