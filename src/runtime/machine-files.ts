import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paths, memoryDirectory } from '../state/paths.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import type { MachineConfig, MachineState } from './machine-record.ts';

// A machine's files and the reading of its config.json and state.json, without zod: `torpor ps`,
// `logs` and `exec` read them and must start in a few tens of milliseconds, which loading zod alone
// would exceed. These files are torpor's own, written atomically from validated values, so a check
// of the fields every reader relies on is enough; untrusted machine descriptions (those inside
// snapshots) are still parsed with the full schema in machine-record.ts.

import { machineStatuses, type MachineStatus } from './machine-statuses.ts';
import { tcgCpuModels } from '../vm/machine-spec.ts';

export { machineStatuses, liveStatuses, isLive, type MachineStatus } from './machine-statuses.ts';

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
    migrationSocket: join(directory, 'migration.sock'),
    /** QEMU's migration socket, when torpor is not root (as root it is under /run: see network/machine-confinement.ts). */
    qemuDirectory: join(directory, 'qemu'),
  };
};

const isObject = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

function invalid(path: string, what: string): TorporError {
  return new TorporError('machine-record-invalid', `${path} is not a valid machine record: ${what}`, {
    hint: 'it was changed by hand or by another torpor version; `torpor rm -f` the machine',
  });
}

/** Reads a machine's config.json (throws if it is missing or lacks the fields every reader uses). */
export async function readMachineConfig(id: string): Promise<MachineConfig> {
  const path = machineFiles(id).config;
  const value: unknown = JSON.parse(await readFile(path, 'utf8'));
  if (!isObject(value)) throw invalid(path, 'not an object');
  for (const field of ['id', 'name', 'createdAt', 'workingDir', 'user', 'hostname', 'accelerator']) {
    if (typeof value[field] !== 'string') throw invalid(path, `${field} is not text`);
  }
  for (const field of ['cpus', 'memoryMiB']) if (typeof value[field] !== 'number') throw invalid(path, `${field} is not a number`);
  for (const field of ['command', 'env', 'ports']) if (!Array.isArray(value[field])) throw invalid(path, `${field} is not a list`);
  if (!isObject(value.image) || typeof value.image.reference !== 'string') throw invalid(path, 'image is not an image reference');
  if (value.id !== id) throw invalid(path, `it names machine ${String(value.id)}`);
  // Becomes part of QEMU's command line: only a name from the fixed list.
  if (value.cpuModel !== undefined && !(tcgCpuModels as readonly unknown[]).includes(value.cpuModel))
    throw invalid(path, `cpuModel is not one of ${tcgCpuModels.join(', ')}`);
  return value as unknown as MachineConfig;
}

/** Reads a machine's state.json; a machine without one is "created". */
export async function readMachineState(id: string): Promise<MachineState> {
  const path = machineFiles(id).state;
  let value: unknown;
  try {
    value = JSON.parse(await readFile(path, 'utf8'));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return { status: 'created' };
    throw error;
  }
  if (!isObject(value) || !machineStatuses.includes(value.status as MachineStatus)) throw invalid(path, 'unknown status');
  for (const field of ['supervisorPid', 'qemuPid', 'exitCode', 'bootMs']) {
    if (value[field] !== undefined && typeof value[field] !== 'number') throw invalid(path, `${field} is not a number`);
  }
  return value as unknown as MachineState;
}

/**
 * Replaces a machine's state.json atomically (readers never see half a file), without fsync: a
 * start writes it four times, and under other disk traffic each durable write took tens of ms. Only
 * a host crash can bring back an older state, and a host crash ends the machine's processes anyway,
 * which `effectiveState` reports from the dead pids whatever the file says.
 */
export async function writeMachineState(id: string, state: MachineState): Promise<void> {
  // Loaded on the first write: the readers (`torpor ps`) then do without node:crypto (~6 ms to load).
  const { replaceFile } = await import('../util/atomic-file.ts');
  await replaceFile(machineFiles(id).state, JSON.stringify(state, null, 2) + '\n');
}
