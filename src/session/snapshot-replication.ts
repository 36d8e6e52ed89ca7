/**
 * How a cluster shares session snapshots between nodes (an object store behind it): a hibernated
 * session's snapshot is pushed after it is taken, and a node that restores a snapshot it does not
 * hold pulls it first. A single host has none: its snapshots never leave its store.
 */
export interface SnapshotReplication {
  /** Copies a snapshot this node just took to the shared store, and records where others find it. */
  push(snapshot: string): Promise<void>;
  /** Makes the snapshot present in this node's store (a no-op when it already is); throws when no node shared it. */
  ensureLocal(snapshot: string): Promise<void>;
}
