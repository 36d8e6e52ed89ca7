// Cluster benchmark (run by hand; issue 13): wake on the node a session slept on vs on another node
// (cold: its snapshot pulled from S3), bytes read from the object store per wake, failover time after
// kill -9 of a node, and sessions created per minute across 3 nodes vs 1. Every node is a real
// `torpor serve --cluster` process over a real PostgreSQL and the S3 test server, on this machine.
// The single-node cluster is the old design's shape (one server) with the cluster's overheads; no
// peer system runs here (Nomad/Kubernetes rescheduling needs a fleet), so the failover row is
// compared with the lease it is bounded by. Prints one table; commit it under bench/results/.
//   node --import tsx bench/cluster.ts [sessions]
import { cpus, loadavg, totalmem } from 'node:os';
import { MiB, ms, percentile } from './support.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';
import { startTestCluster, type TestCluster, type TestNode } from '../src/cluster/testing/cluster-harness.ts';

const sessionCount = Number(process.argv[2] ?? 4);
const leaseSeconds = 3;
const began = performance.now();
const rows: Array<[string, string]> = [];
// Each row also goes to stderr as it is measured, so a run that fails later still shows what it had.
const push = rows.push.bind(rows);
rows.push = (...items: Array<[string, string]>) => {
  for (const [label, value] of items) process.stderr.write(`${label}: ${value}\n`);
  return push(...items);
};
const spec = (name: string) => ({ name, image: 'base', command: ['sh', '-c', shellAgent], resources: { cpus: 1, memory: '128m' }, idle: 1 });

async function until(what: string, timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function sessionRows(cluster: TestCluster) {
  return (
    await cluster.pool.query<{ id: string; state: string; lease_node: string }>(
      "SELECT id, state, lease_node FROM torpor_sessions WHERE state <> 'deleted' ORDER BY name",
    )
  ).rows;
}

const allHibernated = (cluster: TestCluster) => async () => (await sessionRows(cluster)).every((row) => row.state === 'hibernated');

async function send(cluster: TestCluster, node: TestNode, id: string, content: string): Promise<number> {
  const start = performance.now();
  const { status, body } = await cluster.request(node, 'POST', `/v1/sessions/${id}/messages`, { content });
  if (status !== 200) throw new Error(`send to ${id}: ${status} ${JSON.stringify(body)}`);
  return performance.now() - start;
}

async function pulledBytes(cluster: TestCluster): Promise<{ bytes: number; pulls: number; localHits: number }> {
  let bytes = 0;
  let pulls = 0;
  let localHits = 0;
  for (const node of cluster.nodes.filter((each) => each.alive)) {
    const { body } = await cluster.request(node, 'GET', '/v1/cluster/node');
    bytes += body.snapshots.pulledBytes;
    pulls += body.snapshots.pulls;
    localHits += body.snapshots.localHits;
  }
  return { bytes, pulls, localHits };
}

/** Creates `count` sessions through the first node, `parallel` at a time; sessions per minute. */
async function createRate(cluster: TestCluster, count: number, parallel: number, prefix: string): Promise<number> {
  const start = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < count) {
        const index = next++;
        const { status, body } = await cluster.request(cluster.nodes[0]!, 'POST', '/v1/sessions', spec(`${prefix}${index}`));
        if (status !== 201) throw new Error(`create: ${status} ${JSON.stringify(body)}`);
      }
    }),
  );
  return (count / (performance.now() - start)) * 60_000;
}

// --- one node: creation rate --------------------------------------------------------------------
{
  const single = await startTestCluster({ nodes: 1, leaseSeconds });
  try {
    await createRate(single, 1, 1, 'warm'); // the boot template, once per node: not part of the rate
    const rate = await createRate(single, sessionCount * 2, 3, 'one');
    rows.push([`sessions created per minute, 1 node (${sessionCount * 2} sessions, 3 requests at a time)`, rate.toFixed(1)]);
  } finally {
    await single.stop();
  }
}

