/** A machine's lifecycle statuses (state.json's `status`); no imports, so every layer of runtime/ may use it. */
/** `paused`: QEMU kept alive but stopped after a hibernation snapshot (the paused tier); a `resume` continues it. */
export const machineStatuses = ['created', 'starting', 'running', 'paused', 'stopping', 'exited', 'failed'] as const;
export type MachineStatus = (typeof machineStatuses)[number];

/** The statuses in which a machine has (or should have) a supervisor and a QEMU process. */
export const liveStatuses: readonly MachineStatus[] = ['starting', 'running', 'paused', 'stopping'];

/** Whether a machine in this status holds processes (and so cannot be started or removed as is). */
export function isLive(status: MachineStatus): boolean {
  return liveStatuses.includes(status);
}
