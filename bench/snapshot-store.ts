// Snapshot store benchmark: run by hand with `node --import tsx bench/snapshot-store.ts [--quick]`.
// A 512 MiB RAM file (tmpfs) with ~100 MiB live (30% random, 70% JSON text) and a 4 GiB disk layer
// with ~24 MiB written, against the naive baseline of `zstd -3` over the whole RAM file.
import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { sameFileContent } from '../src/snapshot/testing/synthetic-machine.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';

const quick = process.argv.includes('--quick');
const home = mkdtempSync(join(process.env.BENCH_DIR ?? '/var/tmp', 'torpor-snapshot-bench-'));
process.env.TORPOR_HOME = home;
const shm = mkdtempSync('/dev/shm/torpor-snapshot-bench-');

const store = await import('../src/snapshot/snapshot-store.ts');
const pool = await import('../src/snapshot/worker-pool.ts');
const synthetic = await import('../src/snapshot/testing/synthetic-machine.ts');

const MiB = 1024 * 1024;
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const ms = (value: number) => `${value.toFixed(0)} ms`;
function summary(values: number[]): { p50: number; max: number } {
  const sorted = [...values].sort((a, b) => a - b);
  return { p50: sorted[Math.floor((sorted.length - 1) / 2)], max: sorted[sorted.length - 1] };
}
const lines: string[] = [];
function report(line = ''): void {
  lines.push(line);
  console.log(line);
}
function storeBytes(): number {
  const result = spawnSync('du', ['-sb', join(home, 'snapshots', 'chunks')], { encoding: 'utf8' });
  return Number(result.stdout.split('\t')[0]);
}
const resetStore = () => rmSync(join(home, 'snapshots'), { recursive: true, force: true });

