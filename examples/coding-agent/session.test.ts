// End to end, as a user runs it: `torpor serve` (a real process), the coding agent in a node
// microVM, the dev-llm on the host, messages over HTTP, hibernation, and a server killed with -9.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useTemporaryHome } from '../../src/runtime/testing/temporary-home.ts';
import { startDevLlm, type DevLlmServer } from '../../src/dev-llm/index.ts';
import { buildCodingAgentImage } from './image.ts';

const cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));
let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let llm: DevLlmServer;
let server: ChildProcess | undefined;
let url = '';
let sessionId = '';

/** fetch with the server's bearer token, which `torpor serve` creates in the state directory on its first start. */
function fetch(input: string, init: RequestInit = {}): Promise<Response> {
  let token = '';
  try {
    token = readFileSync(join(home.home, 'api', 'token'), 'utf8').trim();
  } catch {}
  return globalThis.fetch(input, { ...init, headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(init.headers as Record<string, string>) } });
}

async function startServer(): Promise<void> {
  const port = 17000 + Math.floor(Math.random() * 2000);
  server = spawn(process.execPath, [cli, 'serve', '--port', String(port)], {
    env: { ...process.env, TORPOR_HOME: home.home },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  url = `http://127.0.0.1:${port}`;
  for (let attempt = 0; attempt < 200; attempt++) {
    if (
      await fetch(`${url}/v1/sessions`).then(
        (response) => response.ok,
        () => false,
      )
    )
      return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error('torpor serve did not come up');
}

async function send(content: string): Promise<{ text: string; types: string[] }> {
  const response = await fetch(`${url}/v1/sessions/${sessionId}/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ content }),
  });
  assert.equal(response.status, 200);
  const body = await response.text();
  const events = body
    .split('\n')
    .filter((line) => line.startsWith('data:'))
    .map((line) => JSON.parse(line.slice(5)) as { type: string; delta?: string; message?: string });
  const failure = events.find((event) => event.type === 'error');
  if (failure) throw new Error(`turn "${content}" failed: ${failure.message}`);
  return {
    text: events
      .filter((event) => event.type === 'text-delta')
      .map((event) => event.delta)
      .join(''),
    types: events.map((event) => event.type),
  };
}

async function session(): Promise<{ state: string; note?: string; machineId?: string }> {
  return (await (await fetch(`${url}/v1/sessions/${sessionId}`)).json()) as { state: string; note?: string; machineId?: string };
}

before(async () => {
  home = await useTemporaryHome();
  llm = await startDevLlm({ port: 0, host: '127.0.0.1' });
  await buildCodingAgentImage();
  await startServer();
  const response = await fetch(`${url}/v1/sessions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      image: 'coding-agent',
      command: ['node', '/app/agent.mjs'],
      // 10.0.2.2 is the host's loopback as the guest sees it through QEMU user networking; the
      // network policy keeps the guest from it except for the ports a session allows.
      env: [`OPENAI_BASE_URL=http://10.0.2.2:${llm.port}/v1`],
      network: { allowHost: [llm.port] },
      idle: '2s',
      name: 'coder',
    }),
  });
  assert.equal(response.status, 201, await response.clone().text());
  sessionId = ((await response.json()) as { id: string }).id;
});

after(async () => {
  server?.kill('SIGKILL');
  await llm?.close();
  await home.cleanup();
});

test('the agent uses its tools in its own VM and keeps memory across hibernation', async () => {
  const written = await send('write /root/notes.md: buy milk');
  assert.ok(written.types.includes('tool-call'), written.types.join(','));
  const remembered = await send('remember the door is blue');
  assert.match(remembered.text, /remember the door is blue/);
  for (let attempt = 0; attempt < 200 && (await session()).state !== 'hibernated'; attempt++) await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal((await session()).state, 'hibernated');
  const read = await send('read /root/notes.md');
  assert.match(read.text, /buy milk/);
  const recalled = await send('what do you remember');
  assert.match(recalled.text, /the door is blue/);
});

test('the session survives its server being killed with -9', async () => {
  server!.kill('SIGKILL');
  await new Promise((resolve) => server!.once('exit', resolve));
  await startServer();
  const answer = await send('run: echo still-here');
  assert.match(answer.text, /still-here/);
});
