import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { openContextLog, type ContextLog } from '../context/index.ts';
import { SessionManager } from '../session/session-manager.ts';
import { readMachineConfig, readMachineState, machineFiles } from './machine-files.ts';
import { processMatches } from '../util/process-identity.ts';
import { replyText, sendWithWakeSteps, shellAgentSpec } from '../session/testing/shell-agent.ts';
import { startStandbyQemu, standbyRequestOf, standbySlot, type StandbyQemu, type StandbyRequest } from './standby-qemu.ts';
import { prepareLazyMemory, releaseLazyMemoryPin, removeLazyMemoryFiles } from '../snapshot/lazy-memory.ts';
import { readSnapshot } from '../snapshot/snapshot-store.ts';
import { claimDirectory } from '../network/uid-claims.ts';
import { shellIn } from './testing/guest-shell.ts';
import { createSupervisorPool, killMachine, listMachines } from './machines.ts';
import { restoreMachine } from './snapshots.ts';
import { paths } from '../state/paths.ts';
import { until } from './testing/until.ts';

// Real QEMU throughout: a session's wake adopts the spare's pre-started QEMU and continues exactly;
// another shape is not adopted; a spare killed with -9 leaves nothing; the pager refuses bad maps.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let memoryDirectory: string;
let log: ContextLog;
let manager: SessionManager;
let sessionId: string;
/** the first machine's standby request, for the pager tests (a shape this host can start) */
let request: StandbyRequest;

const spec = shellAgentSpec(1);
async function waitForState(id: string, state: string): Promise<void> {
  await until(`session ${id} to be ${state}`, () => manager.get(id).state === state || undefined);
}

/** The pid of the spare supervisor holding a standby QEMU whose QMP is up, and that QEMU's pid. */
async function standbyReady(): Promise<{ supervisor: number; qemu: number }> {
  return until('a standby QEMU', async () => {
    for (const name of await readdir(memoryDirectory)) {
      const match = /^standby-(\d+)\.ram$/.exec(name);
      if (!match) continue;
      const qemu = qemuOf(`torpor-standby-${match[1]}`);
      const socketUp = await stat(standbySlot(Number(match[1])).qmpSocket).then(
        () => true,
        () => false,
      );
      if (qemu && socketUp) return { supervisor: Number(match[1]), qemu };
    }
    return undefined;
  });
}

