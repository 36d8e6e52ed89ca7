// Runtime benchmark (run by hand): cold boot to guest-agent-ready, start from a boot template,
// exec round trip, idle RSS, accelerator. Prints one table; commit the output under bench/results/.
//   node --import tsx bench/runtime.ts [runs]
import { mkdtemp, rm, readFile } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { createMachine, startMachine, connectToMachine, removeMachine, prepareHost } from '../src/runtime/machines.ts';
import { readMachineState } from '../src/runtime/machine-files.ts';
import { dropTemplateMemory } from '../src/runtime/template-memory.ts';

const runs = Number(process.argv[2] ?? 5);
process.env.TORPOR_HOME = await mkdtemp(join(tmpdir(), 'tp-bench-'));

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const min = (values: number[]) => Math.min(...values);
const max = (values: number[]) => Math.max(...values);
const rssKiB = async (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(await readFile(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);

async function startOnce(templates: boolean): Promise<{ readyMs: number; wallMs: number; id: string }> {
  process.env.TORPOR_BOOT_TEMPLATES = templates ? '1' : '0';
  const began = performance.now();
  const config = await createMachine({ image: 'base', command: ['sleep', '100000'] });
  await startMachine(config.id);
  const client = await connectToMachine(config);
  await client.ping();
  client.close();
  const wallMs = performance.now() - began;
  const state = await readMachineState(config.id);
  return { readyMs: state.bootMs ?? NaN, wallMs, id: config.id };
}

try {
  const host = await prepareHost();
  // Warm up: build image and boot template outside the measurements.
  for (const templates of [false, true]) {
    const warm = await startOnce(templates);
    await removeMachine({ id: warm.id, name: '' } as never, { force: true }).catch(() => {});
  }
  const rows: string[] = [];
  for (const templates of [false, true]) {
    const ready: number[] = [];
    const wall: number[] = [];
    for (let run = 0; run < runs; run++) {
      const result = await startOnce(templates);
      ready.push(result.readyMs);
      wall.push(result.wallMs);
      const { findMachine } = await import('../src/runtime/machines.ts');
      await removeMachine(await findMachine(result.id), { force: true });
    }
    const label = templates ? 'start from boot template (restore)' : 'cold boot';
    rows.push(
      `${label.padEnd(40)} supervisor-measured ready: min ${min(ready).toFixed(0)} ms, median ${median(ready).toFixed(0)} ms, max ${max(ready).toFixed(0)} ms | create+start+ping wall: median ${median(wall).toFixed(0)} ms`,
    );
  }
  // Exec round trip and idle RSS on one machine.
  process.env.TORPOR_BOOT_TEMPLATES = '1';
  const config = await createMachine({ image: 'base', command: ['sleep', '100000'] });
  await startMachine(config.id);
  const client = await connectToMachine(config);
  const pings: number[] = [];
  for (let index = 0; index < 50; index++) pings.push(await client.ping());
  const execs: number[] = [];
  for (let index = 0; index < 20; index++) {
    const began = performance.now();
    await client.exec({ argv: ['true'], env: [], workingDirectory: '/', user: '', tty: false, stdin: false }).exited;
    execs.push(performance.now() - began);
  }
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const state = await readMachineState(config.id);
  const qemuRss = await rssKiB(state.qemuPid!);
  const supervisorRss = await rssKiB(state.supervisorPid!);
  client.close();
  const { findMachine } = await import('../src/runtime/machines.ts');
  await removeMachine(await findMachine(config.id), { force: true });
  rows.push(`${'agent ping round trip (via supervisor)'.padEnd(40)} median ${median(pings).toFixed(2)} ms, max ${max(pings).toFixed(2)} ms`);
  rows.push(`${'exec `true` round trip (via supervisor)'.padEnd(40)} median ${median(execs).toFixed(1)} ms, min ${min(execs).toFixed(1)} ms`);
  rows.push(`${'idle machine RSS (512 MiB guest)'.padEnd(40)} qemu ${(qemuRss / 1024).toFixed(0)} MiB + supervisor ${(supervisorRss / 1024).toFixed(0)} MiB`);
  console.log(`torpor runtime benchmark, ${new Date().toISOString()}`);
  console.log(
    `host: ${cpus().length} cores (${cpus()[0]?.model}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB; accel: ${host.accelerator.accelerator} (${host.accelerator.reason}); runs: ${runs}`,
  );
  for (const row of rows) console.log(row);
} finally {
  await dropTemplateMemory();
  await rm(process.env.TORPOR_HOME!, { recursive: true, force: true });
}
