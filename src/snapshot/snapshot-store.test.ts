import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  captureSnapshot,
  collectGarbage,
  listSnapshots,
  materializeSnapshot,
  readMemoryRange,
  readSnapshot,
  removeSnapshot,
  storeUsage,
  stopSnapshotWorkers,
  type SnapshotManifest,
} from './snapshot-store.ts';
import { chunkPath } from './chunk-operations.ts';
import { parseSeekTable } from './seekable-zstd.ts';
import { sameFileContent, changePages, chunksTouched, writeSyntheticFile, type SyntheticFile } from './testing/synthetic-machine.ts';
import { TorporError } from '../util/errors.ts';

const MiB = 1024 * 1024;
let home: string;
let shm: string;
let ram: SyntheticFile;
let disk: SyntheticFile;
let first: SnapshotManifest;
const deviceState = randomBytes(53_000);

const allocated = (file: string) => statSync(file).blocks * 512;
const chunksRoot = () => join(home, 'snapshots', 'chunks');

function isTorporError(code: string, pattern?: RegExp) {
  return (error: unknown) => {
    assert.ok(error instanceof TorporError, `expected a TorporError, got ${String(error)}`);
    assert.equal(error.code, code);
    assert.ok(error.hint, 'says what to do');
    if (pattern) assert.match(error.message, pattern);
    return true;
  };
}

before(() => {
  home = mkdtempSync('/var/tmp/torpor-snapshot-test-');
  shm = mkdtempSync('/dev/shm/torpor-snapshot-test-');
  process.env.TORPOR_HOME = home;
  ram = writeSyntheticFile(join(shm, 'machine.ram'), { size: 512 * MiB, liveBytes: 100 * MiB, randomShare: 0.3, seed: 11 });
  disk = writeSyntheticFile(join(home, 'layer.img'), { size: 2048 * MiB, liveBytes: 4 * MiB, randomShare: 0.3, seed: 12, maxRun: 64 });
});

