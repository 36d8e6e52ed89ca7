// Density benchmark (run by hand, as root; issue 12): 200 hibernated + 20 running agent sessions on
// one host. Creates them (the busybox shell agent of session-manager.test.ts, the smallest machine:
// 128 MiB, 1 vCPU), reports what they hold (supervisors' and QEMUs' memory, tmpfs, the snapshot
// store), then sends every one of the 220 a message and checks its reply (the hibernated ones wake).
//   node --import tsx bench/density.ts [hibernated] [running]
// Commit the output under bench/results/density-<date>-tcg.txt.
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MiB, percentile, startHostSampler } from './support.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';

const hibernatedCount = Number(process.argv[2] ?? 200);
const runningCount = Number(process.argv[3] ?? 20);
/** Two at a time: the host has two cores. */
const concurrency = 2;
const began = performance.now();
const elapsed = () => performance.now() - began;
const progress = (text: string) => process.stderr.write(`[${(elapsed() / 1000).toFixed(0)} s] ${text}\n`);

const home = await mkdtemp(join(tmpdir(), 'tp-density-'));
process.env.TORPOR_HOME = home;
const memoryDirectory = await mkdtemp('/dev/shm/tp-density-');
process.env.TORPOR_MEMORY_DIR = memoryDirectory;
process.env.TORPOR_BOOT_TEMPLATES = '1';

const { prepareHost, listMachines, killMachine } = await import('../src/runtime/machines.ts');
const { openContextLog } = await import('../src/context/index.ts');
const { SessionManager } = await import('../src/session/session-manager.ts');
const { storeUsage } = await import('../src/snapshot/snapshot-store.ts');
const { readMachineState } = await import('../src/runtime/machine-files.ts');
type SessionSpec = import('../src/session/session-store.ts').SessionSpec;

const spec = (idleSeconds: number): SessionSpec => ({ image: 'base', command: ['sh', '-c', shellAgent], env: [], cpus: 1, memoryMiB: 128, idleSeconds });
const log = await openContextLog({ stateDirectory: home });
const manager = new SessionManager({ log, tickMs: 50, turnTimeoutMs: 30_000 });

