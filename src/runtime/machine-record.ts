import { z } from 'zod';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../state/paths.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { isNodeError } from '../util/errors.ts';
import { networkPolicySchema } from '../network/policy.ts';

const portSchema = z.object({
  hostAddress: z.string(),
  hostPort: z.number().int(),
  guestPort: z.number().int(),
  protocol: z.enum(['tcp', 'udp']),
});

/** What the user asked for: fixed when the machine is created. */
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

/** What is happening to it: written by its supervisor, read by everyone else. */
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

export const machineFiles = (id: string) => {
  const directory = paths.machine(id);
  return {
    directory,
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

export async function readMachineConfig(id: string): Promise<MachineConfig> {
  return machineConfigSchema.parse(JSON.parse(await readFile(machineFiles(id).config, 'utf8')));
}

export async function readMachineState(id: string): Promise<MachineState> {
  try {
    return machineStateSchema.parse(JSON.parse(await readFile(machineFiles(id).state, 'utf8')));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return { status: 'created' };
    throw error;
  }
}

export async function writeMachineState(id: string, state: MachineState): Promise<void> {
  await writeJsonAtomic(machineFiles(id).state, state);
}
