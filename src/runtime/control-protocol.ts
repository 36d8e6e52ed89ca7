import type { MachineState } from './machine-record.ts';

/** JSON requests a CLI sends to a machine's supervisor in `control` frames. */
export type ControlRequest =
  | { op: 'status' }
  | { op: 'attach' }
  | { op: 'stop'; timeoutSeconds?: number; signal?: number }
  | { op: 'kill'; signal?: number }
  /**
   * `keepPaused` (only with `stop`): capture as a hibernation, then leave QEMU alive and stopped
   * (status `paused`) instead of ending it, so that a `resume` continues it without a restore.
   */
  | { op: 'snapshot'; name: string; stop?: boolean; keepPaused?: boolean; replace?: boolean; parent?: string }
  /** A `paused` machine runs again: `cont`, then the guest gets a new clock and RNG seed. */
  | { op: 'resume' }
  /** A spare machine is now the caller's: its config.json holds the user's settings (spare-pool.ts). */
  | { op: 'claim' }
  /** A spare taken but not usable (wrong request): end it. */
  | { op: 'discard' };

export interface ControlReply {
  ok: boolean;
  state: MachineState;
  snapshot?: SnapshotSummary;
}

export interface SnapshotSummary {
  name: string;
  /** how long the guest did not run: stop to cont (absent for a hibernation, which does not continue) */
  guestPausedMs?: number;
  /** the guest ran while RAM and disk were captured (copy-before-write) */
  capturedBesideGuest?: boolean;
  /** with `capturedBesideGuest`: the disk layer was copied by QEMU's job beside the guest (`job`) or here while paused (`copy`) */
  diskCapture?: 'job' | 'copy';
  /**
   * Where `guestPausedMs` went, in ms: stopMs (QMP stop), deviceStateMs, pagerStatusMs (write
   * tracking's flags), freezeMs, diskJobMs (starting QEMU's disk copy; diskJobCommandsMs its two QMP commands), extentsMs and diskCopyMs
   * (the paused copy), captureMs and protectMs (a capture with the guest paused), resumeMs (cont).
   */
  pausedPhases?: Record<string, number>;
  pauseMs: number;
  deviceStateMs: number;
  captureMs: number;
  totalMs: number;
  stats: Record<string, unknown>;
}
