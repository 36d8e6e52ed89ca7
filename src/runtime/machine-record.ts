import { z } from 'zod';
import { networkPolicySchema } from '../network/policy-schema.ts';
import { machineStatuses } from './machine-statuses.ts';
import { tcgCpuModels } from '../vm/machine-spec.ts';

// The readers of config.json and state.json and the file layout live in machine-files.ts (no zod,
// for the fast commands); the statuses in machine-statuses.ts.
export type { MachineStatus } from './machine-statuses.ts';

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
  /** The image is given as read-only shared memory (virtio-pmem, DAX in the guest) of this size; absent: a block device (and every machine made before it existed). */
  imageMemoryBytes: z.number().int().positive().optional(),
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
  /**
   * Under tcg, the CPU model the guest was booted on (a name from a fixed list; anything else is
   * refused); absent: `max` (every machine and snapshot made before it existed). Ignored under kvm.
   */
  cpuModel: z.enum(tcgCpuModels).optional(),
  /**
   * The release of the QEMU that made the machine (`major.minor.micro`, from its `--version`): its
   * snapshots restore only under the same major.minor (snapshot-compatibility.ts). Absent in
   * machines and snapshots made before it existed: those are not checked.
   */
  qemuVersion: z
    .string()
    .regex(/^\d{1,4}\.\d{1,4}\.\d{1,4}$/)
    .optional(),
  /** Under kvm, the host CPU the guest ran on (`-cpu host`): a restore checks its features are all here. Absent under tcg and in older snapshots. */
  hostCpu: z.object({ model: z.string(), flags: z.array(z.string()) }).optional(),
  kernelPath: z.string(),
  initramfsPath: z.string(),
  kernelArguments: z.array(z.string()),
  bootTimeoutMs: z.number().int().positive(),
  /** Boot, then save the ready guest as this snapshot and stop: how boot templates are made. */
  captureTemplate: z.string().optional(),
  /**
   * A spare machine (spare-pool.ts): started and waiting, with no process, until a `run` with the
   * same settings claims it; `key` names its pool, `defaults` are its image's process defaults the
   * claim applies the user's overrides to. A claim removes the field (a spare is claimed once).
   */
  spare: z
    .object({
      key: z.string(),
      defaults: z.object({
        entrypoint: z.array(z.string()).optional(),
        cmd: z.array(z.string()).optional(),
        env: z.array(z.string()),
        workingDir: z.string().optional(),
        user: z.string().optional(),
      }),
    })
    .optional(),
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

/**
 * What is happening to it: written by its supervisor, read by everyone else (`state.json`). Only
 * live machines read it, so a change needs no migration, but a new field must stay optional: a
 * running supervisor of the previous version may still write the old shape.
 */
export const machineStateSchema = z.object({
  status: z.enum(machineStatuses),
  supervisorPid: z.number().int().optional(),
  qemuPid: z.number().int().optional(),
  /** Its QEMU's process name (`-name`) when that is not `torpor-<id>`: a standby QEMU (standby-qemu.ts) was started before it had a machine. */
  qemuName: z.string().optional(),
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
  /** The snapshot this machine was saved into when it stopped (snapshot --stop, hibernation), or, while `paused`, the one it is paused at. */
  snapshot: z.string().optional(),
  /** While `paused` (the paused tier): since when; a `resume` clears it. */
  pausedAt: z.string().optional(),
  /** When its last `resume` continued it. */
  resumedAt: z.string().optional(),
  /** When a `run` claimed this machine from the spare pool (its start was the spare's). */
  claimedAt: z.string().optional(),
  /** Milestones of the last start, in ms since the supervisor process started (processStartedAt: its epoch ms); for the start benchmark. */
  startTimings: z.record(z.string(), z.number()).optional(),
});
export type MachineState = z.infer<typeof machineStateSchema>;
