import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ContextLog, LeaseLostError, PostgresStorage } from '../context/index.ts';
import { startPostgresServer, type PostgresServer } from '../context/testing/postgres-server.ts';
import type { AgentSessionRecord } from '../session/session-store.ts';
import { clusterTables, ensureClusterSchema } from './cluster-schema.ts';
import { heartbeat, listNodes, nodeWithMostRoom, registerNode } from './node-registry.ts';
import { PostgresSessionStore } from './postgres-session-store.ts';

// Real PostgreSQL: the leases, the fencing of record writes and of log appends, and the takeover
// race are properties of its row locks and compare-and-set updates, so nothing here is mocked.

let server: PostgresServer;
let url: string;
let pool: pg.Pool;
const opened: Array<{ close(): Promise<void> }> = [];
const capacity = { cpus: 2, memoryMiB: 4096, maxMachines: 4 };
const lease = 5;

before(async () => {
  server = await startPostgresServer({ durable: false });
  url = await server.createDatabase('leases');
  pool = new pg.Pool({ connectionString: url, max: 4 });
  pool.on('error', () => {});
  await ensureClusterSchema(pool);
  for (const name of ['node-a', 'node-b', 'node-c']) await registerNode(pool, { name, url: `http://127.0.0.1:1/${name}`, ...capacity });
});

after(async () => {
  for (const each of opened.reverse()) await each.close().catch(() => {});
  await pool?.end();
  await server?.stop();
});

async function store(node: string): Promise<PostgresSessionStore> {
  const storePool = new pg.Pool({ connectionString: url, max: 2 });
  storePool.on('error', () => {});
  opened.push({ close: () => storePool.end() });
  const opened_ = await PostgresSessionStore.open({ pool: storePool, connectionString: url, node });
  opened.push(opened_);
  return opened_;
}

async function log(): Promise<ContextLog> {
  const contextLog = new ContextLog(await PostgresStorage.connect({ connectionString: url, leaseTable: clusterTables.sessions, poolSize: 2 }));
  opened.push(contextLog);
  return contextLog;
}

/** The node stops heartbeating (killed, paused, cut off): its last heartbeat is now older than the lease. */
async function silence(node: string): Promise<void> {
  await pool.query(`UPDATE ${clusterTables.nodes} SET heartbeat_at = now() - interval '1 hour' WHERE name = $1`, [node]);
}

function newRecord(id: string): AgentSessionRecord {
  const now = new Date().toISOString();
  return {
    id,
    name: id,
    spec: { image: 'base', command: ['sh'], env: [], cpus: 1, memoryMiB: 128, idleSeconds: 1 },
    state: 'idle',
    turns: 0,
    createdAt: now,
    updatedAt: now,
    lastActivityAt: now,
  };
}

