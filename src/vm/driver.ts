import type { MachineSpec } from './machine-spec.ts';
import type { QmpClient } from './qmp.ts';

export interface VmExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The VMM's last words (stderr), for errors users can act on. */
  message: string;
}

/** A running VMM process. The supervisor owns it; nothing else talks to the VMM. */
export interface RunningVm {
  pid: number;
  qmp: QmpClient;
  exited: Promise<VmExit>;
  /** Ends the VMM process (by its pid, never by name). */
  kill(signal?: NodeJS.Signals): void;
}

/**
 * The seam for other VMMs: QEMU now; a Firecracker driver would map the same spec onto its REST API
 * over a unix socket (and its hybrid vsock for the agent channel) without touching the CLI.
 */
export interface VmDriver {
  readonly name: string;
  launch(spec: MachineSpec, options: { logPath: string }): Promise<RunningVm>;
}
