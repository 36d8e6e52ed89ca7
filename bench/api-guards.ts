// What the API's request guards (Host, Origin, bearer token, JSON, counted body) cost per request.
// Run by hand: node --import tsx bench/api-guards.ts [--out bench/results/api-guards-DATE.txt]
//
// Three servers over the same context log app, one run, one process (server and client share
// the 2 cores alike), loopback, keep-alive:
//   - before: the app as it was served before authentication (no checks);
//   - torpor guards: `startApiServer` as `torpor serve` runs it (src/api/request-guards.ts);
//   - Hono middleware (peer): the same app behind hono/bearer-auth + hono/body-limit, the
//     framework's own answer to "bearer token and body size" (no Host/Origin/type checks).
import { writeFileSync } from 'node:fs';
import { cpus, totalmem, release } from 'node:os';
import { serve, type ServerType } from '@hono/node-server';
import { Hono } from 'hono';
import { bearerAuth } from 'hono/bearer-auth';
import { bodyLimit } from 'hono/body-limit';
import { createApp } from '../src/api/app.ts';
import { startApiServer } from '../src/api/server.ts';
import { temporaryLog } from '../src/context/testing/temporary-log.ts';
import { percentile, startHostSampler } from './support.ts';

const token = `torpor_${'b'.repeat(43)}`;
const option = (name: string) => {
  const index = process.argv.indexOf(name);
  return index >= 0 ? process.argv[index + 1] : undefined;
};

interface Target {
  name: string;
  url: string;
  close(): Promise<void>;
}

function listen(fetch: (request: Request) => Response | Promise<Response>): Promise<{ url: string; server: ServerType }> {
  return new Promise((resolve) => {
    const server = serve({ fetch, port: 0, hostname: '127.0.0.1' }, (info) => resolve({ url: `http://127.0.0.1:${info.port}`, server }));
  });
}

async function targets(): Promise<Target[]> {
  const logs = [temporaryLog(), temporaryLog(), temporaryLog()];
  const before = await listen(createApp({ log: logs[0]!.log }).fetch);
  const guarded = await startApiServer({ port: 0, log: logs[1]!.log, token });
  const peerApp = new Hono();
  peerApp.use('*', bearerAuth({ token }), bodyLimit({ maxSize: 1024 * 1024 }));
  peerApp.route('/', createApp({ log: logs[2]!.log }));
  const peer = await listen(peerApp.fetch);
  const closeServer = (server: ServerType) => new Promise<void>((resolve) => server.close(() => resolve()));
  return [
    { name: 'before (no checks)', url: before.url, close: async () => (await closeServer(before.server), await logs[0]!.cleanup()) },
    { name: 'torpor guards', url: guarded.url, close: async () => (await guarded.close(), await logs[1]!.cleanup()) },
    { name: 'Hono bearerAuth+bodyLimit (peer)', url: peer.url, close: async () => (await closeServer(peer.server), await logs[2]!.cleanup()) },
  ];
}

const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

async function timed(count: number, request: () => Promise<Response>): Promise<{ perSecond: number; p50: number; p99: number }> {
  const latencies: number[] = [];
  const started = performance.now();
  for (let index = 0; index < count; index++) {
    const begin = performance.now();
    const response = await request();
    await response.arrayBuffer();
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    latencies.push(performance.now() - begin);
  }
  return { perSecond: count / ((performance.now() - started) / 1000), p50: percentile(latencies, 50), p99: percentile(latencies, 99) };
}

const format = (result: { perSecond: number; p50: number; p99: number }) =>
  `${Math.round(result.perSecond).toLocaleString('en-US')}/s, p50 ${result.p50.toFixed(2)} ms, p99 ${result.p99.toFixed(2)} ms`;