// --- three nodes ---------------------------------------------------------------------------------
const cluster = await startTestCluster({ nodes: 3, leaseSeconds });
try {
  for (const node of cluster.nodes) {
    // Boot templates first, on every node, so the rate compares steady states.
    const { status, body } = await cluster.request(node, 'POST', '/v1/sessions', { ...spec(`warm-${node.name}`) });
    if (status !== 201) throw new Error(JSON.stringify(body));
  }
  const rate = await createRate(cluster, sessionCount * 2, 3, 'three');
  rows.push([`sessions created per minute, 3 nodes on the same 2 cores (${sessionCount * 2} sessions, 3 at a time)`, rate.toFixed(1)]);

  const sessions = (await sessionRows(cluster)).slice(0, sessionCount);
  for (const [index, row] of sessions.entries()) await send(cluster, cluster.nodes[index % 3]!, row.id, 'hello');
  await until('hibernation', 180_000, allHibernated(cluster));

  // Wake where it slept: the message goes to the holder, whose store has the snapshot.
  const sameNode: number[] = [];
  let before = await pulledBytes(cluster);
  for (const row of sessions) {
    const holder = cluster.nodes.find((node) => node.name === row.lease_node)!;
    sameNode.push(await send(cluster, holder, row.id, 'same'));
  }
  let after = await pulledBytes(cluster);
  rows.push(['wake + turn on the node it slept on, p50 / max', `${ms(percentile(sameNode, 50))} / ${ms(Math.max(...sameNode))}`]);
  rows.push([
    '  bytes read from the object store per wake',
    `${((after.bytes - before.bytes) / sessions.length / MiB).toFixed(2)} MiB (${after.pulls - before.pulls} pulls, ${after.localHits - before.localHits} local)`,
  ]);
  await until('hibernation', 180_000, allHibernated(cluster));

  // Wake on another node: move the lease, then the new holder pulls the snapshot from S3.
  const otherNode: number[] = [];
  before = await pulledBytes(cluster);
  for (const row of await sessionRows(cluster)) {
    if (!sessions.some((each) => each.id === row.id)) continue;
    const target = cluster.nodes[(cluster.nodes.findIndex((node) => node.name === row.lease_node) + 1) % 3]!;
    const moved = await cluster.request(target, 'POST', `/v1/sessions/${row.id}/move`, { node: target.name });
    if (moved.status !== 200) throw new Error(JSON.stringify(moved.body));
    otherNode.push(await send(cluster, target, row.id, 'other'));
  }
  after = await pulledBytes(cluster);
  rows.push(['wake + turn on another node (cold from S3), p50 / max', `${ms(percentile(otherNode, 50))} / ${ms(Math.max(...otherNode))}`]);
  rows.push([
    '  bytes read from the object store per wake',
    `${((after.bytes - before.bytes) / sessions.length / MiB).toFixed(2)} MiB (${after.pulls - before.pulls} pulls)`,
  ]);

  // Failover: kill -9 the node holding the most awake sessions right after a turn (machines running).
  const benchRows = (await sessionRows(cluster)).filter((row) => sessions.some((each) => each.id === row.id));
  const victim = [...cluster.nodes].sort(
    (left, right) => benchRows.filter((row) => row.lease_node === right.name).length - benchRows.filter((row) => row.lease_node === left.name).length,
  )[0]!;
  const held = benchRows.filter((row) => row.lease_node === victim.name);
  for (const row of held) await send(cluster, victim, row.id, 'busy');
  const killedAt = performance.now();
  victim.crash();
  await until('takeover', 120_000, async () => (await sessionRows(cluster)).every((row) => row.lease_node !== victim.name));
  const takenOver = performance.now() - killedAt;
  const survivor = cluster.nodes.find((node) => node !== victim)!;
  let firstAnswer = Number.NaN;
  if (held.length > 0) {
    await send(cluster, survivor, held[0]!.id, 'after');
    firstAnswer = performance.now() - killedAt;
  }
  rows.push([`failover after kill -9: every session claimed by another node (lease ${leaseSeconds} s)`, ms(takenOver)]);
  rows.push([`  kill -9 -> first turn of one of its ${held.length} awake sessions answered elsewhere`, Number.isNaN(firstAnswer) ? 'n/a' : ms(firstAnswer)]);
} finally {
  await cluster.stop();
}

const width = Math.max(...rows.map(([label]) => label.length)) + 2;
process.stdout.write(
  [
    `torpor cluster benchmark, ${new Date().toISOString().slice(0, 10)}`,
    `machine: ${cpus().length} x ${cpus()[0]?.model.split(' ').slice(0, 2).join(' ')}, ${Math.round(totalmem() / 1024 ** 3)} GiB RAM; TCG; shell agent, 128 MiB guests; load average at the end ${loadavg()[0]!.toFixed(2)}; wall time ${((performance.now() - began) / 1000).toFixed(0)} s`,
    'nodes: separate torpor serve processes (own state dir, tmpfs dir, port) over one PostgreSQL and the S3 test server (s3rver), all on loopback',
    '',
    ...rows.map(([label, value]) => `${label.padEnd(width)}${value}`),
    '',
  ].join('\n'),
);
