import type pg from 'pg';
import { readSnapshot } from '../snapshot/snapshot-store.ts';
import type { SnapshotReplication } from '../session/snapshot-replication.ts';
import { TorporError } from '../util/errors.ts';
import { clusterTables } from './cluster-schema.ts';

/** What the object store's replicator does (object-store/): copy a local snapshot's chunks out, or back in. */
export interface SnapshotReplicatorLike {
  push(snapshot: string): Promise<{ manifest: unknown; uploadedBytes?: number }>;
  pull(manifest: never): Promise<{ downloadedBytes?: number }>;
}

/**
 * Snapshot replication for the session manager: a pushed snapshot's manifest (which chunks, in the
 * object store) is recorded in PostgreSQL under the snapshot's name, so any node can pull it. A
 * node that already holds the snapshot (the one it slept on) reads nothing remote.
 */
export class SnapshotSharing implements SnapshotReplication {
  /** Bytes and pulls, for the benchmark and `nodes ls`. */
  readonly counters = { pushes: 0, pushedBytes: 0, pulls: 0, pulledBytes: 0, localHits: 0 };

  constructor(
    private readonly pool: pg.Pool,
    private readonly node: string,
    private readonly replicator: SnapshotReplicatorLike,
  ) {}

  async push(snapshot: string): Promise<void> {
    const { manifest, uploadedBytes } = await this.replicator.push(snapshot);
    await this.pool.query(
      `INSERT INTO ${clusterTables.snapshots} (name, node, manifest) VALUES ($1, $2, $3)
       ON CONFLICT (name) DO UPDATE SET node = excluded.node, manifest = excluded.manifest, created_at = now()`,
      [snapshot, this.node, JSON.stringify(manifest)],
    );
    this.counters.pushes++;
    this.counters.pushedBytes += uploadedBytes ?? 0;
  }

  async ensureLocal(snapshot: string): Promise<void> {
    if (
      await readSnapshot(snapshot).then(
        () => true,
        () => false,
      )
    ) {
      this.counters.localHits++;
      return;
    }
    const row = (await this.pool.query<{ manifest: unknown }>(`SELECT manifest FROM ${clusterTables.snapshots} WHERE name = $1`, [snapshot])).rows[0];
    if (!row) {
      throw new TorporError('snapshot-not-shared', `snapshot ${snapshot} is neither on this node nor in the object store`, {
        hint: 'the node that took it died before pushing it; the session is rebuilt from its context log',
        status: 404,
      });
    }
    // The replicator validates the manifest: the database is shared, so its content is not trusted blindly.
    const { downloadedBytes } = await this.replicator.pull(row.manifest as never);
    this.counters.pulls++;
    this.counters.pulledBytes += downloadedBytes ?? 0;
  }
}
