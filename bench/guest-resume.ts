// The guest's side of a wake under TCG (issue 11), run by hand: what a guest workload costs on a
// warm machine and right after a restore (a new QEMU: empty translation cache, memory faulted in
// lazily, a clock that jumped), per TCG CPU model, side by side in one run. Also the supervisor's
// restore steps after `cont` (agent connected, hello + resumed configure answered).
//   node --import tsx bench/guest-resume.ts [restores per variant] [models, comma list] [variants, comma list]
// models: values of TORPOR_TCG_CPU (default max,max-without-erms: before and after, one run)
// variants: lazy (default restore), eager (TORPOR_LAZY_MEMORY=0), no-prefetch (TORPOR_LAZY_PREFETCH=0),
//   settled (lazy, then 2 s idle before the workload)
// Commit the output under bench/results/guest-resume-2026-11-29-<tcg|kvm>.txt.
import { rm } from 'node:fs/promises';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { percentile, sleep, startHostSampler, timedGuestCommand, useBenchmarkHome, progress } from './support.ts';

const restores = Math.max(1, Number(process.argv[2] ?? 3));
const models = (process.argv[3] ?? 'max,max-without-erms').split(',');
const variants = (process.argv[4] ?? 'lazy,eager,settled').split(',') as Variant[];
type Variant = 'lazy' | 'eager' | 'no-prefetch' | 'settled';

const { home, memoryDirectory } = await useBenchmarkHome('bgr', { bootTemplates: true });

const { createMachine, startMachine, removeMachine, prepareHost, findMachine } = await import('../src/runtime/machines.ts');
const { snapshotMachine, restoreMachine } = await import('../src/runtime/snapshots.ts');
const { readMachineState } = await import('../src/runtime/machine-files.ts');
type MachineConfig = import('../src/runtime/machine-record.ts').MachineConfig;

const median = (values: number[]) => percentile(values, 50);

// One message through the benchmark's shell agent (src/session/testing/shell-agent.ts, unchanged),
// then its background child is ended (it would otherwise keep forking every second).
const workloads: Record<string, string[]> = {
  'shell agent turn': ['sh', '-c', 'printf "%s\\n" "$MESSAGE" | sh -c "$AGENT" > /tmp/reply 2>&1; pkill -f sleeper; grep -q text-delta /tmp/reply'],
  'fork+exec x20': ['sh', '-c', 'i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done'],
  // The kernel zeroing pages for a reader: what ERMS changes most (clear_user, clear_page).
  'dd zero 64 MiB': ['sh', '-c', 'dd if=/dev/zero of=/dev/null bs=64k count=1024 2>/dev/null'],
};
const nodeWorkload = ['node', '-e', 'process.stdout.write(String(1+1))'];

const setVariant = (variant: Variant) => {
  delete process.env.TORPOR_LAZY_MEMORY;
  delete process.env.TORPOR_LAZY_PREFETCH;
  if (variant === 'eager') process.env.TORPOR_LAZY_MEMORY = '0';
  if (variant === 'no-prefetch') process.env.TORPOR_LAZY_PREFETCH = '0';
};

interface Cell {
  warm: number[];
  restored: Map<Variant, number[]>;
}
const results = new Map<string, Map<string, Cell>>(); // model -> workload -> cell
const steps = new Map<string, Map<Variant, Map<string, number[]>>>(); // model -> variant -> step -> ms
const sampler = startHostSampler(memoryDirectory);
const loadAtStart = loadavg();
const began = Date.now();
const loads: string[] = [];
try {
  const host = await prepareHost();
  for (const model of models) {
    process.env.TORPOR_TCG_CPU = model;
    for (const image of ['base', 'node'] as const) {
      setVariant('lazy');
      progress(`${model}: ${image} machine`);
      const config = await createMachine({ image, memoryMiB: 512, command: ['sleep', '1000000'] });
      await startMachine(config.id);
      const chosen = image === 'node' ? { 'node -e startup': nodeWorkload } : workloads;
      const perWorkload = results.get(model) ?? new Map<string, Cell>();
      results.set(model, perWorkload);
      // Warm: the same QEMU ran the workload before (translation cache and memory hot).
      for (const [name, argv] of Object.entries(chosen)) {
        const cell: Cell = { warm: [], restored: new Map() };
        perWorkload.set(name, cell);
        await timedGuestCommand(config, argv);
        for (let index = 0; index < 3; index++) cell.warm.push(await timedGuestCommand(config, argv));
      }
      const snapshotName = `${config.name}@bench`;
      await snapshotMachine(config, { name: snapshotName, stop: true });
      await removeMachine(await findMachine(config.id), { force: true });
      for (let round = 0; round < restores; round++) {
        for (const variant of variants) {
          for (const [name, argv] of Object.entries(chosen)) {
            setVariant(variant);
            const restored = await restoreMachine(snapshotName, {});
            const state = await readMachineState(restored.id);
            const timings = state.startTimings ?? {};
            const stepMap = steps.get(model) ?? new Map();
            steps.set(model, stepMap);
            const perStep: Map<string, number[]> = stepMap.get(variant) ?? new Map();
            stepMap.set(variant, perStep);
            const from = timings.deviceStateLoaded;
            for (const step of ['agentConnected', 'agentAnswered', 'running'])
              if (from !== undefined && timings[step] !== undefined) perStep.set(step, [...(perStep.get(step) ?? []), timings[step]! - from]);
            if (variant === 'settled') await sleep(2000);
            perWorkload.get(name)!.restored.set(variant, [...(perWorkload.get(name)!.restored.get(variant) ?? []), await timedGuestCommand(restored, argv)]);
            await removeMachine(await findMachine(restored.id), { force: true });
          }
        }
      }
      loads.push(`${model}/${image} done at load ${loadavg()[0]!.toFixed(2)}`);
    }
  }
  const hostSamples = sampler();
  console.log(`torpor guest-resume benchmark (issue 11), ${new Date().toISOString()}`);
  console.log(
    `accel: ${host.accelerator.accelerator}; host: ${cpus().length} cores; run took ${((Date.now() - began) / 1000).toFixed(0)} s; ${restores} restores per variant`,
  );
  console.log(
    `load average at start ${loadAtStart.map((value) => value.toFixed(2)).join(' ')}, max ${hostSamples.loadMax.toFixed(2)}; QEMU processes not of this bench: max ${hostSamples.foreignQemuMax}, mean ${hostSamples.foreignQemuMean.toFixed(1)}`,
  );
  console.log(`load as it went: ${loads.join('; ')}`);
  console.log('');
  console.log('guest workload, exec round trip from the host, median ms (warm: the same QEMU ran it before; the others: the first run after a restore)');
  console.log(`${'model'.padEnd(16)} ${'workload'.padEnd(18)} ${'warm'.padStart(7)} ${variants.map((variant) => variant.padStart(12)).join('')}`);
  for (const [model, perWorkload] of results)
    for (const [name, cell] of perWorkload)
      console.log(
        `${model.padEnd(16)} ${name.padEnd(18)} ${median(cell.warm).toFixed(0).padStart(7)} ${variants
          .map((variant) =>
            median(cell.restored.get(variant) ?? [])
              .toFixed(0)
              .padStart(12),
          )
          .join('')}`,
      );
  console.log('');
  console.log('supervisor steps after `cont` (ms after the device state was loaded and cont sent), median');
  for (const [model, stepMap] of steps)
    for (const [variant, perStep] of stepMap)
      console.log(`${model.padEnd(16)} ${variant.padEnd(12)} ${[...perStep].map(([step, values]) => `${step} ${median(values).toFixed(0)}`).join(', ')}`);
} finally {
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
