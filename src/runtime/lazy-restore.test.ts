import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, readdir, readlink, rename, stat } from 'node:fs/promises';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { createMachine, startMachine, removeMachine, effectiveState, killMachine } from './machines.ts';
import { snapshotMachine, restoreMachine, deleteSnapshot } from './snapshots.ts';
import { readSnapshot, collectGarbage, materializeSnapshot } from '../snapshot/snapshot-store.ts';
import { readLazyMemoryStatus, lazyMemorySupport } from '../snapshot/lazy-memory.ts';
import { chunkPath } from '../snapshot/chunk-operations.ts';
import { memoryDirectory, paths } from '../state/paths.ts';
import { type MachineConfig } from './machine-record.ts';
import { readMachineState, machineFiles } from './machine-files.ts';
import { shellIn } from './testing/guest-shell.ts';

// Lazy restore (userfaultfd pager preloaded into QEMU) against real QEMU machines: the guest's RAM
// arrives as it touches it, snapshots of such a machine stay complete, and a damaged store or a dead
// pager makes the machine fail with a clear error instead of running on wrong memory.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let origin: MachineConfig;

// 16 MiB of random data in guest RAM (tmpfs), plus a counter that keeps moving.
const workload = String.raw`
mkdir -p /tmp/data
i=0
while [ $i -lt 16 ]; do head -c 1048576 /dev/urandom > /tmp/data/$i; i=$((i+1)); done
echo ready > /tmp/ready
n=0
while true; do n=$((n+1)); echo $n > /tmp/counter; sleep 0.1; done
`;

const run = shellIn;

// Every block's checksum: reads all 16 MiB back, so every page of it must be right.
const checksums = 'cd /tmp/data && md5sum $(ls | sort -n) | cut -c1-32 | tr "\\n" " "';

const memoryOf = (config: MachineConfig) => join(memoryDirectory(), `${config.id}.ram`);

async function allocatedBytes(file: string): Promise<number> {
  return (await stat(file)).blocks * 512;
}

let expectedChecksums = '';

let savedUmask = 0;

