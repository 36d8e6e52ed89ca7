// Wake benchmark (run by hand; issue 11 rows "wake: message to first reply byte"): a message for a
// hibernated session -> the agent's first reply byte, with a timestamped breakdown of every step
// (session manager -> snapshot read -> machine created -> materialized -> supervisor handed the
// machine -> QEMU QMP ready -> device state loaded -> agent hello/configure -> attached -> wake
// frame -> message -> first reply byte). Side by side with another checkout of torpor (the old
// design, e.g. `git worktree add /tmp/wake-old main`), interleaved in one run: each round runs one
// child process per tree, which creates a session and wakes it `wakes per round` times.
//   node --import tsx bench/wake.ts [rounds] [wakes per round] [old tree|-|standby-off] [shell|coding]
// `standby-off` compares this tree with itself under TORPOR_STANDBY_QEMU=0 (no pre-started QEMU) instead.
// `paused` compares the paused tier (TORPOR_WARM_MEMORY=auto, serve's default: a hibernated session's QEMU kept stopped, its
// wake a `cont`) with the warm tier alone (TORPOR_PAUSED_MACHINES=0) and the ordinary wake (TORPOR_WARM_MEMORY unset), all this tree.
// Commit the output under bench/results/wake-2026-11-29-<tcg|kvm>.txt.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, loadavg, cpus } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { percentile, ms, sleep, startHostSampler, codingAgentSpec, runJsonChild } from './support.ts';

interface ChildResult {
  firstByteMs: number[];
  /** per wake: [step, ms since the message was received] */
  timelines: Array<Array<[string, number]>>;
  accelerator: string;
  /** per hibernation kept paused: the host memory its machine held (RAM file + QEMU anonymous RSS) */
  pausedBytes?: number[];
}

const thisTree = resolve(dirname(fileURLToPath(import.meta.url)), '..');

if (process.argv[2] === '--child') {
  await child(process.argv[3]!, Number(process.argv[4]), process.argv[5] as 'shell' | 'coding');
  process.exit(0);
}

