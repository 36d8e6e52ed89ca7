import { EventEmitter } from 'node:events';
import pg from 'pg';
import { waitForSessionAppend } from './append-wait.ts';
import { blobDigest, MissingBlobError, type BlobReference, type BlobStore } from './blob-store.ts';
import {
  ContextLogError,
  DatabaseLockedError,
  InvalidArgumentError,
  LeaseLostError,
  OffsetBeyondEndError,
  OffsetConflictError,
  ProducerSequenceReusedError,
  SessionExistsError,
  StorageReadOnlyError,
  StorageUnavailableError,
  UnknownSessionError,
} from './errors.ts';
import { decideProducer } from './producer.ts';
import { chainSegments, type AppendCommand, type AppendOutcome, type LogStorage, type SessionRecord, type StoredRow } from './storage.ts';

export interface PostgresStorageOptions {
  connectionString: string;
  /** Schema holding the tables (created if missing); lets several logs share one database. Default `public`. */
  schema?: string;
  /** How long an append waits for another writer's lock on the same session before DatabaseLockedError. */
  lockTimeoutMs?: number;
  /** Safety-net poll for tails in case a notification is lost while the listener reconnects. */
  pollIntervalMs?: number;
  poolSize?: number;
  /**
   * A table of session leases (columns `id`, `lease_node`, `lease_epoch`), e.g. a cluster's session
   * table: appends that carry a fence are checked against it inside their transaction.
   */
  leaseTable?: string;
}

const schemaPattern = /^[a-z_][a-z0-9_]{0,62}$/;
const tablePattern = /^([a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$/;

function schemaSql(schema: string): string {
  return `
CREATE SCHEMA IF NOT EXISTS ${schema};
CREATE TABLE IF NOT EXISTS ${schema}.context_sessions (
  key BIGSERIAL PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  parent_key BIGINT REFERENCES ${schema}.context_sessions(key),
  fork_offset BIGINT,
  next_offset BIGINT NOT NULL,
  created_at BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS ${schema}.context_entries (
  session_key BIGINT NOT NULL,
  position BIGINT NOT NULL,
  kind TEXT NOT NULL,
  body TEXT NOT NULL,
  appended_at BIGINT NOT NULL,
  PRIMARY KEY (session_key, position)
);
CREATE INDEX IF NOT EXISTS context_entries_summaries ON ${schema}.context_entries (session_key, position) WHERE kind = 'summary';
CREATE TABLE IF NOT EXISTS ${schema}.context_producers (
  session_key BIGINT NOT NULL,
  producer_id TEXT NOT NULL,
  epoch BIGINT NOT NULL,
  last_sequence BIGINT NOT NULL,
  PRIMARY KEY (session_key, producer_id)
);
CREATE TABLE IF NOT EXISTS ${schema}.context_producer_batches (
  session_key BIGINT NOT NULL,
  producer_id TEXT NOT NULL,
  epoch BIGINT NOT NULL,
  sequence BIGINT NOT NULL,
  first_position BIGINT NOT NULL,
  count INTEGER NOT NULL,
  digest TEXT NOT NULL,
  PRIMARY KEY (session_key, producer_id, epoch, sequence)
);
CREATE TABLE IF NOT EXISTS ${schema}.context_blobs (
  digest TEXT PRIMARY KEY,
  data BYTEA NOT NULL
);
`;
}

const connectionErrorCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  '57P01',
  '57P02',
  '57P03',
  '3D000',
  '28P01',
  '28000',
]);

/** Maps PostgreSQL SQLSTATEs and socket errors onto errors that say what to do. */
export function translatePostgresError(error: unknown): unknown {
  if (error instanceof ContextLogError) return error;
  const code = (error as { code?: unknown }).code;
  const message = (error as Error)?.message ?? String(error);
  const options = { cause: error };
  if (code === '55P03' || code === '40P01') return new DatabaseLockedError(`PostgreSQL ${code}: ${message}`, options);
  if (code === '25006') return new StorageReadOnlyError(`PostgreSQL: ${message}`, options);
  if (code === '53100') return new StorageReadOnlyError(`PostgreSQL: the disk is full`, options);
  if (
    (typeof code === 'string' && (connectionErrorCodes.has(code) || code.startsWith('08'))) ||
    /Connection terminated|connection is closed|Client was closed|Cannot use a pool after calling end/i.test(message)
  ) {
    return new StorageUnavailableError(`PostgreSQL ${code ?? ''} ${message}`.replace(/\s+/g, ' ').trim(), options);
  }
  return error;
}

