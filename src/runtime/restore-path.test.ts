import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { access, readFile, writeFile, rename, copyFile } from 'node:fs/promises';
import { spawn, type ChildProcessByStdio } from 'node:child_process';
import type { Writable } from 'node:stream';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, removeMachine, effectiveState, listMachines } from './machines.ts';
import { snapshotMachine, restoreMachine } from './snapshots.ts';
import { createMachineFromSnapshot } from './machine-creation.ts';
import { readMachineState, writeMachineState, machineFiles } from './machine-files.ts';
import { restoreSources } from './restore-materialization.ts';
import { prepareLazyRestore } from './lazy-restore.ts';
import { supervisorCommand, supervisorEnvironment } from './supervisor-process.ts';
import { prepareConfinement } from '../network/machine-confinement.ts';
import { defaultNetworkPolicy } from '../network/policy.ts';
import { createSparse, materializeSnapshot, readSnapshot } from '../snapshot/snapshot-store.ts';
import { lazyMemorySupport } from '../snapshot/lazy-memory.ts';
import { chunkPath } from '../snapshot/chunk-operations.ts';
import { paths } from '../state/paths.ts';
import { runtimeRoot } from '../network/uid-claims.ts';
import { processMatches } from '../util/process-identity.ts';
import type { MachineConfig } from './machine-record.ts';
import { shellIn } from './testing/guest-shell.ts';

// The restore path's order against real QEMU: the starter writes the device state first and says
// `state` (QEMU loads it while the disk layer is written), and only `go` lets the guest run. These
// tests drive a supervisor the way machine-start.ts does, stopping between the steps.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let origin: MachineConfig;

// A file on the disk layer (the overlay's upper layer), synced, then read back from the disk again
// and again (page cache dropped each time): a guest that ran before its layer's contents were
// written would read other bytes and say BAD.
const diskReader = String.raw`
head -c 1048576 /dev/urandom > /root/probe
sync
expected=$(md5sum < /root/probe)
echo ready > /root/ready
sync
while true; do
  echo 3 > /proc/sys/vm/drop_caches
  got=$(md5sum < /root/probe 2>&1)
  if [ "$got" = "$expected" ]; then echo ok; else echo "BAD $got"; fi
  sleep 0.05
done
`;

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

before(async () => {
  home = await useTemporaryHome();
  const support = await lazyMemorySupport();
  assert.ok(support.available, `lazy memory must be available on this host: ${support.reason}`);
  origin = await createMachine({ image: 'base', name: 'reader', command: ['sh', '-c', diskReader], memoryMiB: 256 });
  await startMachine(origin.id);
  for (let attempt = 0; attempt < 600; attempt++) {
    if ((await shellIn(origin, 'cat /root/ready 2>/dev/null')) === 'ready') break;
    await sleep(200);
  }
  await snapshotMachine(origin, { name: 'reader@1', stop: true });
});

after(async () => {
  await home.cleanup();
});

/** A supervisor started as machine-start.ts starts one, for a machine restoring `reader@1`, driven by hand. */
async function startByHand(name: string): Promise<{
  config: MachineConfig;
  supervisor: ChildProcessByStdio<Writable, null, null>;
  exited: Promise<unknown>;
  manifest: Awaited<ReturnType<typeof readSnapshot>>;
}> {
  const manifest = await readSnapshot('reader@1');
  const config = await createMachineFromSnapshot(manifest, { name });
  await writeMachineState(config.id, { status: 'starting' });
  const supervisor = spawn(process.execPath, [...(await supervisorCommand()), '--standby'], {
    stdio: ['pipe', 'ignore', 'ignore'],
    env: supervisorEnvironment(),
  });
  const exited = new Promise((resolve) => supervisor.once('exit', resolve));
  supervisor.stdin.write(`${config.id}\n`);
  const files = machineFiles(config.id);
  const { base } = await restoreSources(config, manifest);
  assert.ok(await prepareLazyRestore(manifest, config.id, files.memoryFile, base), 'a lazy restore');
  await createSparse(files.layerDisk, manifest.disk!.size);
  await prepareConfinement(config.id, { network: config.network, policy: config.networkPolicy ?? defaultNetworkPolicy() }, supervisor.pid!);
  return { config, supervisor, exited, manifest };
}

