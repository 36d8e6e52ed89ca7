/**
 * Context log benchmark, run by hand (not a test):
 *
 *   node --import tsx bench/context-log.ts [--scale 0.1] [--no-postgres] [--only HTTP] [--output bench/results/x.txt]
 *   (--only: measure just the columns whose name contains the text)
 *
 * Prints one table comparing, on the same work and the same machine:
 *   - torpor embedded: the ContextLog library in this process (SQLite, WAL, synchronous=FULL)
 *   - torpor HTTP: `torpor serve` in a child process, over loopback (SQLite, and PostgreSQL if present)
 *   - torpor Durable Streams: the same `torpor serve` through the Durable Streams protocol
 *     (/v1/stream/logs/<session>), so that it compares with the reference over one protocol
 *   - Durable Streams: the reference server (@durable-streams/server, file-backed, fdatasync per
 *     append) in a child process, over loopback, JSON mode, compression off
 * Every append is durable when acknowledged in all columns. Besides one writer at a time, 50
 * sessions append at once (what a server full of agents does): aggregate appends/s and p99.
 *
 * The reference server is not a dependency of torpor (its native deps break `npm ci` lock files):
 * install it for the run with `npm install --no-save @durable-streams/server`.
 * Result files: bench/results/context-log-<date>.txt.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cpus, totalmem, release, loadavg } from 'node:os';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ContextLog, SqliteStorage, PostgresStorage } from '../src/context/index.ts';
import { startPostgresServer, type PostgresServer } from '../src/context/testing/postgres-server.ts';

const argv = process.argv.slice(2);
const flag = (name: string) => argv.includes(name);
const option = (name: string) => {
  const index = argv.indexOf(name);
  return index >= 0 ? argv[index + 1] : undefined;
};

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------
type Payload = Record<string, unknown>;
interface Target {
  name: string;
  prepare(session: string): Promise<void>;
  append(session: string, entries: Payload[]): Promise<void>;
  /** Reads the whole session from the start; returns how many entries came back. */
  readAll(session: string): Promise<number>;
  /** Follows new entries from now on; calls back with each entry's payload. */
  follow(session: string, onEntry: (payload: Payload) => void): Promise<() => void>;
  /** Builds model context (summaries applied); returns the number of messages. Absent where there is no such operation. */
  context?(session: string): Promise<number>;
  close(): Promise<void>;
}

function embeddedTarget(name: string, log: ContextLog): Target {
  return {
    name,
    async prepare() {},
    async append(session, entries) {
      await log.append(session, entries);
    },
    async readAll(session) {
      let count = 0;
      let from = 0;
      for (;;) {
        const page = await log.read(session, { from, limit: 10_000 });
        count += page.entries.length;
        from = page.nextOffset;
        if (from >= page.endOffset) return count;
      }
    },
    async follow(session, onEntry) {
      const controller = new AbortController();
      const from = (await log.describe(session)).nextOffset;
      void (async () => {
        for await (const stored of log.tail(session, { from, signal: controller.signal })) onEntry(stored.entry as unknown as Payload);
      })();
      return () => controller.abort();
    },
    async context(session) {
      return (await log.toModelMessages(session)).length;
    },
    close: () => log.close(),
  };
}

async function startChild(kind: string, directory: string, extra: string[] = []): Promise<{ url: string; child: ChildProcess }> {
  const self = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, ['--import', 'tsx', self, '--serve', kind, '--dir', directory, ...extra], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let buffer = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split('\n').find((candidate) => candidate.startsWith('URL='));
      if (line) resolve(line.slice(4).trim());
    });
    child.once('exit', (code) => reject(new Error(`${kind} server exited with ${code}`)));
  });
  return { url, child };
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Reads server-sent events from a fetch response and hands each (event, data) to the callback. */
function readEvents(response: Response, onEvent: (event: string, data: string) => void): void {
  void (async () => {
    const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        let boundary: number;
        while ((boundary = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, boundary);
          buffer = buffer.slice(boundary + 2);
          let event = 'message';
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
          }
          if (data.length > 0) onEvent(event, data.join('\n'));
        }
      }
    } catch {
      // aborted
    }
  })();
}

async function ok(response: Response): Promise<Response> {
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  return response;
}

