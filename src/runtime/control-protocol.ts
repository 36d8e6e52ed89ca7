import type { MachineState } from './machine-record.ts';

/** JSON requests a CLI sends to a machine's supervisor in `control` frames. */
export type ControlRequest =
  | { op: 'status' }
  | { op: 'attach' }
  | { op: 'stop'; timeoutSeconds?: number; signal?: number }
  | { op: 'kill'; signal?: number };

export interface ControlReply {
  ok: boolean;
  state: MachineState;
}