before(async () => {
  home = await useTemporaryHome();
  // As under `torpor serve`: store files are 0600, and QEMU drops to its own uid after it starts, so
  // the pager must have opened the chunks it needs while QEMU was still privileged.
  savedUmask = process.umask(0o077);
  const support = await lazyMemorySupport();
  assert.ok(support.available, `lazy memory must be available on this host: ${support.reason}`);
  origin = await createMachine({ image: 'base', name: 'origin', command: ['sh', '-c', workload], memoryMiB: 256 });
  await startMachine(origin.id);
  for (let attempt = 0; attempt < 600; attempt++) {
    if ((await run(origin, 'cat /tmp/ready 2>/dev/null')) === 'ready') break;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  expectedChecksums = await run(origin, checksums);
  assert.equal(expectedChecksums.split(' ').filter(Boolean).length, 16);
  await snapshotMachine(origin, { name: 'origin@1' });
});

after(async () => {
  process.umask(savedUmask);
  await home.cleanup();
});

test('a lazy restore serves only what the guest touches, and the guest is intact', async (t) => {
  const restored = await restoreMachine('origin@1', { name: 'lazy' });
  try {
    const status = await readLazyMemoryStatus(memoryOf(restored));
    assert.ok(status, 'the restore was lazy (a page map exists)');
    assert.equal(status.state, 'serving');
    assert.ok(status.counters.faults > 0, 'the guest faulted its memory in');
    const manifest = await readSnapshot('origin@1');
    const stored = manifest.memory.chunks.filter((id) => id !== null).length;
    assert.ok(status.counters.servedChunks < stored, `served ${status.counters.servedChunks} of ${stored} chunks before anything read the data`);
    // What the RAM file holds depends on how long the guest has run since (it also writes new
    // pages), so it is reported, not asserted; the served-chunk count above is the lazy property.
    t.diagnostic(
      `RAM file holds ${await allocatedBytes(memoryOf(restored))} bytes after the restore; the snapshot has ${manifest.stats.nonZeroBytes} non-zero`,
    );
    // Reading the data faults it in, from the store or the template, each chunk verified.
    assert.equal(await run(restored, checksums), expectedChecksums);
    const after = (await readLazyMemoryStatus(memoryOf(restored)))!;
    assert.ok(after.counters.servedChunks > status.counters.servedChunks);
    assert.ok(after.counters.storeChunks > 0 && after.counters.templateChunks > 0, JSON.stringify(after.counters));
  } finally {
    await removeMachine(restored, { force: true });
  }
  // Nothing left behind in tmpfs.
  assert.deepEqual(
    (await readdir(memoryDirectory())).filter((name) => name.startsWith(restored.id)),
    [],
  );
});

test('never-faulted pages come from the parent snapshot: lazy restore, touch little, snapshot, eager restore', async () => {
  const restored = await restoreMachine('origin@1', { name: 'little' });
  try {
    await run(restored, 'echo touched > /tmp/little');
    const status = (await readLazyMemoryStatus(memoryOf(restored)))!;
    assert.ok(
      status.loaded.some((flag) => flag === 0),
      'some chunks were never served',
    );
    await snapshotMachine(restored, { name: 'little@1' });
  } finally {
    await removeMachine(restored, { force: true });
  }
  process.env.TORPOR_LAZY_MEMORY = '0';
  try {
    const eager = await restoreMachine('little@1', { name: 'eager' });
    try {
      assert.equal(await readLazyMemoryStatus(memoryOf(eager)), undefined, 'restored eagerly');
      assert.equal(await run(eager, 'cat /tmp/little'), 'touched');
      assert.equal(await run(eager, checksums), expectedChecksums);
      const counter = Number(await run(eager, 'cat /tmp/counter'));
      assert.ok(counter > 0);
    } finally {
      await removeMachine(eager, { force: true });
    }
  } finally {
    delete process.env.TORPOR_LAZY_MEMORY;
  }
});

test('a restore prefetches the chunks its parent machine touched in its first second', async () => {
  const restored = await restoreMachine('origin@1', { name: 'early' });
  try {
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await snapshotMachine(restored, { name: 'early@1' });
  } finally {
    await removeMachine(restored, { force: true });
  }
  const workingSet = ((await readSnapshot('early@1')).metadata as { workingSet?: number[] }).workingSet ?? [];
  assert.ok(workingSet.length > 0, 'the snapshot carries its working set');
  const again = await restoreMachine('early@1', { name: 'prefetched' });
  try {
    let status = (await readLazyMemoryStatus(memoryOf(again)))!;
    for (let attempt = 0; attempt < 100 && workingSet.some((chunk) => status.loaded[chunk] === 0); attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      status = (await readLazyMemoryStatus(memoryOf(again)))!;
    }
    assert.deepEqual(
      workingSet.filter((chunk) => status.loaded[chunk] === 0),
      [],
      'every chunk of the working set is in place',
    );
    assert.ok(status.counters.prefetchedChunks > 0, JSON.stringify(status.counters));
    assert.equal(await run(again, checksums), expectedChecksums);
  } finally {
    await removeMachine(again, { force: true });
  }
});

test('write tracking: a snapshot reads only the chunks written since the last one, and misses none', async () => {
  // The supervisor checks every chunk it calls unchanged against the RAM file before capturing.
  process.env.TORPOR_VERIFY_WRITE_TRACKING = '1';
  const restored = await restoreMachine('origin@1', { name: 'tracked' });
  delete process.env.TORPOR_VERIFY_WRITE_TRACKING;
  try {
    const first = await snapshotMachine(restored, { name: 'tracked@1' });
    const status = (await readLazyMemoryStatus(memoryOf(restored)))!;
    assert.ok(status.tracking, 'writes are tracked (userfaultfd write-protect on shared memory)');
    assert.equal(status.protectGeneration, 1);
    const loadedBytes = status.loaded.filter((flag) => flag === 1).length * status.chunkSize;
    await run(restored, 'head -c 3000000 /dev/urandom > /tmp/data/new; sync');
    const expectedNew = await run(restored, 'md5sum /tmp/data/new | cut -c1-32');
    const second = await snapshotMachine(restored, { name: 'tracked@2' });
    const after = (await readLazyMemoryStatus(memoryOf(restored)))!;
    assert.ok(after.writeFaults > 0);
    // Read from the RAM file: the chunks written (at least the 3 MB), not everything loaded.
    const scanned = Number(second.stats.memoryScannedBytes);
    const loadedNow = after.loaded.filter((flag) => flag === 1).length * after.chunkSize;
    assert.ok(scanned >= 3_000_000, `read ${scanned} bytes: at least the 3 MB written`);
    assert.ok(scanned < loadedNow, `read ${scanned} of ${loadedNow} loaded bytes (${loadedBytes} before the write)`);
    assert.ok(Number(first.stats.scannedBytes) > 0);
    process.env.TORPOR_LAZY_MEMORY = '0';
    try {
      const eager = await restoreMachine('tracked@2', { name: 'tracked-eager' });
      try {
        assert.equal(await run(eager, checksums.replace('$(ls | sort -n)', '$(ls | grep -v new | sort -n)')), expectedChecksums);
        assert.equal(await run(eager, 'md5sum /tmp/data/new | cut -c1-32'), expectedNew);
      } finally {
        await removeMachine(eager, { force: true });
      }
    } finally {
      delete process.env.TORPOR_LAZY_MEMORY;
    }
  } finally {
    await removeMachine(restored, { force: true });
  }
});

test('a few changed pages are stored as 4 KiB deltas; a lazy restore rebuilds them in the pager, also after gc', async () => {
  const restored = await restoreMachine('origin@1', { name: 'deltas' });
  let changedChecksums = '';
  try {
    await snapshotMachine(restored, { name: 'deltas@0' });
    // One 4 KiB page rewritten in the middle of each 1 MiB file: small changes in many chunks.
    await run(restored, 'for i in $(ls /tmp/data); do dd if=/dev/urandom of=/tmp/data/$i bs=4096 count=1 seek=100 conv=notrunc 2>/dev/null; done');
    changedChecksums = await run(restored, checksums);
    assert.notEqual(changedChecksums, expectedChecksums);
    const manifest = await snapshotMachine(restored, { name: 'deltas@1' }).then(() => readSnapshot('deltas@1'));
    const deltas = Object.keys(manifest.memory.deltaBases ?? {});
    assert.equal(manifest.version, 2);
    assert.ok(deltas.length >= 8, `${deltas.length} chunks stored as deltas`);
  } finally {
    await removeMachine(restored, { force: true });
  }
  const again = await restoreMachine('deltas@1', { name: 'deltas-again' });
  try {
    // Only the machine's pin holds the deltas' bases now: gc must keep them.
    await deleteSnapshot('deltas@0');
    await deleteSnapshot('deltas@1');
    await collectGarbage();
    assert.equal(await run(again, checksums), changedChecksums, 'every page of the data is back, deltas included');
    const status = (await readLazyMemoryStatus(memoryOf(again)))!;
    assert.equal(status.state, 'serving');
    assert.ok(status.counters.storeChunks > 0);
  } finally {
    await removeMachine(again, { force: true });
  }
});

test('a checkpoint that continues resumes the guest after its device state; what the guest writes during the capture does not tear the snapshot', async () => {
  const line = 'x'.repeat(200);
  process.env.TORPOR_VERIFY_WRITE_TRACKING = '1';
  const busy = await restoreMachine('origin@1', { name: 'busy' });
  delete process.env.TORPOR_VERIFY_WRITE_TRACKING;
  try {
    // An append-only log of numbered lines, written without pause: a capture that read some chunks
    // before and others after the guest moved on would restore a log with gaps, zeros or a size
    // that does not match its pages (or a guest kernel that trips over its own structures).
    await run(
      busy,
      `setsid sh -c 'echo $$ > /tmp/writer.pid; n=0; while true; do n=$((n+1)); echo "$n ${line}" >> /tmp/log; done' </dev/null >/dev/null 2>&1 &`,
    );
    await new Promise((resolve) => setTimeout(resolve, 500));
    await snapshotMachine(busy, { name: 'busy@0' });
    let copiedAny = false;
    for (let round = 1; round <= 3; round++) {
      const summary = await snapshotMachine(busy, { name: `busy@${round}` });
      assert.equal(summary.capturedBesideGuest, true, 'captured while the guest ran');
      assert.equal(summary.diskCapture, 'job', "QEMU's job copied the disk beside the guest");
      assert.ok(
        summary.pausedPhases && summary.pausedPhases.deviceStateMs > 0 && summary.pausedPhases.diskCopyMs === undefined,
        JSON.stringify(summary.pausedPhases),
      );
      assert.ok(summary.guestPausedMs! < summary.totalMs, `paused ${summary.guestPausedMs} of ${summary.totalMs} ms`);
      const status = (await readLazyMemoryStatus(memoryOf(busy)))!;
      copiedAny ||= status.copied.some((flag) => flag === 1);
    }
    assert.ok(copiedAny, 'the guest wrote chunks during a capture: they were copied before the write');
  } finally {
    await removeMachine(busy, { force: true });
  }
  const check = `kill $(cat /tmp/writer.pid); sleep 0.2; awk 'BEGIN { e = 1 } { if ($1 != e || length($2) != ${line.length}) { print "bad line " NR ": " substr($0, 1, 40); bad = 1; exit } e++ } END { if (!bad) print "lines " e - 1 }' /tmp/log`;
  for (const round of [1, 3]) {
    const again = await restoreMachine(`busy@${round}`, { name: `busy-again-${round}` });
    try {
      assert.match(await run(again, check), /^lines \d+$/, `busy@${round} holds a whole log`);
      assert.equal(await run(again, checksums), expectedChecksums);
    } finally {
      await removeMachine(again, { force: true });
    }
  }
});

test("a checkpoint that continues stores the disk as of its pause, with QEMU's copy job and with the paused copy; no copy file is left", async () => {
  for (const job of ['1', '0']) {
    process.env.TORPOR_VERIFY_WRITE_TRACKING = '1';
    process.env.TORPOR_DISK_COPY_JOB = job;
    const machine = await restoreMachine('origin@1', { name: `disk-${job}` });
    delete process.env.TORPOR_VERIFY_WRITE_TRACKING;
    delete process.env.TORPOR_DISK_COPY_JOB;
    try {
      // A counter in RAM (/tmp/n) and on the layer disk (/root/block, rewritten in place and synced
      // each round): whenever the guest stops, the disk holds the RAM's n or n - 1. The loop ends when
      // the hostname changes (a restore renames the machine), so a restored guest goes one round further at most.
      await run(
        machine,
        `printf '%08d' 0 > /root/block; sync; setsid sh -c 'h=$(hostname); n=0; while [ "$(hostname)" = "$h" ]; do n=$((n+1)); echo $n > /tmp/n; printf "%08d" $n | dd of=/root/block conv=notrunc 2>/dev/null; sync; done; echo ended > /tmp/ended' </dev/null >/dev/null 2>&1 &`,
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      const summary = await snapshotMachine(machine, { name: `disk-${job}@1` });
      assert.equal(summary.capturedBesideGuest, true);
      assert.equal(summary.diskCapture, job === '1' ? 'job' : 'copy');
      const phases = Object.keys(summary.pausedPhases ?? {});
      if (job === '1') assert.ok(phases.includes('diskJobMs') && !phases.includes('diskCopyMs'), phases.join());
      else assert.ok(phases.includes('diskCopyMs') && phases.includes('extentsMs'), phases.join());
      const liveAfter = Number(await run(machine, 'cat /tmp/n'));
      const machineDirectory = dirname(machineFiles(machine.id).layerDisk);
      assert.deepEqual(
        (await readdir(machineDirectory)).filter((file) => file.includes('.capture')),
        [],
        'no disk copy is left beside the layer',
      );

      // The disk as stored, read on the host (the restored guest would read its own page cache).
      const disk = join(home.home, `disk-${job}.img`);
      await materializeSnapshot(`disk-${job}@1`, { diskFile: disk });
      const onDisk = Number(execFileSync('debugfs', ['-R', 'cat /upper/root/block', disk], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
      const again = await restoreMachine(`disk-${job}@1`, { name: `disk-${job}-again` });
      try {
        let ended = '';
        for (let attempt = 0; attempt < 100 && ended !== 'ended'; attempt++) ended = await run(again, 'sleep 0.1; cat /tmp/ended 2>/dev/null');
        assert.equal(ended, 'ended', 'the restored loop saw its new hostname');
        const inMemory = Number(await run(again, 'cat /tmp/n'));
        assert.ok(
          inMemory > 0 && onDisk >= inMemory - 2 && onDisk <= inMemory,
          `RAM counter ${inMemory}, disk counter ${onDisk}: the disk is from another moment than the RAM`,
        );
        assert.ok(liveAfter > inMemory, `the guest wrote its disk during the capture (${inMemory} at the pause, ${liveAfter} after)`);
      } finally {
        await removeMachine(again, { force: true });
      }
    } finally {
      await removeMachine(machine, { force: true });
    }
  }
});

test('kill -9 of the supervisor or of QEMU during a checkpoint beside the guest: the machine is reported dead, nothing is stored, no disk copy is left', async () => {
  for (const victim of ['supervisor', 'qemu'] as const) {
    const machine = await restoreMachine('origin@1', { name: `crash-${victim}` });
    try {
      const state = await readMachineState(machine.id);
      const supervisorPid = state.supervisorPid!;
      // The job's target: an unlinked file only the supervisor (and QEMU) hold; sized like the layer while a job runs.
      let target = '';
      for (const fd of await readdir(`/proc/${supervisorPid}/fd`)) {
        const link = await readlink(`/proc/${supervisorPid}/fd/${fd}`).catch(() => '');
        if (link.includes('.capture-job') && link.endsWith('(deleted)')) target = `/proc/${supervisorPid}/fd/${fd}`;
      }
      assert.ok(target, 'the supervisor holds the unlinked copy target');
      await run(machine, 'head -c 4194304 /dev/urandom > /root/data; sync');
      const outcome = snapshotMachine(machine, { name: `crash-${victim}@1` }).then(
        () => 'stored',
        (error: Error) => error.message,
      );
      let started = false;
      for (let attempt = 0; attempt < 20_000 && !started; attempt++) {
        started = ((await stat(target).catch(() => undefined))?.size ?? 0) > 0;
        if (!started) await new Promise((resolve) => setImmediate(resolve));
      }
      assert.ok(started, 'the disk copy job started');
      process.kill(victim === 'supervisor' ? supervisorPid : state.qemuPid!, 'SIGKILL');
      assert.notEqual(await outcome, 'stored', 'a capture cut short is not stored');
      let after = await effectiveState(machine);
      for (let attempt = 0; attempt < 100 && after.status === 'running'; attempt++) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        after = await effectiveState(machine);
      }
      assert.equal(after.status, 'exited');
      assert.match(after.error ?? '', victim === 'supervisor' ? /supervisor \(pid \d+\) died/ : /QEMU killed by SIGKILL/);
      await assert.rejects(readSnapshot(`crash-${victim}@1`), /no snapshot|not found|does not exist/i);
      const directory = dirname(machineFiles(machine.id).layerDisk);
      assert.deepEqual(
        (await readdir(directory)).filter((file) => file.includes('capture')),
        [],
        'no disk copy is left beside the layer',
      );
    } finally {
      await killMachine(machine);
      await removeMachine(machine, { force: true });
    }
  }
  // The store is whole: a checkpoint of a new machine of the same snapshot is taken and restores.
  const again = await restoreMachine('origin@1', { name: 'after-crash' });
  try {
    const summary = await snapshotMachine(again, { name: 'after-crash@1' });
    assert.equal(summary.diskCapture, 'job');
  } finally {
    await removeMachine(again, { force: true });
  }
  const restored = await restoreMachine('after-crash@1', { name: 'after-crash-again' });
  try {
    assert.equal(await run(restored, checksums), expectedChecksums);
  } finally {
    await removeMachine(restored, { force: true });
  }
});

test('a running lazy machine keeps its chunks through removal of its snapshot and gc', async () => {
  await snapshotMachine(origin, { name: 'origin@doomed' });
  const restored = await restoreMachine('origin@doomed', { name: 'orphan' });
  try {
    await deleteSnapshot('origin@doomed');
    await collectGarbage();
    // The snapshot is gone, yet every chunk the machine still faults in is there.
    assert.equal(await run(restored, checksums), expectedChecksums);
  } finally {
    await removeMachine(restored, { force: true });
  }
  // Once the machine is gone its pin is too: gc frees what only that snapshot held.
  const { removedChunks } = await collectGarbage();
  assert.ok(removedChunks >= 0);
  assert.ok(!(await readdir(join(paths.snapshots(), 'pins'))).includes(`${restored.id}.json`), 'its pin went with it');
});

test('a chunk that does not match its hash stops the machine with a clear error; the store keeps the rest', async () => {
  const manifest = await readSnapshot('origin@1');
  const chunks = join(paths.snapshots(), 'chunks');
  // Every stored chunk the data needs is replaced by another valid chunk file: zstd decodes it
  // happily, only the hash check can tell.
  const template = await readSnapshot(
    (await readdir(join(paths.snapshots(), 'manifests'))).map((name) => name.slice(0, -5)).find((name) => name.startsWith('template-'))!,
  );
  const victims = manifest.memory.chunks.filter((id, index): id is string => id !== null && template.memory.chunks[index] !== id);
  assert.ok(victims.length > 1);
  const donor = chunkPath(chunks, victims[0]!);
  for (const id of victims.slice(1)) {
    await rename(chunkPath(chunks, id), `${chunkPath(chunks, id)}.saved`);
    await copyFile(donor, chunkPath(chunks, id));
  }
  try {
    let failure = '';
    try {
      const restored = await restoreMachine('origin@1', { name: 'corrupt' });
      // Up and running on the chunks it needed so far: reading the data must end it.
      await run(restored, checksums).catch(() => '');
      for (let attempt = 0; attempt < 100; attempt++) {
        const state = await effectiveState(restored);
        if (state.status === 'exited' || state.status === 'failed') {
          failure = state.error ?? '';
          break;
        }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await removeMachine(restored, { force: true });
    } catch (error) {
      failure = (error as Error).message;
    }
    assert.match(failure, /does not match its hash/);
  } finally {
    for (const id of victims.slice(1)) await rename(`${chunkPath(chunks, id)}.saved`, chunkPath(chunks, id));
  }
  // The store is unharmed: the snapshot still restores whole.
  const target = join(memoryDirectory(), `check-${process.pid}.ram`);
  await materializeSnapshot(manifest, { memoryFile: target });
  const { rm } = await import('node:fs/promises');
  await rm(target, { force: true });
});

test('the pager dies with QEMU: the machine is reported dead, its files go, the snapshot restores again', async () => {
  const restored = await restoreMachine('origin@1', { name: 'victim' });
  const state = await readMachineState(restored.id);
  process.kill(state.qemuPid!, 'SIGKILL');
  let after = await effectiveState(restored);
  for (let attempt = 0; attempt < 100 && after.status === 'running'; attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    after = await effectiveState(restored);
  }
  assert.equal(after.status, 'exited');
  assert.match(after.error ?? '', /QEMU killed by SIGKILL/);
  assert.deepEqual(
    (await readdir(memoryDirectory())).filter((name) => name.startsWith(restored.id)),
    [],
  );
  await killMachine(restored);
  await removeMachine(restored, { force: true });
  const again = await restoreMachine('origin@1', { name: 'again' });
  try {
    assert.equal(await run(again, checksums), expectedChecksums);
  } finally {
    await removeMachine(again, { force: true });
  }
});
