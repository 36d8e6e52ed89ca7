// A hostile agent in a real machine, behind a real `torpor serve`: it floods stdout and the serial
// console, prints a 100 MiB line, asks for its history over and over, and its session is forked
// past the server's limits. The server must stay up, keep its logs capped and refuse cleanly.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, statSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCli } from '../runtime/testing/cli-process.ts';
import { startJsonServer, type JsonServer } from './testing/json-server.ts';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { memoryDirectory } from '../state/paths.ts';

const logMax = 256 * 1024;
const maxLine = 64 * 1024;
const maxHistory = 64 * 1024;

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: JsonServer;
let url = '';
let token = '';
let sessionId = '';

const hostileAgent = String.raw`
while read -r line; do
  case "$line" in
  *'"type":"message"'*)
    turn=$(echo "$line" | sed 's/.*"turnId":"\([^"]*\)".*/\1/')
    text=$(echo "$line" | sed 's/.*"content":"\([^"]*\)".*/\1/')
    case "$text" in
    flood)
      yes 'noise on stdout, not an agent event' | head -c 8000000; echo
      timeout 8 sh -c 'yes console-flood-console-flood-console-flood > /dev/ttyS0'
      reply="flooded" ;;
    longline)
      head -c 104857600 /dev/zero | tr '\0' a
      echo
      reply="after the long line" ;;
    history)
      sizes=""
      for i in 1 2 3; do echo '{"type":"history-request"}'; sizes="$sizes $(head -n 1 | wc -c)"; done
      for i in $(seq 1 300); do echo '{"type":"history-request"}'; done
      drained=$(timeout 5 cat | wc -c)
      reply="sizes$sizes drained $drained" ;;
    *) reply="echo $text" ;;
    esac
    echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\",\"delta\":\"$reply\"}"
    echo "{\"type\":\"turn-finish\",\"turnId\":\"$turn\"}" ;;
  esac
done
`;

async function api(
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; json: Record<string, unknown> & { error?: { code: string; message: string; hint?: string } } }> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, json: text ? JSON.parse(text) : {} };
}

async function send(content: string): Promise<{ reply: string; events: Array<Record<string, unknown>> }> {
  const { status, json } = await api('POST', `/v1/sessions/${sessionId}/messages`, { content });
  assert.equal(status, 200, JSON.stringify(json));
  const events = json.events as Array<Record<string, unknown>>;
  return {
    reply: events
      .filter((event) => event.type === 'text-delta')
      .map((event) => String(event.delta))
      .join(''),
    events,
  };
}

const torpor = (args: string[]) => runCli(args, { ...process.env, TORPOR_HOME: home.home });

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function serverPeakMemoryMiB(): number {
  const status = readFileSync(`/proc/${server.child.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]) / 1024;
}

before(async () => {
  home = await useTemporaryHome();
  server = await startJsonServer(['--max-machines', '1', '--max-sessions', '2'], {
    ...process.env,
    TORPOR_HOME: home.home,
    TORPOR_LOG_MAX: String(logMax),
    TORPOR_AGENT_MAX_LINE: String(maxLine),
    TORPOR_AGENT_MAX_HISTORY: String(maxHistory),
  });
  url = server.url;
  token = readFileSync(join(home.home, 'api', 'token'), 'utf8').trim();
  const created = await api('POST', '/v1/sessions', {
    image: 'base',
    command: ['sh', '-c', hostileAgent],
    idle: '10m',
    resources: { memory: '256m' },
    env: ['SECRET_KEY=hunter2'],
  });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  sessionId = created.json.id as string;
});

after(async () => {
  await server.stop();
  await home.cleanup();
});

async function machineDirectory(): Promise<string> {
  const { json } = await api('GET', `/v1/sessions/${sessionId}`);
  return join(home.home, 'machines', json.machineId as string);
}

test('files holding guest memory or env are private (0600), and so are their directories (0700)', async () => {
  const directory = await machineDirectory();
  assert.equal(statSync(directory).mode & 0o777, 0o700);
  assert.match(readFileSync(join(directory, 'config.json'), 'utf8'), /SECRET_KEY=hunter2/, 'the file that holds env');
  assert.equal(statSync(join(directory, 'config.json')).mode & 0o777, 0o600);
  const { json } = await api('GET', `/v1/sessions/${sessionId}`);
  const ram = join(memoryDirectory(), `${json.machineId as string}.ram`);
  assert.equal(statSync(ram).mode & 0o777, 0o600, ram);
  for (const name of await readdir(join(home.home, 'snapshots')).catch(() => [] as string[])) {
    assert.equal(statSync(join(home.home, 'snapshots', name)).mode & 0o077, 0, `snapshots/${name}`);
  }
});

test('an agent flooding stdout and the serial console: the turn ends, both logs stay capped', async () => {
  const { reply } = await send('flood');
  assert.equal(reply, 'flooded');
  const directory = await machineDirectory();
  const processLog = sizeOf(join(directory, 'process.log')) + sizeOf(join(directory, 'process.log.1'));
  // 8 MB went through; what is kept is the cap plus at most one record over it.
  assert.ok(sizeOf(join(directory, 'process.log.1')) > 0, 'the process log rotated');
  assert.ok(processLog <= logMax + 1024 * 1024, `process log keeps ${processLog} bytes`);
  // The console is capped by a periodic check: give it one more period, then it is within the cap
  // plus what the guest wrote in one period.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const consoleLog = sizeOf(join(directory, 'console.log')) + sizeOf(join(directory, 'console.log.1'));
  assert.match(readFileSync(join(directory, 'console.log.1'), 'utf8'), /console-flood/, 'the flood reached the console and was rotated');
  assert.ok(consoleLog <= logMax + 1024 * 1024, `console log keeps ${consoleLog} bytes`);
  // `torpor logs` reads what the capped log kept, rotated file first, as whole records.
  const { json: record } = await api('GET', `/v1/sessions/${sessionId}`);
  const logs = await torpor(['logs', record.machineId as string, '--tail', '3']);
  assert.equal(logs.code, 0, logs.stderr);
  assert.match(logs.stdout, /"delta":"flooded"/);
  const logsAll = await torpor(['logs', record.machineId as string]);
  assert.equal(logsAll.code, 0, logsAll.stderr);
  assert.match(logsAll.stdout, /noise on stdout, not an agent event/);
  const currentOnly = readFileSync(join(directory, 'process.log'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .reduce((total, line) => total + (JSON.parse(line) as { log: string }).log.length, 0);
  assert.ok(logsAll.stdout.length + logsAll.stderr.length > currentOnly, 'the rotated part is read too');
  process.stderr.write(`# flood: process log keeps ${processLog} bytes of 8000000, console log ${consoleLog} bytes (cap ${logMax})\n`);
  assert.equal((await api('GET', '/health')).status, 200);
});

