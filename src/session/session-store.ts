import type Database from 'better-sqlite3';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';
import { openDurableDatabase } from './durable-database.ts';

export const sessionStates = ['creating', 'running', 'idle', 'hibernating', 'hibernated', 'waking', 'failed', 'deleted'] as const;
export type SessionState = (typeof sessionStates)[number];

export interface SessionSpec {
  image: string;
  command: string[];
  env: string[];
  cpus: number;
  memoryMiB: number;
  /** Size of the machine's writable layer; the runtime's default (4 GiB) when absent. */
  diskGiB?: number;
  /** Seconds of idleness after a turn before the machine is snapshotted and stopped. */
  idleSeconds: number;
  /** What the session's machine may reach (default: the public internet only); as `torpor run`'s network flags. */
  network?: SessionNetwork;
}

export interface SessionNetwork {
  mode?: 'user' | 'none' | 'unrestricted';
  /** Host loopback ports the agent reaches at 10.0.2.2, e.g. [11434] for `torpor dev-llm`. */
  allowHost?: (number | string)[];
  egressAllow?: string[];
  egressDeny?: string[];
}

/**
 * An agent session as the session store keeps it (machine, snapshot, timers, state). Not the
 * context log's `SessionRecord`, which describes a log (offsets, fork parent).
 */
export interface AgentSessionRecord {
  id: string;
  name: string;
  spec: SessionSpec;
  state: SessionState;
  machineId?: string;
  /** The snapshot the session sleeps in (one name per session, replaced on each hibernation: layering does the rest). */
  snapshot?: string;
  /** The context log's end offset when `snapshot` was taken. */
  snapshotLogOffset?: number;
  /** A durable timer: restore the machine at this time and tell the agent `wake` (sleep-until). */
  wakeAt?: string;
  /** Why the session is in its state, in words (a failure, a recovery, a fallback). */
  note?: string;
  turns: number;
  createdAt: string;
  updatedAt: string;
  lastActivityAt: string;
  parentId?: string;
}

interface Row {
  id: string;
  name: string;
  spec: string;
  state: SessionState;
  machine_id: string | null;
  snapshot: string | null;
  snapshot_log_offset: number | null;
  wake_at: string | null;
  note: string | null;
  turns: number;
  created_at: string;
  updated_at: string;
  last_activity_at: string;
  parent_id: string | null;
}

function fromRow(row: Row): AgentSessionRecord {
  return {
    id: row.id,
    name: row.name,
    spec: JSON.parse(row.spec) as SessionSpec,
    state: row.state,
    machineId: row.machine_id ?? undefined,
    snapshot: row.snapshot ?? undefined,
    snapshotLogOffset: row.snapshot_log_offset ?? undefined,
    wakeAt: row.wake_at ?? undefined,
    note: row.note ?? undefined,
    turns: row.turns,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastActivityAt: row.last_activity_at,
    parentId: row.parent_id ?? undefined,
  };
}

/**
 * The server's own durable state about sessions (their machines, snapshots and timers), beside the
 * context log. SQLite with synchronous=FULL: a state change is on disk before the server acts on it,
 * so a restarted server knows which sessions to recover and which timers to re-arm.
 *
 * Versioning: the table below is schema 1, created if missing and never migrated so far. A new
 * column must be nullable or defaulted and needs its own `ALTER TABLE ... ADD COLUMN`, run when
 * `PRAGMA user_version` says it is missing (then bump user_version): `CREATE TABLE IF NOT EXISTS`
 * does not change an existing table. The `spec` column is JSON (`SessionSpec`): new fields there
 * must be optional, because every stored session keeps the spec it was created with.
 */
// Fits SessionRecordStore (session-record-store.ts) by shape; naming it here would make the two files import each other.
export class SessionStore {
  private readonly database: Database.Database;

  constructor(path = join(stateHome(), 'sessions.db')) {
    this.database = openDurableDatabase(path);
    this.database.exec(`CREATE TABLE IF NOT EXISTS sessions (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL UNIQUE,
      spec TEXT NOT NULL,
      state TEXT NOT NULL,
      machine_id TEXT,
      snapshot TEXT,
      snapshot_log_offset INTEGER,
      wake_at TEXT,
      note TEXT,
      turns INTEGER NOT NULL DEFAULT 0,
      created_at TEXT NOT NULL,
      updated_at TEXT NOT NULL,
      last_activity_at TEXT NOT NULL,
      parent_id TEXT
    )`);
  }

  insert(record: AgentSessionRecord): void {
    this.database
      .prepare(
        `INSERT INTO sessions (id, name, spec, state, machine_id, snapshot, snapshot_log_offset, wake_at, note, turns, created_at, updated_at, last_activity_at, parent_id)
         VALUES (@id, @name, @spec, @state, @machine_id, @snapshot, @snapshot_log_offset, @wake_at, @note, @turns, @created_at, @updated_at, @last_activity_at, @parent_id)`,
      )
      .run(this.toRow(record));
  }

  private toRow(record: AgentSessionRecord): Row {
    return {
      id: record.id,
      name: record.name,
      spec: JSON.stringify(record.spec),
      state: record.state,
      machine_id: record.machineId ?? null,
      snapshot: record.snapshot ?? null,
      snapshot_log_offset: record.snapshotLogOffset ?? null,
      wake_at: record.wakeAt ?? null,
      note: record.note ?? null,
      turns: record.turns,
      created_at: record.createdAt,
      updated_at: record.updatedAt,
      last_activity_at: record.lastActivityAt,
      parent_id: record.parentId ?? null,
    };
  }

  update(id: string, patch: Partial<Omit<AgentSessionRecord, 'id' | 'createdAt'>>): AgentSessionRecord {
    const current = this.get(id);
    if (!current) throw new Error(`no session ${id}`);
    const next: AgentSessionRecord = { ...current, ...patch, updatedAt: new Date().toISOString() };
    for (const key of Object.keys(patch) as Array<keyof AgentSessionRecord>) {
      if (patch[key as keyof typeof patch] === undefined) delete next[key];
    }
    this.database
      .prepare(
        `UPDATE sessions SET name=@name, spec=@spec, state=@state, machine_id=@machine_id, snapshot=@snapshot, snapshot_log_offset=@snapshot_log_offset, wake_at=@wake_at, note=@note,
         turns=@turns, updated_at=@updated_at, last_activity_at=@last_activity_at, parent_id=@parent_id WHERE id=@id`,
      )
      .run(this.toRow(next));
    return next;
  }

  get(idOrName: string): AgentSessionRecord | undefined {
    const row = this.database.prepare('SELECT * FROM sessions WHERE id = ? OR name = ?').get(idOrName, idOrName) as Row | undefined;
    return row ? fromRow(row) : undefined;
  }

  list(options: { includeDeleted?: boolean } = {}): AgentSessionRecord[] {
    const rows = this.database.prepare(`SELECT * FROM sessions ${options.includeDeleted ? '' : "WHERE state != 'deleted'"} ORDER BY created_at`).all() as Row[];
    return rows.map(fromRow);
  }

  /** One server runs every session it knows. */
  holds(): boolean {
    return true;
  }

  /** No other node can take a session over, so appends need no fence. */
  logFence(): undefined {
    return undefined;
  }

  close(): void {
    this.database.close();
  }
}
