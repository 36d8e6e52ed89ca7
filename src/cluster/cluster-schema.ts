import pg from 'pg';

/**
 * The cluster's control plane: four tables in one PostgreSQL database, beside the context log's.
 * PostgreSQL gives the cluster what a home-made consensus would have to: one serializable place for
 * leases (a row lock and a compare-and-set on an epoch), a clock every node reads the same
 * (`now()`: liveness never compares two hosts' clocks) and notifications (LISTEN/NOTIFY).
 *
 * - `torpor_nodes`: one row per node, its address, capacity and last heartbeat.
 * - `torpor_sessions`: the session records (the SQLite store's columns) plus the lease: the node
 *   that runs the session (`lease_node`) and the epoch (fencing token) bumped on every takeover.
 * - `torpor_snapshots`: where a snapshot's chunks are in the object store (its manifest).
 * - `torpor_cluster`: settings every node shares (the cluster token).
 */
export const clusterTables = {
  nodes: 'torpor_nodes',
  sessions: 'torpor_sessions',
  snapshots: 'torpor_snapshots',
  settings: 'torpor_cluster',
} as const;

/** The channel session changes are announced on (payload: the session id). */
export const sessionChannel = 'torpor_sessions';

const schema = `
CREATE TABLE IF NOT EXISTS torpor_nodes (
  name TEXT PRIMARY KEY,
  url TEXT NOT NULL,
  cpus INTEGER NOT NULL,
  memory_mib BIGINT NOT NULL,
  max_machines INTEGER NOT NULL,
  running_machines INTEGER NOT NULL DEFAULT 0,
  started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS torpor_sessions (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  spec JSONB NOT NULL,
  state TEXT NOT NULL,
  machine_id TEXT,
  snapshot TEXT,
  snapshot_log_offset BIGINT,
  wake_at TEXT,
  note TEXT,
  turns INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL,
  last_activity_at TEXT NOT NULL,
  parent_id TEXT,
  lease_node TEXT,
  lease_epoch BIGINT NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS torpor_sessions_lease_node ON torpor_sessions (lease_node);
CREATE TABLE IF NOT EXISTS torpor_snapshots (
  name TEXT PRIMARY KEY,
  node TEXT NOT NULL,
  manifest JSONB NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS torpor_cluster (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
`;

/** Creates the tables when missing; concurrent first starts of several nodes are serialized. */
export async function ensureClusterSchema(pool: pg.Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query("SELECT pg_advisory_xact_lock(hashtext('torpor_cluster_schema'))");
    await client.query(schema);
    await client.query('COMMIT');
  } catch (error) {
    await client.query('ROLLBACK').catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}
