import { readdir } from 'node:fs/promises';
import { paths } from '../state/paths.ts';
import { isNodeError } from '../util/errors.ts';
import { isLive, readMachineConfig, readMachineState } from './machine-files.ts';
import type { MachineConfig, MachineState } from './machine-record.ts';
import { qemuAlive, supervisorAlive } from './process-liveness.ts';

export interface MachineView {
  config: MachineConfig;
  state: MachineState;
}

/** The state on disk, corrected for processes that died without saying so (kill -9, reboot). */
export async function effectiveState(config: MachineConfig): Promise<MachineState> {
  const state = await readMachineState(config.id);
  if (!isLive(state.status)) return state;
  if (supervisorAlive(state)) return state;
  if (qemuAlive(config.id, state)) {
    // QEMU dies with its supervisor (PR_SET_PDEATHSIG, vm/qemu-driver.ts); this is the rare QEMU
    // whose supervisor died before that was set up, or one started without setpriv.
    return { ...state, error: 'its supervisor process died and QEMU is left running; `torpor stop` or `torpor rm -f` ends the machine' };
  }
  const error = state.supervisorPid
    ? `its supervisor (pid ${state.supervisorPid}) died, and QEMU with it`
    : 'the machine stopped without a trace (its processes were killed)';
  return { ...state, status: 'exited', exitCode: state.exitCode ?? 137, error: state.error ?? error };
}

/** Every machine of this state directory with its effective state, newest first. */
export async function listMachines(): Promise<MachineView[]> {
  let ids: string[] = [];
  try {
    ids = await readdir(paths.machines());
  } catch (error) {
    if (!isNodeError(error, 'ENOENT')) throw error;
  }
  const views: MachineView[] = [];
  for (const id of ids) {
    try {
      const config = await readMachineConfig(id);
      views.push({ config, state: await effectiveState(config) });
    } catch {
      // a machine being created or removed right now
    }
  }
  return views.sort((a, b) => b.config.createdAt.localeCompare(a.config.createdAt));
}

/** Polls a machine's effective state until `done` holds; undefined after `timeoutMs`. */
export async function waitForStatus(id: string, done: (state: MachineState) => boolean, timeoutMs: number): Promise<MachineState | undefined> {
  const config = await readMachineConfig(id);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const state = await effectiveState(config);
    if (done(state)) return state;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return undefined;
}