function torporHttpTarget(name: string, url: string, child: ChildProcess, directory: string): Target {
  // `torpor serve` needs its bearer token (created in its state directory on start) on every request.
  const token = readFileSync(join(directory, 'api', 'token'), 'utf8').trim();
  const fetch = (input: string, init: RequestInit = {}) =>
    globalThis.fetch(input, { ...init, headers: { authorization: `Bearer ${token}`, ...(init.headers as Record<string, string>) } });
  return {
    name,
    async prepare() {},
    async append(session, entries) {
      const response = await ok(
        await fetch(`${url}/v1/logs/${session}/entries`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(entries) }),
      );
      await response.arrayBuffer();
    },
    async readAll(session) {
      let count = 0;
      let from = 0;
      for (;;) {
        const response = await ok(await fetch(`${url}/v1/logs/${session}/entries?from=${from}&limit=10000`));
        const page = (await response.json()) as { entries: unknown[]; nextOffset: number; endOffset: number };
        count += page.entries.length;
        from = page.nextOffset;
        if (from >= page.endOffset) return count;
      }
    },
    async follow(session, onEntry) {
      const controller = new AbortController();
      const from = ((await (await fetch(`${url}/v1/logs/${session}`)).json()) as { nextOffset: number }).nextOffset;
      const response = await ok(await fetch(`${url}/v1/logs/${session}/entries?live=sse&from=${from}`, { signal: controller.signal }));
      readEvents(response, (event, data) => {
        if (event === 'entry') onEntry((JSON.parse(data) as { entry: Payload }).entry);
      });
      return () => controller.abort();
    },
    async context(session) {
      const response = await ok(await fetch(`${url}/v1/logs/${session}/messages`));
      return ((await response.json()) as { messages: unknown[] }).messages.length;
    },
    close: () => stopChild(child),
  };
}

/**
 * A Durable Streams server: the reference (one stream per session, created with PUT), or torpor's
 * context log through the same protocol (`logs/<session>`, created by the first append; its
 * messages are stored entries, so the payload is their `entry`).
 */