/** Resolves once QEMU has loaded the device state: its migration socket appeared, then went (migration.ts removes it when done). */
async function deviceStateLoaded(config: MachineConfig): Promise<void> {
  const socket = join(runtimeRoot(), 'qemu', config.id, 'migration.sock');
  const exists = () =>
    access(socket).then(
      () => true,
      () => false,
    );
  let seen = false;
  for (const deadline = Date.now() + 30_000; Date.now() < deadline; await sleep(5)) {
    if (await exists()) seen = true;
    else if (seen) return;
  }
  assert.fail('QEMU did not load the device state within 30 s');
}

async function settled(config: MachineConfig): Promise<Awaited<ReturnType<typeof readMachineState>>> {
  for (const deadline = Date.now() + 60_000; Date.now() < deadline; await sleep(50)) {
    const state = await readMachineState(config.id);
    if (state.status !== 'starting') return state;
  }
  assert.fail('the start did not settle within 60 s');
}

test('a restored guest does not run before its disk layer is complete: with the device state loaded early, it reads its disk as snapshotted', async () => {
  const { config, supervisor, manifest } = await startByHand('reader-ordered');
  const files = machineFiles(config.id);
  await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
  supervisor.stdin.write('launch\nstate\n');
  await deviceStateLoaded(config);
  // The layer is still all holes here. A guest let run now would read zeros for its probe file.
  await sleep(1500);
  assert.equal((await readMachineState(config.id)).status, 'starting', 'not running before go');
  await materializeSnapshot(manifest, { diskFile: files.layerDisk, diskFileCreated: true });
  supervisor.stdin.end('go\n');
  const state = await settled(config);
  assert.equal(state.status, 'running', state.error);
  assert.ok(state.startTimings?.deviceStateIn !== undefined && state.startTimings.goSaid !== undefined);
  assert.ok(state.startTimings.deviceStateIn <= state.startTimings.goSaid, 'the device state was loaded before go');
  let log = '';
  for (const deadline = Date.now() + 30_000; Date.now() < deadline && (log.match(/ok/g)?.length ?? 0) < 5; await sleep(200))
    log = await readFile(files.processLog, 'utf8').catch(() => '');
  assert.ok((log.match(/ok/g)?.length ?? 0) >= 5, `the restored reader goes on reading: ${log.slice(-400)}`);
  assert.doesNotMatch(log, /BAD/, 'every read after the restore saw the snapshot’s disk');
  await removeMachine(config, { force: true });
});

test('a truncated device state fails the start cleanly: QEMU stopped, RAM and page map gone, the reason in the state', async () => {
  const { config, supervisor, exited, manifest } = await startByHand('reader-truncated');
  const files = machineFiles(config.id);
  await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
  const whole = await readFile(files.deviceState);
  await writeFile(files.deviceState, whole.subarray(0, Math.floor(whole.length / 2)));
  supervisor.stdin.write('launch\nstate\n');
  await materializeSnapshot(manifest, { diskFile: files.layerDisk, diskFileCreated: true });
  supervisor.stdin.end('go\n');
  const state = await settled(config);
  await exited;
  assert.equal(state.status, 'failed');
  assert.match(state.error ?? '', /migration|device state|QEMU exited/i);
  if (state.qemuPid) assert.ok(!processMatches(state.qemuPid, `torpor-${config.id}`), 'QEMU was stopped');
  await assert.rejects(access(files.memoryFile), 'its tmpfs RAM is gone');
  await assert.rejects(access(`${files.memoryFile}.map`), 'its page map is gone');
  const listed = (await listMachines()).find((view) => view.config.id === config.id);
  assert.equal(listed?.state.status, 'failed', `ps says failed: ${JSON.stringify(listed?.state)}`);
  await removeMachine(config, { force: true });
});

