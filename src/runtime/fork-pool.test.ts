import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, connectToMachine, removeMachine, listMachines, createSupervisorPool, effectiveState } from './machines.ts';
import { forkMachine } from './snapshots.ts';
import { machineFiles, readMachineState } from './machine-files.ts';
import { shell } from './testing/guest-shell.ts';
import type { MachineConfig } from './machine-record.ts';
import { standbyRequestOf, type StandbyRequest } from './standby-qemu.ts';
import { until } from './testing/until.ts';

// Real QEMU throughout: a fork through the host's pool adopts the spares' standby QEMUs and every
// child is its own machine; a standby of another shape is not adopted; kill -9 of the forking
// process leaves states the next command reads right; the pool stays bounded and ends with its server.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let memoryDirectory: string;
let origin: MachineConfig;

/** Processes of this test's home: spare supervisors (`--standby`, not yet a machine's) and standby QEMUs. */
function poolProcesses(): { spares: number[]; standbyQemus: number[] } {
  const spares: number[] = [];
  const standbyQemus: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (status.slice(status.lastIndexOf(')') + 2).startsWith('Z')) continue; // exited, not reaped (host-facts)
      const command = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      const environment = readFileSync(`/proc/${entry}/environ`, 'utf8');
      if (/torpor-standby-\d+,/.test(command) && environment.includes(memoryDirectory)) standbyQemus.push(Number(entry));
      else if (command.includes('--standby') && environment.includes(`TORPOR_HOME=${home.home}\0`)) spares.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  // A spare that became a machine's supervisor is the machine's now, not the pool's.
  return { spares, standbyQemus };
}

async function machineSupervisors(): Promise<Set<number>> {
  const pids = new Set<number>();
  for (const view of await listMachines()) if (view.state.supervisorPid) pids.add(view.state.supervisorPid);
  return pids;
}

/** The spares waiting in the pool now (pool processes that supervise no machine). */
async function waitingSpares(): Promise<number[]> {
  const machines = await machineSupervisors();
  return poolProcesses().spares.filter((pid) => !machines.has(pid));
}

async function inspect(config: MachineConfig): Promise<{ hostname: string; own: string; random: string; clock: number; counter: number }> {
  const client = await connectToMachine(config);
  try {
    const [hostname, own, random, clock, counter] = (
      await shell(
        client,
        'hostname; cat /root/own.txt 2>/dev/null || echo absent; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo; date +%s; cat /tmp/counter',
      )
    ).split('\n');
    return { hostname: hostname!, own: own!, random: random!, clock: Number(clock), counter: Number(counter) };
  } finally {
    client.close();
  }
}

async function removeAll(configs: MachineConfig[]): Promise<void> {
  for (const config of configs) await removeMachine(config, { force: true }).catch(() => {});
}

before(async () => {
  memoryDirectory = await mkdtemp('/dev/shm/tp-fork-pool-');
  process.env.TORPOR_MEMORY_DIR = memoryDirectory;
  home = await useTemporaryHome();
  const counter = 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done';
  origin = await createMachine({ image: 'base', name: 'origin', command: ['sh', '-c', counter], memoryMiB: 256 });
  await startMachine(origin.id);
});

after(async () => {
  await removeAll((await listMachines()).map((view) => view.config));
  await home.cleanup();
  await rm(memoryDirectory, { recursive: true, force: true });
});

test('a fork through a pool adopts its standby QEMUs, and every child is its own machine', async () => {
  const pool = createSupervisorPool({ spares: 2, standbys: 2 });
  const made: MachineConfig[] = [];
  try {
    // The first fork teaches the pool the children's shape (its spares held no standby yet).
    const first = await forkMachine(origin, { count: 2, namePrefix: 'learn', pool });
    made.push(...first.forks);
    for (const fork of first.forks) assert.equal((await effectiveState(fork)).status, 'running');
    await removeAll(first.forks);
    assert.ok(await pool.settled(120_000), 'the pool refilled: two spares, each with its standby QEMU up');
    assert.deepEqual(pool.count(), { spares: 2, standbys: 2 });
    const waiting = new Set(await waitingSpares());
    assert.equal(waiting.size, 2);

    const { forks } = await forkMachine(origin, { count: 2, namePrefix: 'child', pool });
    made.push(...forks);
    const states = await Promise.all(forks.map((fork) => readMachineState(fork.id)));
    for (const state of states) {
      assert.match(state.qemuName ?? '', /^torpor-standby-\d+$/, 'the child adopted a standby QEMU');
      assert.ok(waiting.has(state.supervisorPid!), "its supervisor is one of the pool's spares");
    }
    assert.notEqual(states[0]!.qemuPid, states[1]!.qemuPid);

    const [a, b] = forks as [MachineConfig, MachineConfig];
    const clientA = await connectToMachine(a);
    try {
      await shell(clientA, 'echo mine > /root/own.txt');
    } finally {
      clientA.close();
    }
    const [seenA, seenB, parent] = await Promise.all([inspect(a), inspect(b), inspect(origin)]);
    assert.equal(seenA.hostname, a.name);
    assert.equal(seenB.hostname, b.name);
    assert.equal(seenA.own, 'mine');
    assert.equal(seenB.own, 'absent', 'a write in one child is not seen in the other');
    assert.equal(parent.own, 'absent', 'nor in the parent');
    assert.notEqual(seenA.random, seenB.random, 'each child has its own RNG state');
    const now = Date.now() / 1000;
    for (const seen of [seenA, seenB]) {
      assert.ok(Math.abs(seen.clock - now) < 30, `the child's clock is the host's time (${seen.clock} vs ${now.toFixed(0)})`);
      assert.ok(seen.counter > 0, 'the guest program continued');
    }
  } finally {
    await removeAll(made);
    await pool.close();
  }
  assert.deepEqual(await waitingSpares(), [], 'the closed pool left no spare');
  await until('no standby QEMU', () => poolProcesses().standbyQemus.length === 0 || undefined, 10_000);
});

