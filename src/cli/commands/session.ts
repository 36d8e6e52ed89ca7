import type { Command } from 'commander';
import { readFile } from 'node:fs/promises';
import { contextLogPaths, stateDirectory } from '../../context/state-directory.ts';
import { TorporError } from '../../util/errors.ts';
import { environment } from '../../config/environment.ts';
import { machineDefaults } from '../../config/machine-defaults.ts';
import { clientToken } from '../../state/api-tokens.ts';
import { printJson, printTable, formatBytes, formatDuration, collect } from '../output.ts';
import { addNetworkPolicyFlags } from '../network-flags.ts';
import { fetchFromServer } from '../server-fetch.ts';

/** Headers of every request to `url`: JSON, and the bearer token the CLI found for that server. */
function requestHeaders(url: string, extra: Record<string, string> = {}): Record<string, string> {
  const token = clientToken({ explicit: explicitToken, environment: process.env, url, stateDirectory: stateDirectory() });
  return { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...extra };
}

let explicitToken: string | undefined;

/** The CLI is a client of `torpor serve` for sessions: it starts nothing behind the user's back. */
async function serverUrl(explicit?: string): Promise<string> {
  const url = explicit ?? environment().TORPOR_URL;
  if (url) return url.replace(/\/$/, '');
  try {
    const info = JSON.parse(await readFile(contextLogPaths(stateDirectory()).serverInfo, 'utf8')) as { url: string; pid: number };
    process.kill(info.pid, 0);
    return info.url;
  } catch {
    throw new TorporError('no-server', 'no torpor server is running', {
      hint: 'start one with `torpor serve` (it keeps sessions alive), or pass --url / TORPOR_URL',
    });
  }
}

async function call(url: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const response = await fetchFromServer(url, path, { method, headers: requestHeaders(url), body: body === undefined ? undefined : JSON.stringify(body) });
  if (response.status === 204) return undefined;
  if (!response.ok) throw await serverError(response);
  return response.json();
}

/** The server's JSON error as the CLI's own: message, hint, exit code 1. */
async function serverError(response: Response): Promise<TorporError> {
  const payload = (await response.json().catch(() => ({}))) as { error?: { code: string; message: string; hint?: string } };
  return new TorporError(payload.error?.code ?? 'server-error', payload.error?.message ?? `HTTP ${response.status}`, {
    hint: payload.error?.hint,
    exitCode: 1,
  });
}

interface SessionView {
  id: string;
  name: string;
  state: string;
  /** set on a hibernated session whose machine the server keeps paused (its next message resumes it) */
  machineId?: string;
  turns: number;
  note?: string;
  lastSnapshot?: string;
  lastActivityAt: string;
  wakeAt?: string;
  storedBytes?: { referenced: number; exclusive: number };
  spec: { image: string; idleSeconds: number };
}

/** Reads a text/event-stream body and hands each event's JSON data to `onEvent`. */
async function readEvents(response: Response, onEvent: (event: Record<string, unknown>) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let boundary: number;
    while ((boundary = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      const data = block
        .split('\n')
        .filter((line) => line.startsWith('data:'))
        .map((line) => line.slice(5).trimStart())
        .join('\n');
      if (data) onEvent(JSON.parse(data) as Record<string, unknown>);
    }
  }
}

interface SessionCreateFlags {
  image: string;
  name?: string;
  idle: string;
  cpus: string;
  memory: string;
  disk?: string;
  env?: string[];
  network: string;
  allowHost?: string[];
  egressAllow?: string[];
  egressDeny?: string[];
  json?: boolean;
}

