import { readFile, stat } from 'node:fs/promises';
import { environment } from '../config/environment.ts';
import { machineFiles, readMachineState } from './machine-files.ts';
import { warmBudgetBytes } from './warm-memory.ts';

// The paused tier: a hibernated session's QEMU kept alive but stopped (status `paused`) after its
// snapshot is durable, so that its wake is a `cont` in the same process instead of a restore. Under
// TCG that keeps the translated guest code too, which a new QEMU has to translate again. It shares
// the warm tier's budget (TORPOR_WARM_MEMORY): what a paused machine holds is host memory.

/** Whether hibernations may keep their machine paused: the warm budget is on and TORPOR_PAUSED_MACHINES is not 0. */
export function pausedTierEnabled(): boolean {
  return warmBudgetBytes() > 0 && environment().TORPOR_PAUSED_MACHINES;
}

/** Bytes of host memory the paused tier may hold (0 when it is off). */
export function pausedBudgetBytes(): number {
  return pausedTierEnabled() ? warmBudgetBytes() : 0;
}

/**
 * What keeping a machine costs the host: its RAM file's allocated tmpfs pages plus its QEMU's
 * anonymous memory (translation cache, device state, heap). Guest RAM is a shared file mapping,
 * counted as the file, not in RssAnon, so nothing is counted twice.
 */
export async function machineMemoryBytes(machineId: string): Promise<number> {
  const state = await readMachineState(machineId).catch(() => undefined);
  const ram = await stat(machineFiles(machineId).memoryFile).then(
    (status) => status.blocks * 512,
    () => 0,
  );
  const anonymous = state?.qemuPid
    ? await readFile(`/proc/${state.qemuPid}/status`, 'utf8').then(
        (text) => Number(/^RssAnon:\s+(\d+)\s+kB/m.exec(text)?.[1] ?? 0) * 1024,
        () => 0,
      )
    : 0;
  return ram + anonymous;
}