test('a standby of another shape is not adopted: the fork still works, with QEMUs of its own', async () => {
  const pool = createSupervisorPool({ spares: 2, standbys: 2 });
  let made: MachineConfig[] = [];
  try {
    // Standbys for a machine like the origin but with more memory: the origin's children cannot use them.
    const { forks: probe } = await forkMachine(origin, { count: 1, namePrefix: 'probe' });
    made.push(...probe);
    const request = await requestOf(probe[0]!);
    await removeAll(probe);
    const other: StandbyRequest = { ...request, memoryMiB: request.memoryMiB + 64 };
    pool.want(other, 2);
    assert.ok(await pool.settled(120_000));
    assert.deepEqual(pool.count(other), { spares: 2, standbys: 2 });

    const { forks } = await forkMachine(origin, { count: 2, namePrefix: 'shaped', pool });
    made = forks;
    for (const fork of forks) {
      const state = await readMachineState(fork.id);
      assert.equal(state.status, 'running');
      assert.doesNotMatch(state.qemuName ?? '', /standby/, 'no standby of another shape was adopted');
      assert.match((await inspect(fork)).hostname, /^shaped-/);
    }
    // The pool learned the children's shape: its next standbys are of it.
    assert.ok(await pool.settled(120_000));
    assert.deepEqual(pool.count(request), { spares: 2, standbys: 2 });
  } finally {
    await removeAll(made);
    await pool.close();
  }
});

async function requestOf(config: MachineConfig): Promise<StandbyRequest> {
  const request = standbyRequestOf(config, (await stat(machineFiles(config.id).layerDisk)).size);
  assert.ok(request, 'a fork child has a standby shape');
  return request;
}

test('a fork whose files cannot be made keeps no child, and its taken spares end', async () => {
  const pool = createSupervisorPool({ spares: 2, standbys: 2 });
  const path = process.env.PATH;
  try {
    assert.ok(await pool.settled(120_000));
    const spares = new Set(await waitingSpares());
    // The children's starts begin while their files are made; the copy for the second child cannot
    // run (no `cp` on the PATH), so no child may start or stay.
    process.env.PATH = '/nonexistent';
    await assert.rejects(forkMachine(origin, { count: 2, namePrefix: 'broken', pool }), /cp|ENOENT/);
    process.env.PATH = path;
    assert.deepEqual(
      (await listMachines()).filter((view) => view.config.name.startsWith('broken-')).map((view) => `${view.config.name}=${view.state.status}`),
      [],
      'no child of the failed fork is left',
    );
    await until('the taken spares to end', async () => ((await waitingSpares()).some((pid) => spares.has(pid)) ? undefined : true), 15_000);
    const machineQemus = new Set((await listMachines()).map((view) => view.state.qemuPid));
    const left = poolProcesses().standbyQemus.filter((pid) => !machineQemus.has(pid));
    assert.ok(left.length <= 2, `standby QEMUs are the pool's refill only (${left.length})`);
  } finally {
    process.env.PATH = path;
    await pool.close();
  }
  await until('no standby QEMU', () => poolProcesses().standbyQemus.length === 0 || undefined, 15_000);
});

