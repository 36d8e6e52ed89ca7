import { test, before, after } from 'node:test';
import { readdir } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { memoryDirectory } from '../state/paths.ts';
import assert from 'node:assert/strict';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { openContextLog, type ContextLog } from '../context/index.ts';
import { SessionManager } from './session-manager.ts';
import { SessionStore } from './session-store.ts';
import { listMachines, stopMachine } from '../runtime/machines.ts';
import { machineFiles, readMachineConfig, readMachineState } from '../runtime/machine-files.ts';
import { readLazyMemoryStatus } from '../snapshot/lazy-memory.ts';
import { resumeMachine, snapshotMachine } from '../runtime/snapshots.ts';
import { connectToSupervisor, sendControl } from '../runtime/supervisor-client.ts';
import type { ControlRequest } from '../runtime/control-protocol.ts';
import { FrameType, decodeError } from '../guest/protocol.ts';
import { machineMemoryBytes } from '../runtime/paused-machines.ts';
import { shellIn } from '../runtime/testing/guest-shell.ts';
import { replyText, sendWithWakeSteps, shellAgentSpec } from './testing/shell-agent.ts';
import { TorporError } from '../util/errors.ts';

// The paused tier against real machines: a hibernated session's QEMU is kept stopped, and its wake
// is a resume of that very process (memory, files, children and the clock right), within the warm
// budget; anything off (too small a budget, a dead supervisor, a restarted server) ends in the
// ordinary restore, never in an orphan QEMU or two machines for one session.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let log: ContextLog;
let manager: SessionManager;

// Idle timers never fire here: each test hibernates when it means to.
const spec = shellAgentSpec(3600);
/** What an idle timer does: snapshot and hibernate the session now (queued like every operation on it). */
function hibernateNow(id: string): Promise<void> {
  const internals = manager as unknown as { serialize(id: string, work: () => Promise<void>): Promise<void>; hibernate(id: string): Promise<void> };
  return internals.serialize(id, () => internals.hibernate(id));
}

/** Machines holding processes (running or paused), by id -> status. */
async function liveMachines(): Promise<Map<string, string>> {
  const views = await listMachines();
  return new Map(
    views.filter(({ state }) => ['starting', 'running', 'paused', 'stopping'].includes(state.status)).map(({ config, state }) => [config.id, state.status]),
  );
}

const sendTimed = (id: string, content: string) => sendWithWakeSteps(manager, id, content);

before(async () => {
  home = await useTemporaryHome();
  log = await openContextLog({ stateDirectory: home.home });
  process.env.TORPOR_WARM_MEMORY = '2048';
  manager = new SessionManager({ log, tickMs: 100 });
});

after(async () => {
  await manager.close();
  await log.close();
  delete process.env.TORPOR_WARM_MEMORY;
  delete process.env.TORPOR_PAUSED_MACHINES;
  await home.cleanup();
});

let first: string;