after(async () => {
  await stopSnapshotWorkers();
  rmSync(shm, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
});

test('captures RAM, disk and device state, and materializes them byte for byte with holes kept', async () => {
  first = await captureSnapshot({ name: 'web@1', memoryFile: ram.path, diskFile: disk.path, deviceState, metadata: { machine: { name: 'web' } } });
  assert.equal(first.memory.size, 512 * MiB);
  assert.equal(first.stats.nonZeroBytes, (ram.livePages + disk.livePages) * 4096);
  assert.ok(first.stats.scannedBytes < 400 * MiB, `holes are not read (scanned ${first.stats.scannedBytes})`);
  assert.ok(first.memory.chunks.filter((id) => id === null).length > first.memory.chunks.length / 4, 'zero chunks are not stored');
  assert.deepEqual((await readSnapshot('web@1')).memory, first.memory);
  assert.deepEqual((await readSnapshot('web@1')).metadata, { machine: { name: 'web' } });
  spawnSync('cp', ['--sparse=always', ram.path, join(shm, 'original.ram')]);

  const target = { memoryFile: join(shm, 'out.ram'), diskFile: join(home, 'out.img'), deviceStateFile: join(home, 'out.state') };
  const { stats } = await materializeSnapshot('web@1', target);
  assert.ok(stats.chunksFromStore > 0);
  assert.ok(sameFileContent(ram.path, target.memoryFile), 'RAM identical');
  assert.ok(sameFileContent(disk.path, target.diskFile), 'disk identical');
  assert.deepEqual(readFileSync(target.deviceStateFile), deviceState);
  assert.ok(allocated(target.memoryFile) <= allocated(ram.path), `RAM holes stay holes (${allocated(target.memoryFile)} > ${allocated(ram.path)})`);
  assert.ok(allocated(target.diskFile) <= allocated(disk.path) + MiB, 'disk holes stay holes');
  assert.deepEqual(
    (await listSnapshots()).map((manifest) => manifest.name),
    ['web@1'],
  );
});

test('a derived snapshot stores only the chunks that changed', async () => {
  const changed = changePages(ram, { share: 0.015, seed: 21, maxRun: 16, randomShare: 0.3 });
  const diskChanged = changePages(disk, { share: 0.0002, seed: 22, maxRun: 8, randomShare: 0.3 });
  const second = await captureSnapshot({ name: 'web@2', parent: 'web@1', memoryFile: ram.path, diskFile: disk.path, deviceState, metadata: {} });
  const expected = chunksTouched(changed, first.memory.chunkSize).size + chunksTouched(diskChanged, first.disk!.chunkSize).size;
  assert.equal(second.stats.newChunks, expected, 'exactly the touched chunks are new (the device state is reused)');
  assert.equal(second.parent, 'web@1');
  const memoryNew = second.memory.chunks.filter((id, index) => id !== first.memory.chunks[index]).length;
  assert.equal(memoryNew, chunksTouched(changed, first.memory.chunkSize).size);
  assert.ok(second.stats.newCompressedBytes < 20 * MiB, `${second.stats.newCompressedBytes} new bytes`);

  // Both snapshots come back exactly: the first as it was before the changes.
  rmSync(join(shm, 'out.ram'));
  await materializeSnapshot('web@1', { memoryFile: join(shm, 'out.ram') });
  assert.ok(sameFileContent(join(shm, 'original.ram'), join(shm, 'out.ram')));
  const withBase = await materializeSnapshot(second, { memoryFile: join(shm, 'second.ram'), base: { manifest: first, memoryFile: join(shm, 'out.ram') } });
  assert.ok(sameFileContent(ram.path, join(shm, 'second.ram')));
  assert.equal(withBase.stats.chunksFromStore, memoryNew, 'only changed chunks are decompressed');
  assert.ok(withBase.stats.chunksFromBase > 0);

  // A base that was written since it was materialized is not trusted blindly.
  const fd = openSync(join(shm, 'out.ram'), 'r+');
  const livePage = ram.runs[0].page * 4096;
  writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, livePage);
  closeSync(fd);
  rmSync(join(shm, 'second.ram'));
  await materializeSnapshot(second, { memoryFile: join(shm, 'second.ram'), base: { manifest: first, memoryFile: join(shm, 'out.ram') } });
  assert.ok(sameFileContent(ram.path, join(shm, 'second.ram')), 'a changed base chunk is taken from the store instead');
  rmSync(join(shm, 'second.ram'));
});

test('reads any memory range, decompressing only the frames that hold it', async () => {
  const manifest = await readSnapshot('web@2');
  const file = openSync(ram.path, 'r');
  try {
    for (const [offset, length] of [
      [0, 4096],
      [ram.runs[3].page * 4096 + 123, 300_000], // crosses chunk and frame boundaries
      [manifest.memory.chunkSize - 10, 20],
      [512 * MiB - 5000, 5000],
    ]) {
      const expected = Buffer.alloc(length);
      readSync(file, expected, 0, length, offset);
      assert.deepEqual(await readMemoryRange(manifest, offset, length), expected, `range ${offset}+${length}`);
    }
  } finally {
    closeSync(file);
  }
  // Damage the last frame of a chunk: ranges in its other frames still read, ranges in it fail.
  const index = manifest.memory.chunks.findIndex((id) => id !== null);
  const id = manifest.memory.chunks[index]!;
  const path = chunkPath(chunksRoot(), id);
  const original = readFileSync(path);
  const table = parseSeekTable(original, original.length);
  const last = table.entries.at(-1)!;
  const damaged = Buffer.from(original);
  damaged[last.compressedOffset + Math.floor(last.compressedSize / 2)] ^= 0xff;
  writeFileSync(path, damaged);
  try {
    const chunkStart = index * manifest.memory.chunkSize;
    const head = await readMemoryRange(manifest, chunkStart, 4096);
    const expected = Buffer.alloc(4096);
    const fd = openSync(ram.path, 'r');
    readSync(fd, expected, 0, 4096, chunkStart);
    closeSync(fd);
    assert.deepEqual(head, expected);
    await assert.rejects(readMemoryRange(manifest, chunkStart + last.decompressedOffset, 4096), isTorporError('snapshot-corrupt', new RegExp(id)));
  } finally {
    writeFileSync(path, original);
  }
});