function qemuOf(name: string): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/cmdline`, 'utf8').includes(`${name},`) && processMatches(Number(entry), name)) return Number(entry);
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}

/** Whether `text` is in the data extents of a sparse file (a layer disk of a few MiB of data in a large file). */
async function fileHolds(path: string, text: string): Promise<boolean> {
  const { dataExtents } = await import('../snapshot/extents.ts');
  const handle = await open(path, 'r');
  try {
    for (const extent of await dataExtents(path)) {
      const buffer = Buffer.alloc(extent.end - extent.start);
      await handle.read(buffer, 0, buffer.length, extent.start);
      if (buffer.includes(text)) return true;
    }
    return false;
  } finally {
    await handle.close();
  }
}

/** A uid claim's content ('' when it went meanwhile: the claims directory is the host's). */
function claimText(name: string): string {
  try {
    return readFileSync(join(claimDirectory(), name), 'utf8');
  } catch {
    return '';
  }
}

const wake = (id: string, content: string) => sendWithWakeSteps(manager, id, content);

before(async () => {
  memoryDirectory = await mkdtemp('/dev/shm/tp-standby-');
  process.env.TORPOR_MEMORY_DIR = memoryDirectory;
  home = await useTemporaryHome();
  log = await openContextLog({ stateDirectory: home.home });
  manager = new SessionManager({ log, tickMs: 100 });
  sessionId = (await manager.create(spec, { name: 'chat' })).id;
});

after(async () => {
  try {
    await manager.close();
    await log.close();
    await home.cleanup();
    // Spares end when the pool closes; their standby QEMUs with them, and they remove their slots.
    await until(
      'the spares to clean up',
      async () => ((await readdir(memoryDirectory)).some((name) => name.startsWith('standby-')) ? undefined : true),
      10_000,
    );
  } finally {
    await rm(memoryDirectory, { recursive: true, force: true });
  }
});

test('a wake adopts the standby QEMU and the session continues exactly, in its own uid', async () => {
  const first = await manager.send(sessionId, 'hello');
  assert.equal(replyText(first.events), 'turn 1: hello; notes 1; child yes');
  const config = await readMachineConfig(manager.get(sessionId).machineId!);
  request = standbyRequestOf(config, (await stat(machineFiles(config.id).layerDisk)).size)!;
  assert.ok(request, 'a session machine has a standby shape');
  // A word found nowhere else, to look for in the machine's layer file.
  const marker = `again${Date.now().toString(36)}x${process.pid}`;
  for (const [turn, content] of [
    [2, marker],
    [3, 'once more'],
  ] as const) {
    await waitForState(sessionId, 'hibernated');
    const standby = await standbyReady();
    const { reply, steps } = await wake(sessionId, content);
    // Memory (the notes counter), files and the child process all came back.
    assert.equal(reply, `turn ${turn}: ${content}; notes ${turn}; child yes`);
    assert.ok(steps.includes('supervisor: standbyAdopted'), `the wake adopted a standby QEMU: ${steps.join(', ')}`);
    const machineId = manager.get(sessionId).machineId!;
    const state = await readMachineState(machineId);
    assert.equal(state.qemuName, `torpor-standby-${standby.supervisor}`);
    assert.ok(processMatches(state.qemuPid, state.qemuName!), 'the state names the adopted QEMU');
    if (process.getuid?.() === 0) {
      // QEMU dropped root for the machine's own uid (the one its network rules match), not the held-back stand-in.
      const status = await readFile(`/proc/${state.qemuPid}/status`, 'utf8');
      assert.equal(/^Uid:\s+(\d+)/m.exec(status)?.[1], String(state.networkUid));
    }
    // Its descriptor table was grown while QEMU was one thread (the pager's constructor): the map's
    // hundreds of chunk opens did not grow it with threads running (an RCU grace period each time).
    const limits = await readFile(`/proc/${state.qemuPid}/limits`, 'utf8');
    const openFiles = Number(/^Max open files\s+(\d+)/m.exec(limits)?.[1]);
    const tableSize = Number(/^FDSize:\s+(\d+)/m.exec(await readFile(`/proc/${state.qemuPid}/status`, 'utf8'))?.[1]);
    assert.ok(tableSize >= Math.min(8192, openFiles), `QEMU's descriptor table holds ${tableSize} (open files limit ${openFiles})`);
    // Adopted, the slot's files are the machine's: none is left under the slot's names.
    assert.equal(
      await stat(standbySlot(standby.supervisor).memoryFile).then(
        () => true,
        () => false,
      ),
      false,
    );
    // The guest's disk writes reach the machine's own layer file (QEMU's disk descriptors were moved
    // to it), which its next snapshot captures: not the standby's.
    if (turn === 2) {
      await shellIn(await readMachineConfig(machineId), 'sync');
      assert.ok(await fileHolds(machineFiles(machineId).layerDisk, marker), "the guest's write is in the machine's layer file");
    }
  }
});

test('an adopted QEMU still dies with its supervisor (kill -9), after its switch to the machine uid', async () => {
  await waitForState(sessionId, 'hibernated');
  const pool = createSupervisorPool(1);
  try {
    pool.preStart(request);
    await standbyReady();
    const config = await restoreMachine(manager.get(sessionId).snapshot!, { pool });
    const state = await readMachineState(config.id);
    assert.match(state.qemuName ?? '', /^torpor-standby-\d+$/, 'the restore adopted a standby QEMU');
    process.kill(state.supervisorPid!, 'SIGKILL');
    await until('the adopted QEMU to die with its supervisor', () => (processMatches(state.qemuPid, state.qemuName!) ? undefined : true), 10_000);
    await killMachine(config);
    const left = (await readdir(memoryDirectory)).filter((name) => name.startsWith(config.id));
    assert.deepEqual(left, [], 'nothing of it is left in tmpfs once it is killed');
  } finally {
    await pool.close();
  }
});

