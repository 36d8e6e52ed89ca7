// Start benchmark (run by hand, as root): `torpor run --rm base true`, `torpor ps` / `--version`,
// starts per minute from a boot template (2 at a time) and host memory per idle machine outside
// QEMU, side by side in one run for this tree without spare machines ("new"), this tree claiming
// spares ("spare", TORPOR_SPARE_MACHINES=1: each measured run waits until the pool refilled, and
// its CPU includes that refill), the tree before the start-path work (OLD_COMMIT, taken with git
// archive) and podman (runc, a busybox image imported from /bin/busybox). Starts per minute from
// the pool twice: a burst from a full pool of 4, and sustained (pool of 1, refilled as it goes:
// bounded by the refill, a full restore per spare). Then breakdowns of one cold start and one
// claim of this tree: where the time goes. Appends a dated section to bench/results/.
//   node --import tsx bench/start.ts [runs]
// CPU is measured with a cgroup v1 cpuacct group around each command, so it includes what the CLI
// starts detached (supervisor, QEMU; podman's conmon and runc when they stay in the group).
import { spawn, execFileSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, rmdirSync, symlinkSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { percentile, runJsonChild, sleep, startHostSampler } from './support.ts';

const runs = Number(process.argv[2] ?? 5);
const OLD_COMMIT = 'fe41baf';
const root = fileURLToPath(new URL('..', import.meta.url));
const scratch = mkdtempSync(join(tmpdir(), 'tp-bench-start-'));
const cgroup = `/sys/fs/cgroup/cpuacct/torpor-bench-start-${process.pid}`;
const podmanImage = 'localhost/torpor-bench-busybox:latest';

interface System {
  name: string;
  command: (args: string[]) => string[];
  environment: NodeJS.ProcessEnv;
  /** Waits until the system is ready for the next measured start (a spare pool refilled). */
  settle?: () => Promise<void>;
}

// This sandbox sets NODE_EXTRA_CA_CERTS, which makes every node process parse Debian's whole CA
// bundle at start (~90 ms of CPU): a cost of this host's setup, not of torpor, and podman does not
// pay it. Removed for every system, and said in the output.
const { NODE_EXTRA_CA_CERTS: extraCertificates, ...withoutExtraCertificates } = process.env;
// The KVM probe's verdict (8 s the first time) is cached per guest, and trees before d0cbf36 share
// one cache file that any other torpor tree on the host overwrites: every start of the old tree
// could pay the probe again (the 9-10 s `run --rm` rows of earlier runs). Not part of a start:
// this tree's verdict is handed to every tree.
const { prepareHost } = await import('../src/runtime/host-preparation.ts');
const accelerator = (await prepareHost()).accelerator.accelerator;
withoutExtraCertificates.TORPOR_ACCEL = accelerator;

function torporSystem(name: string, tree: string, spares = 0): System {
  const home = join(scratch, `${name}-home`);
  const memory = `/dev/shm/torpor-bench-start-${name}-${process.pid}`;
  return {
    name,
    command: (args) => [process.execPath, join(tree, 'bin', 'torpor.js'), ...args],
    environment: { ...withoutExtraCertificates, TORPOR_HOME: home, TORPOR_MEMORY_DIR: memory, TORPOR_NO_BUNDLE: '', TORPOR_SPARE_MACHINES: String(spares) },
    ...(spares > 0 ? { settle: () => poolSettled(home, spares) } : {}),
  };
}

/** Waits until a home's spare pool holds `size` ready spares and no fill runs (at most 120 s). */
async function poolSettled(home: string, size: number): Promise<void> {
  const deadline = performance.now() + 120_000;
  while (performance.now() < deadline) {
    const entries = existsSync(join(home, 'spares')) ? readdirSync(join(home, 'spares')) : [];
    const ready = entries.filter((entry) => /^[0-9a-f]{16}\.[0-9a-f]{12}$/.test(entry)).length;
    if (ready >= size && !entries.some((entry) => entry.endsWith('.lock'))) return;
    await sleep(100);
  }
  throw new Error(`the spare pool of ${home} did not refill to ${size} within 120 s`);
}

const podman: System = {
  name: 'podman',
  command: (args) => ['podman', '--runtime', 'runc', ...args],
  environment: withoutExtraCertificates,
};

/** The tree before this work, from git: the "old path". */
function oldTree(): string {
  const tree = join(scratch, 'old-tree');
  mkdirSync(tree);
  execFileSync('sh', ['-c', `git -C "${root}" archive ${OLD_COMMIT} | tar -x -C "${tree}"`]);
  symlinkSync(join(root, 'node_modules'), join(tree, 'node_modules'));
  return tree;
}

function preparePodman(): boolean {
  try {
    execFileSync('podman', ['--version'], { stdio: 'ignore' });
  } catch {
    return false;
  }
  try {
    execFileSync('podman', ['image', 'exists', podmanImage]);
  } catch {
    const rootfs = join(scratch, 'busybox-rootfs');
    mkdirSync(join(rootfs, 'bin'), { recursive: true });
    execFileSync('cp', ['/bin/busybox', join(rootfs, 'bin', 'busybox')]);
    for (const name of ['sh', 'true', 'sleep']) symlinkSync('busybox', join(rootfs, 'bin', name));
    execFileSync('sh', ['-c', `tar -C "${rootfs}" -cf "${scratch}/busybox.tar" . && podman import "${scratch}/busybox.tar" ${podmanImage}`], {
      stdio: 'ignore',
    });
  }
  return true;
}

const cgroupAvailable = (() => {
  try {
    mkdirSync(cgroup);
    return true;
  } catch {
    return false;
  }
})();
const cpuUsageMs = () => (cgroupAvailable ? Number(readFileSync(join(cgroup, 'cpuacct.usage'), 'utf8')) / 1e6 : NaN);

/** Runs a command (and whatever it starts) inside the bench's cpuacct group; resolves with its wall time. */
function timed(system: System, args: string[]): Promise<{ wallMs: number; code: number; output: string }> {
  const [file, ...rest] = system.command(args);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const child = cgroupAvailable
      ? spawn('sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec "$@"`, 'sh', file!, ...rest], { env: system.environment })
      : spawn(file!, rest, { env: system.environment });
    let output = '';
    let errors = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (errors += chunk));
    child.on('error', reject);
    child.on('close', (code) => resolve({ wallMs: performance.now() - started, code: code ?? -1, output: code === 0 ? output : output + errors }));
  });
}

