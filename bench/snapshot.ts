// Machine snapshot benchmark (run by hand; issue 3 targets): snapshot, restore, fork, re-snapshot
// after one small change, starts per minute from the boot template, and QEMU's own full migration
// stream + zstd -3 as the naive baseline, all in one run. Prints one table; commit the output
// under bench/results/.
//   node --import tsx bench/snapshot.ts [runs]
import { MiB, percentile, ms, sleep, startHostSampler, pingMachine } from './support.ts';
import { mkdtemp, mkdir, rm, readFile, stat, open } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';

const runs = Math.max(5, Number(process.argv[2] ?? 5));
const home = await mkdtemp(join(tmpdir(), 'tp-bs-'));
process.env.TORPOR_HOME = home;
// A private tmpfs directory for guest RAM, so nothing here meets another state directory's template RAM.
const memoryDirectory = await mkdtemp('/dev/shm/tp-bs-');
process.env.TORPOR_MEMORY_DIR = memoryDirectory;
process.env.TORPOR_BOOT_TEMPLATES = '1';

// Imported after the environment is set (paths are read lazily, but keep it obvious).
const { createMachine, startMachine, connectToMachine, removeMachine, prepareHost, listMachines, findMachine } = await import('../src/runtime/machines.ts');
const { snapshotMachine, restoreMachine, forkMachine } = await import('../src/runtime/snapshots.ts');
const { readSnapshot, materializeSnapshot } = await import('../src/snapshot/snapshot-store.ts');
const { qemuDriver } = await import('../src/vm/qemu-driver.ts');
const { loadDeviceState } = await import('../src/vm/migration.ts');
const { machineFiles } = await import('../src/runtime/machine-files.ts');
const { bootTemplateName } = await import('../src/runtime/boot-template.ts');
const { templateMemoryFile } = await import('../src/runtime/template-memory.ts');
type MachineConfig = import('../src/runtime/machine-record.ts').MachineConfig;
type SnapshotSummary = import('../src/runtime/control-protocol.ts').SnapshotSummary;
type RunningVm = import('../src/vm/driver.ts').RunningVm;

// Issue 3 targets. Only the re-snapshot bytes target was handed to this bench; the others are
// left undefined (printed as "-") rather than invented.
const targets: Record<string, { limit: number; unit: 'ms' | 'MiB' | '/min'; better: 'lower' | 'higher' } | undefined> = {
  resnapshotBytes: { limit: 14, unit: 'MiB', better: 'lower' },
};

const median = (values: number[]) => percentile(values, 50);
const max = (values: number[]) => Math.max(...values);
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

// The guest program: ~100 MiB of live data (~60% heap objects and strings, ~40% random Buffers),
// ~20 MiB of files in /root, then 'ready <pid>'. SIGUSR1 is one "agent turn": ~1 MiB of heap
// replaced and a 256 KiB file written, then 'changed <n>'.
const SCRIPT = String.raw`
const fs = require('fs'), crypto = require('crypto');
const words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau'.split(' ');
const make = (i, salt) => ({ id: i, name: 'item-' + i + '-' + salt, tags: [words[i % 19], words[(i >> 3) % 19], words[(i >> 6) % 19]],
  score: i * 1.5 + salt, text: Array.from({ length: 10 }, (_, k) => words[(i * 7 + k * 3 + salt) % 19]).join(' ') + ' #' + i + '/' + salt,
  nested: { created: 1700000000000 + i, ok: (i & 1) === 0, path: '/root/src/file-' + (i % 997) + '.ts' } });
const startHeap = process.memoryUsage().heapUsed;
const objects = [];
while (process.memoryUsage().heapUsed - startHeap < 60 * 1048576) for (let k = 0; k < 2000; k++) objects.push(make(objects.length, 0));
const buffers = [];
for (let k = 0; k < 40; k++) buffers.push(crypto.randomBytes(1048576));
for (let k = 0; k < 5; k++) fs.writeFileSync('/root/random-' + k + '.bin', crypto.randomBytes(2 * 1048576));
for (let k = 0; k < 5; k++) fs.writeFileSync('/root/data-' + k + '.json', JSON.stringify(objects.slice(k * 9000, k * 9000 + 9000)).slice(0, 2 * 1048576));
let turns = 0, ticks = 0;
process.on('SIGUSR1', () => {
  turns++;
  const at = (turns * 7919) % Math.max(1, objects.length - 4000);
  for (let k = 0; k < 3500; k++) objects[at + k] = make(at + k, turns);
  fs.writeFileSync('/root/turn-' + turns + '.json', JSON.stringify(objects.slice(at, at + 1200)).slice(0, 262144));
  console.log('changed ' + turns);
});
setInterval(() => { ticks++; }, 1000);
console.log('ready ' + process.pid + ' objects ' + objects.length + ' heapUsed ' + Math.round(process.memoryUsage().heapUsed / 1048576) + ' MiB');
`;

