/**
 * What a machine gets when nobody says otherwise, for every way of creating one (CLI `run`, the
 * session API and CLI, the runtime itself). Boot templates are keyed on cpus and memory, so these
 * defaults are also what the pre-made template fits.
 */
export const machineDefaults = {
  cpus: 1,
  memoryMiB: 512,
  /** The same as memoryMiB, as the CLI and API take it. */
  memory: '512m',
  /** Size of the sparse writable layer; machines with this size can start from a boot template. */
  diskGiB: 4,
  /** A session's machine is snapshotted and stopped after this long without a turn. */
  sessionIdleSeconds: 30,
} as const;
