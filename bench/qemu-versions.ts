// QEMU 7.2 (Debian 12) against QEMU 10.0 (bookworm-backports, unpacked beside it, see
// scripts/install-qemu-10.sh) for torpor's own paths under TCG, side by side in one run:
// cold boot to agent answering, restore to agent answering (wall time, QEMU start, QEMU CPU seconds),
// the first shell turn after a restore and a warm one, and whether a snapshot of one version
// restores under the other. Run by hand:
//   node --import tsx bench/qemu-versions.ts [restores per version] [cold boots per version] [label=binary,...]
// The versions after 7.2 (Debian's, always first) default to 10.0=/opt/qemu-10/bin/qemu-system-x86_64;
// snapshots across releases are tried between the first two.
// Commit the output under bench/results/qemu-versions-2026-11-29-<tcg|kvm>.txt.
import { rm } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { percentile, startHostSampler, timedGuestCommand, cpuSecondsOf, pingMachine, useBenchmarkHome, progress } from './support.ts';

const restores = Math.max(1, Number(process.argv[2] ?? 5));
const coldBoots = Math.max(0, Number(process.argv[3] ?? 3));
const versions = [
  { label: '7.2', binary: 'qemu-system-x86_64' },
  ...(process.argv[4] ?? '10.0=/opt/qemu-10/bin/qemu-system-x86_64').split(',').map((entry) => {
    const [label, binary] = entry.split('=');
    if (!label || !binary) throw new Error(`expected label=binary, got ${entry}`);
    return { label, binary };
  }),
];
type Version = (typeof versions)[number];

// Every machine boots cold: a boot template made by one version must not serve the other.
const { home, memoryDirectory } = await useBenchmarkHome('bqv', { bootTemplates: false });

const { createMachine, startMachine, removeMachine, prepareHost, findMachine } = await import('../src/runtime/machines.ts');
const { snapshotMachine, restoreMachine } = await import('../src/runtime/snapshots.ts');
const { readMachineState } = await import('../src/runtime/machine-files.ts');
type MachineConfig = import('../src/runtime/machine-record.ts').MachineConfig;

const median = (values: number[]) => percentile(values, 50);
const load = () => loadavg()[0]!.toFixed(2);
const use = (version: Version) => (process.env.TORPOR_QEMU = version.binary);

// One message through the benchmark's shell agent (as bench/guest-resume.ts), then its background child is ended.
const workloads: Record<string, string[]> = {
  'shell agent turn': ['sh', '-c', 'printf "%s\\n" "$MESSAGE" | sh -c "$AGENT" > /tmp/reply 2>&1; pkill -f sleeper; grep -q text-delta /tmp/reply'],
  'fork+exec x20': ['sh', '-c', 'i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done'],
};

interface Numbers {
  cold: number[];
  coldCpu: number[];
  restore: number[];
  restoreCpu: number[];
  qemuToQmp: number[];
  contToAnswer: number[];
  firstTurn: Record<string, number[]>;
  firstTurnCpu: number[];
  warmTurn: Record<string, number[]>;
  loads: string[];
}
const numbers = new Map<string, Numbers>(
  versions.map((version) => [
    version.label,
    { cold: [], coldCpu: [], restore: [], restoreCpu: [], qemuToQmp: [], contToAnswer: [], firstTurn: {}, firstTurnCpu: [], warmTurn: {}, loads: [] },
  ]),
);
const push = (record: Record<string, number[]>, key: string, value: number) => (record[key] = [...(record[key] ?? []), value]);
const compatibility: string[] = [];
const sampler = startHostSampler(memoryDirectory);
const loadAtStart = loadavg();
const began = Date.now();
let machineKind = '?';
const cleanup = new Set<string>();
const remove = async (id: string) => {
  await removeMachine(await findMachine(id), { force: true });
  cleanup.delete(id);
};