async function processOutput(id: string): Promise<string> {
  const text = await readFile(machineFiles(id).processLog, 'utf8').catch(() => '');
  let output = '';
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      output += (JSON.parse(line) as { log: string }).log;
    } catch {
      // a line being written
    }
  }
  return output;
}

async function waitForOutput(id: string, pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(await processOutput(id));
    if (match) return match;
    if (Date.now() > deadline)
      throw new Error(`machine ${id} did not print ${pattern} within ${timeoutMs} ms; output: ${(await processOutput(id)).slice(-500)}`);
    await sleep(200);
  }
}

async function execInGuest(config: MachineConfig, argv: string[]): Promise<number> {
  const client = await connectToMachine(config);
  try {
    const status = await client.exec({ argv, env: [], workingDirectory: '/', user: '', tty: false, stdin: false }).exited;
    return status.code;
  } finally {
    client.close();
  }
}

async function removeQuietly(config: MachineConfig): Promise<void> {
  await removeMachine(config, { force: true }).catch((error: Error) => console.error(`warning: removing ${config.name}: ${error.message}`));
}

const notes: string[] = [];
let baselineVm: RunningVm | undefined;

const hostActivity = startHostSampler(memoryDirectory);

try {
  const host = await prepareHost();
  const accel = host.accelerator.accelerator;

  // ---- warm-up: build the node and base images and their boot templates outside the measurements
  const warmStarted = performance.now();
  for (const image of ['node', 'base']) {
    const warm = await createMachine({ image, memoryMiB: image === 'node' ? 512 : 256, command: ['sleep', '100000'] });
    await startMachine(warm.id);
    await pingMachine(warm);
    await removeQuietly(warm);
  }
  const warmMs = performance.now() - warmStarted;

  // ---- the machine under test
  const config = await createMachine({ image: 'node', memoryMiB: 512, command: ['node', '-e', SCRIPT], name: 'bench' });
  await startMachine(config.id);
  const readyStarted = performance.now();
  const ready = await waitForOutput(config.id, /ready (\d+)[^\n]*/, 120_000);
  const guestPid = Number(ready[1]);
  const readyMs = performance.now() - readyStarted;
  await sleep(2000);

  // ---- snapshots: the first against the boot template only, then layered on it
  const snapshots: Array<{ summary: SnapshotSummary; wallMs: number }> = [];
  for (let run = 1; run <= runs; run++) {
    const began = performance.now();
    const summary = await snapshotMachine(config, { name: `bench-s${run}` });
    snapshots.push({ summary, wallMs: performance.now() - began });
    await sleep(1000);
  }
  const newBytes = (summary: SnapshotSummary) => Number(summary.stats.newCompressedBytes ?? 0);
  const snapshotTotals = snapshots.map((entry) => entry.summary.totalMs);
  const layeredTotals = snapshots.slice(1).map((entry) => entry.summary.totalMs);

  // ---- one small change (an "agent turn"), then a snapshot: what it adds to the store
  const changes: Array<{ summary: SnapshotSummary; wallMs: number }> = [];
  for (let turn = 1; turn <= 3; turn++) {
    const code = await execInGuest(config, ['kill', '-USR1', String(guestPid)]);
    if (code !== 0) throw new Error(`kill -USR1 ${guestPid} in the guest exited ${code}`);
    await waitForOutput(config.id, new RegExp(`changed ${turn}\\b`), 60_000);
    await sleep(500);
    const began = performance.now();
    const summary = await snapshotMachine(config, { name: `bench-turn${turn}` });
    changes.push({ summary, wallMs: performance.now() - began });
  }
  const changeBytes = changes.map((entry) => newBytes(entry.summary));
  const latest = changes.at(-1)!.summary.name;

  // ---- restore to guest agent answering
  const restores: number[] = [];
  const restoredBootMs: number[] = [];
  for (let run = 1; run <= runs; run++) {
    const began = performance.now();
    const restored = await restoreMachine(latest, { name: `bench-r${run}` });
    await pingMachine(restored);
    restores.push(performance.now() - began);
    const { readMachineState } = await import('../src/runtime/machine-files.ts');
    restoredBootMs.push((await readMachineState(restored.id)).bootMs ?? NaN);
    await removeQuietly(restored);
  }

  // Where a restore's time goes: the materialization alone (same snapshot, template RAM as base).
  const materializeRuns: Array<{ total: number; fromStore: number; fromBase: number }> = [];
  {
    const latestManifest = await readSnapshot(latest);
    const templateName = bootTemplateName(latestManifest.metadata.machine as MachineConfig);
    const templateManifest = await readSnapshot(templateName);
    for (let run = 0; run < 3; run++) {
      const scratch = join(memoryDirectory, `scratch-${run}.ram`);
      const { stats } = await materializeSnapshot(latestManifest, {
        memoryFile: scratch,
        diskFile: join(home, `scratch-${run}.img`),
        deviceStateFile: join(home, `scratch-${run}.state`),
        base: { manifest: templateManifest, memoryFile: templateMemoryFile(templateName) },
      });
      materializeRuns.push({ total: stats.milliseconds.total, fromStore: stats.chunksFromStore, fromBase: stats.chunksFromBase });
      for (const path of [scratch, join(home, `scratch-${run}.img`), join(home, `scratch-${run}.state`)]) await rm(path, { force: true });
    }
  }

  // ---- fork of 4: until all four answer
  const forkStarted = performance.now();
  const { forks, snapshot: forkSnapshot } = await forkMachine(config, { count: 4, namePrefix: 'bench-fork' });
  const forkCreatedMs = performance.now() - forkStarted;
  await Promise.all(forks.map((fork) => pingMachine(fork)));
  const forkMs = performance.now() - forkStarted;
  const forkAlive: string[] = [];
  for (const fork of forks) forkAlive.push(String(await execInGuest(fork, ['kill', '-0', String(guestPid)])));
  for (const fork of forks) await removeQuietly(fork);

  // ---- naive baseline: stop the torpor machine; a plain QEMU resumes the latest snapshot, then
  // QEMU's full migration stream goes to a file and zstd -3 compresses it.
  await removeQuietly(config);
  const baselineDirectory = join(home, 'bl');
  await mkdir(baselineDirectory, { recursive: true });
  const manifest = await readSnapshot(latest);
  const machine = manifest.metadata.machine as MachineConfig;
  const memoryFile = join(memoryDirectory, 'baseline.ram');
  const layerDisk = join(baselineDirectory, 'layer.img');
  const deviceStateFile = join(baselineDirectory, 'device.state');
  await materializeSnapshot(manifest, { memoryFile, diskFile: layerDisk, deviceStateFile });
  baselineVm = await qemuDriver.launch(
    {
      id: 'baseline',
      cpus: machine.cpus,
      memoryMiB: machine.memoryMiB,
      accelerator: machine.accelerator,
      kernelPath: machine.kernelPath,
      initramfsPath: machine.initramfsPath,
      kernelArguments: machine.kernelArguments,
      imageDisk: machine.image.diskPath,
      layerDisk,
      memoryFile,
      agentSocket: join(baselineDirectory, 'agent.sock'),
      qmpSocket: join(baselineDirectory, 'qmp.sock'),
      consoleLog: join(baselineDirectory, 'console.log'),
      network: machine.network,
      ports: [],
      incoming: true,
    },
    { logPath: join(baselineDirectory, 'qemu.log') },
  );
  const qmp = baselineVm.qmp;
  await loadDeviceState(qmp, join(baselineDirectory, 'mig.sock'), await readFile(deviceStateFile));
  await qmp.execute('cont');
  await sleep(3000); // let the guest run (and TCG translate again) like the torpor machine did
  const streamFile = join(baselineDirectory, 'stream.bin');
  await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: false }] });
  await qmp.execute('migrate-set-parameters', { 'max-bandwidth': 10 * 1024 ** 3 });
  const migrateStarted = performance.now();
  await qmp.execute('stop');
  await qmp.execute('migrate', { uri: `exec:cat > ${streamFile}` });
  for (;;) {
    const info = await qmp.execute<{ status?: string; 'error-desc'?: string }>('query-migrate');
    if (info.status === 'completed') break;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`baseline migration ${info.status}: ${info['error-desc'] ?? ''}`);
    await sleep(1);
  }
  const migrateMs = performance.now() - migrateStarted;
  const streamBytes = (await stat(streamFile)).size;
  baselineVm.kill('SIGKILL');
  await baselineVm.exited;
  baselineVm = undefined;
  await rm(memoryFile, { force: true });
  const zstdStarted = performance.now();
  await new Promise<void>((resolve, reject) => {
    const child = spawn('zstd', ['-3', '-T0', '-q', '-f', streamFile, '-o', `${streamFile}.zst`], { stdio: 'inherit' });
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`zstd exited ${code}`))));
    child.on('error', reject);
  });
  const zstdHandle = await open(`${streamFile}.zst`, 'r+');
  await zstdHandle.datasync();
  await zstdHandle.close();
  const zstdMs = performance.now() - zstdStarted;
  const zstdBytes = (await stat(`${streamFile}.zst`)).size;
  // Durable = the compressed file synced (the raw stream is only an intermediate, left in the page cache).
  const baselineMs = migrateMs + zstdMs;
  await rm(baselineDirectory, { recursive: true, force: true });

  // ---- starts per minute from the boot template, two at a time (base image)
  const startLatencies: number[] = [];
  let starts = 0;
  const windowMs = 60_000;
  const startsBegan = performance.now();
  await Promise.all(
    [0, 1].map(async (loop) => {
      let index = 0;
      while (performance.now() - startsBegan < windowMs) {
        const began = performance.now();
        const started = await createMachine({ image: 'base', memoryMiB: 256, command: ['sleep', '100000'], name: `bench-p${loop}-${index++}` });
        await startMachine(started.id);
        await pingMachine(started);
        startLatencies.push(performance.now() - began);
        starts++;
        await removeQuietly(started);
      }
    }),
  );
  const startsElapsedMs = performance.now() - startsBegan;
  const startsPerMinute = (starts / startsElapsedMs) * 60_000;

  // ---- report
  const first = snapshots[0]!.summary;
  const rows: Array<[string, string, string, string, string]> = [];
  const row = (metric: string, target: string, measured: string, ratio: string, note = '') => rows.push([metric, target, measured, ratio, note]);
  const layeredP50 = median(layeredTotals);
  row(
    `snapshot, pause to durable (${runs} runs)`,
    '-',
    `p50 ${ms(median(snapshotTotals))}, max ${ms(max(snapshotTotals))}`,
    `${(median(snapshotTotals) / baselineMs).toFixed(2)}x baseline time`,
    `client wall p50 ${ms(median(snapshots.map((entry) => entry.wallMs)))}`,
  );
  row(
    '  first (vs boot template only)',
    '-',
    `${ms(first.totalMs)} (pause ${first.pauseMs.toFixed(0)} + device ${first.deviceStateMs.toFixed(0)} + capture ${first.captureMs.toFixed(0)}), new ${mib(newBytes(first))}`,
    `${(first.totalMs / baselineMs).toFixed(2)}x time, ${(newBytes(first) / zstdBytes).toFixed(2)}x bytes`,
    `${first.stats.newChunks} new / ${first.stats.reusedChunks} reused chunks`,
  );
  row(
    `  layered, nothing changed (${layeredTotals.length})`,
    '-',
    `p50 ${ms(layeredP50)}, max ${ms(max(layeredTotals))}; new p50 ${mib(median(snapshots.slice(1).map((entry) => newBytes(entry.summary))))}`,
    `${(layeredP50 / baselineMs).toFixed(2)}x time`,
  );
  const bytesTarget = targets.resnapshotBytes!;
  const changeP50 = median(changeBytes);
  const changeTimes = changes.map((entry) => entry.summary.totalMs);
  row(
    'second snapshot after a small change (3 turns)',
    `<= ${bytesTarget.limit} MiB`,
    `new p50 ${mib(changeP50)}, max ${mib(max(changeBytes))}; ${ms(median(changeTimes))} p50`,
    `${(changeP50 / zstdBytes).toFixed(3)}x bytes, ${(median(changeTimes) / baselineMs).toFixed(2)}x time`,
    max(changeBytes) / MiB > bytesTarget.limit ? `MISSED by ${(max(changeBytes) / MiB - bytesTarget.limit).toFixed(1)} MiB (max)` : 'met',
  );
  row(
    `restore to agent answering (${runs} runs)`,
    '-',
    `p50 ${ms(median(restores))}, max ${ms(max(restores))}`,
    '-',
    `= materialize p50 ${ms(median(materializeRuns.map((entry) => entry.total)))} (${materializeRuns[0]!.fromStore} chunks decompressed, ${materializeRuns[0]!.fromBase} copied from the template RAM) + supervisor ready p50 ${ms(median(restoredBootMs))} (QEMU start, device state, agent hello+configure) + the rest (supervisor spawn, CLI side, ping)`,
  );
  row(
    'fork of 4, until all 4 answer ping',
    '-',
    ms(forkMs),
    '-',
    `incl. its snapshot ${ms(forkSnapshot.totalMs)}; forks created+started ${ms(forkCreatedMs)}; guest node pid alive in forks: ${forkAlive.join(',') === '0,0,0,0' ? 'yes' : forkAlive.join(',')}`,
  );
  row(
    'starts/min from boot template, 2 at a time',
    '-',
    `${startsPerMinute.toFixed(1)}/min (${starts} in ${(startsElapsedMs / 1000).toFixed(0)} s)`,
    '-',
    `create+start+ping p50 ${ms(median(startLatencies))}, max ${ms(max(startLatencies))}; each loop also removes its machine`,
  );
  row(
    'baseline: full migration stream + zstd -3',
    '-',
    `${ms(baselineMs)} (migrate ${migrateMs.toFixed(0)} + zstd -3 -T0 and fdatasync ${zstdMs.toFixed(0)}); stream ${mib(streamBytes)} -> ${mib(zstdBytes)}`,
    '1.00x',
    'same guest state (latest snapshot resumed in a plain QEMU); RAM only, no disk',
  );

  const cpuModel = cpus()[0]?.model ?? 'unknown';
  console.log(`torpor machine snapshot benchmark (issue 3), ${new Date().toISOString()}`);
  console.log(`accel: ${accel} (${host.accelerator.reason})`);
  console.log(
    `host: ${cpus().length} cores (${cpuModel}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, node ${process.version}; state dir on ${home.startsWith('/tmp') ? '/tmp' : home}, guest RAM in tmpfs`,
  );
  console.log(
    `guest: node image, 512 MiB, 1 vcpu; ${ready[0]} after ${(readyMs / 1000).toFixed(1)} s; warm-up (images + boot templates) ${(warmMs / 1000).toFixed(1)} s`,
  );
  const activity = hostActivity();
  console.log(
    `other work on the host during the run: load average ${activity.loadStart.toFixed(1)} at start, max ${activity.loadMax.toFixed(1)}; QEMU processes not of this bench: max ${activity.foreignQemuMax}, mean ${activity.foreignQemuMean.toFixed(1)}`,
  );
  console.log('');
  const widths = [0, 1, 2, 3].map((column) =>
    Math.max(...[['metric', 'target', 'measured', 'vs baseline'][column]!, ...rows.map((entry) => entry[column]!)].map((text) => text.length)),
  );
  const format = (cells: string[]) => cells.map((cell, column) => (column < 4 ? cell.padEnd(widths[column]!) : cell)).join(' | ');
  console.log(format(['metric', 'target', 'measured', 'vs baseline', 'note']));
  console.log(widths.map((width) => '-'.repeat(width)).join('-|-') + '-|------');
  for (const entry of rows) console.log(format(entry));
  console.log('');
  console.log('snapshot details (totalMs / newCompressedBytes / chunk phases):');
  for (const entry of [...snapshots, ...changes, { summary: forkSnapshot, wallMs: NaN }]) {
    const stats = entry.summary.stats as { milliseconds?: Record<string, number>; newChunks?: number; reusedChunks?: number };
    console.log(
      `  ${entry.summary.name.padEnd(28)} ${ms(entry.summary.totalMs).padStart(8)}  new ${mib(newBytes(entry.summary)).padStart(9)}  pause ${entry.summary.pauseMs.toFixed(0)} device ${entry.summary.deviceStateMs.toFixed(0)} capture ${entry.summary.captureMs.toFixed(0)}  ${JSON.stringify(stats.milliseconds ?? {})}`,
    );
  }
  console.log(`restores (ms): ${restores.map((value) => value.toFixed(0)).join(', ')}`);
  for (const note of notes) console.log(`note: ${note}`);
} finally {
  if (baselineVm) {
    baselineVm.kill('SIGKILL');
    await baselineVm.exited;
  }
  for (const view of await listMachines().catch(() => [])) {
    const config = await findMachine(view.config.id).catch(() => undefined);
    if (config) await removeMachine(config, { force: true }).catch(() => {});
  }
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
