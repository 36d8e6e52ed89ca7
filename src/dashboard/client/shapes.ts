// The JSON the dashboard's routes answer with. Types only: the server and the browser bundle both
// import this file, so it must not touch Node or the DOM.

export type SessionState = 'creating' | 'running' | 'idle' | 'hibernating' | 'hibernated' | 'waking' | 'failed' | 'deleted';

export interface SessionView {
  id: string;
  name: string;
  state: SessionState;
  image: string;
  turns: number;
  machineId?: string;
  snapshot?: string;
  wakeAt?: string;
  note?: string;
  parentId?: string;
  createdAt: string;
  lastActivityAt: string;
  /** Compressed bytes of the session's snapshot: all it references, and what only it holds. */
  storedBytes?: { referenced: number; exclusive: number };
}

/** One thing the server saw happen to a session, in the order it happened. */
export type HistoryEvent =
  | { at: string; kind: 'state'; from?: SessionState; state: SessionState; turns: number; wakeAt?: string }
  | { at: string; kind: 'snapshot'; snapshot: string; newBytes?: number; milliseconds?: number; referencedBytes?: number; memoryBytes?: number }
  | { at: string; kind: 'note'; note: string }
  | { at: string; kind: 'turn'; turns: number };

/** A stretch of time a session spent in one state. `to` is missing for the state it is in now. */
export interface StateSpan {
  state: SessionState;
  from: string;
  to?: string;
  /** A hibernation a rate limit asked for (sleep-until), with the time it asked to wake. */
  wakeAt?: string;
}

/** A mark on the timeline that is an instant, not a span. */
export interface TimelineMark {
  at: string;
  kind: 'snapshot' | 'crash' | 'recovery' | 'note';
  label: string;
}

/** One finished turn: how long the wake before it took and what the session stored by then. */
export interface TurnPoint {
  turn: number;
  at: string;
  /** Milliseconds from `waking` to running, when this turn needed a wake. */
  wakeMilliseconds?: number;
  /** Compressed bytes of the session's snapshot as of this turn (everything it references). */
  storedBytes?: number;
}

export interface SessionTimeline {
  spans: StateSpan[];
  marks: TimelineMark[];
  turns: TurnPoint[];
  wakes: Array<{ at: string; milliseconds: number }>;
  snapshots: Array<{ at: string; snapshot: string; newBytes?: number; milliseconds?: number }>;
}

export interface SessionDetail {
  session: SessionView;
  history: HistoryEvent[];
  timeline: SessionTimeline;
}

export interface MachineRow {
  id: string;
  name: string;
  image: string;
  status: string;
  exitCode?: number;
  error?: string;
  cpus: number;
  memoryMiB: number;
  accelerator: string;
  startedAt?: string;
  createdAt: string;
}

export interface SnapshotRow {
  name: string;
  createdAt: string;
  machine?: string;
  parent?: string;
  memoryBytes: number;
  newBytes?: number;
  referencedBytes: number;
  exclusiveBytes: number;
  /** Referenced but not exclusive: held together with other snapshots (layering, forks). */
  sharedBytes: number;
}

export interface MachinesView {
  machines: MachineRow[];
  snapshots: SnapshotRow[];
  store: { chunks: number; bytes: number };
}

export interface HostView {
  cpu: { model: string; count: number; loadAverage: number[] };
  memory: { totalBytes: number; freeBytes: number };
  tmpfs: { path: string; totalBytes: number; freeBytes: number } | { path: string; error: string };
  store: { path: string; chunks: number; bytes: number; diskTotalBytes?: number; diskFreeBytes?: number };
  accelerator: { name: string; reason: string } | { error: string };
  doctor: Array<{ name: string; ok: boolean; detail: string; fix?: string }>;
}