async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('session leases in PostgreSQL', () => {
  it('a record lives where every node sees it, held by the node that created it', async () => {
    const a = await store('node-a');
    const b = await store('node-b');
    await a.insert(newRecord('s-000000000001'));
    const updated = await a.update('s-000000000001', { state: 'running', machineId: 'm1', note: 'x' });
    assert.equal(updated.state, 'running');
    const cleared = await a.update('s-000000000001', { machineId: undefined, note: undefined });
    assert.equal(cleared.machineId, undefined);
    assert.equal(cleared.note, undefined);
    await until(() => b.get('s-000000000001')?.state === 'running', 'the notification to reach node-b');
    assert.equal(a.holds('s-000000000001'), true);
    assert.equal(b.holds('s-000000000001'), false);
    await assert.rejects(b.insert(newRecord('s-000000000001')), /exists/);
  });

  it('a node cannot change a session it does not hold', async () => {
    const a = await store('node-a');
    const b = await store('node-b');
    await a.insert(newRecord('s-000000000002'));
    await until(() => b.get('s-000000000002') !== undefined, 'node-b to see the session');
    await assert.rejects(b.update('s-000000000002', { state: 'failed' }), (error: unknown) => error instanceof LeaseLostError);
    assert.equal((await a.refresh('s-000000000002'))!.record.state, 'idle');
  });

  it('nobody takes a session from a live node; once it is silent, exactly one of two racing nodes does', async () => {
    const a = await store('node-a');
    const b = await store('node-b');
    const c = await store('node-c');
    await a.insert(newRecord('s-000000000003'));
    for (const node of ['node-a', 'node-b', 'node-c']) await heartbeat(pool, node, 0);
    assert.equal(await b.claim('s-000000000003', 1, lease), undefined, 'node-a heartbeats: its lease holds');
    await silence('node-a');
    const [byB, byC] = await Promise.all([b.claim('s-000000000003', 1, lease), c.claim('s-000000000003', 1, lease)]);
    assert.equal([byB, byC].filter(Boolean).length, 1, 'exactly one claim wins');
    const winner = (byB ?? byC)!;
    assert.equal(winner.epoch, 2);
    assert.equal(winner.leaseNode, byB ? 'node-b' : 'node-c');
    // A late claim with the old epoch loses even though the holder it names is dead.
    assert.equal(await (byB ? c : b).claim('s-000000000003', 1, lease), undefined);
  });

  it('a paused node whose session was taken over fails its record writes and its log appends, and is told', async () => {
    const a = await store('node-a');
    const b = await store('node-b');
    const contextLog = await log();
    await heartbeat(pool, 'node-a', 0);
    await heartbeat(pool, 'node-b', 0);
    const id = 's-000000000004';
    await a.insert(newRecord(id));
    await contextLog.append(id, [{ kind: 'message', role: 'user', content: 'one' }], { fence: a.logFence(id) });
    const lost: string[] = [];
    a.on('lost', (session) => lost.push(session));

    // node-a "pauses" (no heartbeat, no writes); node-b takes the session over and writes.
    const fenceBeforePause = a.logFence(id)!;
    await silence('node-a');
    await heartbeat(pool, 'node-b', 0);
    const claimed = await b.claim(id, 1, lease);
    assert.ok(claimed);
    await contextLog.append(id, [{ kind: 'message', role: 'assistant', content: 'from b' }], { fence: b.logFence(id) });

    // node-a wakes up and carries on as if nothing happened: every write is refused.
    await assert.rejects(
      contextLog.append(id, [{ kind: 'message', role: 'assistant', content: 'stale a' }], { fence: fenceBeforePause }),
      (error: unknown) => error instanceof LeaseLostError && /node-b holds it at epoch 2/.test(error.message) && error.status === 409 && Boolean(error.hint),
    );
    await assert.rejects(a.update(id, { state: 'failed', note: 'stale' }), (error: unknown) => error instanceof LeaseLostError);
    await until(() => lost.includes(id), "node-a's lost event");
    assert.equal(a.holds(id), false);
    const { entries } = await contextLog.read(id);
    assert.deepEqual(
      entries.map((stored) => (stored.entry as { content: string }).content),
      ['one', 'from b'],
    );
    assert.equal((await b.refresh(id))!.record.state, 'idle', "node-a's stale write changed nothing");
  });

  it('a takeover waits for an append already past the fence check, and later appends see the new epoch', async () => {
    const a = await store('node-a');
    const b = await store('node-b');
    const contextLog = await log();
    const id = 's-000000000005';
    await heartbeat(pool, 'node-a', 0);
    await a.insert(newRecord(id));
    // Hold the lease row the way an append in flight does (FOR SHARE), then try to take the session over.
    const client = await pool.connect();
    await client.query('BEGIN');
    await client.query(`SELECT lease_epoch FROM ${clusterTables.sessions} WHERE id = $1 FOR SHARE`, [id]);
    await silence('node-a');
    let claimedAt = 0;
    const claim = b.claim(id, 1, lease).then((result) => {
      claimedAt = Date.now();
      return result;
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(claimedAt, 0, 'the claim waits for the append in flight');
    const committedAt = Date.now();
    await client.query('COMMIT');
    client.release();
    assert.ok(await claim);
    assert.ok(claimedAt >= committedAt);
    await assert.rejects(
      contextLog.append(id, [{ kind: 'message', role: 'user', content: 'late' }], { fence: { holder: 'node-a', epoch: 1 } }),
      LeaseLostError,
    );
  });

  it('hostile fences: an unknown session, a forged holder, a fence on a log without leases', async () => {
    const contextLog = await log();
    await assert.rejects(
      contextLog.append('s-nosuchsession', [{ kind: 'message', role: 'user', content: 'x' }], { fence: { holder: 'node-a', epoch: 1 } }),
      LeaseLostError,
    );
    const a = await store('node-a');
    await a.insert(newRecord('s-000000000006'));
    await assert.rejects(
      contextLog.append('s-000000000006', [{ kind: 'message', role: 'user', content: 'x' }], { fence: { holder: 'node-b', epoch: 1 } }),
      LeaseLostError,
    );
    const plain = new ContextLog(await PostgresStorage.connect({ connectionString: url, poolSize: 1 }));
    opened.push(plain);
    await assert.rejects(
      plain.append('s-000000000006', [{ kind: 'message', role: 'user', content: 'x' }], { fence: { holder: 'node-a', epoch: 1 } }),
      /lease table/,
    );
    await assert.rejects(PostgresStorage.connect({ connectionString: url, leaseTable: 'x; DROP TABLE torpor_nodes' }), /invalid lease table/);
  });

  it('nodes list with liveness; placement picks the live node with the most room', async () => {
    await heartbeat(pool, 'node-b', 0);
    await heartbeat(pool, 'node-c', 0);
    await silence('node-a');
    const nodes = await listNodes(pool, lease);
    assert.deepEqual(
      nodes.map((node) => [node.name, node.alive]),
      [
        ['node-a', false],
        ['node-b', true],
        ['node-c', true],
      ],
    );
    const roomiest = nodeWithMostRoom(nodes, 'node-b')!;
    const room = (name: string) => nodes.find((node) => node.name === name)!;
    assert.equal(
      roomiest.maxMachines - roomiest.awakeSessions,
      Math.max(...['node-b', 'node-c'].map((name) => room(name).maxMachines - room(name).awakeSessions)),
    );
    assert.notEqual(roomiest.name, 'node-a', 'a dead node gets nothing');
  });
});
