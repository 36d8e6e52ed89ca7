import pg from 'pg';
import { clusterTables } from './cluster-schema.ts';

export interface NodeCapacity {
  cpus: number;
  memoryMiB: number;
  /** Most machines this node runs at once (its --max-machines). */
  maxMachines: number;
}

export interface ClusterNodeInfo extends NodeCapacity {
  name: string;
  url: string;
  runningMachines: number;
  /** Sessions this node holds that are not hibernated (they have, or are getting, a machine). */
  awakeSessions: number;
  /** Sessions this node holds, hibernated ones included. */
  heldSessions: number;
  startedAt: string;
  heartbeatAt: string;
  /** Seconds since the last heartbeat, by PostgreSQL's clock. */
  heartbeatAgeSeconds: number;
  alive: boolean;
}

const awakeStates = `('creating', 'running', 'idle', 'waking', 'hibernating')`;

/** Adds or refreshes this node's row (a restarted node keeps its name and so its leases, if still live). */
export async function registerNode(pool: pg.Pool, node: { name: string; url: string } & NodeCapacity): Promise<void> {
  await pool.query(
    `INSERT INTO ${clusterTables.nodes} (name, url, cpus, memory_mib, max_machines, started_at, heartbeat_at)
     VALUES ($1, $2, $3, $4, $5, now(), now())
     ON CONFLICT (name) DO UPDATE SET url = excluded.url, cpus = excluded.cpus, memory_mib = excluded.memory_mib,
       max_machines = excluded.max_machines, started_at = now(), heartbeat_at = now()`,
    [node.name, node.url, node.cpus, node.memoryMiB, node.maxMachines],
  );
}

export async function heartbeat(pool: pg.Pool, name: string, runningMachines: number): Promise<void> {
  await pool.query(`UPDATE ${clusterTables.nodes} SET heartbeat_at = now(), running_machines = $2 WHERE name = $1`, [name, runningMachines]);
}

/** Every node with its liveness (heartbeat within `ttlSeconds`) and how many sessions it holds. */
export async function listNodes(pool: pg.Pool, ttlSeconds: number): Promise<ClusterNodeInfo[]> {
  const result = await pool.query<{
    name: string;
    url: string;
    cpus: number;
    memory_mib: string;
    max_machines: number;
    running_machines: number;
    started_at: Date;
    heartbeat_at: Date;
    age: number;
    awake: string;
    held: string;
  }>(
    `SELECT n.*, EXTRACT(EPOCH FROM now() - n.heartbeat_at)::float8 AS age,
       (SELECT count(*) FROM ${clusterTables.sessions} s WHERE s.lease_node = n.name AND s.state IN ${awakeStates}) AS awake,
       (SELECT count(*) FROM ${clusterTables.sessions} s WHERE s.lease_node = n.name AND s.state <> 'deleted') AS held
     FROM ${clusterTables.nodes} n ORDER BY n.name`,
  );
  return result.rows.map((row) => ({
    name: row.name,
    url: row.url,
    cpus: row.cpus,
    memoryMiB: Number(row.memory_mib),
    maxMachines: row.max_machines,
    runningMachines: row.running_machines,
    awakeSessions: Number(row.awake),
    heldSessions: Number(row.held),
    startedAt: row.started_at.toISOString(),
    heartbeatAt: row.heartbeat_at.toISOString(),
    heartbeatAgeSeconds: row.age,
    alive: row.age < ttlSeconds,
  }));
}

/**
 * Where a new session goes: the live node with the most free machine slots, counted from the
 * sessions table (fresh for every placement, so a burst of creates spreads out instead of piling
 * onto whichever node looked emptiest at the last heartbeat). Ties go to `preferred`.
 */
export function nodeWithMostRoom(nodes: ClusterNodeInfo[], preferred: string): ClusterNodeInfo | undefined {
  const room = (node: ClusterNodeInfo) => node.maxMachines - node.awakeSessions;
  return nodes
    .filter((node) => node.alive && room(node) > 0)
    .sort(
      (left, right) => room(right) - room(left) || Number(right.name === preferred) - Number(left.name === preferred) || left.name.localeCompare(right.name),
    )[0];
}