function durableStreamsTarget(url: string, child: ChildProcess, options: { name?: string; torporLog?: boolean } = {}): Target {
  const streamUrl = (session: string) => `${url}/v1/stream/${options.torporLog ? `logs/${session}` : session}`;
  const payloadOf = (item: Payload) => (options.torporLog ? (item.entry as Payload) : item);
  return {
    name: options.name ?? 'Durable Streams HTTP',
    async prepare(session) {
      if (options.torporLog) return;
      await ok(await fetch(streamUrl(session), { method: 'PUT', headers: { 'content-type': 'application/json' } }));
    },
    async append(session, entries) {
      const response = await ok(
        await fetch(streamUrl(session), { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(entries) }),
      );
      await response.arrayBuffer();
    },
    async readAll(session) {
      let count = 0;
      let offset = '-1';
      for (;;) {
        const response = await ok(await fetch(`${streamUrl(session)}?offset=${encodeURIComponent(offset)}`));
        const page = (await response.json()) as unknown[];
        count += page.length;
        offset = response.headers.get('Stream-Next-Offset') ?? offset;
        if (response.headers.get('Stream-Up-To-Date') === 'true') return count;
      }
    },
    async follow(session, onEntry) {
      const controller = new AbortController();
      const response = await ok(await fetch(`${streamUrl(session)}?offset=now&live=sse`, { signal: controller.signal }));
      readEvents(response, (event, data) => {
        if (event === 'data') for (const item of JSON.parse(data) as Payload[]) onEntry(payloadOf(item));
      });
      return () => controller.abort();
    },
    close: () => stopChild(child),
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------
function percentile(samples: number[], fraction: number): number {
  const sorted = [...samples].sort((left, right) => left - right);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
}

const text = (bytes: number, seed: number) => `${seed}:`.padEnd(bytes, 'abcdefghijklmnopqrstuvwxyz ');
const message = (bytes: number, seed: number): Payload => ({ kind: 'message', role: 'user', content: text(bytes, seed) });

interface Results {
  [metric: string]: string;
}

async function sequentialAppends(target: Target, session: string, count: number): Promise<{ perSecond: number; p50: number; p99: number }> {
  await target.prepare(session);
  const latencies: number[] = [];
  const started = performance.now();
  for (let index = 0; index < count; index++) {
    const before = performance.now();
    await target.append(session, [message(200, index)]);
    latencies.push(performance.now() - before);
  }
  const seconds = (performance.now() - started) / 1000;
  return { perSecond: count / seconds, p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

/** `sessions` writers at once, each appending single entries one after another. */
async function concurrentAppends(target: Target, prefix: string, sessions: number, perSession: number): Promise<{ perSecond: number; p99: number }> {
  for (let index = 0; index < sessions; index++) await target.prepare(`${prefix}-${index}`);
  const latencies: number[] = [];
  const started = performance.now();
  await Promise.all(
    Array.from({ length: sessions }, async (_, session) => {
      for (let index = 0; index < perSession; index++) {
        const before = performance.now();
        await target.append(`${prefix}-${session}`, [message(200, index)]);
        latencies.push(performance.now() - before);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { perSecond: (sessions * perSession) / seconds, p99: percentile(latencies, 0.99) };
}

async function fill(target: Target, session: string, total: number, batch: number, bytes: number): Promise<number> {
  const started = performance.now();
  for (let written = 0; written < total; written += batch) {
    const size = Math.min(batch, total - written);
    await target.append(
      session,
      Array.from({ length: size }, (_, index) => message(bytes, written + index)),
    );
  }
  return (performance.now() - started) / 1000;
}

async function tailLatency(target: Target, session: string, count: number): Promise<{ p50: number; p99: number }> {
  await target.prepare(session);
  await target.append(session, [message(100, -1)]);
  const waiting = new Map<number, () => void>();
  const stop = await target.follow(session, (payload) => {
    const seed = Number(String(payload.content).split(':')[0]);
    waiting.get(seed)?.();
  });
  await new Promise((resolve) => setTimeout(resolve, 200));
  const latencies: number[] = [];
  for (let index = 0; index < count; index++) {
    const delivered = new Promise<void>((resolve) => waiting.set(index, resolve));
    const before = performance.now();
    await target.append(session, [message(200, index)]);
    await delivered;
    latencies.push(performance.now() - before);
    waiting.delete(index);
  }
  stop();
  return { p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

async function latencyAt(target: Target, session: string, count: number): Promise<{ p50: number; p99: number }> {
  const latencies: number[] = [];
  for (let index = 0; index < count; index++) {
    const before = performance.now();
    await target.append(session, [message(200, index)]);
    latencies.push(performance.now() - before);
  }
  return { p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99) };
}

const milliseconds = (value: number) => `${value.toFixed(2)} ms`;
const rate = (value: number) => `${Math.round(value).toLocaleString('en-US')}/s`;

async function measure(target: Target, scale: number, log: (line: string) => void): Promise<Results> {
  const results: Results = {};
  const run = Math.random().toString(36).slice(2, 8);
  const sequentialCount = Math.round(2000 * scale);
  log(`  ${target.name}: ${sequentialCount} sequential single-entry appends`);
  const sequential = await sequentialAppends(target, `seq-${run}`, sequentialCount);
  results['sequential appends (1 entry, 200 B)'] = rate(sequential.perSecond);
  results['  append latency p50 / p99'] = `${milliseconds(sequential.p50)} / ${milliseconds(sequential.p99)}`;

  const perSession = Math.max(2, Math.round(40 * scale));
  log(`  ${target.name}: 50 sessions x ${perSession} appends at once`);
  const concurrent = await concurrentAppends(target, `many-${run}`, 50, perSession);
  results['50 sessions appending at once: appends/s, p99'] = `${rate(concurrent.perSecond)}, ${milliseconds(concurrent.p99)}`;

  const batches = Math.round(300 * scale);
  log(`  ${target.name}: ${batches} batches of 100 x 1 KiB`);
  await target.prepare(`batch-${run}`);
  const batchSeconds = await fill(target, `batch-${run}`, batches * 100, 100, 1024);
  results['batched appends (100 x 1 KiB)'] = `${rate(batches / batchSeconds)} (${rate((batches * 100) / batchSeconds)} entries)`;

  const readSize = Math.round(100_000 * scale);
  log(`  ${target.name}: read ${readSize} entries from offset 0`);
  await target.prepare(`read-${run}`);
  await fill(target, `read-${run}`, readSize, 2000, 256);
  const readStarted = performance.now();
  const count = await target.readAll(`read-${run}`);
  const readSeconds = (performance.now() - readStarted) / 1000;
  if (count !== readSize) throw new Error(`${target.name} read ${count} of ${readSize} entries`);
  results[`read ${readSize.toLocaleString('en-US')} entries from 0`] = `${readSeconds.toFixed(2)} s (${rate(readSize / readSeconds)})`;

  const tailCount = Math.round(500 * scale);
  log(`  ${target.name}: tail latency over ${tailCount} appends`);
  const tail = await tailLatency(target, `tail-${run}`, tailCount);
  results['tail latency p50 / p99 (append -> delivery)'] = `${milliseconds(tail.p50)} / ${milliseconds(tail.p99)}`;

  const small = 1000;
  const large = Math.round(1_000_000 * scale);
  const probes = Math.round(300 * Math.max(scale, 0.34));
  await target.prepare(`small-${run}`);
  await fill(target, `small-${run}`, small, 1000, 200);
  const atSmall = await latencyAt(target, `small-${run}`, probes);
  log(`  ${target.name}: filling a ${large.toLocaleString('en-US')}-entry session`);
  await target.prepare(`large-${run}`);
  const fillSeconds = await fill(target, `large-${run}`, large, 5000, 200);
  log(`    (filled in ${fillSeconds.toFixed(1)} s)`);
  const atLarge = await latencyAt(target, `large-${run}`, probes);
  results[`append p50 / p99 at entry ${small.toLocaleString('en-US')}`] = `${milliseconds(atSmall.p50)} / ${milliseconds(atSmall.p99)}`;
  results[`append p50 / p99 at entry ${large.toLocaleString('en-US')}`] = `${milliseconds(atLarge.p50)} / ${milliseconds(atLarge.p99)}`;
  if (target.context) {
    // A compacted long session: one summary stands for everything but the last 1,000 entries.
    const end = large + probes;
    await target.append(`large-${run}`, [{ kind: 'summary', covers: { from: 0, to: end - 1000 }, text: 'summary of the earlier conversation' }]);
    const contextStarted = performance.now();
    const messages = await target.context(`large-${run}`);
    results[`model context of the compacted ${large.toLocaleString('en-US')}-entry session`] =
      `${milliseconds(performance.now() - contextStarted)} (${messages} messages)`;
  }
  return results;
}

function table(columns: Array<{ name: string; results: Results }>): string {
  const metrics = [...new Set(columns.flatMap((column) => Object.keys(column.results)))];
  const rows = [['', ...columns.map((column) => column.name)], ...metrics.map((metric) => [metric, ...columns.map((column) => column.results[metric] ?? '-')])];
  const widths = rows[0].map((_, index) => Math.max(...rows.map((row) => row[index].length)));
  const line = (row: string[]) => `| ${row.map((cell, index) => cell.padEnd(widths[index])).join(' | ')} |`;
  return [line(rows[0]), `|${widths.map((width) => '-'.repeat(width + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

async function main(): Promise<void> {
  const scale = Number(option('--scale') ?? '1');
  const output = option('--output');
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const directory = mkdtempSync(join(tmpdir(), 'torpor-bench-'));
  const columns: Array<{ name: string; results: Results }> = [];
  let postgres: PostgresServer | undefined;
  const started = Date.now();
  try {
    const targets: Array<() => Promise<Target>> = [
      async () => embeddedTarget('torpor embedded (SQLite)', new ContextLog(new SqliteStorage({ path: join(directory, 'embedded', 'log.sqlite') }))),
      async () => {
        const { url, child } = await startChild('torpor', join(directory, 'http-sqlite'));
        return torporHttpTarget('torpor HTTP (SQLite)', url, child, join(directory, 'http-sqlite'));
      },
    ];
    if (!flag('--no-postgres')) {
      targets.push(async () => {
        postgres ??= await startPostgresServer({ durable: true });
        return embeddedTarget(
          'torpor embedded (PostgreSQL)',
          new ContextLog(await PostgresStorage.connect({ connectionString: postgres.url, schema: 'bench_embedded' })),
        );
      });
      targets.push(async () => {
        postgres ??= await startPostgresServer({ durable: true });
        const { url, child } = await startChild('torpor', join(directory, 'http-postgres'), ['--postgres', postgres.url]);
        return torporHttpTarget('torpor HTTP (PostgreSQL)', url, child, join(directory, 'http-postgres'));
      });
    }
    targets.push(async () => {
      const { url, child } = await startChild('torpor', join(directory, 'http-streams'));
      return durableStreamsTarget(url, child, { name: 'torpor Durable Streams HTTP (SQLite)', torporLog: true });
    });
    targets.push(async () => {
      const { url, child } = await startChild('durable-streams', join(directory, 'durable-streams'));
      return durableStreamsTarget(url, child);
    });
    const only = option('--only');
    for (const create of targets) {
      const target = await create();
      if (only && !target.name.includes(only)) {
        await target.close();
        continue;
      }
      log(`measuring ${target.name}`);
      try {
        columns.push({ name: target.name, results: await measure(target, scale, log) });
      } finally {
        await target.close();
      }
    }
  } finally {
    await postgres?.stop();
    rmSync(directory, { recursive: true, force: true });
  }

  const packageVersion = (name: string) =>
    (JSON.parse(readFileSync(new URL(`../node_modules/${name}/package.json`, import.meta.url), 'utf8')) as { version: string }).version;
  const facts = [
    `torpor context log benchmark, ${new Date().toISOString().slice(0, 10)}${scale !== 1 ? ` (scale ${scale})` : ''}`,
    `machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${release()}, ext4 on a virtual disk`,
    `software: Node ${process.version}, better-sqlite3 ${packageVersion('better-sqlite3')}, pg ${packageVersion('pg')}, PostgreSQL 15 (fsync on), @durable-streams/server ${packageVersion('@durable-streams/server')} (file-backed, compression off)`,
    'durability: every append is on disk when acknowledged (SQLite WAL + synchronous=FULL; PostgreSQL commit with fsync; Durable Streams fdatasync per append)',
    'HTTP columns: server in a child process, client in this process, loopback, keep-alive fetch; embedded: library calls in this process',
    `host load average (1 min) at the end: ${loadavg()[0]!.toFixed(2)} on ${cpus().length} cores (other work shares this machine: compare columns of one run, not runs)`,
    `entries: 200 B messages unless noted; read test entries 256 B; wall time ${((Date.now() - started) / 1000).toFixed(0)} s`,
    '',
  ];
  const report = `${facts.join('\n')}${table(columns)}\n`;
  process.stdout.write(report);
  if (output) writeFileSync(output, report);
}

// ---------------------------------------------------------------------------------------------
// Child-process servers: this same file, started with --serve.
// ---------------------------------------------------------------------------------------------
if (flag('--serve')) {
  const kind = option('--serve')!;
  const directory = option('--dir')!;
  // Servers print informational logs to stdout; silence them so they cost both sides the same (nothing).
  const write = process.stdout.write.bind(process.stdout);
  console.log = console.info = console.debug = () => {};
  if (kind === 'durable-streams') {
    // Installed only for the run (see the header), so it is loaded by name, untyped.
    const referenceServer = '@durable-streams/server';
    const { DurableStreamTestServer } = (await import(referenceServer)) as {
      DurableStreamTestServer: new (options: Record<string, unknown>) => { start(): Promise<string>; stop(): Promise<void> };
    };
    const server = new DurableStreamTestServer({ port: 0, host: '127.0.0.1', dataDir: directory, compression: false });
    const url = await server.start();
    write(`URL=${url}\n`);
    process.on('SIGTERM', () => void server.stop().then(() => process.exit(0)));
  } else {
    const { startApiServer } = await import('../src/api/server.ts');
    const { mountDurableStreams } = await import('../src/api/durable-streams-routes.ts');
    const server = await startApiServer({
      port: 0,
      stateDirectory: directory,
      postgresUrl: option('--postgres'),
      configure: (app, log) => void mountDurableStreams(app, { log, stateDirectory: directory }),
    });
    write(`URL=${server.url}\n`);
    process.on('SIGTERM', () => void server.close().then(() => process.exit(0)));
  }
} else {
  await main();
}