/** Waits until a session reaches a state (polling the manager: simple, and 220 waiters are cheap). */
async function waitForState(id: string, state: string, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (manager.get(id).state !== state) {
    if (Date.now() > deadline) throw new Error(`session ${id} stayed ${manager.get(id).state} (wanted ${state}): ${manager.get(id).note ?? ''}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Sends one message and returns the reply text and the time to the end of the turn. */
async function turn(id: string, content: string): Promise<{ text: string; ms: number; woke: boolean }> {
  const woke = manager.get(id).state === 'hibernated';
  const started = performance.now();
  let text = '';
  const { events } = await manager.send(id, content, (event) => {
    if (event.type === 'text-delta') text += String((event as { delta?: unknown }).delta ?? '');
  });
  const failure = events.find((event) => event.type === 'error');
  if (failure) throw new Error(`turn failed: ${JSON.stringify(failure)}`);
  return { text, ms: performance.now() - started, woke };
}

/** Runs `work` for 0..count-1, `concurrency` at a time; failures are collected, not thrown. */
async function inParallel(count: number, work: (index: number) => Promise<void>, failures: string[], label: string): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (;;) {
        const index = next++;
        if (index >= count) return;
        try {
          await work(index);
        } catch (error) {
          failures.push(`${label} ${index}: ${(error as Error).message}`);
        }
        if ((index + 1) % 20 === 0) progress(`${label}: ${index + 1} of ${count}`);
      }
    }),
  );
}

const kib = (text: string, field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;

/** Memory of the live machines' supervisors and QEMUs, and of the memory directory's tmpfs files. */
async function hostMemory() {
  const totals = { machines: 0, supervisorPrivate: 0, supervisorPss: 0, supervisorRss: 0, qemuOwn: 0, qemuGuest: 0 };
  for (const machine of await listMachines()) {
    if (machine.state.status !== 'running') continue;
    const state = await readMachineState(machine.config.id);
    try {
      const supervisor = await readFile(`/proc/${state.supervisorPid}/smaps_rollup`, 'utf8');
      const qemu = await readFile(`/proc/${state.qemuPid}/status`, 'utf8');
      totals.supervisorPrivate += kib(supervisor, 'Private_Clean') + kib(supervisor, 'Private_Dirty');
      totals.supervisorPss += kib(supervisor, 'Pss');
      totals.supervisorRss += kib(supervisor, 'Rss');
      totals.qemuOwn += kib(qemu, 'RssAnon') + kib(qemu, 'RssFile');
      totals.qemuGuest += kib(qemu, 'RssShmem');
      totals.machines++;
    } catch {
      // stopped meanwhile
    }
  }
  let tmpfs = 0;
  let templateTmpfs = 0;
  for (const name of await readdir(memoryDirectory)) {
    const bytes = await stat(join(memoryDirectory, name)).then(
      (info) => info.blocks * 512,
      () => 0,
    );
    tmpfs += bytes;
    if (name.includes('-template-')) templateTmpfs += bytes;
  }
  // (The host's MemAvailable says little here: other work shares this machine.)
  return { ...totals, tmpfs, templateTmpfs };
}

const output: string[] = [];
const print = (line: string) => {
  output.push(line);
  process.stdout.write(line + '\n');
};
const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const sampler = startHostSampler(memoryDirectory);
const failures: string[] = [];

try {
  const host = await prepareHost();
  // Warm-up: the base image and its 128 MiB boot template, outside the measurements.
  {
    const warm = await manager.create(spec(30), { name: 'warm' });
    await turn(warm.id, 'warm up');
    await manager.delete(warm.id);
  }
  progress('warm-up done');

  // ---- the hibernated sessions: each answers one message, then hibernates after 0.5 s idle
  const hibernatedIds: string[] = [];
  const createStarted = performance.now();
  await inParallel(
    hibernatedCount,
    async (index) => {
      const record = await manager.create(spec(0.5), { name: `sleeper-${index}` });
      hibernatedIds.push(record.id);
      const reply = await turn(record.id, `sleeper ${index} first message`);
      if (!/^turn \d+: /.test(reply.text)) throw new Error(`unexpected reply: ${reply.text}`);
      await waitForState(record.id, 'hibernated');
    },
    failures,
    'hibernated sessions',
  );
  const createHibernatedMs = performance.now() - createStarted;

  // ---- the running sessions: they answer one message and stay up (idle timer of an hour)
  const runningIds: string[] = [];
  await inParallel(
    runningCount,
    async (index) => {
      const record = await manager.create(spec(3600), { name: `awake-${index}` });
      runningIds.push(record.id);
      const reply = await turn(record.id, `awake ${index} first message`);
      if (!/^turn \d+: /.test(reply.text)) throw new Error(`unexpected reply: ${reply.text}`);
    },
    failures,
    'running sessions',
  );
  await new Promise((resolve) => setTimeout(resolve, 3000)); // let the last ones settle before measuring
  const held = await hostMemory();
  const usage = await storeUsage();
  const states = new Map<string, number>();
  for (const id of [...hibernatedIds, ...runningIds]) states.set(manager.get(id).state, (states.get(manager.get(id).state) ?? 0) + 1);
  progress('all sessions created; checking every one answers');

  // ---- every session answers: the running ones at once, the hibernated ones wake for it
  const awakeTurns: number[] = [];
  const wakeTurns: number[] = [];
  let answered = 0;
  const everyone = [...runningIds, ...hibernatedIds];
  const checkStarted = performance.now();
  await inParallel(
    everyone.length,
    async (index) => {
      const id = everyone[index]!;
      const reply = await turn(id, `are you there ${index}`);
      if (!/^turn \d+: /.test(reply.text)) throw new Error(`unexpected reply: ${reply.text}`);
      (reply.woke ? wakeTurns : awakeTurns).push(reply.ms);
      answered++;
    },
    failures,
    'answer check',
  );
  const checkMs = performance.now() - checkStarted;
  const activity = sampler();

  print(`# density benchmark, ${new Date().toISOString()}, ${host.accelerator.accelerator}, ${hibernatedCount} hibernated + ${runningCount} running sessions`);
  print(
    `# shell agent (busybox sh), 128 MiB / 1 vCPU machines, idle hibernation after 0.5 s, ${concurrency} at a time; load average ${activity.loadStart.toFixed(1)} at start, max ${activity.loadMax.toFixed(1)}, other QEMUs up to ${activity.foreignQemuMax}`,
  );
  print(
    `created ${hibernatedIds.length} sessions (start, one turn, hibernate) in ${(createHibernatedMs / 1000).toFixed(0)} s; states then: ${[...states].map(([state, count]) => `${count} ${state}`).join(', ')}`,
  );
  print('');
  print(`while ${held.machines} machines ran and ${hibernatedCount} sessions were hibernated:`);
  const per = (bytes: number) => (held.machines > 0 ? ` (${mib(bytes / held.machines)} per machine)` : '');
  print(`  supervisors, private memory       ${mib(held.supervisorPrivate)}${per(held.supervisorPrivate)}`);
  print(`  supervisors, PSS                  ${mib(held.supervisorPss)}${per(held.supervisorPss)}`);
  print(`  supervisors, RSS                  ${mib(held.supervisorRss)}${per(held.supervisorRss)}`);
  print(`  QEMU own RSS (not guest RAM)      ${mib(held.qemuOwn)}${per(held.qemuOwn)}`);
  print(`  QEMU guest RAM resident (tmpfs)   ${mib(held.qemuGuest)}${per(held.qemuGuest)}`);
  print(`  tmpfs of the memory directory     ${mib(held.tmpfs)} (of which the boot template ${mib(held.templateTmpfs)})`);
  print(
    `  snapshot store                    ${mib(usage.bytes)} (${mib(usage.bytes / Math.max(1, hibernatedCount))} per hibernated session, template included)`,
  );
  print('');
  print(`every session answers: ${answered} of ${everyone.length} in ${(checkMs / 1000).toFixed(0)} s`);
  print(
    `  running sessions, turn            p50 ${percentile(awakeTurns, 50).toFixed(0)} ms, p99 ${percentile(awakeTurns, 99).toFixed(0)} ms (n=${awakeTurns.length})`,
  );
  print(
    `  hibernated sessions, wake + turn  p50 ${percentile(wakeTurns, 50).toFixed(0)} ms, p99 ${percentile(wakeTurns, 99).toFixed(0)} ms (n=${wakeTurns.length})`,
  );
  print(`failures: ${failures.length}${failures.length ? `\n  ${failures.slice(0, 10).join('\n  ')}` : ''}`);
  print(`total run ${(elapsed() / 60_000).toFixed(1)} min`);
  const root = fileURLToPath(new URL('..', import.meta.url));
  await writeFile(
    join(root, 'bench', 'results', `density-${new Date().toISOString().slice(0, 10)}-${host.accelerator.accelerator}.txt`),
    output.join('\n') + '\n',
  );
} catch (error) {
  process.stderr.write(`bench failed: ${(error as Error).stack ?? String(error)}\nfailures so far: ${failures.join('\n')}\n`);
  process.exitCode = 1;
} finally {
  await manager.close().catch(() => undefined);
  for (const machine of await listMachines().catch(() => [])) await killMachine(machine.config).catch(() => undefined);
  await log.close().catch(() => undefined);
  await rm(home, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }).catch(() => undefined);
  await rm(memoryDirectory, { recursive: true, force: true }).catch(() => undefined);
}
