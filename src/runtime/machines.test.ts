import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { mkdtemp, writeFile, readFile, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, connectToMachine, stopMachine, removeMachine, listMachines, findMachine, effectiveState } from './machines.ts';
import { copyIntoMachine, copyFromMachine } from './copy.ts';
import type { AgentClient } from '../guest/agent-client.ts';
import type { MachineConfig } from './machine-record.ts';
import { readMachineState } from './machine-files.ts';
import { buildNetworkPolicy } from '../network/policy.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let machine: MachineConfig;
let client: AgentClient;
let hostPort: number;
/** A host loopback port the machine is allowed to reach (the network policy refuses every other). */
let hostServicePort: number;

async function run(argv: string[], options: { env?: string[]; stdin?: string; workingDirectory?: string; user?: string } = {}) {
  const stdout: Buffer[] = [];
  const stderr: Buffer[] = [];
  const process = client.exec(
    {
      argv,
      env: options.env ?? [],
      workingDirectory: options.workingDirectory ?? '/',
      user: options.user ?? '',
      tty: false,
      stdin: options.stdin !== undefined,
    },
    { stdout: (data) => stdout.push(data), stderr: (data) => stderr.push(data) },
  );
  if (options.stdin !== undefined) {
    process.write(options.stdin);
    process.endInput();
  }
  const status = await process.exited;
  return { code: status.code, stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString() };
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

before(async () => {
  home = await useTemporaryHome();
  hostPort = await freePort();
  hostServicePort = await freePort();
  machine = await createMachine({
    image: 'base',
    name: 'web',
    command: ['sh', '-c', 'mkdir -p /www && echo served-by-guest > /www/index.html && httpd -p 80 -h /www && echo main-started && sleep 100000'],
    ports: [{ hostAddress: '127.0.0.1', hostPort, guestPort: 80, protocol: 'tcp' }],
    env: ['GREETING=hello from env'],
    networkPolicy: buildNetworkPolicy({ allowHost: [hostServicePort] }),
  });
  const state = await startMachine(machine.id);
  assert.equal(state.status, 'running');
  client = await connectToMachine(machine);
});

after(async () => {
  client?.close();
  await home.cleanup();
});

test('exec streams stdout and stderr apart and returns the exit code', async () => {
  const result = await run(['sh', '-c', 'echo out; echo err >&2; exit 3']);
  assert.deepEqual(result, { code: 3, stdout: 'out\n', stderr: 'err\n' });
});

test('exec gets the machine environment, working directory and user', async () => {
  const result = await run(['sh', '-c', 'echo "$GREETING|$(pwd)|$(id -u)|$HOME"'], { env: ['GREETING=override'], workingDirectory: '/tmp', user: 'nobody' });
  assert.equal(result.stdout, 'override|/tmp|65534|/nonexistent\n');
});

test('exec of a missing program fails like docker (ENOENT)', async () => {
  await assert.rejects(run(['no-such-program']), (error: Error & { errno?: number }) => error.errno === 2 && /no-such-program/.test(error.message));
});

test('stdin reaches the process and its end closes it', async () => {
  const result = await run(['sh', '-c', 'wc -c; cat'], { stdin: 'x'.repeat(300_000) });
  assert.equal(result.stdout.trim(), '300000');
});

test('large output arrives whole', async () => {
  const result = await run(['sh', '-c', 'head -c 2000000 /dev/zero | tr "\\0" a']);
  assert.equal(result.stdout.length, 2_000_000);
});

test('files and directories copy in and out', async () => {
  const local = await mkdtemp(join(tmpdir(), 'tp-copy-'));
  await mkdir(join(local, 'tree', 'sub'), { recursive: true });
  await writeFile(join(local, 'tree', 'sub', 'file.bin'), Buffer.alloc(200_000, 7));
  await writeFile(join(local, 'tree', 'top.txt'), 'top\n', { mode: 0o755 });
  await copyIntoMachine(client, join(local, 'tree'), '/root/');
  const listing = await run(['sh', '-c', 'ls -l /root/tree/top.txt | cut -c1-10; wc -c < /root/tree/sub/file.bin']);
  assert.equal(listing.stdout, '-rwxr-xr-x\n200000\n');
  await copyFromMachine(client, '/root/tree', join(local, 'back'));
  assert.deepEqual(await readFile(join(local, 'back', 'sub', 'file.bin')), Buffer.alloc(200_000, 7));
  await assert.rejects(copyFromMachine(client, '/no/such/file', join(local, 'x')), /no such file/);
  await rm(local, { recursive: true, force: true });
});

test('published ports reach the guest, and the guest reaches the host', async () => {
  let body = '';
  for (let attempt = 0; attempt < 50 && !body; attempt++) {
    body = await fetch(`http://127.0.0.1:${hostPort}/index.html`)
      .then((response) => response.text())
      .catch(() => '');
    if (!body) await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(body, 'served-by-guest\n');
  const server = createServer((_request, response) => response.end('host says hi')).listen(hostServicePort, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  // 10.0.2.2 is the host's loopback as seen through QEMU user networking, open for the allowed port only
  // (src/network/network-policy.test.ts probes the refusals, inside a network namespace of its own).
  const result = await run(['wget', '-q', '-O', '-', `http://10.0.2.2:${hostServicePort}/`]);
  server.close();
  assert.equal(result.stdout, 'host says hi');
});

test('the main process output is logged and the machine is listed as running', async () => {
  const log = await readFile(join(home.home, 'machines', machine.id, 'process.log'), 'utf8');
  assert.match(log, /main-started/);
  const listed = await listMachines();
  assert.deepEqual(
    listed.map((view) => [view.config.name, view.state.status]),
    [['web', 'running']],
  );
  assert.equal((await findMachine('web')).id, machine.id);
  assert.equal((await findMachine(machine.id.slice(0, 6))).id, machine.id);
});

test('a second machine cannot take a used name', async () => {
  await assert.rejects(createMachine({ image: 'base', name: 'web', command: ['true'] }), /already used/);
});

test('stop ends the process, start brings the files back, rm cleans up', async () => {
  await run(['sh', '-c', 'echo kept > /root/kept.txt']);
  client.close();
  const stopped = await stopMachine(machine, { timeoutSeconds: 2 });
  assert.equal(stopped.status, 'exited');
  await assert.rejects(connectToMachine(machine), /not running/);
  await startMachine(machine.id);
  client = await connectToMachine(machine);
  assert.equal((await run(['cat', '/root/kept.txt'])).stdout, 'kept\n');
  await assert.rejects(removeMachine(machine), /is running/);
});

test('a killed QEMU shows as exited with the reason, and rm -f cleans up', async () => {
  const state = await readMachineState(machine.id);
  process.kill(state.qemuPid!, 'SIGKILL');
  let current = await effectiveState(machine);
  for (let attempt = 0; attempt < 100 && current.status !== 'exited'; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    current = await effectiveState(machine);
  }
  assert.equal(current.status, 'exited');
  assert.match(current.error ?? '', /SIGKILL/);
  client.close();
  await removeMachine(machine, { force: true });
  assert.deepEqual(await listMachines(), []);
  await assert.rejects(findMachine('web'), /no such machine/);
});

test('a guest that never becomes ready is killed by pid, cleaned up, and points at its console log', async () => {
  process.env.TORPOR_BOOT_TIMEOUT_MS = '200';
  process.env.TORPOR_BOOT_TEMPLATES = '0';
  try {
    const config = await createMachine({ image: 'base', name: 'slow', command: ['true'] });
    await assert.rejects(startMachine(config.id), /failed to start: .*console log: .*console\.log/);
    const state = await readMachineState(config.id);
    assert.equal(state.status, 'failed');
    assert.throws(() => process.kill(state.qemuPid!, 0));
    await removeMachine(config);
  } finally {
    delete process.env.TORPOR_BOOT_TIMEOUT_MS;
    delete process.env.TORPOR_BOOT_TEMPLATES;
  }
});
