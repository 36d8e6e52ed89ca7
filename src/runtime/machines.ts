/**
 * The machine operations the shells (CLI, API, sessions) use, in one import. Each lives in the file
 * of its concept; this file only gathers them and must not import snapshots.ts (which sits above).
 *
 *   machine-record      config.json / state.json, a machine's files, live statuses
 *   supervisor-process  starting and recognising supervisor processes, warm spares
 *   machine-status      effective state (dead processes noticed), listing
 *   supervisor-client   talking to a running machine's supervisor
 *   machine-names       name claims, lookup by name or id prefix
 *   host-preparation    guest artifacts, accelerator choice, tmpfs and port checks
 *   machine-creation    new machines, from an image or a snapshot
 *   machine-start       handing a machine to a supervisor and waiting for its guest
 *   machine-stop        stop, kill, remove
 */
export type { CreateMachineOptions } from './machine-creation.ts';
export { createMachine } from './machine-creation.ts';
export type { MachineView } from './machine-status.ts';
export { effectiveState, listMachines } from './machine-status.ts';
export { claimName, findMachine } from './machine-names.ts';
export { prepareHost } from './host-preparation.ts';
export { createSupervisorPool } from './supervisor-process.ts';
export { connectToMachine, sendControl } from './supervisor-client.ts';
export { startMachine } from './machine-start.ts';
export { stopMachine, killMachine, removeMachine } from './machine-stop.ts';