export function registerSessionCommands(program: Command): void {
  const session = program
    .command('session')
    .description('durable agent sessions (a client of `torpor serve`)')
    .option('--url <url>', 'server URL (default: TORPOR_URL or the running `torpor serve`)')
    .option('--token <token>', "API token (default: TORPOR_TOKEN, or the local server's token in the state directory)");
  const url = () => {
    explicitToken = (session.opts() as { token?: string }).token;
    return serverUrl((session.opts() as { url?: string }).url);
  };

  addNetworkPolicyFlags(session.command('create'), 'agent', "the server host's")
    .description('create a session: a context log plus a machine running your agent program')
    .requiredOption('--image <image>', 'image with the agent program (e.g. node, or one you imported)')
    .option('--name <name>', 'session name')
    .option('--idle <duration>', 'hibernate after this long idle (e.g. 30s, 5m)', `${machineDefaults.sessionIdleSeconds}s`)
    .option('--cpus <n>', 'virtual CPUs', String(machineDefaults.cpus))
    .option('-m, --memory <size>', 'guest memory', machineDefaults.memory)
    .option('--disk <size>', 'size of the writable disk (default 4g; the server caps it with --max-disk)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('--network <mode>', 'user (default: the public internet only), none, or unrestricted', 'user')
    .option('--json', 'machine-readable output')
    .argument('<command...>', 'the agent program, after --')
    .action(async (command: string[], flags: SessionCreateFlags) => {
      const created = (await call(await url(), 'POST', '/v1/sessions', {
        image: flags.image,
        command,
        env: flags.env ?? [],
        name: flags.name,
        idle: flags.idle,
        resources: { cpus: Number(flags.cpus), memory: flags.memory, ...(flags.disk !== undefined ? { disk: flags.disk } : {}) },
        network: { mode: flags.network, allowHost: flags.allowHost ?? [], egressAllow: flags.egressAllow ?? [], egressDeny: flags.egressDeny ?? [] },
      })) as SessionView;
      if (flags.json) printJson(created);
      else process.stdout.write(created.id + '\n');
    });

  session
    .command('send')
    .description("send a user message; streams the agent's reply and exits when the turn ends")
    .argument('<session>')
    .argument('<text>')
    .option('--json', 'print every event as a JSON line')
    .action(async (id: string, text: string, flags: { json?: boolean }) => {
      const base = await url();
      const response = await fetchFromServer(base, `/v1/sessions/${encodeURIComponent(id)}/messages`, {
        method: 'POST',
        headers: requestHeaders(base, { accept: 'text/event-stream' }),
        body: JSON.stringify({ content: text }),
      });
      if (!response.ok) throw await serverError(response);
      let failed = false;
      let endedLine = true;
      await readEvents(response, (event) => {
        if (flags.json) return void process.stdout.write(JSON.stringify(event) + '\n');
        switch (event.type) {
          case 'text-delta':
            process.stdout.write(String(event.delta));
            endedLine = String(event.delta).endsWith('\n');
            break;
          case 'tool-call':
            process.stderr.write(`${endedLine ? '' : '\n'}[tool ${event.toolName}] ${JSON.stringify(event.input)}\n`);
            endedLine = true;
            break;
          case 'tool-result':
            process.stderr.write(`[tool ${event.toolName} result] ${JSON.stringify(event.output).slice(0, 200)}\n`);
            break;
          case 'session-state':
            process.stderr.write(`[session ${event.state}]\n`);
            break;
          case 'turn-suspend':
            process.stderr.write(`${endedLine ? '' : '\n'}[session sleeps until ${event.until}; the turn continues then]\n`);
            endedLine = true;
            break;
          case 'error':
            failed = true;
            process.stderr.write(`${endedLine ? '' : '\n'}torpor: ${String(event.message ?? event.error ?? JSON.stringify(event))}\n`);
            endedLine = true;
            break;
        }
      });
      if (!flags.json && !endedLine) process.stdout.write('\n');
      if (failed) process.exitCode = 1;
    });

  session
    .command('ls')
    .description('list sessions')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const { sessions } = (await call(await url(), 'GET', '/v1/sessions')) as { sessions: SessionView[] };
      if (flags.json) return printJson(sessions);
      printTable(
        ['ID', 'NAME', 'STATE', 'TURNS', 'IDLE FOR', 'STORED', 'IMAGE'],
        sessions.map((view) => [
          view.id,
          view.name,
          view.state + (view.state === 'hibernated' && view.machineId ? ' (paused in memory)' : '') + (view.wakeAt ? ` (wakes ${view.wakeAt})` : ''),
          String(view.turns),
          formatDuration(Date.now() - Date.parse(view.lastActivityAt)),
          view.storedBytes ? formatBytes(view.storedBytes.exclusive) : '-',
          view.spec.image,
        ]),
      );
    });

  session
    .command('inspect')
    .description('state, last snapshot and stored bytes of a session')
    .argument('<session>')
    .action(async (id: string) => printJson(await call(await url(), 'GET', `/v1/sessions/${encodeURIComponent(id)}`)));

  session
    .command('fork')
    .description('a new session from this one: same machine state, log forked at the same offset (--at-turn: as it was after that turn)')
    .argument('<session>')
    .option('--name <name>')
    .option('--at-turn <n>', 'rewind: fork the session as it was right after turn n (the server must keep turn snapshots: TORPOR_TURN_SNAPSHOTS)')
    .option('--json', 'machine-readable output')
    .action(async (id: string, flags: { name?: string; atTurn?: string; json?: boolean }) => {
      if (flags.atTurn !== undefined && !/^\d+$/.test(flags.atTurn))
        throw new TorporError('invalid-turn', `--at-turn must be a turn number, got ${JSON.stringify(flags.atTurn)}`, {
          hint: 'see the turns kept with GET /v1/sessions/ID/turns',
          exitCode: 1,
        });
      const atTurn = flags.atTurn === undefined ? undefined : Number(flags.atTurn);
      const forked = (await call(await url(), 'POST', `/v1/sessions/${encodeURIComponent(id)}/fork`, { name: flags.name, atTurn })) as SessionView;
      if (flags.json) printJson(forked);
      else process.stdout.write(forked.id + '\n');
    });

  session
    .command('rm')
    .description('delete sessions (their machines and snapshots; the context log stays readable)')
    .argument('<sessions...>')
    .action(async (ids: string[]) => {
      const base = await url();
      for (const id of ids) {
        await call(base, 'DELETE', `/v1/sessions/${encodeURIComponent(id)}`);
        process.stdout.write(id + '\n');
      }
    });
}
