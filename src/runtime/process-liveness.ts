import { processMatches } from '../util/process-identity.ts';
import type { MachineState } from './machine-record.ts';

// Whether a machine's processes still run: read by `torpor ps` for every machine, so this file
// imports nothing else (starting supervisors is supervisor-process.ts, with child_process and the
// bundle builder, which `ps` does not need).

/**
 * Supervisors are recognised by pid plus this word in their command line (spares learn their
 * machine's id only later, so the id is not in it).
 */
export const supervisorMarker = 'supervisor';

/** Whether the supervisor a machine's state names is still that process (not a reused pid). */
export function supervisorAlive(state: MachineState): boolean {
  return processMatches(state.supervisorPid, supervisorMarker);
}

/** Whether a machine's QEMU (recognised by its `torpor-<id>` process name, or the one its state records) is still running. */
export function qemuAlive(id: string, state: MachineState): boolean {
  return processMatches(state.qemuPid, qemuMarker(id, state));
}

/** What a machine's QEMU has in its command line: `-name torpor-<id>`, or the standby name it was started with. */
export function qemuMarker(id: string, state: MachineState): string {
  return state.qemuName ?? `torpor-${id}`;
}