test('a device state whose stored chunk is damaged: restore refuses before QEMU gets it, and leaves nothing half-made', async () => {
  const manifest = await readSnapshot('reader@1');
  const chunks = join(paths.snapshots(), 'chunks');
  const victim = chunkPath(chunks, manifest.deviceState);
  const donor = chunkPath(
    chunks,
    manifest.memory.chunks.find((id): id is string => id !== null && id !== manifest.deviceState)!,
  );
  await rename(victim, `${victim}.saved`);
  await copyFile(donor, victim);
  try {
    await assert.rejects(restoreMachine('reader@1', { name: 'reader-damaged' }), /hash|corrupt|damaged/i);
  } finally {
    await rename(`${victim}.saved`, victim);
  }
  const listed = (await listMachines()).find((view) => view.config.name === 'reader-damaged');
  assert.ok(listed, 'the machine record is there, to inspect and remove');
  assert.equal(listed.state.status, 'failed');
  assert.equal(listed.state.qemuPid, undefined, 'no QEMU was started');
  const files = machineFiles(listed.config.id);
  await assert.rejects(access(files.memoryFile), 'no tmpfs RAM left');
  await assert.rejects(access(`${files.memoryFile}.map`), 'no page map left');
  await removeMachine(listed.config, { force: true });
  // The store is unharmed: the snapshot restores.
  const again = await restoreMachine('reader@1', { name: 'reader-after-damage' });
  assert.equal((await effectiveState(again)).status, 'running');
  await removeMachine(again, { force: true });
});

test('kill -9 of the supervisor after the device state was loaded, before go: QEMU goes with it and ps says so', async () => {
  const { config, supervisor, exited, manifest } = await startByHand('reader-killed');
  const files = machineFiles(config.id);
  await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
  supervisor.stdin.write('launch\nstate\n');
  await deviceStateLoaded(config);
  // (recorded beside the load: wait for the write)
  let { qemuPid } = await readMachineState(config.id);
  for (const deadline = Date.now() + 5000; !qemuPid && Date.now() < deadline; await sleep(10)) ({ qemuPid } = await readMachineState(config.id));
  assert.ok(qemuPid && processMatches(qemuPid, `torpor-${config.id}`), 'QEMU runs, paused');
  supervisor.kill('SIGKILL');
  await exited;
  for (const deadline = Date.now() + 10_000; processMatches(qemuPid, `torpor-${config.id}`) && Date.now() < deadline;) await sleep(50);
  assert.ok(!processMatches(qemuPid, `torpor-${config.id}`), 'QEMU died with its supervisor');
  const seen = await effectiveState(config);
  assert.ok(seen.status === 'exited' || seen.status === 'failed', `ps does not call it ${seen.status}`);
  assert.match(seen.error ?? '', /supervisor/);
  await removeMachine(config, { force: true });
  await assert.rejects(access(files.memoryFile));
  await assert.rejects(access(files.directory));
});

test('through a pool with a standby QEMU: the restored guest reads its disk as snapshotted', async () => {
  const { createSupervisorPool } = await import('./machines.ts');
  const { standbySlot } = await import('./standby-qemu.ts');
  const { readdir, stat } = await import('node:fs/promises');
  const { memoryDirectory } = await import('../state/paths.ts');
  const pool = createSupervisorPool(1);
  try {
    // The first restore through the pool tells its spares the shape; the next spare holds a standby QEMU of it.
    await removeMachine(await restoreMachine('reader@1', { name: 'reader-shape', pool }), { force: true });
    let standbyUp = false;
    for (const deadline = Date.now() + 30_000; !standbyUp && Date.now() < deadline; await sleep(100)) {
      for (const name of await readdir(memoryDirectory()).catch(() => [])) {
        const match = /^standby-(\d+)\.ram$/.exec(name);
        if (
          match &&
          (await stat(standbySlot(Number(match[1])).qmpSocket).then(
            () => true,
            () => false,
          ))
        )
          standbyUp = true;
      }
    }
    assert.ok(standbyUp, 'a standby QEMU is waiting');
    const restored = await restoreMachine('reader@1', { name: 'reader-adopted', pool });
    const state = await readMachineState(restored.id);
    assert.ok(state.startTimings?.standbyAdopted !== undefined, `the restore adopted the standby: ${JSON.stringify(state.startTimings)}`);
    // The device state reached QEMU only after the adoption (QEMU is root until its uid switch there).
    assert.ok(state.startTimings.deviceStateIn! >= state.startTimings.standbyAdopted, 'the device state was loaded after the adoption');
    let log = '';
    for (const deadline = Date.now() + 30_000; Date.now() < deadline && (log.match(/ok/g)?.length ?? 0) < 5; await sleep(200))
      log = await readFile(machineFiles(restored.id).processLog, 'utf8').catch(() => '');
    assert.ok((log.match(/ok/g)?.length ?? 0) >= 5, `the restored reader goes on reading: ${log.slice(-400)}`);
    assert.doesNotMatch(log, /BAD/);
    await removeMachine(restored, { force: true });
  } finally {
    await pool.close();
  }
});