async function measure(system: System, args: string[], count: number): Promise<{ wall: number[]; cpu: number[] }> {
  const wall: number[] = [];
  const cpu: number[] = [];
  for (let index = 0; index < count; index++) {
    const before = cpuUsageMs();
    const result = await timed(system, args);
    if (result.code !== 0) throw new Error(`${system.name} ${args.join(' ')} failed (${result.code}): ${result.output}`);
    await sleep(150); // a detached supervisor's last steps after the CLI returned
    if (args[0] === 'run') await system.settle?.();
    wall.push(result.wallMs);
    cpu.push(cpuUsageMs() - before);
  }
  return { wall, cpu };
}

async function startsPerMinute(system: System, args: string[], total: number, parallel: number): Promise<{ perMinute: number; cpuPerStart: number }> {
  const before = cpuUsageMs();
  const started = performance.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: parallel }, async () => {
      while (next < total) {
        next++;
        const result = await timed(system, args);
        if (result.code !== 0) throw new Error(`${system.name} failed: ${result.output}`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { perMinute: (total / seconds) * 60, cpuPerStart: (cpuUsageMs() - before) / total };
}

const kib = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? NaN);

/** Idle machines' supervisors (all they own outside QEMU) and QEMU's own memory apart from guest RAM. */
async function idleMemory(
  system: System,
  count: number,
): Promise<{ supervisorPrivate: number; supervisorPss: number; supervisorRss: number; qemuOwn: number; qemuGuest: number }> {
  const names: string[] = [];
  for (let index = 0; index < count; index++) {
    const result = await timed(system, ['run', '-d', '--name', `idle${index}`, 'base', 'sleep', '100000']);
    if (result.code !== 0) throw new Error(`run -d failed: ${result.output}`);
    names.push(`idle${index}`);
  }
  await sleep(3000);
  const machines = JSON.parse((await timed(system, ['ps', '--json'])).output) as Array<{ state: { supervisorPid: number; qemuPid: number } }>;
  const totals = { supervisorPrivate: 0, supervisorPss: 0, supervisorRss: 0, qemuOwn: 0, qemuGuest: 0 };
  for (const { state } of machines) {
    const supervisor = readFileSync(`/proc/${state.supervisorPid}/smaps_rollup`, 'utf8');
    totals.supervisorPrivate += kib(supervisor, 'Private_Clean') + kib(supervisor, 'Private_Dirty');
    totals.supervisorPss += kib(supervisor, 'Pss');
    totals.supervisorRss += kib(supervisor, 'Rss');
    const qemu = readFileSync(`/proc/${state.qemuPid}/status`, 'utf8');
    totals.qemuOwn += kib(qemu, 'RssAnon') + kib(qemu, 'RssFile');
    totals.qemuGuest += kib(qemu, 'RssShmem');
  }
  await timed(system, ['rm', '-f', ...names]);
  const per = (value: number) => value / 1024 / machines.length;
  return {
    supervisorPrivate: per(totals.supervisorPrivate),
    supervisorPss: per(totals.supervisorPss),
    supervisorRss: per(totals.supervisorRss),
    qemuOwn: per(totals.qemuOwn),
    qemuGuest: per(totals.qemuGuest),
  };
}

/** What the pool's idle spares hold, per spare (MiB): QEMU RSS and its guest RAM part, the RAM file, the supervisor. */
async function spareMemory(system: System) {
  const pool = JSON.parse((await timed(system, ['system', 'pool', '--json'])).output) as {
    spares: Array<{ id: string; state: { supervisorPid: number; qemuPid: number }; memory: { ramFileBytes: number } }>;
  };
  const totals = { qemuRss: 0, qemuGuest: 0, ramFile: 0, supervisorPrivate: 0, supervisorRss: 0 };
  for (const { state, memory } of pool.spares) {
    const qemu = readFileSync(`/proc/${state.qemuPid}/status`, 'utf8');
    totals.qemuRss += kib(qemu, 'VmRSS');
    totals.qemuGuest += kib(qemu, 'RssShmem');
    totals.ramFile += memory.ramFileBytes / 1024;
    const supervisor = readFileSync(`/proc/${state.supervisorPid}/smaps_rollup`, 'utf8');
    totals.supervisorPrivate += kib(supervisor, 'Private_Clean') + kib(supervisor, 'Private_Dirty');
    totals.supervisorRss += kib(supervisor, 'Rss');
  }
  const count = Math.max(1, pool.spares.length);
  const per = (value: number) => value / 1024 / count;
  return {
    count: pool.spares.length,
    qemuRss: per(totals.qemuRss),
    qemuGuest: per(totals.qemuGuest),
    ramFile: per(totals.ramFile),
    supervisorPrivate: per(totals.supervisorPrivate),
    supervisorRss: per(totals.supervisorRss),
  };
}

/** CPU time of a process so far, from /proc (clock ticks of 10 ms). */
function processCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/**
 * Where the CPU of one start goes, by process: `run -d base sleep` inside the cgroup, then the
 * supervisor's and QEMU's own CPU from /proc once the machine runs; the CLI is the rest.
 */
async function startCpuByProcess(system: System, count: number): Promise<{ cli: number; supervisor: number; qemu: number }> {
  const cli: number[] = [];
  const supervisor: number[] = [];
  const qemu: number[] = [];
  for (let index = 0; index < count; index++) {
    const before = cpuUsageMs();
    const result = await timed(system, ['run', '-d', '--name', `cpu${index}`, 'base', 'sleep', '100000']);
    if (result.code !== 0) throw new Error(`run -d failed: ${result.output}`);
    const total = cpuUsageMs() - before;
    const machines = JSON.parse((await timed(system, ['ps', '--json'])).output) as Array<{ name: string; state: { supervisorPid: number; qemuPid: number } }>;
    const { state } = machines.find((machine) => machine.name === `cpu${index}`)!;
    const ownSupervisor = processCpuMs(state.supervisorPid);
    const ownQemu = processCpuMs(state.qemuPid);
    supervisor.push(ownSupervisor);
    qemu.push(ownQemu);
    cli.push(total - ownSupervisor - ownQemu);
    await timed(system, ['rm', '-f', `cpu${index}`]);
  }
  return { cli: median(cli), supervisor: median(supervisor), qemu: median(qemu) };
}

/** One `run --rm base true` of this tree, through the library, with the supervisor's milestones (or a claim of a spare). */
async function breakdown(system: System, script = 'start-breakdown.ts'): Promise<Record<string, number>> {
  return runJsonChild<Record<string, number>>(join(root, 'bench', script), [], { env: system.environment });
}

const median = (values: number[]) => percentile(values, 50);
const row = (cells: string[]) => cells.map((cell, index) => (index === 0 ? cell.padEnd(34) : cell.padStart(14))).join('');
const f = (value: number, unit = 'ms') => (Number.isFinite(value) ? `${value.toFixed(0)} ${unit}` : '-');

const newSystem = torporSystem('new', root);
const spareSystem = torporSystem('spare', root, 1);
const systems: System[] = [torporSystem('old', oldTree()), newSystem, spareSystem];
/** Every system, for the clean-up (one left out after a failed warm-up still has state). */
const allSystems = [...systems];
const dropped: string[] = [];
const withPodman = preparePodman();
if (withPodman) systems.push(podman);
const stopSampler = startHostSampler('torpor-bench-start');
const out: string[] = [];
const print = (line: string) => {
  out.push(line);
  process.stdout.write(line + '\n');
};

try {
  // Warm-up: bundles, the base image and its boot template are made once, outside the measurements.
  // podman's runc cannot raise rlimits in this sandbox: ask for ones it can set (host-facts.md).
  const runArgs = (system: System) =>
    system === podman ? ['run', '--rm', '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', podmanImage, 'true'] : ['run', '--rm', 'base', 'true'];
  for (const system of [...systems]) {
    let warm = await timed(system, runArgs(system));
    // Under heavy load a template's cold boot can outlast the old tree's fixed waits: try again,
    // then leave that tree out (said in the output) rather than measure nothing.
    for (let attempt = 1; warm.code !== 0 && attempt < 3; attempt++) warm = await timed(system, runArgs(system));
    if (warm.code === 0) {
      await system.settle?.();
      continue;
    }
    if (system.name === 'new') throw new Error(`${system.name} warm-up failed: ${warm.output}`);
    systems.splice(systems.indexOf(system), 1);
    dropped.push(`${system.name} left out: its warm-up failed 3 times (${warm.output.trim().split('\n').at(-2) ?? warm.output.trim()})`);
  }
  const results = new Map<string, Record<string, number>>();
  for (const system of systems) results.set(system.name, {});
  // Interleaved: each round measures every system once, so the host's load falls on all alike.
  const samples = new Map<string, Record<string, { wall: number[]; cpu: number[] }>>();
  for (const system of systems) samples.set(system.name, { run: { wall: [], cpu: [] }, ps: { wall: [], cpu: [] }, version: { wall: [], cpu: [] } });
  for (let round = 0; round < runs; round++) {
    for (const system of systems) {
      const mine = samples.get(system.name)!;
      const add = (key: string, value: { wall: number[]; cpu: number[] }) => {
        mine[key]!.wall.push(...value.wall);
        mine[key]!.cpu.push(...value.cpu);
      };
      add('run', await measure(system, runArgs(system), 1));
      add('ps', await measure(system, ['ps'], 2));
      add('version', await measure(system, ['--version'], 2));
    }
  }
  const perMinute = new Map<string, { perMinute: number; cpuPerStart: number }>();
  for (const system of systems) {
    if (system === spareSystem) continue;
    perMinute.set(system.name, await startsPerMinute(system, runArgs(system), Math.max(6, runs * 2), 2));
  }
  // From the pool: a burst out of a full pool of 4 (its refills start meanwhile), then sustained
  // with the default pool of 1, where most starts find the pool empty until its refill is done.
  const burstSize = 4;
  const burstSystem: System = { ...spareSystem, environment: { ...spareSystem.environment, TORPOR_SPARE_MACHINES: String(burstSize) } };
  const filled = await timed(burstSystem, ['system', 'pool', 'fill', 'base']);
  if (filled.code !== 0) throw new Error(`pool fill failed: ${filled.output}`);
  const burst = await startsPerMinute(burstSystem, runArgs(spareSystem), burstSize, 2);
  await poolSettled(spareSystem.environment.TORPOR_HOME!, burstSize);
  await timed(spareSystem, ['system', 'pool', 'clear']);
  await timed(spareSystem, ['system', 'pool', 'fill', 'base']);
  perMinute.set('spare', await startsPerMinute(spareSystem, runArgs(spareSystem), Math.max(6, runs * 2), 2));
  await spareSystem.settle!();
  const poolMemory = await spareMemory(spareSystem);
  const memory = new Map<string, Awaited<ReturnType<typeof idleMemory>>>();
  for (const system of systems) if (system !== podman && system !== spareSystem) memory.set(system.name, await idleMemory(system, 3));
  const cpuByProcess = cgroupAvailable ? await startCpuByProcess(newSystem, 3) : undefined;
  const parts = await breakdown(newSystem);
  await spareSystem.settle!();
  const spareParts = await breakdown(spareSystem, 'start-spare-breakdown.ts');
  const spareVersion = await measure(spareSystem, ['--version'], 3);
  const host = stopSampler();

  print(
    `## start benchmark, ${new Date().toISOString()}, ${accelerator.toUpperCase()}, ${runs} rounds (medians), load average ${host.loadStart.toFixed(1)} at start, max ${host.loadMax.toFixed(1)}, other QEMUs up to ${host.foreignQemuMax}`,
  );
  print(
    `# old = ${OLD_COMMIT} (before this work), new = this tree without spares (TORPOR_SPARE_MACHINES=0), spare = this tree claiming a spare (pool of 1, refilled before each measured run; its CPU includes the refill it starts), podman = podman --runtime runc, busybox image; CPU from a cpuacct cgroup${cgroupAvailable ? '' : ' (unavailable: CPU not measured)'}`,
  );
  print(`# accelerator ${accelerator} (this tree's probe), given to every tree as TORPOR_ACCEL`);
  for (const note of dropped) print(`# ${note}`);
  if (extraCertificates) print("# NODE_EXTRA_CA_CERTS (set on this host; ~90 ms of CPU per node start) removed from every command's environment");
  print(row(['', ...systems.map((system) => system.name)]));
  const line = (label: string, value: (name: string) => string) => print(row([label, ...systems.map((system) => value(system.name))]));
  line('run --rm true, wall', (name) => f(median(samples.get(name)!.run!.wall)));
  line('run --rm true, CPU (all processes)', (name) => f(median(samples.get(name)!.run!.cpu)));
  line('ps, wall', (name) => f(median(samples.get(name)!.ps!.wall)));
  line('ps, CPU', (name) => f(median(samples.get(name)!.ps!.cpu)));
  line('--version, wall', (name) => f(median(samples.get(name)!.version!.wall)));
  line('--version, CPU', (name) => f(median(samples.get(name)!.version!.cpu)));
  line('starts per minute, 2 at a time', (name) => f(perMinute.get(name)?.perMinute ?? NaN, '/min'));
  line('CPU per start at that rate', (name) => f(perMinute.get(name)?.cpuPerStart ?? NaN));
  line('idle supervisor, private memory', (name) => (memory.has(name) ? f(memory.get(name)!.supervisorPrivate, 'MiB') : '-'));
  line('idle supervisor, PSS', (name) => (memory.has(name) ? f(memory.get(name)!.supervisorPss, 'MiB') : '-'));
  line('idle supervisor, RSS', (name) => (memory.has(name) ? f(memory.get(name)!.supervisorRss, 'MiB') : '-'));
  line('QEMU own RSS (not guest RAM)', (name) => (memory.has(name) ? f(memory.get(name)!.qemuOwn, 'MiB') : '-'));
  line('QEMU guest RAM resident (tmpfs)', (name) => (memory.has(name) ? f(memory.get(name)!.qemuGuest, 'MiB') : '-'));
  print('');
  print('# starts from the spare pool, run --rm true 2 at a time (sustained is bounded by the refill: one restore per spare, in the background)');
  print(row([`burst from a full pool of ${burstSize}`, f(burst.perMinute, '/min')]));
  print(row(['  CPU per start (refills included)', f(burst.cpuPerStart)]));
  print(row(['sustained, pool of 1', f(perMinute.get('spare')!.perMinute, '/min')]));
  print(row(['  CPU per start (refills included)', f(perMinute.get('spare')!.cpuPerStart)]));
  print('');
  print(`# what one idle spare holds (the pool's cost, per spare; ${poolMemory.count} measured)`);
  print(row(['QEMU RSS', f(poolMemory.qemuRss, 'MiB')]));
  print(row(['  of it guest RAM pages (tmpfs)', f(poolMemory.qemuGuest, 'MiB')]));
  print(row(['  of it QEMU own (not guest RAM)', f(poolMemory.qemuRss - poolMemory.qemuGuest, 'MiB')]));
  print(row(['guest RAM file allocated in tmpfs', f(poolMemory.ramFile, 'MiB')]));
  print(row(['supervisor private / RSS', `${f(poolMemory.supervisorPrivate, 'MiB')} / ${f(poolMemory.supervisorRss, 'MiB')}`]));
  print(row(['host memory per spare (QEMU RSS + supervisor private)', f(poolMemory.qemuRss + poolMemory.supervisorPrivate, 'MiB')]));
  if (cpuByProcess) {
    print('');
    print('# CPU of one start of the new tree by process (`run -d base sleep`, read once it runs; medians of 3)');
    print(row(['CLI (create, hand-over, wait)', f(cpuByProcess.cli)]));
    print(row(['supervisor', f(cpuByProcess.supervisor)]));
    print(row([`QEMU (restore, guest resumes; ${accelerator})`, f(cpuByProcess.qemu)]));
  }
  print('');
  print('# where one `run --rm base true` of the new tree spends its time (ms from the start of the call; library, not CLI)');
  for (const [name, value] of Object.entries(parts)) print(row([name, f(value)]));
  print('');
  print(
    `# where one \`run --rm base true\` from a spare spends its time (ms from the start of the call; library, not CLI; a CLI adds its own start: --version ${f(median(spareVersion.wall))} wall here)`,
  );
  for (const [name, value] of Object.entries(spareParts)) print(row([name, f(value)]));
  // A new dated section under the earlier ones (they stay: the file is the history of this benchmark).
  appendFileSync(join(root, 'bench', 'results', `start-${new Date().toISOString().slice(0, 10)}-${accelerator}.txt`), '\n' + out.join('\n') + '\n');
} catch (error) {
  process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
} finally {
  for (const system of allSystems) {
    if (system === podman) continue;
    // Every machine left (a failed start, idle ones): by pid, through the tree's own CLI.
    const left = await timed(system, ['ps', '-a', '-q']).catch(() => undefined);
    const ids = left?.output.split('\n').filter(Boolean) ?? [];
    if (ids.length > 0) await timed(system, ['rm', '-f', ...ids]).catch(() => undefined);
    await timed(system, ['system', 'prune', '--force']).catch(() => undefined);
    rmSync(system.environment.TORPOR_MEMORY_DIR!, { recursive: true, force: true });
  }
  await sleep(1000); // supervisors of removed machines finish their last writes
  try {
    rmSync(scratch, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
  } catch (error) {
    process.stderr.write(`could not remove ${scratch}: ${(error as Error).message}\n`);
  }
  if (cgroupAvailable) {
    for (let attempt = 0; attempt < 50 && existsSync(cgroup); attempt++) {
      try {
        rmdirSync(cgroup);
      } catch {
        await sleep(100);
      }
    }
  }
  void loadavg;
}