test('kill -9 of the forking process leaves states the next command reads right, and no spare behind', async () => {
  // Another process forks through its own pool (as a server would) and is killed while its children start.
  const script = join(home.home, 'fork-and-die.mts');
  await writeFile(
    script,
    `
import { createSupervisorPool, findMachine, removeMachine } from ${JSON.stringify(new URL('./machines.ts', import.meta.url).pathname)};
import { forkMachine } from ${JSON.stringify(new URL('./snapshots.ts', import.meta.url).pathname)};
import { StartTimeline } from ${JSON.stringify(new URL('./start-timeline.ts', import.meta.url).pathname)};
const pool = createSupervisorPool({ spares: 2, standbys: 2 });
const origin = await findMachine('origin');
const learn = await forkMachine(origin, { count: 2, namePrefix: 'dying-learn', pool });
for (const fork of learn.forks) await removeMachine(fork, { force: true });
console.log('learned');
await pool.settled(120_000);
const timeline = new StartTimeline();
const mark = timeline.mark.bind(timeline);
timeline.mark = (step, at) => { mark(step, at); console.log(step); };
await forkMachine(origin, { count: 2, namePrefix: 'dying', pool, timeline });
console.log('done');
`,
  );
  const child = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env } });
  let output = '';
  const killed = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      // Killed once its children's supervisors were taken: they start with no one to tell them `go`.
      if (output.includes('fork: supervisors taken')) {
        child.kill('SIGKILL');
        resolve();
      }
    });
    child.once('exit', () => (output.includes('fork: supervisors taken') ? resolve() : reject(new Error(`the forking process ended first:\n${output}`))));
  });
  await killed;
  await new Promise((resolve) => child.once('exit', resolve));
  assert.match(output, /learned/);

  // Every machine settles in a state that says what it is: running (and answering), or failed with a reason.
  const views = await until(
    'the dying fork to settle',
    async () => {
      const all = (await listMachines()).filter((view) => view.config.name.startsWith('dying-'));
      return all.some((view) => view.state.status === 'starting') ? undefined : all;
    },
    30_000,
  );
  assert.equal(views.length, 2, `the two children of the killed fork: ${views.map((view) => `${view.config.name}=${view.state.status}`).join(', ')}`);
  for (const view of views) {
    if (view.state.status === 'running') assert.ok((await inspect(view.config)).hostname.startsWith('dying-'));
    // Killed before its start began: a machine made and never started, as `torpor create` leaves one.
    else if (view.state.status === 'created') assert.equal(view.state.supervisorPid, undefined);
    else {
      assert.equal(view.state.status, 'failed', `${view.config.name} is ${view.state.status}`);
      assert.ok(view.state.error, 'a failed child says why');
    }
  }
  // The killed process's spares end with it (their stdin closed), their standby QEMUs too.
  await until('the spares of the killed pool to end', async () => ((await waitingSpares()).length === 0 ? true : undefined), 30_000);
  await until('no standby QEMU', () => poolProcesses().standbyQemus.length === 0 || undefined, 15_000);
  await until('no standby RAM file', async () => ((await readdir(memoryDirectory)).some((name) => name.startsWith('standby-')) ? undefined : true), 15_000);
  // And the next command works: remove them all, fork again.
  await removeAll(views.map((view) => view.config));
  const { forks } = await forkMachine(origin, { count: 1, namePrefix: 'after' });
  assert.equal((await inspect(forks[0]!)).hostname, forks[0]!.name);
  await removeAll(forks);
});

test('the pool is bounded, and a server that closes ends its spares and standbys', async () => {
  const { startApiServer } = await import('../api/server.ts');
  const { temporaryLog } = await import('../context/testing/temporary-log.ts');
  const temporary = temporaryLog();
  process.env.TORPOR_POOL_SPARES = '2';
  process.env.TORPOR_POOL_STANDBYS = '1';
  const server = await startApiServer({ port: 0, log: temporary.log, sessions: true });
  const made: string[] = [];
  try {
    const request = (path: string, body: unknown) =>
      fetch(`${server.url}${path}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
    const pool = server.sessions!.supervisorPool;
    for (const round of [1, 2]) {
      const answer = await request('/v1/machines/origin/fork', { count: 2, namePrefix: `api${round}` });
      assert.equal(answer.status, 201, await answer.clone().text());
      const { forks } = (await answer.json()) as { forks: Array<{ id: string; name: string; state: { status: string } }> };
      assert.equal(forks.length, 2);
      for (const fork of forks) assert.equal(fork.state.status, 'running');
      made.push(...forks.map((fork) => fork.id));
      if (round === 2) {
        // The second fork found the one standby the first taught the pool (bounded: 1 for 2 children).
        const adopted = (await Promise.all(forks.map((fork) => readMachineState(fork.id)))).filter((state) => /standby/.test(state.qemuName ?? ''));
        assert.equal(adopted.length, 1, 'one child adopted the one standby the pool may keep');
      }
      assert.ok(await pool.settled(60_000), 'the pool refilled');
      assert.ok((await waitingSpares()).length <= 2, 'no more spares than TORPOR_POOL_SPARES');
      // (An adopted standby QEMU keeps its name: it is a machine's now, not the pool's.)
      const machineQemus = new Set((await listMachines()).map((view) => view.state.qemuPid));
      const waitingQemus = poolProcesses().standbyQemus.filter((pid) => !machineQemus.has(pid));
      assert.equal(waitingQemus.length, 1, 'as many standby QEMUs as TORPOR_POOL_STANDBYS, not one per child');
      await removeAll((await listMachines()).filter((view) => made.includes(view.config.id)).map((view) => view.config));
    }
  } finally {
    delete process.env.TORPOR_POOL_SPARES;
    delete process.env.TORPOR_POOL_STANDBYS;
    await server.close();
    await temporary.cleanup();
  }
  assert.deepEqual(await waitingSpares(), [], 'the closed server left no spare supervisor');
  await until('no standby QEMU after the server closed', () => poolProcesses().standbyQemus.length === 0 || undefined, 10_000);
  await removeAll((await listMachines()).filter((view) => made.includes(view.config.id)).map((view) => view.config));
});