test('chunk files are plain zstd: the zstd tool decompresses them', () => {
  const index = first.memory.chunks.findIndex((id) => id !== null);
  const result = spawnSync('zstd', ['-d', '-c', '-q', chunkPath(chunksRoot(), first.memory.chunks[index]!)], { maxBuffer: 16 * MiB });
  assert.equal(result.status, 0, result.stderr.toString());
  const expected = Buffer.alloc(first.memory.chunkSize);
  const fd = openSync(join(shm, 'original.ram'), 'r');
  readSync(fd, expected, 0, expected.length, index * first.memory.chunkSize);
  closeSync(fd);
  assert.deepEqual(result.stdout, expected);
});

test('refuses a corrupted snapshot, naming the chunk, and leaves no target behind', async () => {
  const id = first.memory.chunks.find((candidate) => candidate !== null)!;
  const path = chunkPath(chunksRoot(), id);
  const original = readFileSync(path);
  const damaged = Buffer.from(original);
  damaged[Math.floor(damaged.length / 3)] ^= 0x01;
  writeFileSync(path, damaged);
  const target = { memoryFile: join(shm, 'corrupt.ram'), diskFile: join(home, 'corrupt.img'), deviceStateFile: join(home, 'corrupt.state') };
  try {
    await assert.rejects(materializeSnapshot('web@1', target), isTorporError('snapshot-corrupt', new RegExp(`web@1.*${id}`)));
    assert.ok(!existsSync(target.memoryFile) && !existsSync(target.diskFile) && !existsSync(target.deviceStateFile));
    rmSync(path);
    await assert.rejects(materializeSnapshot('web@1', target), isTorporError('snapshot-corrupt', /missing/));
  } finally {
    writeFileSync(path, original);
  }
});

test('two captures racing for one name: one wins, the other is told', async () => {
  const small = join(shm, 'small.ram');
  writeSyntheticFile(small, { size: 32 * MiB, liveBytes: 2 * MiB, randomShare: 0.5, seed: 31 });
  const outcomes = await Promise.allSettled([
    captureSnapshot({ name: 'race@1', memoryFile: small, deviceState: randomBytes(1000), metadata: { who: 'a' } }),
    captureSnapshot({ name: 'race@1', memoryFile: ram.path, deviceState: randomBytes(1000), metadata: { who: 'b' } }),
  ]);
  const winners = outcomes.filter((outcome) => outcome.status === 'fulfilled');
  assert.equal(winners.length, 1);
  const loser = outcomes.find((outcome) => outcome.status === 'rejected') as PromiseRejectedResult;
  isTorporError('snapshot-exists', /race@1/)(loser.reason);
  assert.equal((await readSnapshot('race@1')).id, (winners[0] as PromiseFulfilledResult<SnapshotManifest>).value.id);
  await assert.rejects(captureSnapshot({ name: 'race@1', memoryFile: small, deviceState, metadata: {} }), isTorporError('snapshot-exists'));
  const replaced = await captureSnapshot({ name: 'race@1', memoryFile: small, deviceState, metadata: { who: 'c' }, replace: true });
  assert.deepEqual((await readSnapshot('race@1')).metadata, { who: 'c' });
  assert.equal((await readSnapshot('race@1')).id, replaced.id);
  await removeSnapshot('race@1');
  rmSync(small);
});

