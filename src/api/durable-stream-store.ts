import Database from 'better-sqlite3';
import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * The streams behind the Durable Streams routes (src/api/durable-streams-routes.ts): append-only
 * byte streams keyed by path, in one SQLite file (WAL, synchronous=FULL: an acknowledged append is
 * on disk). Positions are byte positions; a record is one append (byte streams) or one message
 * (JSON streams, stored as its compact JSON text). Producer state commits in the same transaction
 * as the data it admits, so a crash cannot admit a retry twice.
 */

export interface StreamConfig {
  contentType: string;
  ttlSeconds?: number;
  expiresAt?: string;
}

export interface StreamMetadata extends StreamConfig {
  id: number;
  path: string;
  createdAt: number;
  /** A TTL counts from here: creation, then every read or write (a sliding window). */
  renewedAt: number;
  tail: number;
  closed: boolean;
  lastSequence?: string;
  parentId?: number;
  forkSpec?: string;
  /** Deleted while forks of it live: it answers 410 Gone. */
  deleted: boolean;
  nextBatch: number;
}

export interface StreamRecord {
  start: number;
  data: Buffer;
}

export type AppendDecision =
  | { kind: 'appended'; tail: number }
  | { kind: 'duplicate'; tail: number; lastSequence: number; closed: boolean }
  | { kind: 'stale-epoch'; currentEpoch: number }
  | { kind: 'sequence-gap'; expected: number; received: number }
  | { kind: 'epoch-must-start-at-zero' }
  | { kind: 'sequence-regression'; last: string }
  | { kind: 'closed'; tail: number };

export interface ProducerStamp {
  id: string;
  epoch: number;
  sequence: number;
}

interface StreamRow {
  id: number;
  path: string;
  content_type: string;
  ttl_seconds: number | null;
  expires_at: string | null;
  created_at: number;
  renewed_at: number;
  tail: number;
  closed: number;
  last_sequence: string | null;
  parent_id: number | null;
  fork_spec: string | null;
  deleted: number;
  next_batch: number;
}

function fromRow(row: StreamRow): StreamMetadata {
  return {
    id: row.id,
    path: row.path,
    contentType: row.content_type,
    ttlSeconds: row.ttl_seconds ?? undefined,
    expiresAt: row.expires_at ?? undefined,
    createdAt: row.created_at,
    renewedAt: row.renewed_at,
    tail: row.tail,
    closed: row.closed === 1,
    lastSequence: row.last_sequence ?? undefined,
    parentId: row.parent_id ?? undefined,
    forkSpec: row.fork_spec ?? undefined,
    deleted: row.deleted === 1,
    nextBatch: row.next_batch,
  };
}

export class DurableStreamStore {
  private readonly database: Database.Database;
  /** Emits the path of a stream whenever it grows, closes or goes away: wakes live readers. */
  readonly changes = new EventEmitter();
  private readonly statements;