const rounds = Math.max(1, Number(process.argv[2] ?? 2));
const wakesPerRound = Math.max(1, Number(process.argv[3] ?? 3));
const standbyOff = process.argv[4] === 'standby-off';
const pausedTier = process.argv[4] === 'paused';
const oldTree = process.argv[4] && process.argv[4] !== '-' && !standbyOff && !pausedTier ? resolve(process.argv[4]) : undefined;
const kind = (process.argv[5] ?? 'shell') as 'shell' | 'coding';
const progress = (text: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${text}\n`);

const home = await mkdtemp(join(tmpdir(), 'tp-bwake-'));
const memoryDirectory = await mkdtemp('/dev/shm/tp-bwake-');
const trees: Array<{ name: string; path: string; environment?: Record<string, string> }> = [
  { name: 'new', path: thisTree, ...(pausedTier ? { environment: { TORPOR_WARM_MEMORY: 'auto' } } : {}) },
  ...(pausedTier
    ? [
        { name: 'wrm', path: thisTree, environment: { TORPOR_WARM_MEMORY: 'auto', TORPOR_PAUSED_MACHINES: '0' } },
        { name: 'off', path: thisTree, environment: { TORPOR_WARM_MEMORY: '' } },
      ]
    : []),
  ...(oldTree ? [{ name: 'old', path: oldTree }] : []),
  ...(standbyOff ? [{ name: 'off', path: thisTree, environment: { TORPOR_STANDBY_QEMU: '0' } }] : []),
];
const results = new Map<string, ChildResult[]>(trees.map((tree) => [tree.name, []]));
const sampler = startHostSampler(memoryDirectory);
const loadAtStart = loadavg();
const started = Date.now();
let llm: { port: number; close: () => Promise<void> } | undefined;
try {
  if (kind === 'coding') {
    const { buildCodingAgentImage } = await import('../examples/coding-agent/image.ts');
    const { startDevLlm } = await import('../src/dev-llm/index.ts');
    process.env.TORPOR_HOME = home;
    process.env.TORPOR_MEMORY_DIR = memoryDirectory;
    await buildCodingAgentImage();
    llm = await startDevLlm({ port: 0, host: '127.0.0.1' });
  }
  for (let round = 0; round < rounds; round++) {
    // Alternate which tree goes first: a host whose load drifts favours neither.
    for (const tree of round % 2 === 0 ? trees : [...trees].reverse()) {
      progress(`round ${round + 1}/${rounds}: ${tree.name} tree`);
      results.get(tree.name)!.push(await runChild(tree.path, wakesPerRound, tree.environment));
    }
  }
} finally {
  await llm?.close();
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
const host = sampler();

// ---- report
const flat = (name: string) => results.get(name)!.flatMap((result) => result.firstByteMs);
const summary = (values: number[]) => `p50 ${ms(percentile(values, 50))} (min ${ms(Math.min(...values))}, max ${ms(Math.max(...values))}, n=${values.length})`;
console.log(`torpor wake benchmark (issue 11), ${new Date().toISOString()}, ${kind} agent`);
console.log(
  `accel: ${results.get('new')![0]?.accelerator}; host: ${cpus().length} cores, node ${process.version}; run took ${((Date.now() - started) / 1000).toFixed(0)} s`,
);
console.log(
  `load average at start ${loadAtStart.map((value) => value.toFixed(2)).join(' ')}, max ${host.loadMax.toFixed(2)}; QEMU processes not of this bench: max ${host.foreignQemuMax}, mean ${host.foreignQemuMean.toFixed(1)}`,
);
console.log(
  `trees: new = ${thisTree}${oldTree ? `, old = ${oldTree}` : ''}${standbyOff ? ', off = the same tree with TORPOR_STANDBY_QEMU=0' : ''}${pausedTier ? ' with TORPOR_WARM_MEMORY=auto (paused tier, the default of torpor serve), wrm = the same with TORPOR_PAUSED_MACHINES=0 (warm tier only), off = TORPOR_WARM_MEMORY unset (ordinary wake)' : ''}; ${rounds} rounds x ${wakesPerRound} wakes per tree, interleaved`,
);
console.log('');
const target = kind === 'shell' ? '<= 250 ms' : '<= 500 ms';
for (const tree of trees)
  console.log(`wake: message -> first reply byte, ${kind} agent, ${tree.name.padEnd(3)} | target ${target} | ${summary(flat(tree.name))}`);
for (const other of trees.slice(1))
  console.log(
    `  new vs ${other.name}: ${(percentile(flat(other.name), 50) / percentile(flat('new'), 50)).toFixed(2)}x faster at p50 (${ms(percentile(flat(other.name), 50) - percentile(flat('new'), 50))} less)`,
  );
for (const tree of trees) {
  const held = results.get(tree.name)!.flatMap((result) => result.pausedBytes ?? []);
  if (held.length > 0)
    console.log(
      `  ${tree.name}: a paused machine held (RAM file + QEMU anonymous RSS) p50 ${(percentile(held, 50) / 1024 ** 2).toFixed(1)} MiB (min ${(Math.min(...held) / 1024 ** 2).toFixed(1)}, max ${(Math.max(...held) / 1024 ** 2).toFixed(1)}, n=${held.length})`,
    );
}
for (const tree of trees)
  console.log(
    `  ${tree.name} (ms): ${flat(tree.name)
      .map((value) => value.toFixed(0))
      .join(', ')}`,
  );
for (const tree of trees) {
  const timelines = results.get(tree.name)!.flatMap((result) => result.timelines);
  if (timelines.length === 0 || timelines[0]!.length === 0) continue;
  console.log('');
  console.log(
    `breakdown, ${tree.name} tree: median over ${timelines.length} wakes of when each step ended (ms after the message was received) and of its own share`,
  );
  // Steps in the order of the first wake; each one's median time since the message, and median gap since the step before it.
  const order = timelines[0]!.map(([step]) => step);
  let previousMedian = 0;
  for (const step of order) {
    const values = timelines.map((timeline) => timeline.find(([name]) => name === step)?.[1]).filter((value): value is number => value !== undefined);
    const at = percentile(values, 50);
    console.log(`  ${step.padEnd(52)} ${at.toFixed(1).padStart(7)} ms   (+${(at - previousMedian).toFixed(1).padStart(6)})`);
    previousMedian = at;
  }
  // The medians above come from different wakes; one whole wake (the one at the median) shows how the steps chain.
  const byFirstByte = timelines.map((timeline) => ({ timeline, last: timeline.at(-1)![1] })).sort((a, b) => a.last - b.last);
  const middle = byFirstByte[Math.floor((byFirstByte.length - 1) / 2)]!;
  console.log(`one whole wake, ${tree.name} tree (the median one, ${ms(middle.last)}): ms after the message, and since the step before`);
  let previous = 0;
  for (const [step, at] of middle.timeline) {
    console.log(`  ${step.padEnd(52)} ${at.toFixed(1).padStart(7)} ms   (+${(at - previous).toFixed(1).padStart(6)})`);
    previous = at;
  }
  // An outlier (over twice the median) is shown whole too: where its time went is the question.
  const slowest = byFirstByte.at(-1)!;
  if (slowest.last > 2 * middle.last) {
    console.log(`the slowest wake, ${tree.name} tree (${ms(slowest.last)}), steps of more than 20 ms:`);
    let before = 0;
    for (const [step, at] of slowest.timeline) {
      if (at - before > 20) console.log(`  ${step.padEnd(52)} ${at.toFixed(1).padStart(7)} ms   (+${(at - before).toFixed(1).padStart(6)})`);
      before = at;
    }
  }
}

/** Runs one child process on `tree` and returns what it measured. */
async function runChild(tree: string, count: number, extra: Record<string, string> = {}): Promise<ChildResult> {
  const script = join(thisTree, 'bench', 'wake.ts');
  const environment = {
    ...process.env,
    TORPOR_HOME: home,
    TORPOR_MEMORY_DIR: memoryDirectory,
    TORPOR_BOOT_TEMPLATES: '1',
    WAKE_BENCH_LLM_PORT: String(llm?.port ?? ''),
    ...extra,
  };
  return runJsonChild<ChildResult>(script, ['--child', tree, String(count), kind], { cwd: tree, env: environment });
}

/** One tree's measurement: a session that hibernates after each turn, woken `count` times by a message. */
async function child(tree: string, count: number, agent: 'shell' | 'coding'): Promise<void> {
  const from = (path: string) => import(pathToFileURL(join(tree, path)).href);
  const { openContextLog } = await from('src/context/index.ts');
  const { SessionManager } = await from('src/session/session-manager.ts');
  const { shellAgent } = await from('src/session/testing/shell-agent.ts');
  const log = await openContextLog({ stateDirectory: process.env.TORPOR_HOME });
  const manager = new SessionManager({ log, tickMs: 50, turnTimeoutMs: 180_000 });
  const spec =
    agent === 'shell'
      ? { image: 'base', command: ['sh', '-c', shellAgent], env: [], cpus: 1, memoryMiB: 256, idleSeconds: 0.5 }
      : codingAgentSpec(Number(process.env.WAKE_BENCH_LLM_PORT), 0.5);
  const timelines: Array<Array<[string, number]>> = [];
  let current: { steps: Array<{ step: string; at: number }> } | undefined;
  manager.on('wake', (_id: string, timeline: { steps: Array<{ step: string; at: number }> }) => (current = timeline));
  const waitHibernated = async (id: string) => {
    for (let attempt = 0; attempt < 2400 && manager.get(id).state !== 'hibernated'; attempt++) await sleep(50);
    if (manager.get(id).state !== 'hibernated') throw new Error(`session ${id} did not hibernate: ${manager.get(id).state}`);
  };
  const epochNow = () => performance.timeOrigin + performance.now();
  const firstByte = async (id: string, content: string) => {
    const startedAt = epochNow();
    let first = NaN;
    const { events } = await manager.send(id, content, (event: { type: string }) => {
      if (event.type === 'text-delta' && Number.isNaN(first)) first = epochNow();
    });
    const failure = events.find((event: { type: string }) => event.type === 'error');
    if (failure) throw new Error(`turn failed: ${JSON.stringify(failure)}`);
    return { startedAt, first };
  };
  const record = await manager.create(spec, { name: `wake-${agent}-${process.pid}` });
  await firstByte(record.id, 'warm up');
  const { readMachineConfig } = await from('src/runtime/machine-files.ts');
  const accelerator = (await readMachineConfig(manager.get(record.id).machineId)).accelerator as string;
  const firstByteMs: number[] = [];
  // Trees without the paused tier have no such module: nothing to measure there.
  const paused = await from('src/runtime/paused-machines.ts').catch(() => undefined);
  const pausedBytes: number[] = [];
  for (let run = 0; run < count; run++) {
    await waitHibernated(record.id);
    const pausedMachine = manager.get(record.id).machineId;
    if (paused && pausedMachine) pausedBytes.push(await paused.machineMemoryBytes(pausedMachine));
    await sleep(300);
    current = undefined;
    const { startedAt, first } = await firstByte(
      record.id,
      agent === 'shell' ? `turn ${run}: please look at the retry loop and tell me what changed` : `remember fact number ${run}`,
    );
    firstByteMs.push(first - startedAt);
    const steps = current ? (current as { steps: Array<{ step: string; at: number }> }).steps : [];
    const timeline: Array<[string, number]> = [...steps, { step: 'bench: first reply byte', at: first }]
      .sort((a, b) => a.at - b.at)
      .map(({ step, at }) => [step, at - startedAt]);
    if (steps.length > 0) timelines.push(timeline);
  }
  await waitHibernated(record.id);
  await manager.delete(record.id);
  await manager.close();
  process.stdout.write(`\n${JSON.stringify({ firstByteMs, timelines, accelerator, pausedBytes } satisfies ChildResult)}\n`);
}
