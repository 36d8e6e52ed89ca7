import { createHash } from 'node:crypto';
import pg from 'pg';
import { ContextLog, PostgresStorage } from '../context/index.ts';
import { listMachines, removeMachine } from '../runtime/machines.ts';
import type { SessionManager } from '../session/session-manager.ts';
import { clusterTables, ensureClusterSchema } from './cluster-schema.ts';
import { clusterToken } from './cluster-token.ts';
import { heartbeat, listNodes, registerNode, type ClusterNodeInfo, type NodeCapacity } from './node-registry.ts';
import { PostgresSessionStore } from './postgres-session-store.ts';
import { SnapshotSharing, type SnapshotReplicatorLike } from './snapshot-sharing.ts';

export interface ClusterNodeOptions {
  /** The control plane: a PostgreSQL URL (`--cluster`, TORPOR_CLUSTER). */
  postgresUrl: string;
  /** This node's name, unique in the cluster (`--node-name`; default the host name). */
  name: string;
  capacity: NodeCapacity;
  /** Copies snapshots to and from the object store (`--store`); without it, a session that moves is rebuilt from its log. */
  replicator?: SnapshotReplicatorLike;
  /** How often this node heartbeats and looks for sessions of dead nodes. Default 1 s. */
  heartbeatMs?: number;
  /** A node whose heartbeat is older than this is dead and its sessions are taken over. Default 10 s. */
  leaseSeconds?: number;
  /** Most sessions this node recovers at once after a failure (each restores or boots a machine). Default 2. */
  adoptConcurrency?: number;
  log?: (line: string) => void;
}

/**
 * One torpor node of a cluster: it registers itself and heartbeats, keeps the shared session store,
 * and takes over the sessions of nodes whose heartbeat stopped. Its `SessionManager` runs only the
 * sessions this node holds the lease of; `routeSessionRequests` sends the other requests to their holder.
 */
export class ClusterNode {
  readonly name: string;
  readonly pool: pg.Pool;
  readonly store: PostgresSessionStore;
  readonly token: string;
  readonly leaseSeconds: number;
  readonly replication?: SnapshotSharing;
  private readonly options: ClusterNodeOptions;
  private manager?: SessionManager;
  private url?: string;
  private timer?: NodeJS.Timeout;
  private closed = false;
  private ticking = false;
  /** Sessions of dead nodes, first seen when: a node claims its own share at once, the rest after a grace. */
  private readonly orphanSince = new Map<string, number>();
  private readonly adopting = new Set<string>();
  private adoptQueue: Promise<unknown>[] = [];
  /** Takeovers this node did: session id -> { from, epoch, at, retriedTurn }. */
  readonly takeovers: Array<{ session: string; from: string | null; epoch: number; at: string; retriedTurn?: string; error?: string }> = [];

  private constructor(options: ClusterNodeOptions, pool: pg.Pool, store: PostgresSessionStore, token: string) {
    this.options = options;
    this.name = options.name;
    this.pool = pool;
    this.store = store;
    this.token = token;
    this.leaseSeconds = options.leaseSeconds ?? 10;
    if (options.replicator) this.replication = new SnapshotSharing(pool, options.name, options.replicator);
  }