test('a missing snapshot is reported with a hint; bad names are refused', async () => {
  await assert.rejects(readSnapshot('nope@1'), isTorporError('snapshot-unknown', /nope@1/));
  await assert.rejects(removeSnapshot('nope@1'), isTorporError('snapshot-unknown'));
  await assert.rejects(materializeSnapshot('nope@1', { memoryFile: join(shm, 'x') }), isTorporError('snapshot-unknown'));
  await assert.rejects(captureSnapshot({ name: '../escape', memoryFile: ram.path, deviceState, metadata: {} }), isTorporError('snapshot-name-invalid'));
});

test('gc removes only chunks no snapshot uses, and not while a capture runs', async () => {
  const before = await storeUsage();
  const usage = before.snapshots.find((entry) => entry.name === 'web@2')!;
  assert.ok(usage.exclusiveBytes > 0 && usage.exclusiveBytes < usage.referencedBytes);
  await removeSnapshot('web@2');
  // A capture and a gc at once: the gc waits for the capture (or the capture for the gc).
  await Promise.all([captureSnapshot({ name: 'web@3', parent: 'web@1', memoryFile: ram.path, deviceState, metadata: {} }), collectGarbage()]);
  await collectGarbage();
  const after = await storeUsage();
  assert.ok(after.bytes < before.bytes, 'space was freed');
  assert.equal(after.snapshots.length, 2);
  assert.deepEqual(await collectGarbage(), { removedChunks: 0, freedBytes: 0 }, 'nothing left to collect');
  for (const name of ['web@1', 'web@3']) {
    const target = join(shm, `${name}.ram`);
    await materializeSnapshot(name, { memoryFile: target });
    assert.ok(sameFileContent(name === 'web@1' ? join(shm, 'original.ram') : ram.path, target), `${name} intact after gc`);
    rmSync(target);
  }
  // Parents can go: children share chunks by content, not through the parent's manifest.
  await removeSnapshot('web@1');
  await collectGarbage();
  await materializeSnapshot('web@3', { memoryFile: join(shm, 'web@3.ram') });
  assert.ok(sameFileContent(ram.path, join(shm, 'web@3.ram')));
  rmSync(join(shm, 'web@3.ram'));
});