  constructor(file: string) {
    if (file !== ':memory:') mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    this.database = new Database(file);
    this.database.pragma('journal_mode = WAL');
    this.database.pragma('synchronous = FULL');
    this.database.pragma('foreign_keys = ON');
    this.database.exec(`
      CREATE TABLE IF NOT EXISTS streams (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL UNIQUE,
        content_type TEXT NOT NULL,
        ttl_seconds INTEGER,
        expires_at TEXT,
        created_at INTEGER NOT NULL,
        renewed_at INTEGER NOT NULL,
        tail INTEGER NOT NULL DEFAULT 0,
        closed INTEGER NOT NULL DEFAULT 0,
        last_sequence TEXT,
        -- Forks: the stream this one was forked from, and how (for idempotent re-creation).
        parent_id INTEGER,
        fork_spec TEXT,
        -- Deleted while forks of it lived: answers 410 Gone until its last fork goes.
        deleted INTEGER NOT NULL DEFAULT 0,
        next_batch INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE IF NOT EXISTS records (
        stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
        start INTEGER NOT NULL,
        data BLOB NOT NULL,
        -- The append that wrote the record: a JSON fork's sub-offset counts messages of one batch.
        batch INTEGER NOT NULL,
        PRIMARY KEY (stream_id, start)
      ) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS producers (
        stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
        producer_id TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        last_sequence INTEGER NOT NULL,
        PRIMARY KEY (stream_id, producer_id)
      ) WITHOUT ROWID;
    `);
    this.changes.setMaxListeners(0);
    this.statements = {
      byPath: this.database.prepare<[string], StreamRow>('SELECT * FROM streams WHERE path = ?'),
      insertStream: this.database.prepare<[string, string, number | null, string | null, number, number, number]>(
        'INSERT INTO streams (path, content_type, ttl_seconds, expires_at, created_at, renewed_at, closed) VALUES (?, ?, ?, ?, ?, ?, ?)',
      ),
      renew: this.database.prepare<[number, number]>('UPDATE streams SET renewed_at = ? WHERE id = ?'),
      deleteStream: this.database.prepare<[number]>('DELETE FROM streams WHERE id = ?'),
      insertRecord: this.database.prepare<[number, number, Buffer, number]>('INSERT INTO records (stream_id, start, data, batch) VALUES (?, ?, ?, ?)'),
      setNextBatch: this.database.prepare<[number, number]>('UPDATE streams SET next_batch = ? WHERE id = ?'),
      setFork: this.database.prepare<[number, string, number]>('UPDATE streams SET parent_id = ?, fork_spec = ? WHERE id = ?'),
      softDelete: this.database.prepare<[number]>('UPDATE streams SET deleted = 1 WHERE id = ?'),
      children: this.database.prepare<[number], { count: number }>('SELECT COUNT(*) AS count FROM streams WHERE parent_id = ?'),
      byId: this.database.prepare<[number], StreamRow>('SELECT * FROM streams WHERE id = ?'),
      batchFrom: this.database.prepare<[number, number], { start: number; data: Buffer; batch: number }>(
        'SELECT start, data, batch FROM records WHERE stream_id = ? AND start >= ? ORDER BY start LIMIT 100000',
      ),
      setTail: this.database.prepare<[number, number]>('UPDATE streams SET tail = ? WHERE id = ?'),
      setClosed: this.database.prepare<[number]>('UPDATE streams SET closed = 1 WHERE id = ?'),
      setSequence: this.database.prepare<[string, number]>('UPDATE streams SET last_sequence = ? WHERE id = ?'),
      // The record that holds `position` (it may start before it) and every later one.
      recordsFrom: this.database.prepare<[number, number, number, number], { start: number; data: Buffer }>(
        'SELECT start, data FROM records WHERE stream_id = ? AND start >= (SELECT COALESCE(MAX(start), 0) FROM records WHERE stream_id = ? AND start <= ?) ORDER BY start LIMIT ?',
      ),
      recordsBetween: this.database.prepare<[number, number], { start: number; data: Buffer; batch: number }>(
        'SELECT start, data, batch FROM records WHERE stream_id = ? AND start < ? ORDER BY start',
      ),
      producer: this.database.prepare<[number, string], { epoch: number; last_sequence: number }>(
        'SELECT epoch, last_sequence FROM producers WHERE stream_id = ? AND producer_id = ?',
      ),
      upsertProducer: this.database.prepare<[number, string, number, number]>(
        'INSERT INTO producers (stream_id, producer_id, epoch, last_sequence) VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, producer_id) DO UPDATE SET epoch = excluded.epoch, last_sequence = excluded.last_sequence',
      ),
    };
  }

  close(): void {
    this.database.close();
  }

  /** A stream's metadata; an expired stream is deleted on the way and reads as absent. */
  get(path: string, now = Date.now()): StreamMetadata | undefined {
    const row = this.statements.byPath.get(path);
    if (!row) return undefined;
    const stream = fromRow(row);
    if (!stream.deleted && isExpired(stream, now)) {
      this.delete(path);
      const after = this.statements.byPath.get(path);
      return after ? fromRow(after) : undefined;
    }
    return stream;
  }

