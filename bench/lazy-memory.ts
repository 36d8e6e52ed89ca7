// Lazy guest memory benchmark (run by hand; issue 11 targets): lazy restore (userfaultfd pager in
// QEMU) side by side with the eager restore (materialize the RAM file first, TORPOR_LAZY_MEMORY=0),
// interleaved in one run: restore to agent answering, fork of 4, RSS of a restored machine, faults
// served per source, a re-snapshot of a restored machine, and session wakes (shell agent and the
// example coding agent). Prints one table; commit the output under bench/results/.
//   node --import tsx bench/lazy-memory.ts [restores per mode] [coding|-] [blocks]
// blocks: a comma list of restores,forks,checkpoints,wakes (default all; a host too busy for a full
// run can still measure some side by side: rows of skipped blocks print NaN).
import { MiB, percentile, ms, sleep, startHostSampler, codingAgentSpec, cpuSecondsOf, pingMachine } from './support.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';
import { mkdtemp, rm, readFile, stat } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';

const runs = Math.max(3, Number(process.argv[2] ?? 7));
const blocks = process.argv[4]?.split(',');
const wanted = (block: 'restores' | 'forks' | 'checkpoints' | 'wakes') => !blocks || blocks.includes(block);
const home = await mkdtemp(join(tmpdir(), 'tp-blm-'));
process.env.TORPOR_HOME = home;
const memoryDirectory = await mkdtemp('/dev/shm/tp-blm-');
process.env.TORPOR_MEMORY_DIR = memoryDirectory;
process.env.TORPOR_BOOT_TEMPLATES = '1';

const { createMachine, startMachine, connectToMachine, removeMachine, prepareHost, listMachines, findMachine, createSupervisorPool } =
  await import('../src/runtime/machines.ts');
const { StartTimeline } = await import('../src/runtime/start-timeline.ts');
const { snapshotMachine, restoreMachine, forkMachine } = await import('../src/runtime/snapshots.ts');
const { readMachineState, machineFiles } = await import('../src/runtime/machine-files.ts');
const { readLazyMemoryStatus, lazyMemorySupport } = await import('../src/snapshot/lazy-memory.ts');
const { readSnapshot } = await import('../src/snapshot/snapshot-store.ts');
const { openContextLog } = await import('../src/context/index.ts');
const { epochNow } = await import('../src/runtime/start-timeline.ts');
const { SessionManager } = await import('../src/session/session-manager.ts');
const { SessionStore } = await import('../src/session/session-store.ts');
type MachineConfig = import('../src/runtime/machine-record.ts').MachineConfig;
type SessionSpec = import('../src/session/session-store.ts').SessionSpec;
type SessionEvent = import('../src/session/session-manager.ts').SessionEvent;
type LazyMemoryCounters = import('../src/snapshot/lazy-memory.ts').LazyMemoryCounters;

type Mode = 'lazy' | 'eager';
const modes: Mode[] = ['lazy', 'eager'];
const setMode = (mode: Mode) => {
  if (mode === 'eager') process.env.TORPOR_LAZY_MEMORY = '0';
  else delete process.env.TORPOR_LAZY_MEMORY;
};
const median = (values: number[]) => percentile(values, 50);
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const progress = (text: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${text}\n`);

// The guest: node with ~100 MiB of live data (heap objects and random Buffers), like bench/snapshot.ts.
const SCRIPT = String.raw`
const crypto = require('crypto');
const words = 'alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau'.split(' ');
const objects = [];
const startHeap = process.memoryUsage().heapUsed;
while (process.memoryUsage().heapUsed - startHeap < 60 * 1048576) for (let k = 0; k < 2000; k++) { const i = objects.length; objects.push({ id: i, name: 'item-' + i, tags: [words[i % 19], words[(i >> 3) % 19]], text: Array.from({ length: 10 }, (_, j) => words[(i * 7 + j) % 19]).join(' ') }); }
const buffers = [];
for (let k = 0; k < 40; k++) buffers.push(crypto.randomBytes(1048576));
let ticks = 0;
setInterval(() => { ticks++; }, 1000);
console.log('ready ' + objects.length);
`;

async function waitForOutput(id: string, pattern: RegExp, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await readFile(machineFiles(id).processLog, 'utf8').catch(() => '');
    if (pattern.test(text)) return;
    if (Date.now() > deadline) throw new Error(`machine ${id} did not print ${pattern}`);
    await sleep(200);
  }
}

async function residentOf(config: MachineConfig): Promise<{ rss: number; shmem: number; anon: number; ramFile: number }> {
  const state = await readMachineState(config.id);
  const status = await readFile(`/proc/${state.qemuPid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) * 1024;
  const ramFile = (await stat(join(memoryDirectory, `${config.id}.ram`))).blocks * 512;
  return { rss: field('VmRSS'), shmem: field('RssShmem'), anon: field('RssAnon'), ramFile };
}

/** Runs a command with no output; true when it exited 0. */
async function runQuietly(file: string, args: string[]): Promise<boolean> {
  const { execFile } = await import('node:child_process');
  return new Promise((resolve) => execFile(file, args, { cwd: '/tmp' }, (error) => resolve(!error)));
}

