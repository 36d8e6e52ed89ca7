import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { openContextLog, type ContextLog } from '../context/index.ts';
import { SessionManager, type SessionEvent } from './session-manager.ts';
import { SessionStore } from './session-store.ts';
import { listMachines } from '../runtime/machines.ts';
import { readMachineConfig, readMachineState } from '../runtime/machine-files.ts';
import { processMatches } from '../util/process-identity.ts';
import { replyText, shellAgentSpec } from './testing/shell-agent.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let log: ContextLog;
let manager: SessionManager;
let sessionId: string;

const spec = shellAgentSpec(1);
async function waitForState(state: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (manager.get(sessionId).state !== state) {
    if (Date.now() > deadline) throw new Error(`session stayed ${manager.get(sessionId).state}, wanted ${state} (${manager.get(sessionId).note ?? ''})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function runningMachines(): Promise<string[]> {
  return (await listMachines()).filter((machine) => machine.state.status === 'running').map((machine) => machine.config.id);
}

before(async () => {
  home = await useTemporaryHome();
  log = await openContextLog({ stateDirectory: home.home });
  manager = new SessionManager({ log, tickMs: 100 });
  sessionId = (await manager.create(spec, { name: 'chat' })).id;
});

after(async () => {
  await manager.close();
  await log.close();
  await home.cleanup();
});

test('a message gets its reply streamed and both land in the context log', async () => {
  const streamed: SessionEvent[] = [];
  const { events } = await manager.send('chat', 'hello', (event) => streamed.push(event));
  assert.equal(replyText(events), 'turn 1: hello; notes 1; child yes');
  assert.deepEqual(
    streamed.map((event) => event.type),
    ['turn-start', 'text-delta', 'message-finish', 'turn-finish'],
  );
  const { entries } = await log.read(sessionId, { from: 0 });
  const messages = entries.map((row) => row.entry).filter((entry) => entry.kind === 'message');
  assert.deepEqual(
    messages.map((entry) => [entry.role, typeof entry.content === 'string' ? entry.content : (entry.content as Array<{ text: string }>)[0]!.text]),
    [
      ['user', 'hello'],
      ['assistant', 'turn 1: hello; notes 1; child yes'],
    ],
  );
});

test('an idle session hibernates: nothing runs for it, and the next message wakes memory, files and children', async () => {
  await waitForState('hibernated');
  const record = manager.get(sessionId);
  assert.equal(record.machineId, undefined);
  assert.ok(record.snapshot);
  assert.deepEqual(await runningMachines(), []);
  const wakes: string[][] = [];
  const onWake = (id: string, timeline: { steps: Array<{ step: string }> }) => id === sessionId && wakes.push(timeline.steps.map((entry) => entry.step));
  manager.on('wake', onWake);
  const { events } = await manager.send(sessionId, 'again');
  manager.off('wake', onWake);
  assert.equal(replyText(events), 'turn 2: again; notes 2; child yes');
  // A new machine, but the guest keeps its hostname (the session id): no file writes in the guest at each wake.
  const machine = await readMachineConfig(manager.get(sessionId).machineId!);
  assert.equal(machine.hostname, sessionId);
  // The wake's timeline runs from the message through the supervisor's steps to the message being logged.
  assert.equal(wakes.length, 1);
  for (const step of [
    'session: message received',
    'start: supervisor told to launch',
    'supervisor: qmpReady',
    'supervisor: agentAnswered',
    'session: message logged',
  ])
    assert.ok(wakes[0]!.includes(step), `the wake timeline has ${step}: ${wakes[0]!.join(', ')}`);
});

test('two messages racing into one session are served one after the other, on one machine', async () => {
  const [first, second] = await Promise.all([manager.send(sessionId, 'one'), manager.send(sessionId, 'two')]);
  assert.equal(replyText(first.events), 'turn 3: one; notes 3; child yes');
  assert.equal(replyText(second.events), 'turn 4: two; notes 4; child yes');
  assert.equal((await runningMachines()).length, 1);
});

test('sleep-until hibernates mid-turn and a durable timer wakes the agent, which finishes its turn', async () => {
  const { events } = await manager.send(sessionId, 'sleep');
  assert.equal(events.at(-1)?.type, 'turn-suspend');
  await waitForState('hibernated', 10_000);
  assert.ok(manager.get(sessionId).wakeAt);
  assert.deepEqual(await runningMachines(), []);
  await waitForState('idle', 20_000);
  const { entries } = await log.read(sessionId, { from: 0 });
  assert.ok(entries.some((row) => JSON.stringify(row.entry).includes('woke up')) || manager.get(sessionId).turns >= 5);
});

test('a killed QEMU is recovered: from the snapshot when current, else on a fresh machine from the log', async () => {
  const { events: before } = await manager.send(sessionId, 'before crash');
  assert.match(replyText(before), /^turn 6: before crash/);
  const machineId = manager.get(sessionId).machineId!;
  const state = await readMachineState(machineId);
  process.kill(state.qemuPid!, 'SIGKILL');
  const { events } = await manager.send(sessionId, 'after crash');
  // The log is ahead of the last snapshot, so the agent was rebuilt from the log: its counter
  // comes from the history (7 user messages), the disk notes start over on the fresh machine.
  assert.match(replyText(events), /^turn 7: after crash; notes 1; child yes$/);
  assert.match(manager.get(sessionId).note ?? '', /rebuilt on a fresh machine from the context log/);
  assert.equal(processMatches(state.qemuPid, machineId), false);
});

test('a restarted manager reattaches to the running machine', async () => {
  await manager.close();
  manager = new SessionManager({ log, store: new SessionStore(), tickMs: 100 });
  await manager.recoverAll();
  const { events } = await manager.send(sessionId, 'still there?');
  assert.match(replyText(events), /^turn 8: still there\?/);
});

test('a fork continues from the same state on its own machine; delete cleans up', async () => {
  const fork = await manager.fork(sessionId, { name: 'chat-fork' });
  assert.equal(fork.state, 'hibernated');
  const [original, forked] = [await manager.send(sessionId, 'original'), await manager.send('chat-fork', 'forked')];
  assert.match(replyText(original.events), /^turn 9: original/);
  assert.match(replyText(forked.events), /^turn 9: forked/);
  await manager.delete('chat-fork');
  await manager.delete(sessionId);
  assert.throws(() => manager.get(sessionId), /no such session/);
  assert.deepEqual(await runningMachines(), []);
});

test('events that break the protocol are refused at the host boundary, logged, and neither end nor derail the turn', async () => {
  const hostile = await manager.create(spec, { name: 'hostile' });
  const { events } = await manager.send(hostile.id, 'hostile');
  assert.deepEqual(
    events.map((event) => event.type),
    ['turn-start', 'error', 'error', 'error', 'turn-finish'],
  );
  for (const event of events.filter((event) => event.type === 'error')) {
    assert.equal((event as { code?: string }).code, 'invalid-agent-event');
  }
  // The bad sleep-until did not set a timer or hibernate the session.
  assert.equal(manager.get(hostile.id).wakeAt, undefined);
  assert.equal(manager.get(hostile.id).state, 'idle');
  const { entries } = await log.read(hostile.id, { from: 0 });
  const recorded = entries.map((row) => row.entry).filter((entry) => entry.kind === 'error');
  assert.equal(recorded.length, 3);
  assert.ok(recorded.every((entry) => entry.kind === 'error' && entry.code === 'invalid_agent_event'));
  await manager.delete(hostile.id);
});

test('unknown sessions are refused with a hint', async () => {
  await assert.rejects(
    manager.send('nope', 'hi'),
    (error: Error & { hint?: string }) => /no such session: nope/.test(error.message) && /session ls/.test(error.hint ?? ''),
  );
});
