// `torpor serve` keeps recently hibernated sessions in memory by default (issue 11: their wake is a
// resume, ~100 ms under TCG, instead of a restore): a real server with nothing configured, a real
// session hibernating and waking through the HTTP API, and the bad values its settings refuse.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { totalmem } from 'node:os';
import { after, before, test } from 'node:test';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { cliPath, runCli } from '../runtime/testing/cli-process.ts';
import { shellAgent } from '../session/testing/shell-agent.ts';
import { startTorporServer, type TorporServerProcess } from '../client/testing/torpor-server.ts';
import { Torpor } from '../client/index.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: TorporServerProcess | undefined;

/** The environment of a server nobody configured: the test runner's TORPOR_WARM_MEMORY=0 (scripts/test.sh) left out. */
function unconfigured(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const environment: NodeJS.ProcessEnv = { ...process.env, TORPOR_HOME: home.home, ...extra };
  if (!('TORPOR_WARM_MEMORY' in extra)) delete environment.TORPOR_WARM_MEMORY;
  if (!('TORPOR_WARM_RESERVE' in extra)) delete environment.TORPOR_WARM_RESERVE;
  return environment;
}

/** Runs `torpor serve --json ...` until its first line (then ends it), or until it exits. */
function serveOnce(arguments_: string[], environment: NodeJS.ProcessEnv): Promise<{ line?: Record<string, unknown>; code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, 'serve', '--json', '--port', '0', ...arguments_], { env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.stdout.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      if (stdout.includes('\n')) child.kill('SIGTERM');
    });
    child.once('close', (code) => {
      const first = stdout.split('\n')[0];
      resolve({ line: first ? (JSON.parse(first) as Record<string, unknown>) : undefined, code, stderr });
    });
  });
}

/** `torpor ARGS` (the project's test runner of the CLI); its stdout, which it must print with exit 0. */
async function commandOutput(arguments_: string[], environment: NodeJS.ProcessEnv): Promise<string> {
  const result = await runCli(arguments_, environment);
  assert.equal(result.code, 0, `torpor ${arguments_.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

before(async () => {
  home = await useTemporaryHome();
});

after(async () => {
  await server?.stop();
  await home.cleanup();
});

test('serve keeps 1/8 of the host RAM for hibernated sessions unless told otherwise, and refuses bad values', async () => {
  const automatic = Math.floor(totalmem() / 1024 ** 2 / 8);
  assert.equal((await serveOnce([], unconfigured())).line?.warmMemoryMiB, automatic, 'nothing set: auto');
  assert.equal((await serveOnce(['--warm-memory', '0'], unconfigured())).line?.warmMemoryMiB, 0, 'the flag turns it off');
  assert.equal((await serveOnce([], unconfigured({ TORPOR_WARM_MEMORY: '0' }))).line?.warmMemoryMiB, 0, 'so does the variable');
  assert.equal((await serveOnce(['--warm-memory', '300'], unconfigured({ TORPOR_WARM_MEMORY: '0' }))).line?.warmMemoryMiB, 300, 'the flag wins');
  assert.equal((await serveOnce([], unconfigured({ TORPOR_WARM_MEMORY: 'auto' }))).line?.warmMemoryMiB, automatic);

  const badFlag = await serveOnce(['--warm-memory', 'lots'], unconfigured());
  assert.equal(badFlag.code, 1);
  assert.match(badFlag.stderr, /--warm-memory must be a number of MiB or auto \(0 turns it off\), got "lots"/);
  const badVariable = await serveOnce([], unconfigured({ TORPOR_WARM_MEMORY: '-5' }));
  assert.equal(badVariable.code, 125, 'an environment error, as every command reports one');
  assert.match(badVariable.stderr, /TORPOR_WARM_MEMORY="-5" is not valid: expected a whole number \(decimal digits\), or auto/);
  const badReserve = await serveOnce([], unconfigured({ TORPOR_WARM_RESERVE: 'half' }));
  assert.equal(badReserve.code, 125, badReserve.stderr);
  assert.match(badReserve.stderr, /TORPOR_WARM_RESERVE="half" is not valid/);
});

test('with nothing configured, a hibernated session keeps its machine paused and its wake resumes that machine', async () => {
  server = await startTorporServer({ env: unconfigured() });
  const torpor = new Torpor({ baseUrl: server.url, token: server.token });
  const session = await torpor.sessions.create({
    image: 'base',
    command: ['sh', '-c', shellAgent],
    name: 'kept',
    idle: 1,
    resources: { cpus: 1, memory: '256m' },
  });
  assert.equal(await torpor.sessions.send(session.id, 'hello').text(), 'turn 1: hello; notes 1; child yes');
  let info = await session.refresh();
  for (let attempt = 0; attempt < 300 && info.state !== 'hibernated'; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 100));
    info = await session.refresh();
  }
  assert.equal(info.state, 'hibernated');
  assert.ok(info.lastSnapshot, 'the hibernation took a durable snapshot all the same');
  const machineId = info.machineId;
  assert.ok(machineId, 'the hibernated session keeps its machine');
  assert.equal((await torpor.machines.get(machineId)).info.state.status, 'paused');
  const listed = await commandOutput(['session', 'ls'], { ...unconfigured(), TORPOR_URL: server.url, TORPOR_TOKEN: server.token });
  assert.match(listed, /kept\s+hibernated \(paused in memory\)/, listed);
  const usage = JSON.parse(await commandOutput(['system', 'df', '--json'], unconfigured())) as { paused: { count: number; memoryBytes: number } };
  assert.equal(usage.paused.count, 1, 'system df counts the paused machine');
  assert.ok(usage.paused.memoryBytes > 8 * 1024 ** 2, `and what it holds: ${usage.paused.memoryBytes} bytes`);

  assert.equal(await torpor.sessions.send(session.id, 'again').text(), 'turn 2: again; notes 2; child yes');
  info = await session.refresh();
  assert.equal(info.machineId, machineId, 'the wake resumed the same machine (a restore makes a new one)');
  assert.equal((await torpor.machines.get(machineId)).info.state.status, 'running');

  // Deleting the session ends its machine, paused or not: nothing outlives the test.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await session.delete();
  assert.equal((await torpor.machines.list()).length, 0);
});