try {
  const host = await prepareHost();
  // ---- cold boot to agent answering, versions interleaved (the order flips every round)
  for (let round = 0; round < coldBoots; round++) {
    for (const version of round % 2 === 0 ? versions : [...versions].reverse()) {
      use(version);
      const config = await createMachine({ image: 'base', memoryMiB: 512, command: ['sleep', '1000000'] });
      cleanup.add(config.id);
      machineKind = config.imageMemoryBytes === undefined ? 'microvm' : 'q35 (image as virtio-pmem)';
      const start = performance.now();
      await startMachine(config.id);
      await pingMachine(config);
      const cell = numbers.get(version.label)!;
      cell.cold.push(performance.now() - start);
      cell.coldCpu.push(await cpuSecondsOf((await readMachineState(config.id)).qemuPid));
      cell.loads.push(`cold ${load()}`);
      await remove(config.id);
      progress(`cold boot ${version.label}: ${cell.cold.at(-1)!.toFixed(0)} ms`);
    }
  }

  // ---- one snapshot per version, taken by that version, after warm turns
  const snapshots = new Map<string, string>();
  for (const version of versions) {
    use(version);
    const config = await createMachine({ image: 'base', memoryMiB: 512, command: ['sleep', '1000000'] });
    cleanup.add(config.id);
    await startMachine(config.id);
    for (const [name, argv] of Object.entries(workloads)) {
      await timedGuestCommand(config, argv);
      for (let index = 0; index < 3; index++) push(numbers.get(version.label)!.warmTurn, name, await timedGuestCommand(config, argv));
    }
    const snapshotName = `${config.name}@v${version.label}`;
    await snapshotMachine(config, { name: snapshotName, stop: true });
    await remove(config.id);
    snapshots.set(version.label, snapshotName);
    progress(`snapshot ${snapshotName}`);
  }

  // ---- restore to agent answering, then the first turn; versions interleaved
  const restoreOnce = async (version: Version, snapshotName: string) => {
    use(version);
    const start = performance.now();
    const restored = await restoreMachine(snapshotName, {});
    cleanup.add(restored.id);
    await pingMachine(restored);
    return { restored, elapsed: performance.now() - start };
  };
  for (let round = 0; round < restores; round++) {
    for (const version of round % 2 === 0 ? versions : [...versions].reverse()) {
      const cell = numbers.get(version.label)!;
      const { restored, elapsed } = await restoreOnce(version, snapshots.get(version.label)!);
      const state = await readMachineState(restored.id);
      cell.restore.push(elapsed);
      const cpuAtAnswer = await cpuSecondsOf(state.qemuPid);
      cell.restoreCpu.push(cpuAtAnswer);
      const timings = state.startTimings ?? {};
      if (timings.qemuLaunching !== undefined && timings.qmpReady !== undefined) cell.qemuToQmp.push(timings.qmpReady - timings.qemuLaunching);
      if (timings.deviceStateLoaded !== undefined && timings.agentAnswered !== undefined)
        cell.contToAnswer.push(timings.agentAnswered - timings.deviceStateLoaded);
      // Turn by turn, each the first of its kind after this restore.
      for (const [name, argv] of Object.entries(workloads)) push(cell.firstTurn, name, await timedGuestCommand(restored, argv));
      cell.firstTurnCpu.push((await cpuSecondsOf(state.qemuPid)) - cpuAtAnswer);
      cell.loads.push(`restore ${load()}`);
      await remove(restored.id);
      progress(`restore ${version.label}: ${elapsed.toFixed(0)} ms, QEMU ${(cpuAtAnswer * 1000).toFixed(0)} ms CPU`);
    }
  }

  // ---- snapshots across versions: does one taken by one QEMU restore under the other?
  for (const [from, to] of [
    [versions[0]!, versions[1]!],
    [versions[1]!, versions[0]!],
  ] as const) {
    try {
      const { restored, elapsed } = await restoreOnce(to, snapshots.get(from.label)!);
      const turn = await timedGuestCommand(restored, workloads['shell agent turn']!);
      compatibility.push(
        `${from.label} snapshot under ${to.label}: restored, agent answered after ${elapsed.toFixed(0)} ms, a shell turn ran (${turn.toFixed(0)} ms)`,
      );
      await remove(restored.id);
    } catch (error) {
      compatibility.push(`${from.label} snapshot under ${to.label}: FAILED: ${(error as Error).message.replace(/\s+/g, ' ').slice(0, 400)}`);
      for (const id of [...cleanup]) await remove(id).catch(() => cleanup.delete(id));
    }
  }

  const hostSamples = sampler();
  console.log(`torpor QEMU versions benchmark (issue 11), ${new Date().toISOString()}`);
  console.log(
    `accel: ${host.accelerator.accelerator}; host: ${cpus().length} cores; machine: base image, 512 MiB, 1 vCPU, ${machineKind}; run took ${((Date.now() - began) / 1000).toFixed(0)} s`,
  );
  console.log(`versions: ${versions.map((version) => `${version.label} = ${version.binary}`).join('; ')}`);
  console.log(
    `load average at start ${loadAtStart.map((value) => value.toFixed(2)).join(' ')}, max ${hostSamples.loadMax.toFixed(2)}; QEMU processes not of this bench: max ${hostSamples.foreignQemuMax}, mean ${hostSamples.foreignQemuMean.toFixed(1)}`,
  );
  console.log('');
  const fmt = (values: number[], scale = 1) =>
    values.length === 0 ? '-' : `${(median(values) * scale).toFixed(0)} (${values.map((value) => (value * scale).toFixed(0)).join(' ')})`;
  const rows: Array<[string, (cell: Numbers) => string]> = [
    [`cold boot to agent answering, ms (n=${coldBoots})`, (cell) => fmt(cell.cold)],
    ['  QEMU CPU at agent answering, ms', (cell) => fmt(cell.coldCpu, 1000)],
    [`restore to agent answering, ms (n=${restores})`, (cell) => fmt(cell.restore)],
    ['  QEMU CPU from its start to agent answering, ms', (cell) => fmt(cell.restoreCpu, 1000)],
    ['  QEMU launched -> QMP answering, ms', (cell) => fmt(cell.qemuToQmp)],
    ['  device state loaded + cont -> agent answered, ms', (cell) => fmt(cell.contToAnswer)],
    ...Object.keys(workloads).flatMap((name): Array<[string, (cell: Numbers) => string]> => [
      [`first ${name} after the restore, ms`, (cell) => fmt(cell.firstTurn[name] ?? [])],
      [`warm ${name} (same QEMU ran it before), ms`, (cell) => fmt(cell.warmTurn[name] ?? [])],
    ]),
    ['  QEMU CPU during the first turns after the restore, ms', (cell) => fmt(cell.firstTurnCpu, 1000)],
  ];
  console.log('median (every value in run order)');
  for (const [title, value] of rows) {
    console.log(title);
    for (const version of versions) console.log(`  ${version.label.padEnd(12)} ${value(numbers.get(version.label)!)}`);
  }
  console.log('');
  for (const version of versions) console.log(`load average (1 min) after each step, ${version.label}: ${numbers.get(version.label)!.loads.join(', ')}`);
  console.log('');
  console.log('snapshots across versions');
  for (const line of compatibility) console.log(`  ${line}`);
} finally {
  for (const id of [...cleanup]) await remove(id).catch(() => undefined);
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
