import { EventEmitter } from 'node:events';
import pg from 'pg';
import { LeaseLostError, type AppendFence } from '../context/index.ts';
import type { AgentSessionRecord, SessionSpec, SessionState } from '../session/session-store.ts';
import type { SessionRecordStore } from '../session/session-record-store.ts';
import { TorporError } from '../util/errors.ts';
import { clusterTables, sessionChannel } from './cluster-schema.ts';

interface Row {
  id: string;
  name: string;
  spec: SessionSpec;
  state: SessionState;
  machine_id: string | null;
  snapshot: string | null;
  snapshot_log_offset: string | null;
  wake_at: string | null;
  note: string | null;
  turns: number;
  created_at: string;
  updated_at: string;
  last_activity_at: string;
  parent_id: string | null;
  lease_node: string | null;
  lease_epoch: string;
}

/** A session record with its lease: which node runs it, at which epoch (the fencing token). */
export interface LeasedRecord {
  record: AgentSessionRecord;
  leaseNode: string | null;
  epoch: number;
}

function fromRow(row: Row): LeasedRecord {
  const record: AgentSessionRecord = {
    id: row.id,
    name: row.name,
    spec: row.spec,
    state: row.state,
    turns: row.turns,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastActivityAt: row.last_activity_at,
  };
  if (row.machine_id !== null) record.machineId = row.machine_id;
  if (row.snapshot !== null) record.snapshot = row.snapshot;
  if (row.snapshot_log_offset !== null) record.snapshotLogOffset = Number(row.snapshot_log_offset);
  if (row.wake_at !== null) record.wakeAt = row.wake_at;
  if (row.note !== null) record.note = row.note;
  if (row.parent_id !== null) record.parentId = row.parent_id;
  return { record, leaseNode: row.lease_node, epoch: Number(row.lease_epoch) };
}

const columns = [
  'name',
  'spec',
  'state',
  'machine_id',
  'snapshot',
  'snapshot_log_offset',
  'wake_at',
  'note',
  'turns',
  'updated_at',
  'last_activity_at',
  'parent_id',
] as const;

function values(record: AgentSessionRecord): unknown[] {
  return [
    record.name,
    JSON.stringify(record.spec),
    record.state,
    record.machineId ?? null,
    record.snapshot ?? null,
    record.snapshotLogOffset ?? null,
    record.wakeAt ?? null,
    record.note ?? null,
    record.turns,
    record.updatedAt,
    record.lastActivityAt,
    record.parentId ?? null,
  ];
}

export interface PostgresSessionStoreOptions {
  pool: pg.Pool;
  connectionString: string;
  /** This node's name: the lease holder it writes as. */
  node: string;
}

/**
 * The session store of a cluster node: records in PostgreSQL, each with a lease. Every write is a
 * compare-and-set on (lease_node, lease_epoch): a node that lost a session (it was paused or cut
 * off, and another node took it over with epoch + 1) gets `lease-lost` and changes nothing.
 *
 * Reads come from records kept in memory: this node's own writes, and every other node's, which
 * arrive by NOTIFY (and a full reload when the listener reconnects). A read may thus lag another
 * node's write by a notification's delay; that is fine for what reads decide here (listing,
 * timers of sessions this node holds, which it alone writes), and routing re-reads the row.
 * `lost` is emitted when a session this node held turns out to be held by another.
 */
export class PostgresSessionStore extends EventEmitter<{ lost: [string] }> implements SessionRecordStore {
  private readonly pool: pg.Pool;
  private readonly connectionString: string;
  readonly node: string;
  private readonly records = new Map<string, LeasedRecord>();
  private readonly idsByName = new Map<string, string>();
  private listener: pg.Client | undefined;
  private closed = false;
  private reconnectTimer: NodeJS.Timeout | undefined;

  private constructor(options: PostgresSessionStoreOptions) {
    super();
    this.pool = options.pool;
    this.connectionString = options.connectionString;
    this.node = options.node;
  }

  static async open(options: PostgresSessionStoreOptions): Promise<PostgresSessionStore> {
    const store = new PostgresSessionStore(options);
    await store.listen();
    await store.reload();
    return store;
  }

  private async listen(): Promise<void> {
    const client = new pg.Client({ connectionString: this.connectionString });
    client.on('notification', (message) => {
      if (message.channel === sessionChannel && message.payload) void this.refresh(message.payload).catch(() => {});
    });
    client.on('error', () => {
      // Lost notifications are made up by a full reload once the listener is back.
      this.listener = undefined;
      if (this.closed) return;
      this.reconnectTimer = setTimeout(
        () =>
          void this.listen().then(
            () => this.reload(),
            () => {},
          ),
        1000,
      );
      this.reconnectTimer.unref();
    });
    await client.connect();
    await client.query(`LISTEN ${sessionChannel}`);
    this.listener = client;
  }

  private remember(leased: LeasedRecord): void {
    const before = this.records.get(leased.record.id);
    this.records.set(leased.record.id, leased);
    this.idsByName.set(leased.record.name, leased.record.id);
    if (before?.leaseNode === this.node && leased.leaseNode !== this.node) this.emit('lost', leased.record.id);
  }

  /** Reads every session again (at start, and after the listener reconnects). */
  async reload(): Promise<void> {
    const result = await this.pool.query<Row>(`SELECT * FROM ${clusterTables.sessions}`);
    for (const row of result.rows) this.remember(fromRow(row));
  }

