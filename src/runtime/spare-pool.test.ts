import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { runCommand } from '../util/command.ts';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { spareKey, spareSettingsOf, sparesDirectory } from './spare-pool.ts';
import { networkOptionsFrom } from './run-options.ts';
import { machineFiles, readMachineConfig } from './machine-files.ts';
import { processMatches } from '../util/process-identity.ts';
import { connectToSupervisor, sendControl } from './supervisor-client.ts';
import { openContextLog } from '../context/index.ts';
import { SessionManager } from '../session/session-manager.ts';
import { createApp } from '../api/app.ts';
import { runCli } from './testing/cli-process.ts';

// Spare machines with real VMs, through the CLI as a user runs it: claims, races, settings that do
// not match, crashes (kill -9 of a claiming CLI and of a spare's supervisor), listing and pruning.

const sparesModule = fileURLToPath(new URL('./spare-pool.ts', import.meta.url));
const runOptionsModule = fileURLToPath(new URL('./run-options.ts', import.meta.url));
let home: Awaited<ReturnType<typeof useTemporaryHome>>;

interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

const torpor = (args: string[], environment: NodeJS.ProcessEnv = {}) =>
  runCli(args, { ...process.env, TORPOR_HOME: home.home, TORPOR_SPARE_MACHINES: '1', ...environment });

interface Listed {
  id: string;
  name: string;
  spare?: { key: string };
  state: { status: string; exitCode?: number; error?: string };
}

const listAll = async (): Promise<Listed[]> => JSON.parse((await torpor(['ps', '-a', '--json'])).stdout) as Listed[];
// The pool `run base` claims from: the defaults, as the CLI turns its flags into settings.
const basePool = spareKey(spareSettingsOf({ image: 'base', ...networkOptionsFrom({ network: 'user', allowHost: [], egressAllow: [], egressDeny: [] }) })!);
const readyIds = async () =>
  (await readdir(sparesDirectory()).catch(() => [] as string[]))
    .filter((entry) => new RegExp(`^${basePool}\\.[0-9a-f]{12}$`).test(entry))
    .map((entry) => entry.slice(17));

