import { EventEmitter } from 'node:events';
import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { waitForSessionAppend } from './append-wait.ts';
import { FileBlobStore, type BlobStore } from './blob-store.ts';
import {
  ContextLogError,
  DatabaseLockedError,
  OffsetBeyondEndError,
  OffsetConflictError,
  ProducerSequenceReusedError,
  SessionExistsError,
  StorageReadOnlyError,
  StorageUnavailableError,
  UnknownSessionError,
} from './errors.ts';
import { decideProducer } from './producer.ts';
import { ensureDirectory } from './state-directory.ts';
import { chainSegments, type AppendCommand, type AppendOutcome, type LogStorage, type SessionRecord, type StoredRow } from './storage.ts';

export interface SqliteStorageOptions {
  /** Path of the database file; its directory is created if missing. */
  path: string;
  /** Where oversized entries go; defaults to a `blobs` directory beside the database. */
  blobDirectory?: string;
  /** How long a writer waits for another process's write lock before failing with DatabaseLockedError. */
  busyTimeoutMs?: number;
  /** How often a tail checks for appends made by other processes (same-process appends wake it at once). */
  pollIntervalMs?: number;
  readOnly?: boolean;
}

interface SessionRow {
  key: number;
  id: string;
  parent_key: number | null;
  fork_offset: number | null;
  next_offset: number;
  created_at: number;
}

/**
 * better-sqlite3 is synchronous: its busy handler would freeze the whole process (an API server
 * included) while another process holds the write lock. So SQLite itself waits only briefly and
 * the wait up to busyTimeoutMs happens here, asynchronously, between attempts.
 */
const lockSliceMs = 10;

const schema = `
CREATE TABLE IF NOT EXISTS sessions (
  key INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  parent_key INTEGER REFERENCES sessions(key),
  fork_offset INTEGER,
  next_offset INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
  session_key INTEGER NOT NULL,
  position INTEGER NOT NULL,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  appended_at INTEGER NOT NULL,
  PRIMARY KEY (session_key, position)
);
CREATE INDEX IF NOT EXISTS entries_summaries ON entries (session_key, position) WHERE kind = 'summary';
CREATE TABLE IF NOT EXISTS producers (
  session_key INTEGER NOT NULL,
  producer_id TEXT NOT NULL,
  epoch INTEGER NOT NULL,
  last_sequence INTEGER NOT NULL,
  PRIMARY KEY (session_key, producer_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producer_batches (
  session_key INTEGER NOT NULL,
  producer_id TEXT NOT NULL,
  epoch INTEGER NOT NULL,
  sequence INTEGER NOT NULL,
  first_position INTEGER NOT NULL,
  count INTEGER NOT NULL,
  digest TEXT NOT NULL,
  PRIMARY KEY (session_key, producer_id, epoch, sequence)
) WITHOUT ROWID;
`;

/** Maps SQLite's error codes onto errors that say what to do; anything else passes through. */
export function translateSqliteError(error: unknown, path: string): unknown {
  if (error instanceof ContextLogError) return error;
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !code.startsWith('SQLITE_')) return error;
  const options = { cause: error };
  if (code === 'SQLITE_BUSY' || code.startsWith('SQLITE_BUSY_') || code === 'SQLITE_LOCKED') return new DatabaseLockedError(`${path}: ${code}`, options);
  if (code === 'SQLITE_READONLY_DBMOVED')
    return new StorageUnavailableError(`${path} was deleted or moved while open; restart with the file back in place`, options);
  if (code.startsWith('SQLITE_READONLY')) return new StorageReadOnlyError(`${path}: ${code}`, options);
  if (code === 'SQLITE_FULL') return new StorageReadOnlyError(`${path}: the disk is full`, options);
  if (code.startsWith('SQLITE_CANTOPEN') || code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT') || code.startsWith('SQLITE_IOERR')) {
    return new StorageUnavailableError(`${path}: ${code} ${(error as Error).message}`, options);
  }
  return error;
}

/**
 * The default backend: one SQLite file in WAL mode with synchronous=FULL, so a commit is on disk
 * when append returns and readers in other processes never block the writer.
 */