  static async start(options: ClusterNodeOptions): Promise<ClusterNode> {
    if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(options.name))
      throw new Error(`invalid node name ${JSON.stringify(options.name)}: use letters, digits, . _ -`);
    const pool = new pg.Pool({ connectionString: options.postgresUrl, max: 8, connectionTimeoutMillis: 10_000 });
    pool.on('error', () => {});
    try {
      await ensureClusterSchema(pool);
      const token = await clusterToken(pool);
      const store = await PostgresSessionStore.open({ pool, connectionString: options.postgresUrl, node: options.name });
      return new ClusterNode(options, pool, store, token);
    } catch (error) {
      await pool.end().catch(() => {});
      throw error;
    }
  }

  /** The context log every node shares, its appends fenced by the session table's leases. */
  async openLog(): Promise<ContextLog> {
    return new ContextLog(await PostgresStorage.connect({ connectionString: this.options.postgresUrl, leaseTable: clusterTables.sessions }));
  }

  /**
   * Starts serving: registers under `url` (where other nodes forward requests), removes machines
   * left from sessions other nodes took over while this one was down, then heartbeats.
   */
  async attach(manager: SessionManager, url: string): Promise<void> {
    this.manager = manager;
    this.url = url;
    this.store.on('lost', (id) => manager.abandon(id));
    await this.removeForeignMachines();
    await registerNode(this.pool, { name: this.name, url, ...this.options.capacity });
    await this.tick();
    this.timer = setInterval(() => void this.tick(), this.options.heartbeatMs ?? 1000);
    this.timer.unref();
  }

  private async removeForeignMachines(): Promise<void> {
    for (const machine of await listMachines().catch(() => [])) {
      const session = /^(s-[0-9a-f]{12})-/.exec(machine.config.name)?.[1];
      if (!session || !this.store.get(session) || this.store.holds(session)) continue;
      this.options.log?.(`removing machine ${machine.config.id}: session ${session} moved to another node while this one was down`);
      await removeMachine(machine.config, { force: true }).catch(() => {});
    }
  }

  async nodes(): Promise<ClusterNodeInfo[]> {
    return listNodes(this.pool, this.leaseSeconds);
  }

  private async tick(): Promise<void> {
    if (this.ticking || this.closed) return;
    this.ticking = true;
    try {
      await heartbeat(this.pool, this.name, this.manager?.runningMachines() ?? 0);
      await this.takeOverOrphans();
    } catch (error) {
      this.options.log?.(`cluster: heartbeat failed: ${(error as Error).message}`);
    } finally {
      this.ticking = false;
    }
  }

  /**
   * Claims the sessions of dead nodes. Each live node claims its share (by a hash of the session id
   * over the sorted live nodes) at once, and any session still unclaimed after another lease period;
   * the claim itself is a compare-and-set on the epoch, so exactly one node wins each session.
   */
  private async takeOverOrphans(): Promise<void> {
    const nodes = await this.nodes();
    const live = nodes.filter((node) => node.alive).map((node) => node.name);
    if (!live.includes(this.name)) return; // this node's own heartbeat is late: it must not take anything
    const now = Date.now();
    const seen = new Set<string>();
    for (const record of this.store.list()) {
      const leased = this.store.leased(record.id)!;
      if (leased.leaseNode !== null && live.includes(leased.leaseNode)) continue;
      seen.add(record.id);
      const since = this.orphanSince.get(record.id) ?? now;
      this.orphanSince.set(record.id, since);
      const share = live[createHash('sha256').update(record.id).digest().readUInt32BE(0) % live.length];
      if (share !== this.name && now - since < this.leaseSeconds * 1000) continue;
      await this.takeOver(record.id, leased.epoch, leased.leaseNode);
    }
    for (const id of this.orphanSince.keys()) if (!seen.has(id)) this.orphanSince.delete(id);
  }

  /** Claims one session of a dead node and, if it was awake, brings it back here. True if this node now holds it. */
  async takeOver(id: string, epoch: number, from: string | null): Promise<boolean> {
    const claimed = await this.store.claim(id, epoch, this.leaseSeconds);
    if (!claimed) return this.store.holds(id);
    this.orphanSince.delete(id);
    const takeover: (typeof this.takeovers)[number] = { session: id, from, epoch: claimed.epoch, at: new Date().toISOString() };
    this.takeovers.push(takeover);
    this.options.log?.(`cluster: took session ${id} over from ${from ?? 'no node'} (epoch ${claimed.epoch})`);
    if (claimed.record.state !== 'hibernated' && this.manager) {
      const manager = this.manager;
      this.adopting.add(id);
      await this.limitAdoptions(() =>
        manager.adopt(id, `node ${from ?? '?'} stopped heartbeating; taken over by ${this.name}`).then(
          (result) => {
            takeover.retriedTurn = result.retriedTurn;
          },
          (error: Error) => {
            takeover.error = error.message;
            this.options.log?.(`cluster: recovering session ${id} failed: ${error.message}`);
          },
        ),
      ).finally(() => this.adopting.delete(id));
    }
    return true;
  }

  /** Runs adoptions a few at a time: each restores or boots a machine. The caller waits for a slot, not for the work. */
  private async limitAdoptions(work: () => Promise<void>): Promise<void> {
    const limit = this.options.adoptConcurrency ?? 2;
    while (this.adoptQueue.length >= limit) await Promise.race(this.adoptQueue);
    const running = work().finally(() => {
      this.adoptQueue = this.adoptQueue.filter((each) => each !== running);
    });
    this.adoptQueue.push(running);
  }

  /** Whether this node is recovering the session right now (requests then wait on the session's queue). */
  isAdopting(id: string): boolean {
    return this.adopting.has(id);
  }

  /** Moves a hibernated session so its next wake happens on `target`. */
  async move(id: string, target: string): Promise<boolean> {
    return (await this.store.move(id, target, this.leaseSeconds)) !== undefined;
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await Promise.allSettled(this.adoptQueue);
    await this.store.close();
    await this.pool.end().catch(() => {});
  }
}