test('an agent printing a 100 MiB line: the line is dropped with an error event, the server stays up and small', async () => {
  const started = Date.now();
  const { reply, events } = await send('longline');
  assert.equal(reply, 'after the long line');
  const dropped = events.find((event) => event.type === 'error' && event.code === 'agent-line-too-long');
  assert.ok(dropped, JSON.stringify(events.map((event) => event.type)));
  assert.match(String(dropped.message), /line of 104857600 bytes/);
  const peak = serverPeakMemoryMiB();
  process.stderr.write(`# 100 MiB line: turn ${Date.now() - started} ms, torpor serve peak RSS ${peak.toFixed(0)} MiB\n`);
  // Holding the line (and the split copies of it) would take several hundred MiB.
  assert.ok(peak < 300, `torpor serve peaked at ${peak} MiB`);
  assert.equal((await api('GET', '/health')).status, 200);
  // The error is in the log too, where the session's reader finds it.
  const log = await api('GET', `/v1/logs/${sessionId}/entries?limit=10000`);
  assert.ok(
    (log.json.entries as Array<{ entry: { kind: string; code?: string } }>).some(
      (stored) => stored.entry.kind === 'error' && stored.entry.code === 'agent-line-too-long',
    ),
  );
});

test('an agent asking for an enormous history gets bounded answers, and a flood of requests costs little', async () => {
  // ~600 KiB of log, ten times the history limit.
  const entries = Array.from({ length: 600 }, (_, index) => ({ kind: 'message', role: 'user', content: `${index} ${'x'.repeat(1000)}` }));
  for (let index = 0; index < entries.length; index += 100) {
    assert.equal((await api('POST', `/v1/logs/${sessionId}/entries`, entries.slice(index, index + 100))).status, 200);
  }
  const { reply } = await send('history');
  const match = /^sizes ((?:\d+ ?)+) drained (\d+)$/.exec(reply);
  assert.ok(match, reply);
  const sizes = match[1]!.trim().split(' ').map(Number);
  assert.equal(sizes.length, 3);
  for (const size of sizes) {
    assert.ok(size > maxHistory / 2, `an answer of ${size} bytes carries the newest part of the log`);
    assert.ok(size <= maxHistory + 1024, `an answer of ${size} bytes is within the limit`);
  }
  // 300 requests in a burst: answered one at a time, extra requests while one is answered dropped.
  const drained = Number(match[2]);
  assert.ok(drained <= 20 * (maxHistory + 1024), `drained ${drained} bytes: most of the burst was not answered`);
  assert.equal((await api('GET', '/health')).status, 200);
});

test('limits on machines and sessions: a fork that would need a second machine, a third session', async () => {
  const fork = await api('POST', `/v1/sessions/${sessionId}/fork`, {});
  assert.equal(fork.status, 201, JSON.stringify(fork.json));
  const forkId = fork.json.id as string;
  // The fork sleeps in the snapshot; waking it needs a machine, and the only one is taken.
  const wake = await api('POST', `/v1/sessions/${forkId}/messages`, { content: 'hello' });
  assert.equal(wake.status, 429, JSON.stringify(wake.json));
  assert.equal(wake.json.error?.code, 'limit-machines');
  assert.match(String(wake.json.error?.hint), /--max-machines/);
  assert.equal((await api('GET', `/v1/sessions/${forkId}`)).json.state, 'hibernated', 'a refused wake leaves the fork asleep');
  const third = await api('POST', '/v1/sessions', { image: 'base', command: ['sh'] });
  assert.equal(third.status, 429, JSON.stringify(third.json));
  assert.equal(third.json.error?.code, 'limit-sessions');
  // Freeing the machine lets the fork wake.
  assert.equal((await api('DELETE', `/v1/sessions/${sessionId}`)).status, 204);
  const woken = await api('POST', `/v1/sessions/${forkId}/messages`, { content: 'hello' });
  assert.equal(woken.status, 200, JSON.stringify(woken.json));
  assert.equal(
    (woken.json.events as Array<{ type: string; delta?: string }>)
      .filter((event) => event.type === 'text-delta')
      .map((event) => event.delta)
      .join(''),
    'echo hello',
  );
});