test('4 KiB page deltas: a few changed pages store only those pages; restore, range reads, gc and a bad base stay correct', async () => {
  const file = writeSyntheticFile(join(shm, 'delta.ram'), { size: 64 * MiB, liveBytes: 24 * MiB, randomShare: 0.5, seed: 61 });
  const base = await captureSnapshot({ name: 'delta@1', memoryFile: file.path, deviceState, metadata: {} });
  spawnSync('cp', ['--sparse=always', file.path, join(shm, 'delta-1.ram')]);
  // One page in each of many chunks, as a guest kernel spreads a small write.
  const changed = changePages(file, { share: 0.004, seed: 62, maxRun: 1, randomShare: 1 });
  const touched = chunksTouched(changed, base.memory.chunkSize).size;
  const known = { chunkSize: base.memory.chunkSize, ids: base.memory.chunks.map(() => undefined), previous: base.memory.chunks };
  const second = await captureSnapshot({ name: 'delta@2', memoryFile: file.path, deviceState, metadata: {}, knownMemory: known });
  const deltas = Object.keys(second.memory.deltaBases ?? {});
  assert.equal(second.version, 2, 'a manifest with deltas is version 2 (an older torpor refuses it instead of losing bases)');
  assert.ok(deltas.length >= touched * 0.6, `${deltas.length} of ${touched} changed chunks stored as deltas`);
  for (const id of deltas) assert.equal(second.memory.deltaBases![id], base.memory.chunks[second.memory.chunks.indexOf(id)]);
  assert.ok(second.stats.newCompressedBytes < touched * 24 * 1024, `${second.stats.newCompressedBytes} bytes for ${touched} chunks with one page changed each`);
  // A third generation: a delta against a delta.
  const third = await captureSnapshot({
    name: 'delta@3',
    memoryFile: file.path,
    deviceState,
    metadata: {},
    knownMemory: { ...known, previous: second.memory.chunks, deltaBases: second.memory.deltaBases },
  });
  assert.deepEqual(third.memory.chunks, second.memory.chunks, 'nothing changed: same ids, no new chunk');
  assert.deepEqual(third.memory.deltaBases, second.memory.deltaBases, 'the bases of reused deltas are carried over');
  changePages(file, { share: 0.004, seed: 63, maxRun: 1, randomShare: 1 });
  const fourth = await captureSnapshot({
    name: 'delta@4',
    memoryFile: file.path,
    deviceState,
    metadata: {},
    knownMemory: { ...known, previous: third.memory.chunks, deltaBases: third.memory.deltaBases },
  });
  const chained = Object.entries(fourth.memory.deltaBases ?? {}).filter(([, baseId]) => fourth.memory.deltaBases![baseId] !== undefined);
  assert.ok(chained.length > 0, 'some deltas have deltas as bases');
  // The older snapshots go; gc keeps every base the newest needs.
  for (const name of ['delta@1', 'delta@2', 'delta@3']) await removeSnapshot(name);
  await collectGarbage();
  await materializeSnapshot('delta@4', { memoryFile: join(shm, 'delta-4.ram') });
  assert.ok(sameFileContent(file.path, join(shm, 'delta-4.ram')), 'a snapshot of deltas restores byte for byte');
  const usage = (await storeUsage()).snapshots.find((entry) => entry.name === 'delta@4')!;
  const baseBytes = Object.values(fourth.memory.deltaBases!).reduce((sum, id) => sum + statSync(chunkPath(chunksRoot(), id)).size, 0);
  assert.ok(usage.exclusiveBytes >= baseBytes, 'the bases it alone needs count as its bytes');
  // A range read inside a delta chunk rebuilds it.
  const index = fourth.memory.chunks.indexOf(chained[0]![0]);
  const range = await readMemoryRange(fourth, index * fourth.memory.chunkSize + 4000, 9000);
  const expected = Buffer.alloc(9000);
  const fd = openSync(file.path, 'r');
  readSync(fd, expected, 0, 9000, index * fourth.memory.chunkSize + 4000);
  closeSync(fd);
  assert.deepEqual(range, expected);
  // A base replaced by another valid chunk: the delta applies, the hash check refuses the result.
  const [deltaId, baseId] = chained[0]!;
  const baseFile = chunkPath(chunksRoot(), fourth.memory.deltaBases![baseId]!);
  const saved = readFileSync(baseFile);
  const other = fourth.memory.chunks.find(
    (id) => id && id !== deltaId && !(id in fourth.memory.deltaBases!) && !Object.values(fourth.memory.deltaBases!).includes(id),
  )!;
  rmSync(baseFile, { force: true });
  writeFileSync(baseFile, readFileSync(chunkPath(chunksRoot(), other)));
  rmSync(join(shm, 'delta-4.ram'));
  await assert.rejects(
    materializeSnapshot('delta@4', { memoryFile: join(shm, 'delta-4.ram') }),
    isTorporError('snapshot-corrupt', /does not match its hash|holds/),
  );
  assert.ok(!existsSync(join(shm, 'delta-4.ram')), 'no half-restored RAM file is left');
  rmSync(baseFile, { force: true });
  writeFileSync(baseFile, saved);
  await removeSnapshot('delta@4');
  await collectGarbage();
  for (const path of [file.path, join(shm, 'delta-1.ram')]) rmSync(path);
});