type Queryable = Pick<pg.PoolClient, 'query'>;

class PostgresBlobStore implements BlobStore {
  constructor(
    private readonly storage: PostgresStorage,
    private readonly table: string,
  ) {}

  async put(bytes: Uint8Array): Promise<BlobReference> {
    const digest = blobDigest(bytes);
    await this.storage.query(`INSERT INTO ${this.table} (digest, data) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING`, [digest, Buffer.from(bytes)]);
    return { digest, size: bytes.byteLength };
  }

  async get(reference: BlobReference): Promise<Uint8Array> {
    const result = await this.storage.query<{ data: Buffer }>(`SELECT data FROM ${this.table} WHERE digest = $1`, [reference.digest]);
    if (result.rows.length === 0) throw new MissingBlobError(reference.digest);
    const data = result.rows[0].data;
    if (blobDigest(data) !== reference.digest) throw new StorageUnavailableError(`blob ${reference.digest} is corrupt`);
    return data;
  }
}

interface SessionRow {
  key: string;
  id: string;
  parent_key: string | null;
  fork_offset: string | null;
  next_offset: string;
  created_at: string;
  parent_id?: string | null;
}

/**
 * PostgreSQL backend. An append is one transaction that locks the session row (so appends to one
 * session are serialized across every server), writes the rows, the producer state and a NOTIFY;
 * it is durable once COMMIT returns. Tails wake on LISTEN instead of polling.
 */
export class PostgresStorage implements LogStorage {
  readonly kind = 'postgres' as const;
  readonly blobs: BlobStore;
  readonly schema: string;
  private readonly pool: pg.Pool;
  private readonly connectionString: string;
  private readonly channel: string;
  private readonly events = new EventEmitter();
  private readonly chains = new Map<string, Array<{ key: string; forkOffset: number | null }>>();
  private readonly pollIntervalMs: number;
  private listener: pg.Client | undefined;
  private listening: Promise<void> | undefined;
  private closed = false;
  private readonly tables;
  private readonly leaseTable: string | undefined;

