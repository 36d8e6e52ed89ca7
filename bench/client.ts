/**
 * Client benchmark, run by hand (not a test):
 *
 *   node --import tsx bench/client.ts [--turns 30] [--resumes 100] [--output bench/results/client-<date>-tcg.txt]
 *
 * Against one real `torpor serve` (a child process, loopback) and, as the named peer, the Durable
 * Streams reference server (@durable-streams/server, installed for the run with
 * `npm install --no-save @durable-streams/server`; its column is skipped without it):
 *   1. what the typed client adds per call and per turn over hand-written fetch (same requests,
 *      alternated so both see the same machine load); turns go to a real session (shell agent in
 *      a VM) that stays awake;
 *   2. stream resume latency: a reader comes back with its saved offset and one new entry is
 *      waiting; time from the reconnect to having that entry, for each way to resume.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stream } from '@durable-streams/client';
import { Torpor } from '../src/client/index.ts';
import { readServerSentEvents } from '../src/client/server-sent-events.ts';
import { startTorporServer } from '../src/client/testing/torpor-server.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';
import { useTemporaryHome } from '../src/runtime/testing/temporary-home.ts';
import { percentile } from './support.ts';

const argv = process.argv.slice(2);
const option = (name: string, fallback: string) => {
  const index = argv.indexOf(name);
  return index >= 0 ? argv[index + 1]! : fallback;
};
const root = fileURLToPath(new URL('..', import.meta.url));
const turns = Number(option('--turns', '30'));
const resumes = Number(option('--resumes', '100'));
const calls = 300;
const output = argv.includes('--output') ? option('--output', '') : undefined;
const log = (line: string) => process.stderr.write(`${line}\n`);
const format = (value: number) => `${value.toFixed(2)} ms`;
const summary = (samples: number[]) => `p50 ${format(percentile(samples, 50))}, p99 ${format(percentile(samples, 99))}`;

async function time(work: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await work();
  return performance.now() - started;
}

async function startReferenceServer(directory: string): Promise<{ url: string; child: ChildProcess } | undefined> {
  const script = join(directory, 'reference.mjs');
  await writeFile(
    script,
    `const { DurableStreamTestServer } = await import(${JSON.stringify('@durable-streams/server')});
const server = new DurableStreamTestServer({ port: 0, host: "127.0.0.1", dataDir: process.argv[2], compression: false });
console.log("URL=" + await server.start());
process.on("SIGTERM", () => void server.stop().then(() => process.exit(0)));`,
  );
  // The script lives inside the checkout (.torpor-test/) so that the package resolves from it.
  const child = spawn(process.execPath, [script, join(directory, 'reference-data')], { stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve) => {
    let buffer = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      buffer += chunk.toString();
      const line = buffer.split('\n').find((candidate) => candidate.startsWith('URL='));
      if (line) resolve({ url: line.slice(4).trim(), child });
    });
    child.once('exit', () => resolve(undefined));
  });
}

async function main(): Promise<void> {
  const home = await useTemporaryHome();
  await mkdir(join(root, '.torpor-test'), { recursive: true });
  const scratch = await mkdtemp(join(root, '.torpor-test', 'client-bench-'));
  const server = await startTorporServer({ env: { ...process.env, TORPOR_HOME: home.home } });
  const torpor = new Torpor({ baseUrl: server.url });
  const rows: Array<[string, string]> = [];
  const started = Date.now();
  let reference: { url: string; child: ChildProcess } | undefined;
  try {
    // 1a. Per call: the same GET through the client and by hand.
    await torpor.sessions.log('bench-calls').append([{ kind: 'message', role: 'user', content: 'hello' }]);
    const rawCall: number[] = [];
    const clientCall: number[] = [];
    for (let index = 0; index < calls; index++) {
      rawCall.push(await time(async () => (await fetch(`${server.url}/v1/logs/bench-calls/entries?from=0`)).json()));
      clientCall.push(await time(() => torpor.sessions.log('bench-calls').read({ from: 0 })));
    }
    rows.push(['read a log page (1 entry): raw fetch', summary(rawCall)]);
    rows.push(['read a log page (1 entry): torpor client', summary(clientCall)]);
    rows.push(['  client overhead per call (p50)', format(percentile(clientCall, 50) - percentile(rawCall, 50))]);

    // 1b. Per turn, on a real session kept awake.
    log(`creating a session (shell agent) for ${turns} turns`);
    const session = await torpor.sessions.create({ image: 'base', command: ['sh', '-c', shellAgent], resources: { memory: '256m' }, idle: '1h' });
    await session.send('warm up').text();
    const rawTurn: number[] = [];
    const clientTurn: number[] = [];
    for (let index = 0; index < turns; index++) {
      rawTurn.push(
        await time(async () => {
          const response = await fetch(`${server.url}/v1/sessions/${session.id}/messages`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
            body: JSON.stringify({ content: `raw ${index}` }),
          });
          let text = '';
          for await (const event of readServerSentEvents(response.body!)) {
            const data = JSON.parse(event.data) as { type: string; delta?: string };
            if (data.type === 'text-delta') text += data.delta;
          }
          if (!text.includes(`raw ${index}`)) throw new Error(`unexpected reply ${text}`);
        }),
      );
      clientTurn.push(
        await time(async () => {
          const text = await session.send(`client ${index}`).text();
          if (!text.includes(`client ${index}`)) throw new Error(`unexpected reply ${text}`);
        }),
      );
    }
    rows.push([`turn, shell agent in a VM (${turns} each): raw fetch + SSE parse`, summary(rawTurn)]);
    rows.push([`turn, shell agent in a VM (${turns} each): torpor client send().text()`, summary(clientTurn)]);
    rows.push(['  client overhead per turn (p50)', format(percentile(clientTurn, 50) - percentile(rawTurn, 50))]);

    // 2. Resume: one new entry is waiting after the reader's saved position.
    log(`measuring ${resumes} resumes per method`);
    const resumeRows: Array<[string, number[]]> = [
      ['torpor client, session.events() (Durable Streams catch-up)', []],
      ['torpor client, log.tail() (the log SSE, from the saved offset)', []],
      ['@durable-streams/client stream() on torpor /v1/stream/logs', []],
      ['hand-written Durable Streams GET on torpor', []],
    ];
    let savedEventOffset = '-1';
    for await (const batch of session.events({ live: false })) savedEventOffset = batch.offset;
    for (let index = 0; index < resumes; index++) {
      const logId = `bench-resume-${index}`;
      await torpor.sessions.log(logId).append([{ kind: 'message', role: 'user', content: 'seen' }]);
      await torpor.sessions.log(logId).append([{ kind: 'message', role: 'user', content: 'missed' }]);
      // session events: one turn happened while the reader was away
      if (index % 10 === 0) await session.send(`away ${index}`).text();
      resumeRows[0][1].push(
        await time(async () => {
          for await (const batch of session.events({ offset: savedEventOffset, live: false })) {
            savedEventOffset = batch.offset;
            break;
          }
        }),
      );
      resumeRows[1][1].push(
        await time(async () => {
          const controller = new AbortController();
          for await (const stored of torpor.sessions.log(logId).tail({ from: 1, signal: controller.signal })) {
            if (stored.offset === 1) break;
          }
          controller.abort();
        }),
      );
      const saved = '0000000000000000_0000000000000001';
      resumeRows[2][1].push(await time(async () => (await stream({ url: `${server.url}/v1/stream/logs/${logId}`, offset: saved, live: false })).json()));
      resumeRows[3][1].push(await time(async () => (await fetch(`${server.url}/v1/stream/logs/${logId}?offset=${saved}`)).json()));
    }
    reference = await startReferenceServer(scratch);
    if (reference) {
      const peer: number[] = [];
      for (let index = 0; index < resumes; index++) {
        const url = `${reference.url}/v1/stream/bench-resume-${index}`;
        await fetch(url, { method: 'PUT', headers: { 'content-type': 'application/json' }, body: JSON.stringify([{ content: 'seen' }]) });
        const saved = (await fetch(url, { method: 'HEAD' })).headers.get('Stream-Next-Offset')!;
        await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify([{ content: 'missed' }]) });
        peer.push(await time(async () => (await stream({ url, offset: saved, live: false })).json()));
      }
      resumeRows.push(['peer: @durable-streams/client stream() on the reference server', peer]);
    } else {
      log('the reference server is not installed (npm install --no-save @durable-streams/server): no peer column');
    }
    for (const [name, samples] of resumeRows) rows.push([`resume: ${name}`, summary(samples)]);
    await session.delete();
  } finally {
    if (reference) {
      reference.child.kill('SIGTERM');
      await new Promise((resolve) => reference!.child.once('exit', resolve));
    }
    await server.stop();
    await home.cleanup();
    await rm(scratch, { recursive: true, force: true });
  }
  const width = Math.max(...rows.map(([name]) => name.length));
  const report = [
    `torpor client benchmark, ${new Date().toISOString().slice(0, 10)}`,
    `machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}; TCG guests; load average at the end ${loadavg()[0]!.toFixed(2)}`,
    `server: torpor serve (SQLite) in a child process over loopback; ${calls} calls, ${turns} turns per method (alternated), ${resumes} resumes per method; wall time ${((Date.now() - started) / 1000).toFixed(0)} s`,
    '',
    ...rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`),
    '',
  ].join('\n');
  process.stdout.write(report);
  if (output) await writeFile(output, report);
}

await main();
