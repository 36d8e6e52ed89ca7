import { rm } from 'node:fs/promises';
import { TorporError } from '../util/errors.ts';
import { signalIfMatches } from '../util/process-identity.ts';
import { type MachineConfig, type MachineState } from './machine-record.ts';
import { isLive, machineFiles, readMachineState, writeMachineState } from './machine-files.ts';
import { releaseMachine } from './machine-removal.ts';
import { releaseLazyMemory } from './lazy-restore.ts';
import { releaseConfinement } from '../network/machine-confinement.ts';
import { qemuAlive, qemuMarker, supervisorAlive, supervisorMarker } from './process-liveness.ts';
import { effectiveState, waitForStatus } from './machine-status.ts';
import { connectToSupervisor, sendControl } from './supervisor-client.ts';

/**
 * Asks a machine's supervisor to stop the guest (the main process gets SIGTERM, then `timeoutSeconds`),
 * and kills it by pid if that does not work.
 */
export async function stopMachine(config: MachineConfig, options: { timeoutSeconds?: number } = {}): Promise<MachineState> {
  const state = await effectiveState(config);
  if (!isLive(state.status)) return state;
  const timeoutSeconds = options.timeoutSeconds ?? 10;
  if (supervisorAlive(state) && (state.status === 'running' || state.status === 'paused')) {
    try {
      const client = await connectToSupervisor(config.id);
      await sendControl(client, { op: 'stop', timeoutSeconds }).catch(() => undefined);
      client.close();
    } catch {
      // fall through to signals
    }
    const stopped = await waitForStatus(config.id, (current) => current.status === 'exited' || current.status === 'failed', (timeoutSeconds + 10) * 1000);
    if (stopped) return stopped;
  }
  return killMachine(config);
}

/** Ends a machine by its recorded pids (never by name) and records it as exited. */
export async function killMachine(config: MachineConfig): Promise<MachineState> {
  const state = await readMachineState(config.id);
  signalIfMatches(state.supervisorPid, supervisorMarker, 'SIGKILL');
  signalIfMatches(state.qemuPid, qemuMarker(config.id, state), 'SIGKILL');
  for (let attempt = 0; attempt < 100 && qemuAlive(config.id, state); attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const files = machineFiles(config.id);
  await rm(files.memoryFile, { force: true });
  await releaseLazyMemory(config.id, files.memoryFile);
  // A supervisor killed with -9 left its QEMU uid claimed and its rules in place.
  await releaseConfinement(config.id);
  for (const socket of [files.controlSocket, files.agentSocket, files.qmpSocket]) await rm(socket, { force: true });
  const final: MachineState = {
    ...state,
    status: 'exited',
    exitCode: state.status === 'exited' ? state.exitCode : 137,
    finishedAt: state.finishedAt ?? new Date().toISOString(),
    error: state.status === 'exited' ? state.error : 'killed',
    networkUid: undefined,
  };
  await writeMachineState(config.id, final);
  return final;
}

/** Deletes a machine and everything it owns; a live one only with `force` (it is killed first). */
export async function removeMachine(config: MachineConfig, options: { force?: boolean } = {}): Promise<void> {
  const state = await effectiveState(config);
  if (isLive(state.status)) {
    if (!options.force) {
      throw new TorporError('machine-running', `machine ${config.name} is ${state.status}`, { hint: `stop it first, or use torpor rm -f ${config.name}` });
    }
    await killMachine(config);
  } else {
    // Its processes are gone, but one killed mid-start (or whose supervisor was killed) may have
    // left a uid claim and rules behind.
    await releaseConfinement(config.id);
  }
  await releaseMachine(config);
}