const stopSampler = startHostSampler('no-qemu-of-ours');
const all = await targets();
const rows: Record<string, string[]> = { 'GET one entry (x1000)': [], 'POST 1 entry, 200 B (x500)': [], 'POST 100 x 1 KiB entries, ~110 KB (x100)': [] };
const started = Date.now();
const entry = (size: number, index: number) => ({ kind: 'message', role: 'user', content: `${index} ${'x'.repeat(size)}` });
const batch = JSON.stringify(Array.from({ length: 100 }, (_, index) => entry(1000, index)));
// Interleave the targets round by round, so host noise (other engineers' jobs) hits all alike.
for (let round = 0; round < 3; round++) {
  for (const target of all) {
    await fetch(`${target.url}/v1/logs/bench/entries`, { method: 'POST', headers, body: JSON.stringify([entry(200, 0)]) });
    const get = await timed(1000, () => fetch(`${target.url}/v1/logs/bench/entries?from=0&limit=1`, { headers }));
    const small = await timed(500, () => fetch(`${target.url}/v1/logs/bench/entries`, { method: 'POST', headers, body: JSON.stringify([entry(200, 1)]) }));
    const large = await timed(100, () => fetch(`${target.url}/v1/logs/bench/entries`, { method: 'POST', headers, body: batch }));
    if (round === 2) {
      rows['GET one entry (x1000)']!.push(format(get));
      rows['POST 1 entry, 200 B (x500)']!.push(format(small));
      rows['POST 100 x 1 KiB entries, ~110 KB (x100)']!.push(format(large));
    }
  }
}
for (const target of all) await target.close();

// The guards alone, in process, without sockets: what they add to one request's CPU time.
async function inProcess(fetch: (request: Request) => Response | Promise<Response>, count: number): Promise<number> {
  const started = performance.now();
  for (let index = 0; index < count; index++) {
    const response = await fetch(new Request('http://127.0.0.1:7070/health', { headers: { ...headers, host: '127.0.0.1:7070' } }));
    await response.arrayBuffer();
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
  }
  return ((performance.now() - started) * 1000) / count;
}
{
  const { log, cleanup } = temporaryLog();
  const app = createApp({ log });
  const { guardRequests, allowedHostsFor } = await import('../src/api/request-guards.ts');
  const { TokenVerifier } = await import('../src/state/api-tokens.ts');
  const allowed = allowedHostsFor('127.0.0.1', 7070);
  const guarded = guardRequests(app.fetch, {
    verifier: new TokenVerifier(token),
    allowedHosts: allowed.hosts,
    allowedOrigins: allowed.origins,
    maxBodyBytes: 1024 * 1024,
    maxLogAppendBytes: 1024 * 1024,
  });
  const peerApp = new Hono();
  peerApp.use('*', bearerAuth({ token }), bodyLimit({ maxSize: 1024 * 1024 }));
  peerApp.route('/', app);
  const cells: number[][] = [[], [], []];
  for (let round = 0; round < 5; round++) {
    cells[0]!.push(await inProcess(app.fetch, 5000));
    cells[1]!.push(await inProcess(guarded, 5000));
    cells[2]!.push(await inProcess(peerApp.fetch, 5000));
  }
  rows['in process, GET /health, no sockets (median of 5 x 5000)'] = cells.map((values) => `${percentile(values, 50).toFixed(1)} µs per request`);
  await cleanup();
}

const names = all.map((target) => target.name);
const host = stopSampler();
const lines = [
  `torpor API guards benchmark, ${new Date().toISOString().slice(0, 10)}`,
  `machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${Math.round(totalmem() / 1024 ** 3)} GiB RAM, Linux ${release()}; Node ${process.version}`,
  'server and client in one process, loopback, keep-alive fetch; SQLite log (fsync per append); three rounds interleaved, the last one reported',
  `wall time ${((Date.now() - started) / 1000).toFixed(0)} s; host load ${host.loadStart.toFixed(1)} at start, ${host.loadMax.toFixed(1)} at most; other QEMUs running: ${host.foreignQemuMean.toFixed(1)} on average (other engineers' tests share the 2 cores: compare p50s, rates are noisy)`,
  '',
  `| | ${names.join(' | ')} |`,
  `|---|${names.map(() => '---').join('|')}|`,
  ...Object.entries(rows).map(([name, cells]) => `| ${name} | ${cells.join(' | ')} |`),
];
const text = lines.join('\n') + '\n';
process.stdout.write(text);
const out = option('--out');
if (out) writeFileSync(out, text);