test('a hibernated session keeps its QEMU paused and its wake resumes it: memory, files, children and clock continue', async () => {
  first = (await manager.create(spec, { name: 'first' })).id;
  assert.equal(replyText((await manager.send(first, 'hello')).events), 'turn 1: hello; notes 1; child yes');
  const machineId = manager.get(first).machineId!;
  await hibernateNow(first);
  const record = manager.get(first);
  assert.equal(record.state, 'hibernated');
  assert.equal(record.machineId, machineId, 'the record keeps the paused machine');
  const state = await readMachineState(machineId);
  assert.equal(state.status, 'paused');
  assert.equal(state.snapshot, record.snapshot, 'paused at exactly the session snapshot');
  assert.deepEqual([...(await liveMachines())], [[machineId, 'paused']], '`ps` shows it paused, and nothing else runs');

  // Ill-timed requests get clear errors: a paused machine is not snapshotted, a running one not resumed.
  const machine = await readMachineConfig(machineId);
  await assert.rejects(snapshotMachine(machine, { name: 'not-now', stop: false }), (error: TorporError) => error.code === 'not-running');

  // The guest's clock stood still while paused: the resume must hand it the time.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const { reply, steps } = await sendTimed(first, 'again');
  assert.equal(reply, 'turn 2: again; notes 2; child yes');
  assert.equal(manager.get(first).machineId, machineId, 'the same machine');
  assert.ok(steps.includes('session: paused machine resumed'), `the wake resumed: ${steps.join(', ')}`);
  assert.ok(!steps.some((step) => step.startsWith('restore:') || step.startsWith('start:')), `no restore: ${steps.join(', ')}`);
  const guestSeconds = Number(await shellIn(machine, 'date +%s'));
  assert.ok(Math.abs(guestSeconds - Date.now() / 1000) < 2, `the guest clock (${guestSeconds}) is the host's (${Math.round(Date.now() / 1000)})`);
  await assert.rejects(resumeMachine(machine), (error: TorporError) => error.code === 'not-paused');
  // The supervisor itself refuses ill-timed and garbage requests, and lives on.
  const client = await connectToSupervisor(machineId);
  try {
    await assert.rejects(sendControl(client, { op: 'resume' }), /not paused/);
    await assert.rejects(sendControl(client, { op: 'snapshot', name: 'half', keepPaused: true }), /keepPaused needs stop/);
    await assert.rejects(sendControl(client, { op: 'nonsense' } as unknown as ControlRequest), /unknown control op "nonsense"/);
    await assert.rejects(sendControl(client, null as unknown as ControlRequest), /must be a JSON object/);
    const stream = client.allocateStream();
    const refused = new Promise<string>((resolve) =>
      client.route(stream, (frame) => {
        resolve(frame.type === FrameType.error ? decodeError(frame.payload).message : `frame ${frame.type}`);
        return true;
      }),
    );
    client.send(FrameType.control, stream, Buffer.from('{not json'));
    assert.match(await refused, /must be JSON/);
    assert.equal((await sendControl(client, { op: 'status' })).state.status, 'running');
  } finally {
    client.close();
  }
  assert.deepEqual([...(await liveMachines())], [[machineId, 'running']]);
});

test('a budget too small for the machine hibernates the ordinary way', async () => {
  process.env.TORPOR_WARM_MEMORY = '1';
  try {
    await hibernateNow(first);
    assert.equal(manager.get(first).machineId, undefined);
    assert.equal((await liveMachines()).size, 0);
    const { reply, steps } = await sendTimed(first, 'restored');
    assert.equal(reply, 'turn 3: restored; notes 3; child yes');
    assert.ok(steps.includes('start: supervisor told to launch'), `a restore: ${steps.join(', ')}`);
  } finally {
    process.env.TORPOR_WARM_MEMORY = '2048';
  }
});

test('TORPOR_PAUSED_MACHINES=0 turns the tier off', async () => {
  process.env.TORPOR_PAUSED_MACHINES = '0';
  try {
    await hibernateNow(first);
    assert.equal(manager.get(first).machineId, undefined);
    assert.equal((await liveMachines()).size, 0);
    assert.equal(replyText((await manager.send(first, 'off')).events), 'turn 4: off; notes 4; child yes');
  } finally {
    delete process.env.TORPOR_PAUSED_MACHINES;
  }
});

test('stop ends a paused machine at once, and the session wakes from its snapshot', async () => {
  await hibernateNow(first);
  const machine = await readMachineConfig(manager.get(first).machineId!);
  const started = Date.now();
  const stopped = await stopMachine(machine, { timeoutSeconds: 10 });
  assert.equal(stopped.status, 'exited');
  assert.ok(Date.now() - started < 5000, `stopped in ${Date.now() - started} ms`);
  const { reply, steps } = await sendTimed(first, 'after stop');
  assert.equal(reply, 'turn 5: after stop; notes 5; child yes');
  assert.ok(steps.includes('session: paused machine removed') && steps.includes('start: supervisor told to launch'), steps.join(', '));
});

