// The session commands as a user types them, against a real `torpor serve` process.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { shellAgent } from '../session/testing/shell-agent.ts';
import { cliPath, runCli } from '../runtime/testing/cli-process.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: ChildProcess;
let url = '';

const torpor = (args: string[]) => runCli(args, { ...process.env, TORPOR_HOME: home.home, TORPOR_URL: url });

before(async () => {
  home = await useTemporaryHome();
  const port = 19000 + Math.floor(Math.random() * 1000);
  url = `http://127.0.0.1:${port}`;
  server = spawn(process.execPath, [cliPath, 'serve', '--port', String(port)], { env: { ...process.env, TORPOR_HOME: home.home }, stdio: 'ignore' });
  for (let attempt = 0; attempt < 200; attempt++) {
    // Up means answering, even if only to say a token is needed (the CLI finds the token itself).
    if (
      await fetch(`${url}/health`).then(
        (response) => response.status === 401,
        () => false,
      )
    )
      break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
});

after(async () => {
  server.kill('SIGTERM');
  await new Promise((resolve) => server.once('exit', resolve));
  await home.cleanup();
});

test('session create, send, ls, inspect, rm', async () => {
  const created = await torpor([
    'session',
    'create',
    '--image',
    'base',
    '--memory',
    '256m',
    '--idle',
    '1s',
    '--name',
    'cli-chat',
    '--',
    'sh',
    '-c',
    shellAgent,
  ]);
  assert.equal(created.code, 0, created.stderr);
  const id = created.stdout.trim();
  assert.match(id, /^s-[0-9a-f]{12}$/);
  const reply = await torpor(['session', 'send', 'cli-chat', 'hello']);
  assert.equal(reply.code, 0, reply.stderr);
  assert.equal(reply.stdout, 'turn 1: hello; notes 1; child yes\n');
  const listed = JSON.parse((await torpor(['session', 'ls', '--json'])).stdout) as Array<{ id: string; name: string; turns: number }>;
  assert.deepEqual(
    listed.map((session) => [session.id, session.name, session.turns]),
    [[id, 'cli-chat', 1]],
  );
  for (let attempt = 0; attempt < 100; attempt++) {
    const inspected = JSON.parse((await torpor(['session', 'inspect', id])).stdout) as {
      state: string;
      lastSnapshot?: string;
      storedBytes?: { exclusive: number };
    };
    if (inspected.state === 'hibernated') {
      assert.ok(inspected.lastSnapshot);
      assert.ok((inspected.storedBytes?.exclusive ?? 0) > 0);
      break;
    }
    assert.ok(attempt < 99, `session stayed ${inspected.state}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const woken = await torpor(['session', 'send', id, 'again', '--json']);
  const events = woken.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { type: string; delta?: string });
  assert.ok(events.some((event) => event.type === 'session-state'));
  assert.equal(
    events
      .filter((event) => event.type === 'text-delta')
      .map((event) => event.delta)
      .join(''),
    'turn 2: again; notes 2; child yes',
  );
  assert.equal((await torpor(['session', 'rm', id])).code, 0);
  const gone = await torpor(['session', 'send', id, 'hello?']);
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /no such session/);
});

test('without a server the session commands say how to start one', async () => {
  const empty = await mkdtemp(join(tmpdir(), 'tp-'));
  const environment: NodeJS.ProcessEnv = { ...process.env, TORPOR_HOME: empty };
  delete environment.TORPOR_URL;
  const result = await runCli(['session', 'ls'], environment);
  await rm(empty, { recursive: true, force: true });
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /no torpor server is running\n\s+hint: start one with `torpor serve`/);
  // A URL where nothing listens: the error says what failed (not undici's bare "fetch failed").
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const port = (listener.address() as AddressInfo).port;
  await new Promise((resolve) => listener.close(resolve));
  const refused = await runCli(['session', 'send', 'x', 'hi'], { ...environment, TORPOR_URL: `http://127.0.0.1:${port}` });
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, new RegExp(`cannot reach the torpor server at http://127.0.0.1:${port}: ECONNREFUSED`));
  assert.match(refused.stderr, /hint: is `torpor serve` running\?/);
});

test('session fork --at-turn takes only a turn number', async () => {
  const result = await torpor(['session', 'fork', 'cli-chat', '--at-turn', '1; rm -rf /']);
  assert.equal(result.code, 1);
  assert.match(result.stderr, /--at-turn must be a turn number/);
  const missing = await torpor(['session', 'fork', 'no-such-session', '--at-turn', '2']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no such session/);
});