  /** Reads one session from PostgreSQL (not memory) and remembers it: routing decides on this. */
  async refresh(idOrName: string): Promise<LeasedRecord | undefined> {
    const row = (await this.pool.query<Row>(`SELECT * FROM ${clusterTables.sessions} WHERE id = $1 OR name = $1`, [idOrName])).rows[0];
    if (!row) return undefined;
    const leased = fromRow(row);
    this.remember(leased);
    return leased;
  }

  async insert(record: AgentSessionRecord): Promise<void> {
    const row = (
      await this.pool
        .query<Row>(
          `WITH inserted AS (
             INSERT INTO ${clusterTables.sessions} (id, created_at, ${columns.join(', ')}, lease_node, lease_epoch)
             VALUES ($1, $2, ${columns.map((_, index) => `$${index + 3}`).join(', ')}, $${columns.length + 3}, 1) RETURNING *
           ) SELECT inserted.*, pg_notify('${sessionChannel}', inserted.id) FROM inserted`,
          [record.id, record.createdAt, ...values(record), this.node],
        )
        .catch((error: { code?: string }) => {
          if (error.code === '23505')
            throw new TorporError('session-exists', `a session named ${record.name} exists`, { hint: 'choose another --name', status: 409 });
          throw error;
        })
    ).rows[0]!;
    this.remember(fromRow(row));
  }

  async update(id: string, patch: Partial<Omit<AgentSessionRecord, 'id' | 'createdAt'>>): Promise<AgentSessionRecord> {
    const current = this.records.get(id);
    if (!current) throw new Error(`no session ${id}`);
    const next: AgentSessionRecord = { ...current.record, ...patch, updatedAt: new Date().toISOString() };
    for (const key of Object.keys(patch) as Array<keyof AgentSessionRecord>) {
      if (patch[key as keyof typeof patch] === undefined) delete next[key];
    }
    const assignments = columns.map((column, index) => `${column} = $${index + 4}`).join(', ');
    const row = (
      await this.pool.query<Row>(
        `WITH updated AS (
           UPDATE ${clusterTables.sessions} SET ${assignments} WHERE id = $1 AND lease_node = $2 AND lease_epoch = $3 RETURNING *
         ) SELECT updated.*, pg_notify('${sessionChannel}', updated.id) FROM updated`,
        [id, this.node, current.epoch, ...values(next)],
      )
    ).rows[0];
    if (!row) {
      const now = await this.refresh(id);
      throw new LeaseLostError(id, this.node, current.epoch, now ? { holder: now.leaseNode, epoch: now.epoch } : undefined);
    }
    const leased = fromRow(row);
    this.remember(leased);
    return leased.record;
  }

  get(idOrName: string): AgentSessionRecord | undefined {
    return this.leased(idOrName)?.record;
  }

  leased(idOrName: string): LeasedRecord | undefined {
    return this.records.get(idOrName) ?? this.records.get(this.idsByName.get(idOrName) ?? '');
  }

  list(options: { includeDeleted?: boolean } = {}): AgentSessionRecord[] {
    return [...this.records.values()]
      .map((leased) => leased.record)
      .filter((record) => options.includeDeleted || record.state !== 'deleted')
      .sort((left, right) => left.createdAt.localeCompare(right.createdAt));
  }

  holds(id: string): boolean {
    return this.records.get(id)?.leaseNode === this.node;
  }

  logFence(id: string): AppendFence | undefined {
    const leased = this.records.get(id);
    // A session not (or no longer) held here gets a fence that cannot match: the append fails.
    return { holder: this.node, epoch: leased?.leaseNode === this.node ? leased.epoch : -1 };
  }

  /**
   * Takes a session over from a dead node: succeeds only if the epoch is still `epoch` and its
   * holder has not heartbeaten within `ttlSeconds` (PostgreSQL's clock). Returns the new lease or
   * undefined when another node won or the holder came back.
   */
  async claim(id: string, epoch: number, ttlSeconds: number): Promise<LeasedRecord | undefined> {
    return this.changeLease(
      `UPDATE ${clusterTables.sessions} s SET lease_node = $2, lease_epoch = lease_epoch + 1
       WHERE s.id = $1 AND s.lease_epoch = $3 AND s.state <> 'deleted' AND NOT EXISTS (
         SELECT 1 FROM ${clusterTables.nodes} n WHERE n.name = s.lease_node AND n.heartbeat_at > now() - make_interval(secs => $4)
       ) RETURNING *`,
      [id, this.node, epoch, ttlSeconds],
    );
  }

  /** Moves a hibernated session's lease to `target` (a live node): it wakes there next. */
  async move(id: string, target: string, ttlSeconds: number): Promise<LeasedRecord | undefined> {
    return this.changeLease(
      `UPDATE ${clusterTables.sessions} s SET lease_node = $2, lease_epoch = lease_epoch + 1
       WHERE s.id = $1 AND s.state = 'hibernated' AND EXISTS (
         SELECT 1 FROM ${clusterTables.nodes} n WHERE n.name = $2 AND n.heartbeat_at > now() - make_interval(secs => $3)
       ) RETURNING *`,
      [id, target, ttlSeconds],
    );
  }

  private async changeLease(statement: string, parameters: unknown[]): Promise<LeasedRecord | undefined> {
    const row = (
      await this.pool.query<Row>(`WITH changed AS (${statement}) SELECT changed.*, pg_notify('${sessionChannel}', changed.id) FROM changed`, parameters)
    ).rows[0];
    if (!row) return undefined;
    const leased = fromRow(row);
    this.remember(leased);
    return leased;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.reconnectTimer);
    await this.listener?.end().catch(() => {});
  }
}