  /**
   * Where a fork at `position` plus `subOffset` ends: `subOffset` bytes into the append at
   * `position` (byte streams) or `subOffset` messages of its batch (JSON); undefined if it overshoots.
   */
  forkEnd(stream: StreamMetadata, position: number, subOffset: number, json: boolean): number | undefined {
    if (subOffset === 0) return position;
    const records = this.statements.batchFrom.all(stream.id, position);
    if (records.length === 0 || records[0].start !== position) return undefined;
    if (!json) return subOffset <= records[0].data.length ? position + subOffset : undefined;
    const batch = records[0].batch;
    let end = position;
    for (let index = 0; index < subOffset; index++) {
      const record = records[index];
      if (!record || record.batch !== batch) return undefined;
      end = record.start + record.data.length;
    }
    return end;
  }

  /** Creates a stream with optional first records (already split into records by the caller). */
  create(
    path: string,
    config: StreamConfig,
    records: Buffer[],
    options: { closed?: boolean; inherit?: { from: StreamMetadata; upTo: number; spec: string } } = {},
  ): StreamMetadata {
    const run = this.database.transaction(() => {
      const inserted = this.statements.insertStream.run(
        path,
        config.contentType,
        config.ttlSeconds ?? null,
        config.expiresAt ?? null,
        Date.now(),
        Date.now(),
        options.closed ? 1 : 0,
      );
      const id = Number(inserted.lastInsertRowid);
      let tail = 0;
      let batch = 0;
      if (options.inherit) {
        this.statements.setFork.run(options.inherit.from.id, options.inherit.spec, id);
        // A fork starts as a copy of its source's records up to the fork offset (cut inside a
        // record of a byte stream if need be): it then lives on its own, even if the source is deleted.
        for (const record of this.statements.recordsBetween.all(options.inherit.from.id, options.inherit.upTo)) {
          const data = record.start + record.data.length > options.inherit.upTo ? record.data.subarray(0, options.inherit.upTo - record.start) : record.data;
          this.statements.insertRecord.run(id, record.start, data, record.batch);
          tail = record.start + data.length;
          batch = record.batch + 1;
        }
      }
      for (const record of records) {
        this.statements.insertRecord.run(id, tail, record, batch);
        tail += record.length;
      }
      this.statements.setTail.run(tail, id);
      this.statements.setNextBatch.run(batch + 1, id);
      return id;
    });
    run();
    this.changes.emit(path);
    return this.get(path)!;
  }

  /** Restarts a stream's TTL (a read or a write is a sign of life). */
  renew(stream: StreamMetadata, now = Date.now()): void {
    if (stream.ttlSeconds !== undefined) this.statements.renew.run(now, stream.id);
  }

  /**
   * Deletes a stream. One that forks still come from is only marked deleted (410 Gone, its path
   * not reusable) and goes once its last fork goes, up the chain.
   */
  delete(path: string): boolean {
    const row = this.statements.byPath.get(path);
    if (!row || row.deleted === 1) return false;
    this.database.transaction(() => {
      let current: StreamRow | undefined = row;
      while (current) {
        if (this.statements.children.get(current.id)!.count > 0) {
          this.statements.softDelete.run(current.id);
          break;
        }
        this.statements.deleteStream.run(current.id);
        const parent: StreamRow | undefined = current.parent_id === null ? undefined : this.statements.byId.get(current.parent_id);
        current = parent && parent.deleted === 1 ? parent : undefined;
      }
    })();
    this.changes.emit(path);
    return true;
  }

