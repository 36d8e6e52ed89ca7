import type Database from 'better-sqlite3';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';
import { openDurableDatabase } from './durable-database.ts';

/** A machine snapshot taken right after a turn ended, and where the context log stood then. */
export interface TurnSnapshot {
  sessionId: string;
  turn: number;
  snapshot: string;
  logOffset: number;
  takenAt: string;
}

interface Row {
  session_id: string;
  turn: number;
  snapshot: string;
  log_offset: number;
  taken_at: string;
}

/**
 * The per-turn snapshots of sessions (rewind: fork a session as it was after turn N). Kept apart
 * from the session records: a session has one current snapshot, but up to the retention's worth
 * of past turns. Each snapshot is layered on the one before it, so a turn costs what it changed.
 */
export class TurnHistory {
  private readonly database: Database.Database;

  constructor(path = join(stateHome(), 'turn-snapshots.db')) {
    this.database = openDurableDatabase(path);
    this.database.exec(`CREATE TABLE IF NOT EXISTS turn_snapshots (
      session_id TEXT NOT NULL,
      turn INTEGER NOT NULL,
      snapshot TEXT NOT NULL,
      log_offset INTEGER NOT NULL,
      taken_at TEXT NOT NULL,
      PRIMARY KEY (session_id, turn)
    )`);
  }

  record(entry: Omit<TurnSnapshot, 'takenAt'>): void {
    this.database
      .prepare('INSERT OR REPLACE INTO turn_snapshots (session_id, turn, snapshot, log_offset, taken_at) VALUES (?, ?, ?, ?, ?)')
      .run(entry.sessionId, entry.turn, entry.snapshot, entry.logOffset, new Date().toISOString());
  }

  /** Oldest first. */
  list(sessionId: string): TurnSnapshot[] {
    return this.database
      .prepare<[string], Row>('SELECT * FROM turn_snapshots WHERE session_id = ? ORDER BY turn')
      .all(sessionId)
      .map((row) => ({ sessionId: row.session_id, turn: row.turn, snapshot: row.snapshot, logOffset: row.log_offset, takenAt: row.taken_at }));
  }

  find(sessionId: string, turn: number): TurnSnapshot | undefined {
    return this.list(sessionId).find((entry) => entry.turn === turn);
  }

  remove(sessionId: string, turn: number): void {
    this.database.prepare('DELETE FROM turn_snapshots WHERE session_id = ? AND turn = ?').run(sessionId, turn);
  }

  /** Whether any session's history still needs this snapshot. */
  uses(snapshot: string): boolean {
    return this.database.prepare<[string], { found: number }>('SELECT 1 AS found FROM turn_snapshots WHERE snapshot = ? LIMIT 1').get(snapshot) !== undefined;
  }

  close(): void {
    this.database.close();
  }
}