/** CPU seconds of every process now (pid -> user + system), for what each used during a step. */
async function cpuOfAll(): Promise<Map<number, number>> {
  const { readdir } = await import('node:fs/promises');
  const result = new Map<number, number>();
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const seconds = await cpuSecondsOf(Number(entry));
    if (Number.isFinite(seconds)) result.set(Number(entry), seconds);
  }
  return result;
}

/** RSS of the pool's spares at rest (node supervisors, and their standby QEMUs found by name). */
async function standbyMemoryText(): Promise<string> {
  const { readdir } = await import('node:fs/promises');
  const rss = async (pid: string) => Number(/VmRSS:\s+(\d+) kB/.exec(await readFile(`/proc/${pid}/status`, 'utf8').catch(() => ''))?.[1] ?? 0) * 1024;
  const supervisors: number[] = [];
  const qemus: number[] = [];
  // (A machine's supervisor was spawned `--standby` too: only the pool's waiting ones count.)
  const machineSupervisors = new Set((await listMachines()).map((view) => view.state.supervisorPid));
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const command = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (/torpor-standby-\d+,/.test(command) && (await readFile(`/proc/${entry}/environ`, 'utf8').catch(() => '')).includes(memoryDirectory))
      qemus.push(await rss(entry));
    else if (
      command.includes('--standby') &&
      !machineSupervisors.has(Number(entry)) &&
      (await readFile(`/proc/${entry}/environ`, 'utf8').catch(() => '')).includes(home)
    )
      supervisors.push(await rss(entry));
  }
  const mean = (values: number[]) => values.reduce((sum, value) => sum + value, 0) / Math.max(1, values.length);
  return `${supervisors.length} spare supervisors, RSS mean ${mib(mean(supervisors))}; ${qemus.length} standby QEMUs, RSS mean ${mib(mean(qemus))}`;
}

const hostActivity = startHostSampler(memoryDirectory);
/** Run at the end, whatever happened (the fork block's pool). */
const cleanups: Array<() => Promise<void>> = [];
const rows: string[][] = [];
const row = (...cells: string[]) => rows.push(cells);
const details: string[] = [];

