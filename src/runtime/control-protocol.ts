import type { MachineState } from './machine-record.ts';

/** JSON requests a CLI sends to a machine's supervisor in `control` frames. */
export type ControlRequest =
  | { op: 'status' }
  | { op: 'attach' }
  | { op: 'stop'; timeoutSeconds?: number; signal?: number }
  | { op: 'kill'; signal?: number }
  | { op: 'snapshot'; name: string; stop?: boolean; replace?: boolean; parent?: string };

export interface ControlReply {
  ok: boolean;
  state: MachineState;
  snapshot?: SnapshotSummary;
}

export interface SnapshotSummary {
  name: string;
  pauseMs: number;
  deviceStateMs: number;
  captureMs: number;
  totalMs: number;
  stats: Record<string, unknown>;
}