test('a capture killed midway leaves the previous snapshot intact and its leftovers to gc', async () => {
  const small = join(shm, 'crash-small.ram');
  const big = join(shm, 'crash-big.ram');
  writeSyntheticFile(small, { size: 16 * MiB, liveBytes: 2 * MiB, randomShare: 0.5, seed: 51 });
  writeSyntheticFile(big, { size: 256 * MiB, liveBytes: 64 * MiB, randomShare: 0.5, seed: 52 });
  const previous = await captureSnapshot({ name: 'crash@1', memoryFile: small, deviceState, metadata: {} });
  const usage = await storeUsage();
  const child = spawn(process.execPath, ['--import', 'tsx', join(import.meta.dirname, 'testing', 'capture-until-killed.ts'), 'crash@1', big], {
    env: { ...process.env, TORPOR_HOME: home },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  // Kill it once it has written some chunks (temporary files appear), well before it finishes.
  let output = '';
  child.stdout.on('data', (data: Buffer) => (output += data.toString()));
  const deadline = Date.now() + 30_000;
  const temporaries = () => readdirSync(chunksRoot(), { recursive: true }).filter((name) => String(name).endsWith('.tmp')).length;
  while (temporaries() < 5 && Date.now() < deadline && child.exitCode === null) await new Promise((resolve) => setTimeout(resolve, 2));
  child.kill('SIGKILL');
  await new Promise((resolve) => child.once('close', resolve));
  assert.ok(!output.includes('finished'), 'killed before it finished');
  assert.ok(temporaries() > 0, 'it left temporary chunk files');
  assert.equal((await readSnapshot('crash@1')).id, previous.id, 'the old snapshot is still the one listed');
  await materializeSnapshot('crash@1', { memoryFile: join(shm, 'crash.ram') });
  assert.ok(sameFileContent(small, join(shm, 'crash.ram')));
  // The dead capture's marker does not block gc, and gc clears what it left.
  await collectGarbage();
  assert.equal(temporaries(), 0);
  assert.deepEqual((await storeUsage()).bytes, usage.bytes);
  await removeSnapshot('crash@1');
  for (const file of [small, big, join(shm, 'crash.ram')]) rmSync(file);
});

test('running out of space fails clearly and leaves earlier snapshots intact', async (context) => {
  const mountPoint = mkdtempSync('/tmp/torpor-snapshot-enospc-');
  const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mountPoint]);
  if (mounted.status !== 0) {
    rmSync(mountPoint, { recursive: true, force: true });
    context.skip(`cannot mount a tmpfs (${mounted.stderr.toString().trim()}): needs root`);
    return;
  }
  const savedHome = process.env.TORPOR_HOME;
  process.env.TORPOR_HOME = mountPoint;
  try {
    const small = join(shm, 'enospc-small.ram');
    const big = join(shm, 'enospc-big.ram');
    writeSyntheticFile(small, { size: 16 * MiB, liveBytes: 2 * MiB, randomShare: 1, seed: 41 });
    writeSyntheticFile(big, { size: 64 * MiB, liveBytes: 16 * MiB, randomShare: 1, seed: 42 });
    await captureSnapshot({ name: 'fits@1', memoryFile: small, deviceState, metadata: {} });
    const usage = await storeUsage();
    await assert.rejects(
      captureSnapshot({ name: 'too-big@1', parent: 'fits@1', memoryFile: big, deviceState, metadata: {} }),
      isTorporError('snapshot-no-space', /too-big@1/),
    );
    assert.deepEqual(
      (await listSnapshots()).map((manifest) => manifest.name),
      ['fits@1'],
    );
    const leftovers = readdirSync(join(mountPoint, 'snapshots', 'chunks'), { recursive: true }).filter((name) => String(name).endsWith('.tmp'));
    assert.deepEqual(leftovers, [], 'no temporary files left');
    assert.deepEqual(await storeUsage(), usage, 'a failed capture leaves nothing behind');
    await materializeSnapshot('fits@1', { memoryFile: join(shm, 'fits.ram') });
    assert.ok(sameFileContent(small, join(shm, 'fits.ram')));
    // Replacing a snapshot that does not fit keeps the old one.
    await assert.rejects(captureSnapshot({ name: 'fits@1', memoryFile: big, deviceState, metadata: {}, replace: true }), isTorporError('snapshot-no-space'));
    rmSync(join(shm, 'fits.ram'));
    await materializeSnapshot('fits@1', { memoryFile: join(shm, 'fits.ram') });
    assert.ok(sameFileContent(small, join(shm, 'fits.ram')));
    assert.deepEqual(await collectGarbage(), { removedChunks: 0, freedBytes: 0 });
    for (const file of [small, big, join(shm, 'fits.ram')]) rmSync(file);
  } finally {
    process.env.TORPOR_HOME = savedHome;
    spawnSync('umount', [mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  }
});

test("a disk captured beside a running guest: ranges QEMU copied before the guest's writes and discards come from the copy, and the stored disk is the disk at the pause", async () => {
  const { allocatedExtents } = await import('./extents.ts');
  const cluster = 64 * 1024;
  const size = 8 * MiB;
  // At the pause: 1 MiB of data at 0, 64 KiB at 4 MiB, holes elsewhere.
  const atPause = Buffer.alloc(size);
  randomBytes(MiB).copy(atPause, 0);
  randomBytes(cluster).copy(atPause, 4 * MiB);
  const live = join(home, 'live-layer.img');
  const copies = join(home, 'live-layer.copies');
  const memory = join(shm, 'beside.ram');
  for (const [file, length] of [
    [live, size],
    [copies, size],
    [memory, MiB],
  ] as const) {
    const fd = openSync(file, 'w');
    closeSync(fd);
    spawnSync('truncate', ['-s', String(length), file]);
  }
  writeSync(openSync(memory, 'r+'), randomBytes(4096), 0, 4096, 0);
  const layer = openSync(live, 'r+');
  writeSync(layer, atPause, 0, MiB, 0);
  writeSync(layer, atPause, 4 * MiB, cluster, 4 * MiB);
  // After the pause, what QEMU's copy-before-write does for each guest request: the cluster as it
  // was goes to the copy first (a hole as an unwritten range, as QEMU writes zeros), then the request.
  const target = openSync(copies, 'r+');
  writeSync(target, atPause, cluster, cluster, cluster);
  writeSync(layer, randomBytes(cluster), 0, cluster, cluster);
  assert.equal(spawnSync('fallocate', ['-z', '-o', String(2 * MiB), '-l', String(cluster), copies]).status, 0);
  writeSync(layer, randomBytes(cluster), 0, cluster, 2 * MiB);
  writeSync(target, atPause, 4 * MiB, cluster, 4 * MiB);
  assert.equal(spawnSync('fallocate', ['-p', '-o', String(4 * MiB), '-l', String(cluster), live]).status, 0);
  closeSync(layer);
  closeSync(target);
  assert.ok(
    (await allocatedExtents(copies)).some((extent) => extent.start === 2 * MiB),
    'the copied hole is seen',
  );

  await captureSnapshot({
    name: 'beside@1',
    memoryFile: memory,
    diskFile: live,
    diskCopies: { file: copies, allocated: () => allocatedExtents(copies) },
    deviceState,
    metadata: {},
  });
  const restored = join(home, 'beside-disk.img');
  await materializeSnapshot('beside@1', { memoryFile: join(shm, 'beside-out.ram'), diskFile: restored });
  assert.ok(readFileSync(restored).equals(atPause), 'the stored disk is the disk at the pause');

  // A copy-before-write that stopped before the capture's last look: nothing is stored.
  await assert.rejects(
    captureSnapshot({
      name: 'beside@2',
      memoryFile: memory,
      diskFile: live,
      diskCopies: {
        file: copies,
        allocated: async () => {
          throw new Error("QEMU's disk copy-before-write ended during the capture");
        },
      },
      deviceState,
      metadata: {},
    }),
    /ended during the capture/,
  );
  await assert.rejects(readSnapshot('beside@2'), isTorporError('snapshot-unknown'));
});