const ram = join(shm, 'machine.ram');
const disk = join(home, 'layer.img');
const runs = quick ? 2 : 5;
try {
  report(`# snapshot store benchmark ${new Date().toISOString()}`);
  report(
    `host: ${spawnSync('nproc').stdout.toString().trim()} cores, node ${process.version}; store on ${spawnSync('df', ['--output=fstype', home]).stdout.toString().split('\n')[1]}, RAM file in tmpfs`,
  );
  let started = performance.now();
  const ramFile = synthetic.writeSyntheticFile(ram, { size: 512 * MiB, liveBytes: 100 * MiB, randomShare: 0.3, seed: 1 });
  const diskFile = synthetic.writeSyntheticFile(disk, { size: 4096 * MiB, liveBytes: 24 * MiB, randomShare: 0.3, seed: 2, maxRun: 512 });
  const deviceState = randomBytes(53_000);
  report(
    `inputs: RAM 512 MiB apparent, ${mib(ramFile.livePages * 4096)} live in ${ramFile.runs.length} runs; disk 4 GiB apparent, ${mib(diskFile.livePages * 4096)} written; made in ${ms(performance.now() - started)}`,
  );
  report();

  // Baseline: what a snapshot costs without the store: zstd -3 over the whole RAM file.
  const baselineTimes: number[] = [];
  let baselineBytes = 0;
  for (let index = 0; index < runs; index++) {
    started = performance.now();
    const result = spawnSync('sh', ['-c', `zstd -q -3 -c ${ram} > ${join(home, 'baseline.zst')}`]);
    if (result.status !== 0) throw new Error(result.stderr.toString());
    baselineTimes.push(performance.now() - started);
    baselineBytes = statSync(join(home, 'baseline.zst')).size;
  }
  started = performance.now();
  spawnSync('sh', ['-c', `zstd -q -d -c ${join(home, 'baseline.zst')} > ${join(shm, 'baseline.ram')}`]);
  const baselineRestore = performance.now() - started;
  rmSync(join(shm, 'baseline.ram'), { force: true });
  const baseline = summary(baselineTimes);
  report(
    `baseline zstd -3 (whole RAM file, 1 thread): ${ms(baseline.p50)} p50, ${ms(baseline.max)} max, ${mib(baselineBytes)}; zstd -d back to tmpfs ${ms(baselineRestore)} (a dense 512 MiB file)`,
  );

  await pool.startSnapshotWorkers();
  // Full captures into an empty store: the first snapshot of a machine (a boot template).
  const captureTimes: number[] = [];
  let first!: Awaited<ReturnType<typeof store.captureSnapshot>>;
  for (let index = 0; index < runs; index++) {
    resetStore();
    started = performance.now();
    first = await store.captureSnapshot({ name: 'bench@1', memoryFile: ram, diskFile: disk, deviceState, metadata: {} });
    captureTimes.push(performance.now() - started);
  }
  const capture = summary(captureTimes);
  const firstBytes = storeBytes();
  report(
    `capture, empty store (RAM + disk + device state): ${ms(capture.p50)} p50, ${ms(capture.max)} max; stored ${mib(firstBytes)} ` +
      `(${first.stats.newChunks} chunks; scanned ${mib(first.stats.scannedBytes)}, non-zero ${mib(first.stats.nonZeroBytes)})`,
  );
  report(
    `  phases of the last: ${JSON.stringify(first.stats.milliseconds, (key, value) => (typeof value === 'number' ? Math.round(value) : value))}, thread ms ${JSON.stringify(first.stats.threadMilliseconds, (key, value) => (typeof value === 'number' ? Math.round(value) : value))}`,
  );
  report(
    `  vs baseline: ${(baseline.p50 / capture.p50).toFixed(2)}x the speed, ${(firstBytes / baselineBytes).toFixed(2)}x the bytes (and the baseline leaves out the disk)`,
  );
  // Same capture again with everything already stored: what hashing alone costs.
  started = performance.now();
  const again = await store.captureSnapshot({ name: 'bench@same', memoryFile: ram, diskFile: disk, deviceState, metadata: {} });
  report(`capture, nothing changed (all chunks reused): ${ms(performance.now() - started)}, new ${mib(again.stats.newCompressedBytes)}`);
  await store.removeSnapshot('bench@same');

  const materializeTimes: number[] = [];
  const restored = join(shm, 'restored.ram');
  for (let index = 0; index < runs; index++) {
    rmSync(restored, { force: true });
    started = performance.now();
    await store.materializeSnapshot('bench@1', { memoryFile: restored, diskFile: join(home, 'restored.img'), deviceStateFile: join(home, 'device') });
    materializeTimes.push(performance.now() - started);
  }
  const materialize = summary(materializeTimes);
  const identical = sameFileContent(ram, restored) && sameFileContent(disk, join(home, 'restored.img'));
  report(
    `materialize (RAM + disk + device state, no base): ${ms(materialize.p50)} p50, ${ms(materialize.max)} max; identical: ${identical}; RAM allocated ${mib(statSync(restored).blocks * 512)} of ${mib(statSync(ram).blocks * 512)} in the input`,
  );
  report(`  vs baseline zstd -d: ${(baselineRestore / materialize.p50).toFixed(2)}x the speed`);
  const parentRam = join(shm, 'parent.ram');
  rmSync(parentRam, { force: true });
  await store.materializeSnapshot('bench@1', { memoryFile: parentRam });

  // Session snapshots: change ~1% of the pages, capture again with the first as parent.
  report();
  report('re-snapshot after changing 1% of the pages (5.1 MiB: runs of 1-32 pages, 80% in live data, 30% of new pages random):');
  const derivedTimes: number[] = [];
  const derivedBytes: number[] = [];
  let derived!: Awaited<ReturnType<typeof store.captureSnapshot>>;
  for (let index = 0; index < runs; index++) {
    synthetic.changePages(ramFile, { share: 0.01, seed: 100 + index, maxRun: 32, randomShare: 0.3 });
    synthetic.changePages(diskFile, { share: 0.0001, seed: 200 + index, maxRun: 16, randomShare: 0.3 });
    started = performance.now();
    derived = await store.captureSnapshot({
      name: `bench@${index + 2}`,
      parent: index === 0 ? 'bench@1' : `bench@${index + 1}`,
      memoryFile: ram,
      diskFile: disk,
      deviceState: randomBytes(53_000),
      metadata: {},
    });
    derivedTimes.push(performance.now() - started);
    derivedBytes.push(derived.stats.newCompressedBytes);
  }
  const derivedTime = summary(derivedTimes);
  const derivedSize = summary(derivedBytes);
  report(
    `  capture ${ms(derivedTime.p50)} p50, ${ms(derivedTime.max)} max; new compressed bytes ${mib(derivedSize.p50)} p50, ${mib(derivedSize.max)} max (target <= 14 MiB); ${derived.stats.newChunks} new chunks, ${derived.stats.reusedChunks} reused`,
  );
  report(
    `  vs baseline (a full zstd -3 every time): ${(baselineBytes / derivedSize.p50).toFixed(1)}x fewer bytes, ${(baseline.p50 / derivedTime.p50).toFixed(1)}x faster`,
  );

  const childRam = join(shm, 'child.ram');
  const noBase: number[] = [];
  const withBase: number[] = [];
  const parentManifest = await store.readSnapshot(`bench@${runs}`);
  rmSync(parentRam, { force: true });
  await store.materializeSnapshot(parentManifest, { memoryFile: parentRam });
  let baseStats: Awaited<ReturnType<typeof store.materializeSnapshot>>['stats'] | undefined;
  for (let index = 0; index < runs; index++) {
    rmSync(childRam, { force: true });
    started = performance.now();
    await store.materializeSnapshot(derived, { memoryFile: childRam });
    noBase.push(performance.now() - started);
    rmSync(childRam, { force: true });
    started = performance.now();
    baseStats = (await store.materializeSnapshot(derived, { memoryFile: childRam, base: { manifest: parentManifest, memoryFile: parentRam } })).stats;
    withBase.push(performance.now() - started);
  }
  report(
    `  materialize the latest RAM alone: ${ms(summary(noBase).p50)} p50 from the store; ${ms(summary(withBase).p50)} p50 with its parent's RAM as base ` +
      `(${baseStats!.chunksFromBase} chunks copied from the base, ${baseStats!.chunksFromStore} decompressed); identical: ${sameFileContent(ram, childRam)}`,
  );
  started = performance.now();
  spawnSync('cp', ['--sparse=always', parentRam, join(shm, 'copy.ram')]);
  report(`  for comparison, cp --sparse=always of the parent RAM: ${ms(performance.now() - started)}`);
  rmSync(join(shm, 'copy.ram'), { force: true });

  // Range reads (a lazy restore): 4 KiB pages at random live offsets.
  const latest = await store.readSnapshot(`bench@${runs + 1}`);
  const random = synthetic.seededRandom(7);
  started = performance.now();
  const reads = 2000;
  for (let index = 0; index < reads; index++) {
    const run = ramFile.runs[Math.floor(random() * ramFile.runs.length)];
    await store.readMemoryRange(latest, (run.page + Math.floor(random() * run.count)) * 4096, 4096);
  }
  report(`readMemoryRange: ${((performance.now() - started) / reads).toFixed(3)} ms per random 4 KiB page (one 64 KiB frame decompressed)`);

  // Chunk size: full capture cost against what a re-snapshot must store.
  report();
  report('chunk size (empty store, then 1% of pages changed; clustered = runs of 1-32 pages, scattered = single pages):');
  report('  chunk   capture  stored    files  new(clustered)  new(scattered)  materialize');
  for (const chunkSize of [256 * 1024, 512 * 1024, 1024 * 1024, 2048 * 1024]) {
    resetStore();
    const base = synthetic.writeSyntheticFile(ram, { size: 512 * MiB, liveBytes: 100 * MiB, randomShare: 0.3, seed: 1 });
    started = performance.now();
    const full = await store.captureSnapshot({ name: 'size@1', memoryFile: ram, deviceState, metadata: {}, chunkSize });
    const captureMs = performance.now() - started;
    const bytes = storeBytes();
    synthetic.changePages(base, { share: 0.01, seed: 300, maxRun: 32, randomShare: 0.3 });
    const clustered = await store.captureSnapshot({ name: 'size@2', memoryFile: ram, deviceState, metadata: {}, chunkSize });
    synthetic.changePages(base, { share: 0.01, seed: 400, maxRun: 1, randomShare: 0.3 });
    const scattered = await store.captureSnapshot({ name: 'size@3', memoryFile: ram, deviceState, metadata: {}, chunkSize });
    rmSync(restored, { force: true });
    started = performance.now();
    await store.materializeSnapshot('size@1', { memoryFile: restored });
    const materializeMs = performance.now() - started;
    report(
      `  ${String(chunkSize / 1024).padStart(4)}K  ${ms(captureMs).padStart(8)}  ${mib(bytes).padStart(9)}  ${String(full.stats.newChunks).padStart(5)}  ${mib(clustered.stats.newCompressedBytes).padStart(14)}  ${mib(scattered.stats.newCompressedBytes).padStart(14)}  ${ms(materializeMs).padStart(11)}`,
    );
  }

  // Compression level and thread pool, at the default chunk size.
  report();
  report('zstd level and threads (full capture into an empty store, default chunk size):');
  for (const [level, workers] of [
    [1, 2],
    [3, 2],
    [1, 0],
    [1, 1],
  ] as const) {
    await pool.stopSnapshotWorkers();
    process.env.TORPOR_SNAPSHOT_WORKERS = String(workers);
    await pool.startSnapshotWorkers();
    const times: number[] = [];
    for (let index = 0; index < Math.min(runs, 3); index++) {
      resetStore();
      started = performance.now();
      await store.captureSnapshot({ name: 'level@1', memoryFile: ram, deviceState, metadata: {}, compressionLevel: level });
      times.push(performance.now() - started);
    }
    const materializeTimes: number[] = [];
    for (let index = 0; index < Math.min(runs, 3); index++) {
      rmSync(restored, { force: true });
      started = performance.now();
      await store.materializeSnapshot('level@1', { memoryFile: restored });
      materializeTimes.push(performance.now() - started);
    }
    report(
      `  level ${level}, ${workers === 0 ? 'main thread only' : `${workers} worker thread${workers > 1 ? 's' : ''}`}: capture ${ms(summary(times).p50)} p50, stored ${mib(storeBytes())}; materialize ${ms(summary(materializeTimes).p50)} p50`,
    );
  }
  delete process.env.TORPOR_SNAPSHOT_WORKERS;
  void readFileSync;
} finally {
  await pool.stopSnapshotWorkers();
  rmSync(shm, { recursive: true, force: true });
  rmSync(home, { recursive: true, force: true });
}
if (process.env.BENCH_OUTPUT) {
  const { writeFileSync } = await import('node:fs');
  writeFileSync(process.env.BENCH_OUTPUT, lines.join('\n') + '\n');
}