test('a restore that fails after adopting ends that QEMU and leaves the machine failed with the reason', async () => {
  await waitForState(sessionId, 'hibernated');
  // The snapshot's device state is a stored chunk that verifies, but is not a device state (one of
  // its RAM chunks): the restore gets as far as QEMU loading it, well after the adoption.
  const snapshot = manager.get(sessionId).snapshot!;
  const manifestFile = join(paths.snapshots(), 'manifests', `${snapshot}.json`);
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as { deviceState: string; memory: { chunks: (string | null)[] } };
  manifest.deviceState = manifest.memory.chunks.find((id) => id !== null)!;
  await writeFile(manifestFile, JSON.stringify(manifest));
  // Its own pool (the session manager would recover the session and remove the failed machine).
  const pool = createSupervisorPool(1);
  try {
    pool.preStart(request);
    await standbyReady();
    await assert.rejects(restoreMachine(snapshot, { pool }));
  } finally {
    await pool.close();
  }
  const failed = (await listMachines()).filter(({ state }) => state.status === 'failed');
  assert.equal(failed.length, 1, 'the restore failed');
  const machine = failed[0]!;
  assert.match(machine.state.qemuName ?? '', /^torpor-standby-\d+$/, 'it had adopted a standby QEMU');
  // The supervisor's reason (QEMU refused the device state: it reset the migration socket, or exited
  // during the load), with the console log to read.
  assert.match(machine.state.error ?? '', /ECONNRESET|migrat|device state|QEMU exited/i, `the reason: ${machine.state.error}`);
  assert.match(machine.state.error ?? '', /console log: /);
  await until('its QEMU to end', () => (processMatches(machine.state.qemuPid, machine.state.qemuName!) ? undefined : true), 10_000);
  const standbyPid = machine.state.qemuName!.replace('torpor-standby-', '');
  const left = (await readdir(memoryDirectory)).filter((name) => name.startsWith(machine.config.id) || name.startsWith(`standby-${standbyPid}.`));
  assert.deepEqual(left, [], 'nothing of it is left in tmpfs');
  assert.deepEqual(
    (await readdir(claimDirectory()).catch(() => [] as string[])).filter((name) => claimText(name).includes(machine.config.id)),
    [],
    'its uid claim is released',
  );
  await killMachine(machine.config);
});

test('a standby QEMU of another shape is not adopted, and is ended', async () => {
  await waitForState(sessionId, 'hibernated');
  const standby = await standbyReady();
  // 384 MiB: another shape. Its first start restores the boot template into a new machine.
  const other = (await manager.create({ ...spec, memoryMiB: 384 }, { name: 'bigger' })).id;
  const { reply, steps } = await wake(other, 'hello');
  assert.equal(reply, 'turn 1: hello; notes 1; child yes');
  assert.ok(!steps.includes('supervisor: standbyAdopted'), 'no adoption across shapes');
  const state = await readMachineState(manager.get(other).machineId!);
  assert.equal(state.qemuName, undefined);
  await until('the unused standby QEMU to end', () => (qemuOf(`torpor-standby-${standby.supervisor}`) === undefined ? true : undefined));
  await manager.delete(other);
});

test('kill -9 of a spare supervisor leaves no QEMU, RAM file, slot or uid claim', async () => {
  const standby = await standbyReady();
  process.kill(standby.supervisor, 'SIGKILL');
  await until(
    'the standby QEMU to die with its supervisor',
    () => (processMatches(standby.qemu, `torpor-standby-${standby.supervisor}`) ? undefined : true),
    10_000,
  );
  const slot = standbySlot(standby.supervisor);
  await until(
    'the slot files to go',
    async () => {
      const left = await Promise.all(
        [slot.memoryFile, slot.pagerSocket, slot.directory].map((path) =>
          stat(path).then(
            () => path,
            () => undefined,
          ),
        ),
      );
      return left.every((path) => path === undefined) ? true : undefined;
    },
    10_000,
  );
  // (The claims directory is the host's: other machines' claims come and go meanwhile.)
  const claimsOfIt = (await readdir(claimDirectory()).catch(() => [] as string[])).filter((name) =>
    claimText(name).includes(`"supervisorPid":${standby.supervisor}`),
  );
  assert.deepEqual(claimsOfIt, [], 'a standby holds no uid claim');
});