try {
  const host = await prepareHost();
  const support = await lazyMemorySupport();
  if (!support.available) throw new Error(`lazy memory is not available here: ${support.reason}`);
  const runStarted = performance.now();

  // ---- the machine under test (node, 512 MiB) and its snapshot
  setMode('lazy');
  const warm = await createMachine({ image: 'node', memoryMiB: 512, command: ['sleep', '100000'] });
  await startMachine(warm.id);
  await pingMachine(warm);
  await removeMachine(warm, { force: true });
  const origin = await createMachine({ image: 'node', memoryMiB: 512, command: ['node', '-e', SCRIPT], name: 'origin' });
  await startMachine(origin.id);
  await waitForOutput(origin.id, /ready \d+/, 180_000);
  await sleep(2000);
  const snapshot = await snapshotMachine(origin, { name: 'origin@1' });
  progress(`snapshot taken (${mib(Number(snapshot.stats.nonZeroBytes))} non-zero)`);

  // ---- restore to agent answering, modes interleaved
  const restores: Record<Mode, number[]> = { lazy: [], eager: [] };
  // CPU time is steadier than wall time on a shared host: this process (materialize threads
  // included), the new supervisor and QEMU, from the restore call to the agent answering.
  const restoreCpu: Record<Mode, number[]> = { lazy: [], eager: [] };
  const ready: Record<Mode, number[]> = { lazy: [], eager: [] };
  const resident: Partial<Record<Mode, Awaited<ReturnType<typeof residentOf>>>> = {};
  let counters: LazyMemoryCounters | undefined;
  let countersLater: LazyMemoryCounters | undefined;
  const resnapshot: Partial<Record<Mode, { totalMs: number; captureMs: number; newBytes: number; scanned: number }>> = {};
  // The path a long-running host (or a library user) gets with a supervisor pool in steady state: a
  // spare supervisor already running, holding a paused standby QEMU of this machine's shape
  // (`restoreMachine(snapshot, { pool })`, lazy memory). The first restore through the pool tells it
  // the shape (not counted); each timed one waits until the pool has refilled and its spare started
  // a standby QEMU. Its per-step breakdown: `poolTimelines` (steps of this process and the supervisor).
  const poolRestores: number[] = [];
  const poolCpu: number[] = [];
  const poolTimelines: Array<Array<[string, number]>> = [];
  const lazyTimelines: Array<Array<[string, number]>> = [];
  const pool = wanted('restores') ? createSupervisorPool(1) : undefined;
  const poolRestore = async (name: string, timeline?: InstanceType<typeof StartTimeline>) => {
    setMode('lazy');
    const restored = await restoreMachine('origin@1', { name, pool, timeline });
    await pingMachine(restored);
    return restored;
  };
  if (pool) {
    await sleep(1500);
    await removeMachine(await poolRestore('pool-warm-up'), { force: true });
  }
  const timelineOf = (timeline: InstanceType<typeof StartTimeline>, began: number, answered: number): Array<[string, number]> =>
    [...timeline.steps, { step: 'bench: agent answered a ping', at: answered }]
      .sort((a, b) => a.at - b.at)
      .map(({ step, at }) => [step, at - began] as [string, number]);
  for (let run = 0; run < (wanted('restores') ? runs : 0); run++) {
    if (pool) {
      // Steady state: the pool refills 1 s after a take; its spare then starts the standby QEMU.
      await sleep(2500);
      const timeline = new StartTimeline();
      const began = performance.now();
      const beganEpoch = performance.timeOrigin + began;
      const cpuBefore = process.cpuUsage();
      const restored = await poolRestore(`r-pool-${run}`, timeline);
      poolRestores.push(performance.now() - began);
      poolTimelines.push(timelineOf(timeline, beganEpoch, performance.timeOrigin + performance.now()));
      const cpuSelf = process.cpuUsage(cpuBefore);
      const machineState = await readMachineState(restored.id);
      poolCpu.push((cpuSelf.user + cpuSelf.system) / 1e6 + (await cpuSecondsOf(machineState.qemuPid)) + (await cpuSecondsOf(machineState.supervisorPid)));
      await removeMachine(restored, { force: true });
    }
    for (const mode of run % 2 === 0 ? modes : [...modes].reverse()) {
      setMode(mode);
      const began = performance.now();
      const cpuBefore = process.cpuUsage();
      const timeline = new StartTimeline();
      const restored = await restoreMachine('origin@1', { name: `r-${mode}-${run}`, timeline });
      await pingMachine(restored);
      restores[mode].push(performance.now() - began);
      if (mode === 'lazy') lazyTimelines.push(timelineOf(timeline, performance.timeOrigin + began, performance.timeOrigin + performance.now()));
      const cpuSelf = process.cpuUsage(cpuBefore);
      const machineState = await readMachineState(restored.id);
      restoreCpu[mode].push(
        (cpuSelf.user + cpuSelf.system) / 1e6 + (await cpuSecondsOf(machineState.qemuPid)) + (await cpuSecondsOf(machineState.supervisorPid)),
      );
      ready[mode].push((await readMachineState(restored.id)).bootMs ?? NaN);
      if (run === 0) {
        if (mode === 'lazy') counters = (await readLazyMemoryStatus(join(memoryDirectory, `${restored.id}.ram`)))?.counters;
        await sleep(3000);
        resident[mode] = await residentOf(restored);
        if (mode === 'lazy') countersLater = (await readLazyMemoryStatus(join(memoryDirectory, `${restored.id}.ram`)))?.counters;
        const summary = await snapshotMachine(restored, { name: `again-${mode}` });
        resnapshot[mode] = {
          totalMs: summary.totalMs,
          captureMs: summary.captureMs,
          newBytes: Number(summary.stats.newCompressedBytes),
          scanned: Number(summary.stats.scannedBytes),
        };
      }
      await removeMachine(restored, { force: true });
    }
  }
  await pool?.close();
  progress('restores done');

  // ---- working-set prefetch: restores of a snapshot taken from a lazily restored machine (it
  // carries the chunks that machine touched in its first second), with and without prefetch
  const prefetchRestores: Record<'with' | 'without', number[]> = { with: [], without: [] };
  let prefetchCounters: LazyMemoryCounters | undefined;
  setMode('lazy');
  for (let run = 0; run < (wanted('restores') ? runs : 0); run++) {
    for (const variant of run % 2 === 0 ? (['with', 'without'] as const) : (['without', 'with'] as const)) {
      if (variant === 'without') process.env.TORPOR_LAZY_PREFETCH = '0';
      else delete process.env.TORPOR_LAZY_PREFETCH;
      const began = performance.now();
      const restored = await restoreMachine('again-lazy', { name: `p-${variant}-${run}` });
      await pingMachine(restored);
      prefetchRestores[variant].push(performance.now() - began);
      if (run === 0 && variant === 'with') prefetchCounters = (await readLazyMemoryStatus(join(memoryDirectory, `${restored.id}.ram`)))?.counters;
      await removeMachine(restored, { force: true });
    }
  }
  delete process.env.TORPOR_LAZY_PREFETCH;
  const workingSetSize = wanted('restores') ? (((await readSnapshot('again-lazy')).metadata as { workingSet?: number[] }).workingSet?.length ?? 0) : 0;
  progress('prefetch restores done');

  // ---- fork of 4, until all four answer: through a pool (as `torpor serve` forks: spare supervisors
  // holding standby QEMUs of the children's shape) against today's fork (no pool: the CLI's), lazy
  // memory both, interleaved. The pool is in steady state before every timed fork, as a server's is
  // between forks: an untimed fork taught it the shape, and it has refilled since (4 spares, each with
  // its standby QEMU up). Per-step times are when the LAST of the 4 children reached the step; CPU is
  // what each process used during the fork (from /proc, so spares count only from when they were taken).
  type ForkMode = 'pool' | 'today';
  const forkModes: ForkMode[] = ['pool', 'today'];
  const forks: Record<ForkMode, number[]> = { pool: [], today: [] };
  const forkSteps: Record<ForkMode, Array<Map<string, number>>> = { pool: [], today: [] };
  const forkCpu: Record<ForkMode, Array<Record<string, number>>> = { pool: [], today: [] };
  const forkParent: Record<
    ForkMode,
    Array<{ totalMs: number; pausedMs: number; captureMs: number; store: Record<string, number>; threads: Record<string, number> }>
  > = { pool: [], today: [] };
  let standbyMemory = '';
  let forkPool: ReturnType<typeof createSupervisorPool> | undefined;
  cleanups.push(async () => await forkPool?.close());
  if (wanted('forks')) {
    setMode('lazy');
    forkPool = createSupervisorPool({ spares: 4, standbys: 4 });
    const { forks: learned } = await forkMachine(origin, { count: 4, namePrefix: 'f-learn', pool: forkPool });
    await Promise.all(learned.map((fork) => pingMachine(fork)));
    for (const fork of learned) await removeMachine(fork, { force: true });
    if (!(await forkPool.settled(120_000))) throw new Error('the fork pool did not settle');
    standbyMemory = await standbyMemoryText();
  }
  // The named peer: 4 podman (runc) containers started at once until each has run `true`. Not a
  // fork (a container carries no memory state; podman's CRIU checkpoint/restore fails on this kernel:
  // host-facts), but the cost of 4 fresh isolated environments on this host, in the same run.
  const podmanForks: number[] = [];
  const podmanImage = 'localhost/torpor-bench-busybox:latest';
  const podmanReady = wanted('forks') && (await runQuietly('podman', ['image', 'exists', podmanImage]));
  for (let run = 0; run < (wanted('forks') ? runs : 0); run++) {
    if (podmanReady) {
      await sleep(500);
      const began = performance.now();
      const started = await Promise.all(
        [1, 2, 3, 4].map(() =>
          runQuietly('podman', ['--runtime', 'runc', 'run', '--rm', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', podmanImage, 'true']),
        ),
      );
      if (started.every(Boolean)) podmanForks.push(performance.now() - began);
    }
    for (const mode of run % 2 === 0 ? forkModes : [...forkModes].reverse()) {
      if (mode === 'pool' && !(await forkPool!.settled(120_000))) throw new Error('the fork pool did not settle');
      await sleep(500);
      const cpuBefore = await cpuOfAll();
      const timeline = new StartTimeline();
      const childTimelines = [0, 1, 2, 3].map(() => new StartTimeline());
      const began = epochNow();
      const { forks: made, snapshot: parentSnapshot } = await forkMachine(origin, {
        count: 4,
        namePrefix: `f-${mode}-${run}`,
        pool: mode === 'pool' ? forkPool : undefined,
        timeline,
        childTimelines,
      });
      await Promise.all(made.map((fork, index) => pingMachine(fork).then(() => childTimelines[index]!.mark('bench: agent answered a ping'))));
      const ended = epochNow();
      forks[mode].push(ended - began);
      const cpuAfter = await cpuOfAll();
      // The last child's time at each step, since the fork began.
      const steps = new Map<string, number>();
      for (const { step, at } of timeline.steps) steps.set(step, at - began);
      for (const child of childTimelines) for (const { step, at } of child.steps) steps.set(step, Math.max(steps.get(step) ?? 0, at - began));
      forkSteps[mode].push(steps);
      const originState = await readMachineState(origin.id);
      const children = await Promise.all(made.map((fork) => readMachineState(fork.id)));
      const delta = (pid: number | undefined) => (pid ? (cpuAfter.get(pid) ?? 0) - (cpuBefore.get(pid) ?? 0) : 0);
      const cpu: Record<string, number> = {
        'this process': delta(process.pid),
        'parent supervisor': delta(originState.supervisorPid),
        'parent QEMU': delta(originState.qemuPid),
        '4 child supervisors': children.reduce((sum, state) => sum + delta(state.supervisorPid), 0),
        '4 child QEMUs': children.reduce((sum, state) => sum + delta(state.qemuPid), 0),
      };
      const named = new Set([
        process.pid,
        originState.supervisorPid,
        originState.qemuPid,
        ...children.flatMap((state) => [state.supervisorPid, state.qemuPid]),
      ]);
      cpu['other processes'] = [...cpuAfter.keys()].filter((pid) => !named.has(pid)).reduce((sum, pid) => sum + delta(pid), 0);
      forkCpu[mode].push(cpu);
      forkParent[mode].push({
        totalMs: parentSnapshot.totalMs,
        pausedMs: parentSnapshot.guestPausedMs ?? parentSnapshot.pauseMs,
        captureMs: parentSnapshot.captureMs,
        store: (parentSnapshot.stats as { milliseconds?: Record<string, number> }).milliseconds ?? {},
        threads: (parentSnapshot.stats as { threadMilliseconds?: Record<string, number> }).threadMilliseconds ?? {},
      });
      // Each child's adoption (or QEMU start) and device state, to tell contention from a slow step.
      details.push(
        `fork ${mode} run ${run}: ${childTimelines
          .map((child) => {
            const at = (step: string) => child.steps.find((entry) => entry.step === step)?.at;
            const span = (from: string, to: string) => ((at(to) ?? NaN) - (at(from) ?? NaN)).toFixed(0);
            return `[qemu ${span('supervisor: qemuLaunching', 'supervisor: qmpReady')} ms, go->device state ${span('supervisor: goSaid', 'supervisor: deviceStateLoaded')} ms, ->agent ${span('supervisor: deviceStateLoaded', 'supervisor: agentAnswered')} ms]`;
          })
          .join(' ')}`,
      );
      for (const fork of made) await removeMachine(fork, { force: true });
    }
  }
  progress('forks done');

  // ---- checkpoints that continue (the guest keeps running): after a small change (1 MiB written
  // in the guest), how long the guest is paused and how much of its RAM is read: lazy restore with
  // write tracking (its disk layer through QEMU's copy-before-write job, or copied with the guest
  // paused as before: TORPOR_DISK_COPY_JOB=0), lazy without tracking (TORPOR_TRACK_WRITES=0), and
  // the eager restore of today
  type Checkpoint = { pausedMs: number; memoryRead: number; newBytes: number; phases: Record<string, number> };
  type CheckpointVariant = 'tracked' | 'pausedDisk' | 'wholeChunks' | 'untracked' | 'eager';
  const checkpointVariants: CheckpointVariant[] = ['tracked', 'pausedDisk', 'wholeChunks', 'untracked', 'eager'];
  const checkpoints: Record<CheckpointVariant, Checkpoint[]> = { tracked: [], pausedDisk: [], wholeChunks: [], untracked: [], eager: [] };
  for (const variant of wanted('checkpoints') ? checkpointVariants : []) {
    setMode(variant === 'eager' ? 'eager' : 'lazy');
    if (variant === 'untracked') process.env.TORPOR_TRACK_WRITES = '0';
    // The supervisor reads these when it captures: whole 256 KiB chunks, as before page deltas; the disk copied paused.
    if (variant === 'wholeChunks' || variant === 'untracked') process.env.TORPOR_PAGE_DELTAS = '0';
    if (variant === 'pausedDisk') process.env.TORPOR_DISK_COPY_JOB = '0';
    const machine = await restoreMachine('origin@1', { name: `c-${variant}` });
    delete process.env.TORPOR_TRACK_WRITES;
    delete process.env.TORPOR_PAGE_DELTAS;
    delete process.env.TORPOR_DISK_COPY_JOB;
    await pingMachine(machine);
    await snapshotMachine(machine, { name: `c-${variant}-0` });
    for (let turn = 1; turn <= runs; turn++) {
      const client = await connectToMachine(machine);
      await client.exec({
        argv: ['sh', '-c', `head -c 1048576 /dev/urandom > /root/turn-${turn}`],
        env: [],
        workingDirectory: '/',
        user: '',
        tty: false,
        stdin: false,
      }).exited;
      client.close();
      const summary = await snapshotMachine(machine, { name: `c-${variant}-${turn}` });
      checkpoints[variant].push({
        // the guest runs again after its device state when the capture copies before writes
        pausedMs: summary.guestPausedMs ?? summary.totalMs,
        memoryRead: Number(summary.stats.memoryScannedBytes ?? NaN),
        newBytes: Number(summary.stats.newCompressedBytes),
        phases: summary.pausedPhases ?? {},
      });
    }
    await removeMachine(machine, { force: true });
  }
  await removeMachine(origin, { force: true });
  progress('checkpoints done');

  // ---- session wakes: message for a hibernated session -> first reply byte
  const log = await openContextLog({ stateDirectory: home });
  let manager = new SessionManager({ log, tickMs: 50, turnTimeoutMs: 20_000 });
  const waitHibernated = async (id: string) => {
    for (let attempt = 0; attempt < 1200 && manager.get(id).state !== 'hibernated'; attempt++) await sleep(50);
    if (manager.get(id).state !== 'hibernated') throw new Error(`session ${id} did not hibernate: ${manager.get(id).state}`);
  };
  const firstByte = async (id: string, content: string): Promise<number> => {
    const started = performance.now();
    let first = NaN;
    const { events } = await manager.send(id, content, (event: SessionEvent) => {
      if (event.type === 'text-delta' && Number.isNaN(first)) first = performance.now() - started;
    });
    const failure = events.find((event) => event.type === 'error');
    if (failure) throw new Error(`turn failed: ${JSON.stringify(failure)}`);
    return first;
  };
  const wakes = async (spec: SessionSpec, count: number, content: (run: number) => string): Promise<Record<Mode, number[]>> => {
    const result: Record<Mode, number[]> = { lazy: [], eager: [] };
    setMode('lazy');
    const record = await manager.create(spec, { name: `wake-${spec.image}` });
    await firstByte(record.id, content(0));
    for (let run = 0; run < count; run++) {
      for (const mode of run % 2 === 0 ? modes : [...modes].reverse()) {
        await waitHibernated(record.id);
        await sleep(200);
        setMode(mode);
        result[mode].push(await firstByte(record.id, content(run + 1)));
      }
    }
    await waitHibernated(record.id);
    await manager.delete(record.id);
    return result;
  };
  const shellSpec: SessionSpec = { image: 'base', command: ['sh', '-c', shellAgent], env: [], cpus: 1, memoryMiB: 256, idleSeconds: 0.5 };
  const shellWakes = wanted('wakes')
    ? await wakes(shellSpec, Math.max(runs, 8), (run) => `turn ${run}: please look at the retry loop and tell me what changed`)
    : { lazy: [], eager: [] };
  progress('shell wakes done');
  // The warm tier: hibernated RAM kept in tmpfs (supervisors read the budget when they start, so a
  // new manager with it set from the start)
  await manager.close();
  process.env.TORPOR_WARM_MEMORY = '1024';
  manager = new SessionManager({ log, store: new SessionStore(), tickMs: 50, turnTimeoutMs: 20_000 });
  const warmWakes: number[] = [];
  if (wanted('wakes')) {
    setMode('lazy');
    const record = await manager.create(shellSpec, { name: 'wake-warm' });
    await firstByte(record.id, 'warm up');
    for (let run = 0; run < Math.max(runs, 8); run++) {
      await waitHibernated(record.id);
      await sleep(200);
      warmWakes.push(await firstByte(record.id, `turn ${run}: please look at the retry loop and tell me what changed`));
    }
    await waitHibernated(record.id);
    await manager.delete(record.id);
  }
  delete process.env.TORPOR_WARM_MEMORY;
  progress('warm wakes done');
  let codingWakes: Record<Mode, number[]> | undefined;
  let codingNote = '';
  let hibernationTable: string[][] = [];
  let hibernationDetails: string[] = [];
  let llm: { port: number; close: () => Promise<void> } | undefined;
  try {
    if (process.argv[3] !== 'coding') throw new Error('skipped (pass `coding` as the second argument)');
    const { buildCodingAgentImage } = await import('../examples/coding-agent/image.ts');
    const { startDevLlm } = await import('../src/dev-llm/index.ts');
    await buildCodingAgentImage();
    llm = await startDevLlm({ port: 0, host: '127.0.0.1' });
    await manager.close();
    manager = new SessionManager({ log, store: new SessionStore(), tickMs: 50, turnTimeoutMs: 180_000 });
    const codingSpec = codingAgentSpec(llm.port, 1);
    if (wanted('wakes')) codingWakes = await wakes(codingSpec, 5, (run) => `remember fact number ${run}`);
    // Smaller hibernations: the coding agent after 10 turns, each way of not storing freed or unchanged memory.
    await manager.close();
    const { measureHibernationSizes, hibernationRows } = await import('./hibernation-sizes.ts');
    const sizes = await measureHibernationSizes(10, progress);
    hibernationTable = hibernationRows(sizes, 10);
    hibernationDetails = sizes.map(
      (result) =>
        `hibernation ${result.variant.name}: new per turn (MiB) ${result.newBytesPerTurn.map((value) => (value / MiB).toFixed(2)).join(', ')}; wakes (ms) ${result.wakeMs.map((value) => value.toFixed(0)).join(', ')}`,
    );
  } catch (error) {
    codingNote = `coding agent rows: ${(error as Error).message}`;
  } finally {
    await llm?.close();
    // (closed already when the hibernation rows ran)
    await manager.close().catch(() => {});
  }
  progress('coding wakes done');

  // ---- report
  const pair = (values: Record<Mode, number[]>) =>
    `lazy p50 ${ms(median(values.lazy))} (max ${ms(Math.max(...values.lazy))}) | eager p50 ${ms(median(values.eager))} (max ${ms(Math.max(...values.eager))})`;
  const ratio = (values: Record<Mode, number[]>) => `${(median(values.eager) / median(values.lazy)).toFixed(2)}x faster`;
  row('metric', 'target', 'lazy vs eager (one run, interleaved)', 'lazy vs eager');
  row(`restore to agent answering, node 512 MiB (n=${runs} each)`, '<= 150 ms cold', pair(restores), ratio(restores));
  row('  of which supervisor ready (QEMU, device state, agent hello)', '-', pair(ready), ratio(ready));
  row(
    `  with a supervisor pool in steady state (spare + standby QEMU), lazy (n=${poolRestores.length})`,
    '<= 150 ms cold',
    `pool p50 ${ms(median(poolRestores))} (min ${ms(Math.min(...poolRestores))}, max ${ms(Math.max(...poolRestores))}), CPU p50 ${median(poolCpu).toFixed(2)} s`,
    `${(median(restores.lazy) / median(poolRestores)).toFixed(2)}x faster than lazy`,
  );
  row(
    '  CPU time per restore (this process + supervisor + QEMU)',
    '-',
    `lazy p50 ${median(restoreCpu.lazy).toFixed(2)} s | eager p50 ${median(restoreCpu.eager).toFixed(2)} s`,
    `${(median(restoreCpu.eager) / median(restoreCpu.lazy)).toFixed(2)}x less CPU`,
  );
  row(
    `  lazy with working-set prefetch (${workingSetSize} chunks) vs without (n=${runs} each)`,
    '-',
    `with p50 ${ms(median(prefetchRestores.with))} | without p50 ${ms(median(prefetchRestores.without))}`,
    `${(median(prefetchRestores.without) / median(prefetchRestores.with)).toFixed(2)}x`,
  );
  row(
    `fork of 4, all answering: pool (serve) vs no pool (CLI, today), lazy (n=${forks.pool.length} each)`,
    '<= 600 ms',
    `pool p50 ${ms(median(forks.pool))} (max ${ms(Math.max(...forks.pool))}) | today p50 ${ms(median(forks.today))} (max ${ms(Math.max(...forks.today))})`,
    `${(median(forks.today) / median(forks.pool)).toFixed(2)}x faster`,
  );
  row(
    `  peer: 4 podman (runc) containers at once, each ran \`true\` (no state; n=${podmanForks.length})`,
    '-',
    podmanForks.length > 0
      ? `p50 ${ms(median(podmanForks))} (max ${ms(Math.max(...podmanForks))})`
      : 'podman or its busybox image (bench/start.ts makes it) not found',
    podmanForks.length > 0 ? `pool fork ${(median(podmanForks) / median(forks.pool)).toFixed(2)}x faster` : '-',
  );
  for (const step of [...new Set(forkModes.flatMap((mode) => forkSteps[mode].flatMap((steps) => [...steps.keys()])))].sort(
    (a, b) =>
      median(forkSteps.pool.map((steps) => steps.get(a) ?? NaN).filter(Number.isFinite)) -
      median(forkSteps.pool.map((steps) => steps.get(b) ?? NaN).filter(Number.isFinite)),
  )) {
    const at = (mode: ForkMode) => {
      const values = forkSteps[mode].map((steps) => steps.get(step)).filter((value): value is number => value !== undefined);
      return values.length > 0 ? ms(median(values)) : '-';
    };
    row(`  last child at: ${step}`, '-', `pool p50 ${at('pool')} | today p50 ${at('today')}`, '-');
  }
  for (const name of Object.keys(forkCpu.pool[0] ?? forkCpu.today[0] ?? {}))
    row(
      `  CPU during the fork: ${name}`,
      '-',
      `pool p50 ${median(forkCpu.pool.map((cpu) => cpu[name]!)).toFixed(2)} s | today p50 ${median(forkCpu.today.map((cpu) => cpu[name]!)).toFixed(2)} s`,
      '-',
    );
  row(
    '  parent snapshot (in the fork): total, guest paused',
    '-',
    forkModes
      .map(
        (mode) =>
          `${mode} p50 ${ms(median(forkParent[mode].map((value) => value.totalMs)))}, paused ${ms(median(forkParent[mode].map((value) => value.pausedMs)))}`,
      )
      .join(' | '),
    '-',
  );
  const parentPart = (mode: ForkMode, pick: (value: (typeof forkParent)[ForkMode][number]) => Record<string, number>) =>
    Object.keys(pick(forkParent[mode][0] ?? forkParent.pool[0]!) ?? {})
      .map((key) => `${key} ${median(forkParent[mode].map((value) => pick(value)[key] ?? NaN)).toFixed(0)}`)
      .join(', ');
  if (forkParent.pool.length > 0) {
    row('  parent snapshot: store steps (ms), p50', '-', forkModes.map((mode) => `${mode}: ${parentPart(mode, (value) => value.store)}`).join(' | '), '-');
    row('  parent snapshot: thread time (ms), p50', '-', forkModes.map((mode) => `${mode}: ${parentPart(mode, (value) => value.threads)}`).join(' | '), '-');
  }
  if (standbyMemory) row('  memory of the pool at rest (4 spares, 4 standby QEMUs)', '-', standbyMemory, '-');
  row(`wake -> first reply byte, shell agent (n=${shellWakes.lazy.length} each)`, '<= 250 ms', pair(shellWakes), ratio(shellWakes));
  row(
    `  warm (RAM kept in tmpfs, TORPOR_WARM_MEMORY=1024) (n=${warmWakes.length})`,
    '<= 100 ms warm',
    `p50 ${ms(median(warmWakes))} (max ${ms(Math.max(...warmWakes))})`,
    `${(median(shellWakes.eager) / median(warmWakes)).toFixed(2)}x faster than eager`,
  );
  if (codingWakes) row(`wake -> first reply byte, coding agent (n=${codingWakes.lazy.length} each)`, '<= 500 ms', pair(codingWakes), ratio(codingWakes));
  for (const entry of hibernationTable) row(...entry);
  const residentText = (value?: Awaited<ReturnType<typeof residentOf>>) =>
    value ? `RSS ${mib(value.rss)} (shmem ${mib(value.shmem)}, anon ${mib(value.anon)}), RAM file ${mib(value.ramFile)}` : '-';
  row(
    'restored machine 3 s after answering',
    '-',
    `lazy ${residentText(resident.lazy)} | eager ${residentText(resident.eager)}`,
    resident.lazy && resident.eager ? `${(resident.eager.ramFile / resident.lazy.ramFile).toFixed(1)}x less guest RAM resident` : '-',
  );
  const snapText = (value?: { totalMs: number; captureMs: number; newBytes: number; scanned: number }) =>
    value ? `${ms(value.totalMs)} (capture ${ms(value.captureMs)}, read ${mib(value.scanned)}), new ${mib(value.newBytes)}` : '-';
  row('snapshot of a restored machine 3 s after answering', '-', `lazy ${snapText(resnapshot.lazy)} | eager ${snapText(resnapshot.eager)}`, '-');
  const checkpointNames: Record<CheckpointVariant, string> = {
    tracked: "lazy + write tracking + 4 KiB deltas, disk by QEMU's copy-before-write",
    pausedDisk: 'lazy + write tracking + 4 KiB deltas, disk copied paused (before)',
    wholeChunks: "lazy + write tracking, whole chunks, disk by QEMU's copy-before-write",
    untracked: 'lazy, no tracking, whole chunks',
    eager: 'eager restore (today)',
  };
  for (const variant of checkpointVariants) {
    const values = checkpoints[variant];
    row(
      `checkpoint that continues, after 1 MiB written: ${checkpointNames[variant]} (n=${values.length})`,
      variant === 'tracked' ? '<= 30 ms paused, <= 4 MiB new' : '-',
      `paused p50 ${ms(median(values.map((value) => value.pausedMs)))} (min ${ms(Math.min(...values.map((value) => value.pausedMs)))}, max ${ms(Math.max(...values.map((value) => value.pausedMs)))}), RAM read p50 ${mib(median(values.map((value) => value.memoryRead)))}, new p50 ${mib(median(values.map((value) => value.newBytes)))}`,
      '-',
    );
    // Where the pause went, p50 of each step (steps that overlap are each timed whole).
    const names = [...new Set(values.flatMap((value) => Object.keys(value.phases)))];
    if (names.length > 0)
      row(
        '  paused phases, p50',
        '-',
        names.map((name) => `${name.replace(/Ms$/, '')} ${median(values.map((value) => value.phases[name] ?? 0)).toFixed(1)}`).join(', ') + ' ms',
        '-',
      );
  }
  const counterText = (value?: LazyMemoryCounters) =>
    value
      ? `${value.faults} faults (mean ${value.meanFaultMicroseconds.toFixed(0)} us); chunks: ${value.templateChunks} template (${value.templateMs.toFixed(1)} ms), ${value.storeChunks} store (${value.storeMs.toFixed(1)} ms), ${value.zeroChunks} zero, ${value.prefetchedChunks} prefetched; ${value.zeroPages} zero pages; ${mib(value.copiedBytes)} copied`
      : '-';
  row('faults served per source, lazy, at agent answering', '-', counterText(counters), '-');
  row('  same machine 3 s later', '-', counterText(countersLater), '-');
  row('  with prefetch, at agent answering', '-', counterText(prefetchCounters), '-');

  const cpuModel = cpus()[0]?.model ?? 'unknown';
  console.log(`torpor lazy guest memory benchmark (issue 11), ${new Date().toISOString()}`);
  console.log(`accel: ${host.accelerator.accelerator} (${host.accelerator.reason})`);
  console.log(
    `host: ${cpus().length} cores (${cpuModel}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, node ${process.version}; userfaultfd write-protect on shmem: ${support.writeProtect ? 'yes' : 'no'}`,
  );
  console.log(
    `snapshot: node guest 512 MiB with ${mib(Number(snapshot.stats.nonZeroBytes))} non-zero; run took ${((performance.now() - runStarted) / 1000).toFixed(0)} s`,
  );
  const activity = hostActivity();
  console.log(
    `other work on the host during the run: load average ${activity.loadStart.toFixed(1)} at start, max ${activity.loadMax.toFixed(1)}; QEMU processes not of this bench: max ${activity.foreignQemuMax}, mean ${activity.foreignQemuMean.toFixed(1)}`,
  );
  console.log('');
  const widths = [0, 1, 2].map((column) => Math.max(...rows.map((entry) => entry[column]!.length)));
  rows.forEach((entry, index) => {
    console.log(entry.map((cell, column) => (column < 3 ? cell.padEnd(widths[column]!) : cell)).join(' | '));
    if (index === 0) console.log(widths.map((width) => '-'.repeat(width)).join('-|-') + '-|------');
  });
  console.log('');
  console.log(
    `restores (ms): lazy ${restores.lazy.map((value) => value.toFixed(0)).join(', ')}; eager ${restores.eager.map((value) => value.toFixed(0)).join(', ')}`,
  );
  console.log(
    `shell wakes (ms): lazy ${shellWakes.lazy.map((value) => value.toFixed(0)).join(', ')}; eager ${shellWakes.eager.map((value) => value.toFixed(0)).join(', ')}`,
  );
  console.log(`podman x4 (ms): ${podmanForks.map((value) => value.toFixed(0)).join(', ')}`);
  console.log(`forks (ms): pool ${forks.pool.map((value) => value.toFixed(0)).join(', ')}; today ${forks.today.map((value) => value.toFixed(0)).join(', ')}`);
  console.log(`warm wakes (ms): ${warmWakes.map((value) => value.toFixed(0)).join(', ')}`);
  if (codingWakes)
    console.log(
      `coding wakes (ms): lazy ${codingWakes.lazy.map((value) => value.toFixed(0)).join(', ')}; eager ${codingWakes.eager.map((value) => value.toFixed(0)).join(', ')}`,
    );
  for (const detail of hibernationDetails) console.log(detail);
  if (codingNote) console.log(`note: ${codingNote}`);
  for (const detail of details) console.log(detail);
  console.log(`pool restores (ms): ${poolRestores.map((value) => value.toFixed(0)).join(', ')}`);
  for (const [name, timelines] of [
    ['pool + standby QEMU', poolTimelines],
    ['lazy, no pool', lazyTimelines],
  ] as const) {
    if (timelines.length === 0) continue;
    console.log('');
    console.log(`restore breakdown, ${name}: median over ${timelines.length} restores of when each step ended (ms after restoreMachine was called)`);
    let previous = 0;
    for (const step of timelines[0]!.map(([step]) => step)) {
      const at = median(timelines.map((timeline) => timeline.find(([name]) => name === step)?.[1]).filter((value): value is number => value !== undefined));
      console.log(`  ${step.padEnd(56)} ${at.toFixed(1).padStart(7)} ms   (+${(at - previous).toFixed(1).padStart(6)})`);
      previous = at;
    }
  }
} finally {
  for (const cleanup of cleanups) await cleanup().catch(() => {});
  delete process.env.TORPOR_LAZY_MEMORY;
  delete process.env.TORPOR_WARM_MEMORY;
  for (const view of await listMachines().catch(() => [])) {
    const config = await findMachine(view.config.id).catch(() => undefined);
    if (config) await removeMachine(config, { force: true }).catch(() => {});
  }
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