/** Waits until the pool holds `count` ready spares and no fill runs (the background fill a run starts). */
async function poolSettles(count: number): Promise<string[]> {
  const deadline = Date.now() + 120_000;
  for (;;) {
    const entries = await readdir(sparesDirectory()).catch(() => [] as string[]);
    const ready = await readyIds();
    // Counted only when each entry names a spare that exists: a planted or stale entry is no spare.
    const spares = await Promise.all(
      ready.map((id) =>
        readMachineConfig(id).then(
          (config) => Boolean(config.spare),
          () => false,
        ),
      ),
    );
    if (ready.length === count && spares.every(Boolean) && !entries.some((entry) => entry.endsWith('.lock'))) return ready;
    if (Date.now() > deadline) throw new Error(`the pool did not settle at ${count} spares: ${entries.join(' ')}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

before(async () => {
  home = await useTemporaryHome();
  // The boot template and the first spare: one cold start, then the fill that run starts.
  const first = await torpor(['run', '--rm', 'base', 'true']);
  assert.equal(first.code, 0, first.stderr);
  await poolSettles(1);
});

after(async () => {
  // A background fill still running would make a spare after the clear.
  for (let waited = 0; waited < 600 && (await readdir(sparesDirectory()).catch(() => [] as string[])).some((entry) => entry.endsWith('.lock')); waited++) {
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  await torpor(['system', 'pool', 'clear']);
  await home.cleanup();
});

test('run --rm claims the spare: the user gets a fresh name, clock and RNG, output and exit code; the pool refills', async () => {
  const [spareId] = await poolSettles(1);
  const before = Date.now();
  const result = await torpor(['run', '--rm', '--name', 'claimer', 'base', 'sh', '-c', 'hostname; cat /etc/hostname; date +%s; echo to-stderr >&2; exit 7']);
  assert.equal(result.code, 7, result.stderr);
  const [hostname, hostnameFile, guestSeconds] = result.stdout.trim().split('\n');
  assert.equal(hostname, 'claimer');
  assert.equal(hostnameFile, 'claimer');
  assert.ok(Math.abs(Number(guestSeconds) - before / 1000) < 30, `guest clock ${guestSeconds} vs host ${before / 1000}`);
  assert.match(result.stderr, /to-stderr/);
  // The spare was used (it is gone, not just listed elsewhere) and a new one took its place.
  const refilled = await poolSettles(1);
  assert.notEqual(refilled[0], spareId);
  assert.ok(!(await listAll()).some((machine) => machine.id === spareId), 'the claimed spare is removed after its run');
  // The name is free again at once: a script may run --rm --name claimer again.
  const again = await torpor(['run', '--rm', '--name', 'claimer', 'base', 'cat', '/proc/sys/kernel/random/uuid']);
  assert.equal(again.code, 0, again.stderr);
  const third = await torpor(['run', '--rm', 'base', 'cat', '/proc/sys/kernel/random/uuid']);
  assert.notEqual(again.stdout, third.stdout, 'two machines from one template must not share their RNG');
  await poolSettles(1);
});

test('run -d claims a spare: its id is the machine the user gets, ps shows it under the user name', async () => {
  const [spareId] = await poolSettles(1);
  const result = await torpor(['run', '-d', '--name', 'daemon', 'base', 'sleep', '1000']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout.trim(), spareId);
  const listed = JSON.parse((await torpor(['ps', '--json'])).stdout) as Listed[];
  assert.deepEqual(
    listed.map((machine) => [machine.name, machine.id, machine.state.status, machine.spare]),
    [['daemon', spareId, 'running', undefined]],
  );
  const exec = await torpor(['exec', 'daemon', 'hostname']);
  assert.equal(exec.stdout, 'daemon\n');
  assert.equal((await torpor(['rm', '-f', 'daemon'])).code, 0);
  await poolSettles(1);
});

test('two runs at once: one claims the spare, the other starts cold; never the same machine', async () => {
  const [spareId] = await poolSettles(1);
  const [first, second] = await Promise.all([
    torpor(['run', '-d', '--name', 'racer-1', 'base', 'sleep', '1000']),
    torpor(['run', '-d', '--name', 'racer-2', 'base', 'sleep', '1000']),
  ]);
  assert.equal(first.code, 0, first.stderr);
  assert.equal(second.code, 0, second.stderr);
  const ids = [first.stdout.trim(), second.stdout.trim()];
  assert.notEqual(ids[0], ids[1]);
  assert.equal(ids.filter((id) => id === spareId).length, 1, 'exactly one run got the spare');
  assert.equal((await torpor(['exec', 'racer-1', 'hostname'])).stdout, 'racer-1\n');
  assert.equal((await torpor(['exec', 'racer-2', 'hostname'])).stdout, 'racer-2\n');
  assert.equal((await torpor(['rm', '-f', 'racer-1', 'racer-2'])).code, 0);
  await poolSettles(1);
});

test('other settings (memory, ports, network) start cold and leave the spare alone', async () => {
  const [spareId] = await poolSettles(1);
  for (const flags of [
    ['--memory', '256m'],
    ['--network', 'none'],
    ['-p', '127.0.0.1:18734:80'],
  ]) {
    const result = await torpor(['run', '-d', ...flags, 'base', 'sleep', '1000']);
    assert.equal(result.code, 0, result.stderr);
    assert.notEqual(result.stdout.trim(), spareId, `${flags.join(' ')} got the spare`);
    assert.equal((await torpor(['rm', '-f', result.stdout.trim()])).code, 0);
  }
  assert.deepEqual(await readyIds(), [spareId]);
  // Those runs filled pools of their own settings (not with -p: a machine with ports is never a spare).
  await poolSettles(1);
  const pools = JSON.parse((await torpor(['system', 'pool', '--json'])).stdout) as { spares: Array<{ id: string; memoryMiB: number; network: boolean }> };
  assert.deepEqual(pools.spares.map((spare) => [spare.memoryMiB, spare.network]).sort(), [
    [256, true],
    [512, false],
    [512, true],
  ]);
  assert.equal((await torpor(['system', 'pool', 'clear'])).code, 0);
  assert.equal((await torpor(['system', 'pool', 'fill', 'base'])).code, 0);
});

test('spares are hidden from ps, shown by --spares, -a and system pool, counted by system df', async () => {
  const [spareId] = await poolSettles(1);
  assert.equal((await torpor(['ps', '-q'])).stdout, '');
  assert.equal((await torpor(['ps', '--spares', '-q'])).stdout, `${spareId}\n`);
  assert.ok((await listAll()).some((machine) => machine.id === spareId && machine.spare));
  const pool = JSON.parse((await torpor(['system', 'pool', '--json'])).stdout) as {
    size: number;
    spares: Array<{ id: string; memory: { qemuRssBytes: number; supervisorRssBytes: number } }>;
  };
  assert.equal(pool.size, 1);
  assert.equal(pool.spares[0]!.id, spareId);
  assert.ok(pool.spares[0]!.memory.qemuRssBytes > 0 && pool.spares[0]!.memory.supervisorRssBytes > 0);
  const usage = JSON.parse((await torpor(['system', 'df', '--json'])).stdout) as { spares: { count: number; live: number; memoryBytes: number } };
  assert.deepEqual([usage.spares.count, usage.spares.live], [1, 1]);
  assert.ok(usage.spares.memoryBytes > 0);
  // The HTTP API and the dashboard hide them the same way; GET /v1/machines?spares=true lists them.
  const log = await openContextLog({ stateDirectory: home.home });
  const sessions = new SessionManager({ log });
  try {
    const app = createApp({ log, sessions });
    const ids = async (path: string) => ((await (await app.request(path)).json()) as { machines: { id: string }[] }).machines.map((machine) => machine.id);
    assert.deepEqual(await ids('/v1/machines'), []);
    assert.deepEqual(await ids('/v1/machines?spares=true'), [spareId]);
    assert.deepEqual(await ids('/ui/api/machines'), []);
  } finally {
    await sessions.close();
    await log.close();
  }
});

test('a CLI killed (-9) after taking a spare: the spare ends itself, its name is freed, the next run works', async () => {
  const [spareId] = await poolSettles(1);
  // A real CLI process that takes the spare (rename, user config written, name reserved) and is
  // killed before it tells the supervisor.
  const script = `const { takeSpare } = await import(${JSON.stringify(sparesModule)});
const { networkOptionsFrom } = await import(${JSON.stringify(runOptionsModule)});
const network = networkOptionsFrom({ network: 'user', allowHost: [], egressAllow: [], egressDeny: [] });
const taken = await takeSpare({ image: 'base', name: 'orphan', command: ['true'], ...network });
process.stdout.write(taken ? taken.config.id : 'none');
process.kill(process.pid, 'SIGKILL');`;
  const killed = await new Promise<Result>((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, TORPOR_HOME: home.home, TORPOR_SPARE_MACHINES: '1' },
    });
    let stdout = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal === 'SIGKILL' ? 137 : -1), stdout, stderr: '' }));
  });
  assert.equal(killed.stdout, spareId);
  assert.equal(killed.code, 137);
  // Nobody may claim it now, and ps never shows it as a user's running machine.
  assert.deepEqual(await readyIds(), []);
  assert.equal((await torpor(['ps', '-q'])).stdout, '');
  // The supervisor notices within its grace period and removes the machine; the name is free.
  const deadline = Date.now() + 40_000;
  while ((await listAll()).some((machine) => machine.id === spareId)) {
    assert.ok(Date.now() < deadline, 'the orphaned spare was not removed');
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  await assert.rejects(stat(machineFiles(spareId).memoryFile));
  const next = await torpor(['run', '--rm', '--name', 'orphan', 'base', 'hostname']);
  assert.equal(next.code, 0, next.stderr);
  assert.equal(next.stdout, 'orphan\n');
  await poolSettles(1);
});

test('a spare whose supervisor was killed (-9) shows as exited, and the next run starts cold and cleans it up', async () => {
  const [spareId] = await poolSettles(1);
  const state = (await listAll()).find((machine) => machine.id === spareId)! as Listed & { state: { supervisorPid?: number } };
  const supervisorPid = (JSON.parse((await torpor(['inspect', spareId])).stdout) as Array<{ state: { supervisorPid: number } }>)[0]!.state.supervisorPid;
  assert.ok(state);
  assert.ok(processMatches(supervisorPid, 'supervisor'));
  process.kill(supervisorPid, 'SIGKILL');
  const deadline = Date.now() + 10_000;
  let shown: Listed | undefined;
  for (;;) {
    shown = (await listAll()).find((machine) => machine.id === spareId);
    if (shown?.state.status === 'exited' || Date.now() > deadline) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(shown?.state.status, 'exited');
  assert.equal(shown?.state.exitCode, 137);
  const result = await torpor(['run', '--rm', 'base', 'echo', 'cold']);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(result.stdout, 'cold\n');
  assert.ok(!(await listAll()).some((machine) => machine.id === spareId), 'the dead spare was cleaned up');
  await poolSettles(1);
});

test('hostile input: planted pool entries, claim and discard sent to a machine that is no spare, bad fill settings', async () => {
  const [spareId] = await poolSettles(1);
  // A user's own machine (not a spare) whose id is planted in the pool, plus junk entries.
  const victim = await torpor(['run', '-d', '--name', 'victim', '--memory', '256m', 'base', 'sleep', '1000'], { TORPOR_SPARE_MACHINES: '0' });
  assert.equal(victim.code, 0, victim.stderr);
  const victimId = victim.stdout.trim();
  await mkdir(sparesDirectory(), { recursive: true });
  const planted = `${basePool}.${'0'.repeat(12)}`;
  await writeFile(join(sparesDirectory(), planted), '');
  await writeFile(join(sparesDirectory(), `${basePool}.not-an-id`), '');
  await symlink('/etc/passwd', join(sparesDirectory(), `${basePool}.${victimId}`));
  const claimer = await torpor(['run', '--rm', '--name', 'claimer-2', 'base', 'hostname']);
  assert.equal(claimer.code, 0, claimer.stderr);
  assert.equal(claimer.stdout, 'claimer-2\n');
  // The user's machine was not taken over: still running its own process under its own name.
  assert.equal((await torpor(['exec', 'victim', 'hostname'])).stdout, 'victim\n');
  const listed = (await listAll()).find((machine) => machine.id === victimId);
  assert.deepEqual([listed?.name, listed?.state.status], ['victim', 'running']);
  assert.equal((await readFile('/etc/passwd', 'utf8')).length > 0, true, '/etc/passwd untouched');
  // What the run took and could not use is not left in the pool directory either.
  assert.deepEqual(
    (await readdir(sparesDirectory())).filter((entry) => entry.endsWith('.claimed')),
    [],
  );
  // Claim and discard are refused by a supervisor whose machine is no spare.
  const client = await connectToSupervisor(victimId);
  await assert.rejects(sendControl(client, { op: 'claim' }), /not a spare/);
  await assert.rejects(sendControl(client, { op: 'discard' }), /only an unclaimed spare/);
  client.close();
  assert.equal((await torpor(['exec', 'victim', 'true'])).code, 0);
  assert.equal((await torpor(['rm', '-f', 'victim'])).code, 0);
  // Fill settings that are not settings, or carry a policy of the wrong shape.
  const garbage = await torpor(['system', 'pool', 'fill', '--settings', '{"image":1}']);
  assert.equal(garbage.code, 125);
  assert.match(garbage.stderr, /not spare settings.*\n\s+hint: give an image/);
  const badPolicy = await torpor([
    'system',
    'pool',
    'fill',
    '--settings',
    JSON.stringify({ image: 'base', cpus: 1, memoryMiB: 512, network: true, networkPolicy: { mode: 'everything', allowHost: 'all' } }),
  ]);
  assert.equal(badPolicy.code, 125);
  assert.match(badPolicy.stderr, /invalid network policy/);
  await poolSettles(1);
  assert.ok(spareId);
});

test('system prune ends spare machines and frees their RAM', async () => {
  const [spareId] = await poolSettles(1);
  const pruned = JSON.parse((await torpor(['system', 'prune', '--force', '--json'])).stdout) as { spares: string[] };
  assert.deepEqual(pruned.spares, [`spare-${spareId}`]);
  assert.deepEqual(await readyIds(), []);
  assert.equal((await listAll()).length, 0);
  await assert.rejects(stat(machineFiles(spareId).memoryFile));
  assert.deepEqual((JSON.parse((await torpor(['system', 'pool', '--json'])).stdout) as { spares: unknown[] }).spares, []);
  // With no spare, a run is a cold start that works as before.
  const result = await torpor(['run', '--rm', 'base', 'echo', 'after'], { TORPOR_SPARE_MACHINES: '0' });
  assert.equal(result.stdout, 'after\n');
});

test('a spare no run claims ends itself after TORPOR_SPARE_IDLE_SECONDS and frees its RAM', async () => {
  const filled = await torpor(['system', 'pool', 'fill', 'base'], { TORPOR_SPARE_IDLE_SECONDS: '4' });
  assert.equal(filled.code, 0, filled.stderr);
  const [spareId] = await poolSettles(1);
  const deadline = Date.now() + 60_000;
  while ((await readyIds()).length > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(await readyIds(), [], 'the idle spare took itself out of the pool');
  let spare = (await listAll()).find((machine) => machine.id === spareId);
  while (spare && !['exited', 'failed'].includes(spare.state.status) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 500));
    spare = (await listAll()).find((machine) => machine.id === spareId);
  }
  assert.ok(!spare || spare.state.status === 'exited', `the idle spare ended (${spare?.state.status})`);
  await assert.rejects(stat(machineFiles(spareId).memoryFile), 'its RAM file is gone');
  // A run after it is a cold start that works (no refill: the clean-up must not race one).
  assert.equal((await torpor(['run', '--rm', 'base', 'echo', 'after idle'], { TORPOR_SPARE_MACHINES: '0' })).stdout, 'after idle\n');
});

test('a spare never takes the RAM tmpfs its last room: no spare unless it, one more machine and a template of its size fit', async () => {
  const small = await mkdtemp(join(tmpdir(), 'tp-small-tmpfs-'));
  await runCommand('mount', ['-t', 'tmpfs', '-o', 'size=900m', 'tmpfs', small]);
  try {
    const environment = { TORPOR_MEMORY_DIR: small };
    const spareIds = async () =>
      (JSON.parse((await torpor(['system', 'pool', '--json'], environment)).stdout) as { spares: { id: string; memoryMiB: number }[] }).spares;
    const before = (await spareIds()).map((spare) => spare.id);
    // 512 MiB: room for one machine, not for three. The fill makes nothing.
    assert.equal((await torpor(['system', 'pool', 'fill', 'base', '--memory', '512m', '--json'], environment)).code, 0);
    assert.deepEqual(
      (await spareIds()).map((spare) => spare.id),
      before,
    );
    // 256 MiB: three fit; the spare is made, and a user's 256 MiB machine still starts beside it.
    assert.equal((await torpor(['system', 'pool', 'fill', 'base', '--memory', '256m', '--json'], environment)).code, 0);
    assert.deepEqual(
      (await spareIds()).filter((spare) => !before.includes(spare.id)).map((spare) => spare.memoryMiB),
      [256],
    );
    // Same settings as the spare (so the same boot template): what the rule promises room for is the
    // spare, one machine and one template; a machine of other settings needs a template of its own.
    const run = await torpor(['run', '--rm', '--memory', '256m', 'base', 'echo', 'beside the spare'], {
      ...environment,
      TORPOR_SPARE_MACHINES: '0',
    });
    assert.equal(run.stdout, 'beside the spare\n', run.stderr);
  } finally {
    await torpor(['system', 'pool', 'clear'], { TORPOR_MEMORY_DIR: small });
    await poolSettles(0).catch(() => {});
    await runCommand('umount', [small], { allowFailure: true });
    await rm(small, { recursive: true, force: true });
  }
});
