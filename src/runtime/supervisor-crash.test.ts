import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, effectiveState, listMachines, removeMachine } from './machines.ts';
import { machineFiles, readMachineState } from './machine-files.ts';
import { processMatches } from '../util/process-identity.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;

before(async () => {
  home = await useTemporaryHome();
});
after(async () => {
  await home.cleanup();
});

test('kill -9 of a supervisor takes its QEMU down too, and ps tells the truth', async () => {
  const config = await createMachine({ image: 'base', name: 'doomed', command: ['sleep', '100000'] });
  assert.equal((await startMachine(config.id)).status, 'running');
  const state = await readMachineState(config.id);
  assert.ok(state.supervisorPid && state.qemuPid);
  assert.ok(processMatches(state.qemuPid, `torpor-${config.id}`), 'QEMU runs');

  process.kill(state.supervisorPid, 'SIGKILL');
  // Nobody reaps here (this sandbox's PID 1 does not): processMatches counts a zombie as dead.
  const deadline = Date.now() + 10_000;
  while (processMatches(state.qemuPid, `torpor-${config.id}`) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  assert.ok(!processMatches(state.qemuPid, `torpor-${config.id}`), 'QEMU died with its supervisor');

  const seen = await effectiveState(config);
  assert.equal(seen.status, 'exited');
  assert.equal(seen.exitCode, 137);
  assert.match(seen.error ?? '', /supervisor .*died, and QEMU with it/);
  const listed = (await listMachines()).find((view) => view.config.id === config.id);
  assert.equal(listed?.state.status, 'exited', 'ps shows it exited, not running');

  // The next command understands it: the machine can be removed, and its tmpfs RAM goes with it.
  await removeMachine(config);
  await assert.rejects(access(machineFiles(config.id).memoryFile));
  await assert.rejects(access(machineFiles(config.id).directory));
});

test('a start whose starting process dies after QEMU was launched but before go fails cleanly: QEMU stopped, the reason in the state', async () => {
  // What startMachine does, stopped half way: the supervisor learns its machine, is told `launch`
  // (QEMU starts, the guest paused), and then its stdin ends as if its starter was killed with -9.
  const { spawn } = await import('node:child_process');
  const { supervisorCommand, supervisorEnvironment } = await import('./supervisor-process.ts');
  const { materializeForRestore } = await import('./restore-materialization.ts');
  const { prepareConfinement } = await import('../network/machine-confinement.ts');
  const { defaultNetworkPolicy } = await import('../network/policy.ts');
  const { writeMachineState } = await import('./machine-files.ts');
  const config = await createMachine({ image: 'base', name: 'orphaned-start', command: ['sleep', '100000'] });
  assert.ok(config.restore, 'machines start from the boot template here: a restore');
  await writeMachineState(config.id, { status: 'starting' });
  const supervisor = spawn(process.execPath, [...(await supervisorCommand()), '--standby'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: supervisorEnvironment(),
  });
  const supervisorExited = new Promise((resolve) => supervisor.once('exit', resolve));
  supervisor.stdin.write(`${config.id}\n`);
  await materializeForRestore(config);
  await prepareConfinement(config.id, { network: config.network, policy: config.networkPolicy ?? defaultNetworkPolicy() }, supervisor.pid!);
  supervisor.stdin.write('launch\n');
  let qemuPid: number | undefined;
  const deadline = Date.now() + 20_000;
  while (!qemuPid && Date.now() < deadline) {
    qemuPid = (await readMachineState(config.id)).qemuPid;
    if (!qemuPid) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assert.ok(qemuPid && processMatches(qemuPid, `torpor-${config.id}`), 'QEMU was launched before go');
  supervisor.stdin.end(); // the starter is gone
  await supervisorExited;
  const state = await readMachineState(config.id);
  assert.equal(state.status, 'failed');
  assert.match(state.error ?? '', /went away before its files were in place/);
  assert.ok(!processMatches(qemuPid, `torpor-${config.id}`), 'QEMU was stopped');
  await assert.rejects(access(machineFiles(config.id).memoryFile), 'its tmpfs RAM is gone');
  // The next start of the same machine works.
  assert.equal((await startMachine(config.id)).status, 'running');
  await removeMachine(config, { force: true });
});

test('a standby supervisor told something other than launch or go fails the start and says what it got', async () => {
  const { spawn } = await import('node:child_process');
  const { supervisorCommand, supervisorEnvironment } = await import('./supervisor-process.ts');
  const { writeMachineState } = await import('./machine-files.ts');
  const config = await createMachine({ image: 'base', name: 'confused-start', command: ['sleep', '100000'] });
  await writeMachineState(config.id, { status: 'starting' });
  const supervisor = spawn(process.execPath, [...(await supervisorCommand()), '--standby'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: supervisorEnvironment(),
  });
  const supervisorExited = new Promise((resolve) => supervisor.once('exit', resolve));
  supervisor.stdin.end(`${config.id}\n${'x'.repeat(10_000)}; rm -rf /\n`);
  await supervisorExited;
  const state = await readMachineState(config.id);
  assert.equal(state.status, 'failed');
  assert.match(state.error ?? '', /sent "x+" instead of "go"/);
  assert.equal(state.qemuPid, undefined, 'no QEMU was started');
  await removeMachine(config, { force: true });
});