test('kill -9 of a paused machine supervisor: the next wake restores the snapshot and continues', async () => {
  await hibernateNow(first);
  const machineId = manager.get(first).machineId!;
  const state = await readMachineState(machineId);
  assert.equal(state.status, 'paused');
  process.kill(state.supervisorPid!, 'SIGKILL');
  // QEMU dies with its supervisor (parent-death signal).
  for (let attempt = 0; attempt < 100 && (await liveMachines()).size > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal((await liveMachines()).size, 0, 'no orphan QEMU');
  const { reply, steps } = await sendTimed(first, 'after kill');
  assert.equal(reply, 'turn 6: after kill; notes 6; child yes');
  assert.ok(steps.includes('start: supervisor told to launch'), steps.join(', '));
  assert.notEqual(manager.get(first).machineId, machineId);
  assert.equal((await liveMachines()).size, 1);
});

test('a restarted manager adopts a paused machine (one machine, resumed), and removes it when the tier is off', async () => {
  // A restored machine (the wake before restored it lazily): its writes are tracked.
  const machineId = manager.get(first).machineId!;
  const tracked = await readLazyMemoryStatus(machineFiles(machineId).memoryFile);
  await hibernateNow(first);
  assert.equal(manager.get(first).machineId, machineId);
  if (tracked) {
    assert.ok(tracked.tracking, 'a lazily restored machine tracks writes here (userfaultfd write-protect)');
    // Protected again while paused: the next snapshot after the resume reads only what changes from here.
    const now = (await readLazyMemoryStatus(machineFiles(machineId).memoryFile))!;
    assert.ok(now.protectGeneration > tracked.protectGeneration, `write tracking generation ${tracked.protectGeneration} -> ${now.protectGeneration}`);
  }
  await manager.close();
  manager = new SessionManager({ log, store: new SessionStore(), tickMs: 100 });
  await manager.recoverAll();
  assert.deepEqual([...(await liveMachines())], [[machineId, 'paused']]);
  const { reply, steps } = await sendTimed(first, 'after restart');
  assert.equal(reply, 'turn 7: after restart; notes 7; child yes');
  assert.ok(steps.includes('session: paused machine resumed'), steps.join(', '));
  assert.deepEqual([...(await liveMachines())], [[machineId, 'running']]);

  await hibernateNow(first);
  await manager.close();
  process.env.TORPOR_PAUSED_MACHINES = '0';
  try {
    manager = new SessionManager({ log, store: new SessionStore(), tickMs: 100 });
    await manager.recoverAll();
    assert.equal((await liveMachines()).size, 0, 'the paused machine was removed');
    assert.equal(manager.get(first).machineId, undefined);
    assert.equal(manager.get(first).state, 'hibernated');
  } finally {
    delete process.env.TORPOR_PAUSED_MACHINES;
  }
  assert.equal(replyText((await manager.send(first, 'rebuilt')).events), 'turn 8: rebuilt; notes 8; child yes');
});

test('a session another node took over (lease lost) leaves no paused machine here', async () => {
  await hibernateNow(first);
  const machineId = manager.get(first).machineId!;
  assert.deepEqual([...(await liveMachines())], [[machineId, 'paused']]);
  manager.abandon(first);
  for (let attempt = 0; attempt < 100 && (await liveMachines()).size > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal((await liveMachines()).size, 0);
  // Here the session is still ours (no cluster): its next wake finds the machine gone and restores.
  const { reply, steps } = await sendTimed(first, 'after abandon');
  assert.equal(reply, 'turn 9: after abandon; notes 9; child yes');
  assert.ok(steps.includes('start: supervisor told to launch'), steps.join(', '));
});

test('over budget, the oldest paused machine is evicted; delete removes a paused machine', async () => {
  await hibernateNow(first);
  const older = manager.get(first).machineId!;
  // A budget that holds one paused machine and not two.
  const cost = await machineMemoryBytes(older);
  process.env.TORPOR_WARM_MEMORY = String(Math.ceil((cost * 1.6) / 1024 ** 2));
  try {
    const second = (await manager.create(spec, { name: 'second' })).id;
    assert.equal(replyText((await manager.send(second, 'hi')).events), 'turn 1: hi; notes 1; child yes');
    const newer = manager.get(second).machineId!;
    await hibernateNow(second);
    // The eviction is queued behind the older session's operations: give it a moment.
    for (let attempt = 0; attempt < 100 && manager.get(first).machineId !== undefined; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(manager.get(first).machineId, undefined, 'the oldest was evicted');
    assert.equal(manager.get(second).machineId, newer);
    assert.deepEqual([...(await liveMachines())], [[newer, 'paused']]);
    await manager.delete(second);
    assert.equal((await liveMachines()).size, 0, 'delete removed the paused machine');
    assert.equal(replyText((await manager.send(first, 'evicted')).events), 'turn 10: evicted; notes 10; child yes');
  } finally {
    process.env.TORPOR_WARM_MEMORY = '2048';
  }
});

test('a rate-limit sleep keeps the machine paused, and the durable timer resumes that very machine to finish the turn', async () => {
  // The evicted session of the test before wakes on its message; its sleep-until then hibernates it mid-turn.
  assert.equal(replyText((await manager.send(first, 'warm up')).events), 'turn 11: warm up; notes 11; child yes');
  const { events } = await manager.send(first, 'sleep');
  assert.equal(events.at(-1)?.type, 'turn-suspend');
  for (let attempt = 0; attempt < 200 && manager.get(first).state !== 'hibernated'; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
  const machineId = manager.get(first).machineId;
  assert.equal(manager.get(first).state, 'hibernated');
  assert.ok(manager.get(first).wakeAt, 'the timer is recorded');
  assert.ok(machineId, 'the record keeps the paused machine');
  assert.deepEqual([...(await liveMachines())], [[machineId, 'paused']]);
  // The agent asked for two seconds; the timer resumes the paused machine and the turn finishes.
  for (let attempt = 0; attempt < 400 && manager.get(first).state !== 'idle'; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(manager.get(first).state, 'idle');
  assert.equal(manager.get(first).wakeAt, undefined);
  assert.equal(manager.get(first).machineId, machineId, 'the same machine continued (no restore)');
  assert.deepEqual([...(await liveMachines())], [[machineId, 'running']]);
  const { entries } = await log.read(first, { from: 0 });
  assert.ok(
    entries.some((row) => JSON.stringify(row.entry).includes('woke up')),
    'the suspended turn finished after the timer',
  );
  assert.equal(replyText((await manager.send(first, 'after the timer')).events), 'turn 13: after the timer; notes 13; child yes');
});

test('a host short of memory gets the paused machines back, and its hibernations keep none until it has room again', async () => {
  await hibernateNow(first);
  const machineId = manager.get(first).machineId!;
  assert.deepEqual([...(await liveMachines())], [[machineId, 'paused']]);
  // A reserve larger than this host's RAM: its available memory (/proc/meminfo) is short of it now.
  process.env.TORPOR_WARM_RESERVE = String(Math.ceil((totalmem() / 1024 ** 2) * 2));
  try {
    // The manager's tick (100 ms here; memory is checked at most once a second) ends it.
    for (let attempt = 0; attempt < 100 && manager.get(first).machineId !== undefined; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(manager.get(first).machineId, undefined, 'the paused machine was given back');
    assert.equal((await liveMachines()).size, 0);
    const { reply, steps } = await sendTimed(first, 'short');
    assert.equal(reply, 'turn 14: short; notes 14; child yes');
    assert.ok(steps.includes('start: supervisor told to launch'), `the wake restored the snapshot: ${steps.join(', ')}`);
    await hibernateNow(first);
    assert.equal(manager.get(first).machineId, undefined, 'a hibernation keeps nothing while the host is short');
    assert.equal((await liveMachines()).size, 0);
    // Nor does the warm tier keep the RAM file (its supervisor may not know the reserve: the manager drops it).
    const warmFiles = async () => (await readdir(memoryDirectory()).catch(() => [] as string[])).filter((name) => name.includes('warm-'));
    for (let attempt = 0; attempt < 60 && (await warmFiles()).length > 0; attempt++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(await warmFiles(), []);
  } finally {
    delete process.env.TORPOR_WARM_RESERVE;
  }
  assert.equal(replyText((await manager.send(first, 'room again')).events), 'turn 15: room again; notes 15; child yes');
  await hibernateNow(first);
  assert.ok(manager.get(first).machineId, 'with room again, the machine is kept paused');
});
