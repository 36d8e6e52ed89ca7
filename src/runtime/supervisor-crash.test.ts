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