  private constructor(options: PostgresStorageOptions) {
    this.schema = options.schema ?? 'public';
    if (!schemaPattern.test(this.schema)) throw new StorageUnavailableError(`invalid schema name ${JSON.stringify(this.schema)}`);
    if (options.leaseTable !== undefined && !tablePattern.test(options.leaseTable))
      throw new StorageUnavailableError(`invalid lease table name ${JSON.stringify(options.leaseTable)}`);
    this.leaseTable = options.leaseTable;
    this.connectionString = options.connectionString;
    this.pollIntervalMs = options.pollIntervalMs ?? 1000;
    this.channel = `torpor_context_${this.schema}`.slice(0, 63);
    this.events.setMaxListeners(0);
    this.pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.poolSize ?? 10,
      lock_timeout: options.lockTimeoutMs ?? 5000,
      connectionTimeoutMillis: 10_000,
    });
    // Without a handler an idle client's socket error (server restart) would crash the process.
    this.pool.on('error', () => {});
    const schema = this.schema;
    this.tables = {
      sessions: `${schema}.context_sessions`,
      entries: `${schema}.context_entries`,
      producers: `${schema}.context_producers`,
      batches: `${schema}.context_producer_batches`,
    };
    this.blobs = new PostgresBlobStore(this, `${schema}.context_blobs`);
  }

  static async connect(options: PostgresStorageOptions): Promise<PostgresStorage> {
    const storage = new PostgresStorage(options);
    try {
      // Only create tables when missing, so a read-only role can still open an existing log.
      const existing = await storage.query<{ table: string | null }>('SELECT to_regclass($1)::text AS table', [`${storage.schema}.context_entries_summaries`]);
      if (existing.rows[0].table === null)
        await storage.transaction(async (client) => {
          // Concurrent first starts would race on CREATE IF NOT EXISTS; serialize them.
          await client.query("SELECT pg_advisory_xact_lock(hashtext('torpor_context_schema'))");
          await client.query(schemaSql(storage.schema));
        });
    } catch (error) {
      await storage.pool.end().catch(() => {});
      throw error;
    }
    return storage;
  }

  async query<Row extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<Row>> {
    if (this.closed) throw new StorageUnavailableError('the PostgreSQL storage was closed');
    try {
      return await this.pool.query<Row>(text, values);
    } catch (error) {
      throw translatePostgresError(error);
    }
  }

  private async transaction<T>(body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    if (this.closed) throw new StorageUnavailableError('the PostgreSQL storage was closed');
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (error) {
      throw translatePostgresError(error);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const result = await body(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      try {
        await client.query('ROLLBACK');
      } catch {
        broken = true;
      }
      throw translatePostgresError(error);
    } finally {
      client.release(broken);
    }
  }

  private record(row: SessionRow): SessionRecord {
    return {
      id: row.id,
      parentId: row.parent_id ?? null,
      forkOffset: row.fork_offset === null ? null : Number(row.fork_offset),
      nextOffset: Number(row.next_offset),
      createdAt: new Date(Number(row.created_at)).toISOString(),
    };
  }

  async append(command: AppendCommand): Promise<AppendOutcome> {
    const { sessions, entries, producers, batches } = this.tables;
    const outcome = await this.transaction(async (client): Promise<AppendOutcome> => {
      const now = Date.now();
      if (command.fence) await this.checkFence(client, command.sessionId, command.fence);
      // The upsert takes the session row lock: concurrent appends to one session queue here.
      const session = (
        await client.query<{ key: string; next_offset: string }>(
          `INSERT INTO ${sessions} (id, next_offset, created_at) VALUES ($1, 0, $2)
           ON CONFLICT (id) DO UPDATE SET next_offset = ${sessions}.next_offset RETURNING key, next_offset`,
          [command.sessionId, now],
        )
      ).rows[0];
      const key = session.key;
      const firstOffset = Number(session.next_offset);
      const producer = command.producer;
      if (producer) {
        const stored = (
          await client.query<{ epoch: string; last_sequence: string }>(
            `SELECT epoch, last_sequence FROM ${producers} WHERE session_key = $1 AND producer_id = $2`,
            [key, producer.id],
          )
        ).rows[0];
        const state = stored ? { epoch: Number(stored.epoch), lastSequence: Number(stored.last_sequence) } : undefined;
        if (decideProducer(producer, state).action === 'duplicate') {
          const batch = (
            await client.query<{ first_position: string; count: number; digest: string }>(
              `SELECT first_position, count, digest FROM ${batches} WHERE session_key = $1 AND producer_id = $2 AND epoch = $3 AND sequence = $4`,
              [key, producer.id, producer.epoch, producer.sequence],
            )
          ).rows[0];
          if (!batch || batch.digest !== producer.digest) throw new ProducerSequenceReusedError(producer.id, producer.epoch, producer.sequence);
          return { firstOffset: Number(batch.first_position), count: batch.count, nextOffset: firstOffset, duplicate: true };
        }
      }
      if (command.expectedOffset !== undefined && command.expectedOffset !== firstOffset) {
        throw new OffsetConflictError(command.sessionId, command.expectedOffset, firstOffset);
      }
      command.validate?.(firstOffset);
      const nextOffset = firstOffset + command.rows.length;
      await client.query(
        `INSERT INTO ${entries} (session_key, position, kind, body, appended_at)
         SELECT $1, $2::bigint + row.ordinality - 1, row.kind, row.body, $5 FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS row(kind, body, ordinality)`,
        [key, firstOffset, command.rows.map((row) => row.kind), command.rows.map((row) => row.body), now],
      );
      await client.query(`UPDATE ${sessions} SET next_offset = $1 WHERE key = $2`, [nextOffset, key]);
      if (producer) {
        await client.query(
          `INSERT INTO ${producers} (session_key, producer_id, epoch, last_sequence) VALUES ($1, $2, $3, $4)
           ON CONFLICT (session_key, producer_id) DO UPDATE SET epoch = excluded.epoch, last_sequence = excluded.last_sequence`,
          [key, producer.id, producer.epoch, producer.sequence],
        );
        await client.query(
          `INSERT INTO ${batches} (session_key, producer_id, epoch, sequence, first_position, count, digest) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
          [key, producer.id, producer.epoch, producer.sequence, firstOffset, command.rows.length, producer.digest],
        );
      }
      // Delivered at COMMIT, only if it commits: tails in other processes wake exactly on durable data.
      await client.query('SELECT pg_notify($1, $2)', [this.channel, command.sessionId]);
      return { firstOffset, count: command.rows.length, nextOffset, duplicate: false };
    });
    if (!outcome.duplicate) this.events.emit(command.sessionId);
    return outcome;
  }

  /**
   * FOR SHARE holds the lease row until COMMIT: a takeover (an UPDATE of that row) waits for appends
   * already past this check, and appends after it see the new epoch. So no entry of an old holder
   * can land after another node took the session over.
   */
  private async checkFence(client: Queryable, sessionId: string, fence: { holder: string; epoch: number }): Promise<void> {
    if (!this.leaseTable) throw new InvalidArgumentError('a fenced append needs a storage opened with a lease table (cluster mode)');
    const row = (
      await client.query<{ lease_node: string | null; lease_epoch: string }>(`SELECT lease_node, lease_epoch FROM ${this.leaseTable} WHERE id = $1 FOR SHARE`, [
        sessionId,
      ])
    ).rows[0];
    const current = row ? { holder: row.lease_node, epoch: Number(row.lease_epoch) } : undefined;
    if (!current || current.holder !== fence.holder || current.epoch !== fence.epoch) throw new LeaseLostError(sessionId, fence.holder, fence.epoch, current);
  }

  async describe(sessionId: string): Promise<SessionRecord | undefined> {
    const { sessions } = this.tables;
    const result = await this.query<SessionRow>(
      `SELECT s.key, s.id, s.parent_key, s.fork_offset, s.next_offset, s.created_at, p.id AS parent_id
       FROM ${sessions} s LEFT JOIN ${sessions} p ON p.key = s.parent_key WHERE s.id = $1`,
      [sessionId],
    );
    return result.rows[0] ? this.record(result.rows[0]) : undefined;
  }

  private async chain(sessionId: string): Promise<Array<{ key: string; forkOffset: number | null }> | undefined> {
    const cached = this.chains.get(sessionId);
    if (cached) return cached;
    const { sessions } = this.tables;
    const result = await this.query<{ key: string; fork_offset: string | null; depth: number }>(
      `WITH RECURSIVE chain AS (
         SELECT key, parent_key, fork_offset, 0 AS depth FROM ${sessions} WHERE id = $1
         UNION ALL
         SELECT s.key, s.parent_key, s.fork_offset, chain.depth + 1 FROM ${sessions} s JOIN chain ON s.key = chain.parent_key
       ) SELECT key, fork_offset, depth FROM chain ORDER BY depth DESC`,
      [sessionId],
    );
    if (result.rows.length === 0) return undefined;
    const chain = result.rows.map((row) => ({ key: row.key, forkOffset: row.fork_offset === null ? null : Number(row.fork_offset) }));
    this.chains.set(sessionId, chain);
    return chain;
  }

  async readRows(sessionId: string, from: number, to: number, limit: number): Promise<StoredRow[]> {
    const chain = await this.chain(sessionId);
    if (!chain) throw new UnknownSessionError(sessionId);
    const rows: StoredRow[] = [];
    for (const segment of chainSegments(chain, from, to)) {
      if (rows.length >= limit) break;
      const result = await this.query<{ position: string; body: string; appended_at: string }>(
        `SELECT position, body, appended_at FROM ${this.tables.entries} WHERE session_key = $1 AND position >= $2 AND position < $3 ORDER BY position LIMIT $4`,
        [segment.key, segment.from, Number.isFinite(segment.to) ? segment.to : Number.MAX_SAFE_INTEGER, Math.min(limit - rows.length, Number.MAX_SAFE_INTEGER)],
      );
      for (const row of result.rows) rows.push({ offset: Number(row.position), body: row.body, appendedAt: new Date(Number(row.appended_at)).toISOString() });
    }
    return rows;
  }

  async readSummaryRows(sessionId: string): Promise<StoredRow[]> {
    const chain = await this.chain(sessionId);
    if (!chain) throw new UnknownSessionError(sessionId);
    const rows: StoredRow[] = [];
    for (const segment of chainSegments(chain, 0, Number.MAX_SAFE_INTEGER)) {
      const result = await this.query<{ position: string; body: string; appended_at: string }>(
        `SELECT position, body, appended_at FROM ${this.tables.entries} WHERE session_key = $1 AND kind = 'summary' AND position >= $2 AND position < $3 ORDER BY position`,
        [segment.key, segment.from, segment.to],
      );
      for (const row of result.rows) rows.push({ offset: Number(row.position), body: row.body, appendedAt: new Date(Number(row.appended_at)).toISOString() });
    }
    return rows;
  }

  async listSessions(): Promise<SessionRecord[]> {
    const { sessions } = this.tables;
    const result = await this.query<SessionRow>(
      `SELECT s.key, s.id, s.parent_key, s.fork_offset, s.next_offset, s.created_at, p.id AS parent_id
       FROM ${sessions} s LEFT JOIN ${sessions} p ON p.key = s.parent_key ORDER BY s.key`,
    );
    return result.rows.map((row) => this.record(row));
  }

  async fork(parentId: string, atOffset: number, newId: string): Promise<SessionRecord> {
    const { sessions } = this.tables;
    return this.transaction(async (client) => {
      const parent = (await client.query<SessionRow>(`SELECT key, next_offset FROM ${sessions} WHERE id = $1`, [parentId])).rows[0];
      if (!parent) throw new UnknownSessionError(parentId);
      if (atOffset > Number(parent.next_offset)) throw new OffsetBeyondEndError(parentId, atOffset, Number(parent.next_offset));
      const now = Date.now();
      const inserted = await client.query(
        `INSERT INTO ${sessions} (id, parent_key, fork_offset, next_offset, created_at) VALUES ($1, $2, $3, $3, $4) ON CONFLICT (id) DO NOTHING RETURNING key`,
        [newId, parent.key, atOffset, now],
      );
      if (inserted.rowCount === 0) throw new SessionExistsError(newId);
      return { id: newId, parentId, forkOffset: atOffset, nextOffset: atOffset, createdAt: new Date(now).toISOString() };
    });
  }

  private ensureListening(): Promise<void> {
    this.listening ??= (async () => {
      const client = new pg.Client({ connectionString: this.connectionString });
      client.on('notification', (message) => {
        if (message.channel === this.channel && message.payload) this.events.emit(message.payload);
      });
      client.on('error', () => {
        // Reconnect on the next wait; the poll fallback covers the gap.
        this.listener = undefined;
        this.listening = undefined;
      });
      await client.connect();
      await client.query(`LISTEN "${this.channel}"`);
      if (this.closed) {
        await client.end();
        return;
      }
      this.listener = client;
    })().catch((error) => {
      this.listening = undefined;
      throw translatePostgresError(error);
    });
    return this.listening;
  }

  async waitForAppend(sessionId: string, knownNextOffset: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return;
    await this.ensureListening().catch(() => {});
    // The first check, made once subscribed, catches an append that committed before LISTEN.
    return waitForSessionAppend({
      appends: this.events,
      sessionId,
      signal,
      pollIntervalMs: this.pollIntervalMs,
      appended: () => this.closed || this.describe(sessionId).then((record) => !record || record.nextOffset > knownNextOffset),
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.listening?.catch(() => {});
    await this.listener?.end().catch(() => {});
    await this.pool.end().catch(() => {});
  }
}