export class SqliteStorage implements LogStorage {
  readonly kind = 'sqlite' as const;
  readonly blobs: BlobStore;
  readonly path: string;
  private readonly database: Database.Database;
  private readonly events = new EventEmitter();
  private readonly pollIntervalMs: number;
  private readonly chains = new Map<string, Array<{ key: number; forkOffset: number | null }>>();
  private readonly statements;
  private closed = false;
  private readonly busyTimeoutMs: number;
  private identity: { device: number; inode: number } | undefined;

  constructor(options: SqliteStorageOptions) {
    this.path = options.path;
    this.pollIntervalMs = options.pollIntervalMs ?? 50;
    this.busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    this.events.setMaxListeners(0);
    try {
      if (!options.readOnly) ensureDirectory(dirname(options.path));
      this.database = new Database(options.path, {
        readonly: options.readOnly ?? false,
        fileMustExist: options.readOnly ?? false,
        timeout: options.busyTimeoutMs ?? 5000,
      });
      if (!options.readOnly) {
        this.database.pragma('journal_mode = WAL');
        this.database.exec(schema);
      }
      this.database.pragma('synchronous = FULL');
      // Opening may wait the full timeout (nothing else runs yet); appends wait asynchronously.
      this.database.pragma(`busy_timeout = ${lockSliceMs}`);
      const stats = statSync(options.path);
      this.identity = { device: stats.dev, inode: stats.ino };
    } catch (error) {
      throw translateSqliteError(error, options.path);
    }
    this.blobs = new FileBlobStore(options.blobDirectory ?? `${dirname(options.path)}/blobs`);
    const database = this.database;
    this.statements = {
      sessionById: database.prepare<[string], SessionRow>('SELECT key, id, parent_key, fork_offset, next_offset, created_at FROM sessions WHERE id = ?'),
      sessionByKey: database.prepare<[number], SessionRow>('SELECT key, id, parent_key, fork_offset, next_offset, created_at FROM sessions WHERE key = ?'),
      listSessions: database.prepare<[], SessionRow & { parent_id: string | null }>(
        'SELECT s.key, s.id, s.parent_key, s.fork_offset, s.next_offset, s.created_at, p.id AS parent_id FROM sessions s LEFT JOIN sessions p ON p.key = s.parent_key ORDER BY s.key',
      ),
      insertSession: database.prepare<[string, number | null, number | null, number, number]>(
        'INSERT INTO sessions (id, parent_key, fork_offset, next_offset, created_at) VALUES (?, ?, ?, ?, ?)',
      ),
      setNextOffset: database.prepare<[number, number]>('UPDATE sessions SET next_offset = ? WHERE key = ?'),
      insertEntry: database.prepare<[number, number, string, string, number]>(
        'INSERT INTO entries (session_key, position, kind, body, appended_at) VALUES (?, ?, ?, ?, ?)',
      ),
      readEntries: database.prepare<[number, number, number, number], { position: number; body: string; appended_at: number }>(
        'SELECT position, body, appended_at FROM entries WHERE session_key = ? AND position >= ? AND position < ? ORDER BY position LIMIT ?',
      ),
      readSummaries: database.prepare<[number, number, number], { position: number; body: string; appended_at: number }>(
        "SELECT position, body, appended_at FROM entries WHERE session_key = ? AND kind = 'summary' AND position >= ? AND position < ? ORDER BY position",
      ),
      producerState: database.prepare<[number, string], { epoch: number; last_sequence: number }>(
        'SELECT epoch, last_sequence FROM producers WHERE session_key = ? AND producer_id = ?',
      ),
      upsertProducer: database.prepare<[number, string, number, number]>(
        'INSERT INTO producers (session_key, producer_id, epoch, last_sequence) VALUES (?, ?, ?, ?) ON CONFLICT (session_key, producer_id) DO UPDATE SET epoch = excluded.epoch, last_sequence = excluded.last_sequence',
      ),
      producerBatch: database.prepare<[number, string, number, number], { first_position: number; count: number; digest: string }>(
        'SELECT first_position, count, digest FROM producer_batches WHERE session_key = ? AND producer_id = ? AND epoch = ? AND sequence = ?',
      ),
      insertProducerBatch: database.prepare<[number, string, number, number, number, number, string]>(
        'INSERT INTO producer_batches (session_key, producer_id, epoch, sequence, first_position, count, digest) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
    };
  }

  private run<T>(operation: () => T): T {
    if (this.closed) throw new StorageUnavailableError(`${this.path} was closed`);
    try {
      return operation();
    } catch (error) {
      throw translateSqliteError(error, this.path);
    }
  }

  private record(row: SessionRow, parentId?: string | null): SessionRecord {
    let parent = parentId;
    if (parent === undefined) parent = row.parent_key === null ? null : (this.statements.sessionByKey.get(row.parent_key)?.id ?? null);
    return {
      id: row.id,
      parentId: parent,
      forkOffset: row.fork_offset,
      nextOffset: row.next_offset,
      createdAt: new Date(row.created_at).toISOString(),
    };
  }

  /**
   * In WAL mode SQLite keeps writing to an unlinked database without complaint, and those writes
   * vanish at close; check that the file on disk is still the one we opened before acknowledging.
   */
  private assertFileInPlace(): void {
    if (!this.identity) return;
    let stats;
    try {
      stats = statSync(this.path);
    } catch {
      stats = undefined;
    }
    if (!stats || stats.dev !== this.identity.device || stats.ino !== this.identity.inode) {
      throw new StorageUnavailableError(`${this.path} was deleted or moved while open; put it back or restart to create a new one`);
    }
  }

  async append(command: AppendCommand): Promise<AppendOutcome> {
    const outcome = await this.withLockRetry(() => {
      this.assertFileInPlace();
      return this.run(() => this.appendTransaction.immediate(command));
    });
    if (!outcome.duplicate) this.events.emit(command.sessionId);
    return outcome;
  }

  // BEGIN IMMEDIATE takes the write lock up front, so the read of next_offset and the insert are
  // one atomic step even with writers in other processes.
  private readonly appendTransaction = this.lazyTransaction((command: AppendCommand): AppendOutcome => {
    const statements = this.statements;
    const now = Date.now();
    let session = statements.sessionById.get(command.sessionId);
    if (session === undefined) {
      const key = Number(statements.insertSession.run(command.sessionId, null, null, 0, now).lastInsertRowid);
      session = { key, id: command.sessionId, parent_key: null, fork_offset: null, next_offset: 0, created_at: now };
    }
    const producer = command.producer;
    if (producer) {
      const stored = statements.producerState.get(session.key, producer.id);
      const state = stored ? { epoch: stored.epoch, lastSequence: stored.last_sequence } : undefined;
      const decision = decideProducer(producer, state);
      if (decision.action === 'duplicate') {
        const batch = statements.producerBatch.get(session.key, producer.id, producer.epoch, producer.sequence);
        if (batch === undefined || batch.digest !== producer.digest) throw new ProducerSequenceReusedError(producer.id, producer.epoch, producer.sequence);
        return { firstOffset: batch.first_position, count: batch.count, nextOffset: session.next_offset, duplicate: true };
      }
    }
    const firstOffset = session.next_offset;
    if (command.expectedOffset !== undefined && command.expectedOffset !== firstOffset) {
      throw new OffsetConflictError(command.sessionId, command.expectedOffset, firstOffset);
    }
    command.validate?.(firstOffset);
    let position = firstOffset;
    for (const row of command.rows) statements.insertEntry.run(session.key, position++, row.kind, row.body, now);
    statements.setNextOffset.run(position, session.key);
    if (producer) {
      statements.upsertProducer.run(session.key, producer.id, producer.epoch, producer.sequence);
      statements.insertProducerBatch.run(session.key, producer.id, producer.epoch, producer.sequence, firstOffset, command.rows.length, producer.digest);
    }
    return { firstOffset, count: command.rows.length, nextOffset: position, duplicate: false };
  });

  private async withLockRetry<T>(operation: () => T): Promise<T> {
    const deadline = Date.now() + this.busyTimeoutMs;
    let pause = 1;
    for (;;) {
      try {
        return operation();
      } catch (error) {
        if (!(error instanceof DatabaseLockedError) || Date.now() + pause > deadline) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
      pause = Math.min(pause * 2, 50);
    }
  }

  private lazyTransaction<A, R>(body: (argument: A) => R): { immediate(argument: A): R } {
    let transaction: Database.Transaction<(argument: A) => R> | undefined;
    return {
      immediate: (argument: A) => {
        transaction ??= this.database.transaction(body);
        return transaction.immediate(argument);
      },
    };
  }

  async describe(sessionId: string): Promise<SessionRecord | undefined> {
    return this.run(() => {
      const row = this.statements.sessionById.get(sessionId);
      return row ? this.record(row) : undefined;
    });
  }

  private chain(sessionId: string): Array<{ key: number; forkOffset: number | null }> | undefined {
    const cached = this.chains.get(sessionId);
    if (cached) return cached;
    let row = this.statements.sessionById.get(sessionId);
    if (!row) return undefined;
    const chain: Array<{ key: number; forkOffset: number | null }> = [];
    while (row) {
      chain.unshift({ key: row.key, forkOffset: row.fork_offset });
      row = row.parent_key === null ? undefined : this.statements.sessionByKey.get(row.parent_key);
    }
    // A session's ancestry never changes once created, so it is safe to remember.
    this.chains.set(sessionId, chain);
    return chain;
  }

  async readRows(sessionId: string, from: number, to: number, limit: number): Promise<StoredRow[]> {
    return this.run(() => {
      const chain = this.chain(sessionId);
      if (!chain) throw new UnknownSessionError(sessionId);
      const rows: StoredRow[] = [];
      for (const segment of chainSegments(chain, from, to)) {
        if (rows.length >= limit) break;
        for (const row of this.statements.readEntries.iterate(segment.key, segment.from, segment.to, limit - rows.length)) {
          rows.push({ offset: row.position, body: row.body, appendedAt: new Date(row.appended_at).toISOString() });
        }
      }
      return rows;
    });
  }

  async readSummaryRows(sessionId: string): Promise<StoredRow[]> {
    return this.run(() => {
      const chain = this.chain(sessionId);
      if (!chain) throw new UnknownSessionError(sessionId);
      const rows: StoredRow[] = [];
      for (const segment of chainSegments(chain, 0, Number.MAX_SAFE_INTEGER)) {
        for (const row of this.statements.readSummaries.iterate(segment.key, segment.from, segment.to)) {
          rows.push({ offset: row.position, body: row.body, appendedAt: new Date(row.appended_at).toISOString() });
        }
      }
      return rows;
    });
  }

  async listSessions(): Promise<SessionRecord[]> {
    return this.run(() => this.statements.listSessions.all().map((row) => this.record(row, row.parent_id)));
  }

  async fork(parentId: string, atOffset: number, newId: string): Promise<SessionRecord> {
    return this.withLockRetry(() =>
      this.run(() =>
        this.database
          .transaction(() => {
            const parent = this.statements.sessionById.get(parentId);
            if (!parent) throw new UnknownSessionError(parentId);
            if (atOffset > parent.next_offset) throw new OffsetBeyondEndError(parentId, atOffset, parent.next_offset);
            if (this.statements.sessionById.get(newId)) throw new SessionExistsError(newId);
            const now = Date.now();
            const key = Number(this.statements.insertSession.run(newId, parent.key, atOffset, atOffset, now).lastInsertRowid);
            return this.record({ key, id: newId, parent_key: parent.key, fork_offset: atOffset, next_offset: atOffset, created_at: now }, parentId);
          })
          .immediate(),
      ),
    );
  }

  waitForAppend(sessionId: string, knownNextOffset: number, signal?: AbortSignal): Promise<void> {
    return waitForSessionAppend({
      appends: this.events,
      sessionId,
      signal,
      pollIntervalMs: this.pollIntervalMs,
      // Other processes cannot signal us, so poll the one-row session record; cheap on an index.
      appended: () => {
        if (this.closed) return true;
        const row = this.statements.sessionById.get(sessionId);
        return row !== undefined && row.next_offset > knownNextOffset;
      },
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.database.close();
  }
}