test('the pager in map-later mode refuses a bad map request and QEMU exits, leaving nothing', async () => {
  const map = join(memoryDirectory, 'hostile.map');
  await writeFile(map, Buffer.alloc(5000, 0x41));
  const layer = standbySlot(process.pid).layerDisk;
  for (const line of [
    'garbage\n',
    `map 1900000001\trelative/path\t${layer}\n`,
    `map 0\t/etc/passwd\t${layer}\n`, // root is never kept
    `map 1900000001\t${map}\t${layer}\n`, // not a page map
    `map 1900000001\t${'/x'.repeat(2000)}\t${layer}\n`, // longer than a path may be
    `map 1900000001\t/etc/passwd\t\n`, // no layer for a standby that has one
    `map 1900000001\t/etc/passwd\t/etc/passwd\t\n`, // a field too many
    `map -\t/nonexistent\t${layer}\n`, // the QEMU was started to drop root (when tests run as root)
  ]) {
    await expectRefusal(line);
  }
});

/** Starts a standby QEMU, sends it `line` (possibly after `prepare`), and checks that its pager refuses it: no "ok", exit 70, nothing left. */
async function expectRefusal(line: string | ((standby: StandbyQemu) => Promise<string>), expected = /torpor lazy memory: /): Promise<void> {
  const standby = await startStandbyQemu(request);
  assert.ok(standby, 'a standby QEMU starts');
  const text = typeof line === 'string' ? line : await line(standby);
  const reply = await new Promise<string>((resolve) => {
    const socket = connect(standby.slot.pagerSocket);
    let answer = '';
    socket.on('connect', () => socket.write(text));
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString()));
    socket.on('close', () => resolve(answer));
    socket.on('error', () => resolve(answer));
  });
  assert.equal(reply, '', `no "ok" for ${JSON.stringify(text.slice(0, 60))}`);
  const exit = await standby.vm.exited;
  assert.equal(exit.code, 70, `QEMU ended itself for ${JSON.stringify(text.slice(0, 60))}: ${exit.message}`);
  assert.match(exit.message, expected);
  await standby.discard();
  for (const path of [standby.slot.memoryFile, standby.slot.pagerSocket, standby.slot.directory])
    assert.equal(
      await stat(path).then(
        () => true,
        () => false,
      ),
      false,
      `${path} is gone`,
    );
}

test('the pager refuses a real page map of another RAM file, and a layer of another size', async () => {
  // The session's snapshot (hibernated): its RAM chunks make a real page map.
  await waitForState(sessionId, 'hibernated');
  const manifest = await readSnapshot(manager.get(sessionId).snapshot!);
  const other = join(memoryDirectory, 'other.ram');
  const smallLayer = join(memoryDirectory, 'small.layer');
  await writeFile(smallLayer, Buffer.alloc(4096));
  try {
    // A well-formed map that passes every check of its own, for a RAM file QEMU did not map.
    await expectRefusal(async (standby) => {
      const files = await prepareLazyMemory(manifest, { memoryFile: other, pinKey: 'standby-test' });
      return `map 1900000001\t${files.mapFile}\t${standby.slot.layerDisk}\n`;
    }, /another RAM file/);
    // The map of the standby's own RAM file, but a layer disk of another size than QEMU opened.
    await expectRefusal(async (standby) => {
      const files = await prepareLazyMemory(manifest, { memoryFile: standby.slot.memoryFile, pinKey: 'standby-test' });
      return `map 1900000001\t${files.mapFile}\t${smallLayer}\n`;
    }, /differs in size/);
  } finally {
    await removeLazyMemoryFiles(other);
    await rm(other, { force: true });
    await rm(smallLayer, { force: true });
    await removeLazyMemoryFiles(standbySlot(process.pid).memoryFile);
    await releaseLazyMemoryPin('standby-test');
  }
});