  /**
   * Appends records (and/or closes) after the checks the protocol orders: closed stream, producer
   * fencing and sequence, Stream-Seq. All in one transaction with the data.
   */
  append(path: string, records: Buffer[], options: { producer?: ProducerStamp; streamSequence?: string; close?: boolean } = {}): AppendDecision {
    const run = this.database.transaction((): AppendDecision => {
      const row = this.statements.byPath.get(path);
      if (!row) throw new Error(`stream ${path} vanished during an append`);
      const stream = fromRow(row);
      const { producer } = options;
      let producerState: { epoch: number; last_sequence: number } | undefined;
      if (producer) {
        producerState = this.statements.producer.get(stream.id, producer.id);
        if (producerState) {
          if (producer.epoch < producerState.epoch) return { kind: 'stale-epoch', currentEpoch: producerState.epoch };
          if (producer.epoch === producerState.epoch) {
            if (producer.sequence <= producerState.last_sequence)
              return { kind: 'duplicate', tail: stream.tail, lastSequence: producerState.last_sequence, closed: stream.closed };
            if (producer.sequence !== producerState.last_sequence + 1)
              return { kind: 'sequence-gap', expected: producerState.last_sequence + 1, received: producer.sequence };
          } else if (producer.sequence !== 0) return { kind: 'epoch-must-start-at-zero' };
        } else if (producer.sequence !== 0) {
          return { kind: 'sequence-gap', expected: 0, received: producer.sequence };
        }
      }
      if (stream.closed) return { kind: 'closed', tail: stream.tail };
      if (options.streamSequence !== undefined) {
        if (stream.lastSequence !== undefined && options.streamSequence <= stream.lastSequence)
          return { kind: 'sequence-regression', last: stream.lastSequence };
        this.statements.setSequence.run(options.streamSequence, stream.id);
      }
      let tail = stream.tail;
      for (const record of records) {
        this.statements.insertRecord.run(stream.id, tail, record, stream.nextBatch);
        tail += record.length;
      }
      this.statements.setTail.run(tail, stream.id);
      this.statements.setNextBatch.run(stream.nextBatch + 1, stream.id);
      if (options.close) this.statements.setClosed.run(stream.id);
      if (producer) this.statements.upsertProducer.run(stream.id, producer.id, producer.epoch, producer.sequence);
      return { kind: 'appended', tail };
    });
    const decision = run();
    if (decision.kind === 'appended') this.changes.emit(path);
    return decision;
  }

  /** Closes a stream with no data (idempotent). */
  closeStream(path: string): StreamMetadata | undefined {
    const stream = this.get(path);
    if (!stream) return undefined;
    if (!stream.closed) {
      this.statements.setClosed.run(stream.id);
      this.changes.emit(path);
    }
    return this.get(path);
  }

  /** Records from `position` on, at most `maxBytes` (at least one record); the first may be cut. */
  read(stream: StreamMetadata, position: number, maxBytes: number): { records: StreamRecord[]; end: number } {
    const records: StreamRecord[] = [];
    let end = position;
    let bytes = 0;
    for (const record of this.statements.recordsFrom.iterate(stream.id, stream.id, position, 10_000)) {
      if (record.start + record.data.length <= position) continue;
      const data = record.start < position ? record.data.subarray(position - record.start) : record.data;
      if (records.length > 0 && bytes + data.length > maxBytes) break;
      records.push({ start: Math.max(record.start, position), data });
      bytes += data.length;
      end = record.start + record.data.length;
      if (bytes >= maxBytes) break;
    }
    return { records, end };
  }

  /** Whether `position` is where a record starts (or the tail): JSON streams are read at message boundaries only. */
  isBoundary(stream: StreamMetadata, position: number): boolean {
    if (position === 0 || position === stream.tail) return true;
    const first = this.statements.recordsFrom.get(stream.id, stream.id, position, 1);
    return first !== undefined && first.start === position;
  }

  /** Resolves when the stream at `path` changes (append, close, delete), `signal` aborts, or `timeoutMs` passes. */
  waitForChange(path: string, timeoutMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const finish = () => {
        clearTimeout(timer);
        this.changes.off(path, finish);
        signal?.removeEventListener('abort', finish);
        resolve();
      };
      const timer = setTimeout(finish, timeoutMs);
      this.changes.on(path, finish);
      signal?.addEventListener('abort', finish, { once: true });
      if (signal?.aborted) finish();
    });
  }
}

export function isExpired(stream: StreamMetadata, now = Date.now()): boolean {
  if (stream.expiresAt !== undefined && Date.parse(stream.expiresAt) <= now) return true;
  if (stream.ttlSeconds !== undefined && stream.renewedAt + stream.ttlSeconds * 1000 <= now) return true;
  return false;
}
