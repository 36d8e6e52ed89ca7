// Rewind benchmark (run by hand; issue 14): what a machine snapshot after every turn costs, over
// 30 turns of the example coding agent (node + AI SDK, dev-llm on the host), and how long a fork
// at a past turn takes to answer. Compared with the naive way (a full, unlayered snapshot per
// turn: what each turn's snapshot references). Prints one table; commit it under bench/results/.
//   node --import tsx bench/rewind.ts [turns] [--shell]   (--shell: the busybox shell agent instead)
import { MiB, percentile, codingAgentSpec } from './support.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';

const turns = Number(process.argv.find((argument) => /^\d+$/.test(argument)) ?? 30);
const useShell = process.argv.includes('--shell');
const outputIndex = process.argv.indexOf('--output');
const outputFile = outputIndex >= 0 ? process.argv[outputIndex + 1] : undefined;
const began = performance.now();
const progress = (text: string) => process.stderr.write(`[${((performance.now() - began) / 1000).toFixed(0)} s] ${text}\n`);
const size = (bytes: number) => `${(bytes / MiB).toFixed(2)} MiB`;

const home = await mkdtemp(join(tmpdir(), 'tp-rewind-'));
process.env.TORPOR_HOME = home;
const memoryDirectory = await mkdtemp('/dev/shm/tp-rewind-');
process.env.TORPOR_MEMORY_DIR = memoryDirectory;

const { listMachines, removeMachine } = await import('../src/runtime/machines.ts');
const { openContextLog } = await import('../src/context/index.ts');
const { SessionManager } = await import('../src/session/session-manager.ts');
const { storeUsage, readSnapshot } = await import('../src/snapshot/snapshot-store.ts');
type SessionSpec = import('../src/session/session-store.ts').SessionSpec;

const log = await openContextLog({ stateDirectory: home });
// Keep every turn: the bench wants the whole history's cost.
const manager = new SessionManager({ log, tickMs: 100, turnTimeoutMs: 120_000, turnSnapshots: turns + 1 });
let llm: { port: number; close: () => Promise<void> } | undefined;
const rows: Array<[string, string]> = [];

try {
  let spec: SessionSpec;
  let say: (turn: number) => string;
  if (useShell) {
    spec = { image: 'base', command: ['sh', '-c', shellAgent], env: [], cpus: 1, memoryMiB: 256, idleSeconds: 3600 };
    say = (turn) => `note ${turn} about the retry loop`;
  } else {
    const { buildCodingAgentImage } = await import('../examples/coding-agent/image.ts');
    const { startDevLlm } = await import('../src/dev-llm/index.ts');
    progress('building the coding agent image');
    await buildCodingAgentImage();
    llm = await startDevLlm({ port: 0, host: '127.0.0.1' });
    spec = codingAgentSpec(llm.port, 3600);
    say = (turn) => (turn % 3 === 0 ? `run: echo turn ${turn} >> /root/work.txt` : `remember fact ${turn} about the retry loop and its backoff`);
  }
  const session = await manager.create(spec, { name: 'rewind' });
  const turnMs: number[] = [];
  for (let turn = 1; turn <= turns; turn++) {
    const started = performance.now();
    await manager.send(session.id, say(turn));
    turnMs.push(performance.now() - started);
    // The turn's snapshot is queued right behind it; wait for it so each turn is measured alone.
    for (let attempt = 0; attempt < 600 && !manager.turnsOf(session.id).some((past) => past.turn === turn); attempt++)
      await new Promise((resolve) => setTimeout(resolve, 50));
    if (turn % 5 === 0) progress(`turn ${turn} of ${turns}`);
  }
  const history = manager.turnsOf(session.id);
  const usage = await storeUsage();
  const newBytes: number[] = [];
  const referenced: number[] = [];
  for (const past of history) {
    const manifest = await readSnapshot(past.snapshot);
    newBytes.push(Number(manifest.stats.newCompressedBytes));
    referenced.push(usage.snapshots.find((snapshot) => snapshot.name === past.snapshot)?.referencedBytes ?? NaN);
  }
  const totalNew = newBytes.reduce((sum, bytes) => sum + bytes, 0);
  const exclusiveAll = usage.snapshots
    .filter((snapshot) => history.some((past) => past.snapshot === snapshot.name))
    .reduce((sum, snapshot) => sum + snapshot.exclusiveBytes, 0);
  const naive = referenced.reduce((sum, bytes) => sum + bytes, 0);
  rows.push([`agent`, useShell ? 'busybox shell agent (256 MiB guest)' : 'example coding agent, node + AI SDK + dev-llm (512 MiB guest)']);
  rows.push([`turn time (reply), p50 / max over ${turns}`, `${percentile(turnMs, 50).toFixed(0)} ms / ${Math.max(...turnMs).toFixed(0)} ms`]);
  rows.push([`new bytes per turn snapshot, p50 / max`, `${size(percentile(newBytes, 50))} / ${size(Math.max(...newBytes))}`]);
  rows.push([`all ${history.length} turn snapshots: new bytes in the store`, size(totalNew)]);
  rows.push([`naive: a full snapshot per turn (sum of what each references)`, `${size(naive)} (${(naive / Math.max(1, totalNew)).toFixed(1)}x)`]);
  rows.push([`one turn snapshot alone references (p50)`, size(percentile(referenced, 50))]);
  rows.push([`freed by dropping all turn snapshots (exclusive)`, size(exclusiveAll)]);

  // Rewind: fork at the middle turn, first reply.
  const middle = Math.max(1, Math.floor(turns / 2));
  const forkStarted = performance.now();
  const fork = await manager.fork(session.id, { atTurn: middle });
  const forkMs = performance.now() - forkStarted;
  const replyStarted = performance.now();
  await manager.send(fork.id, useShell ? 'what now' : 'what do you remember');
  const replyMs = performance.now() - replyStarted;
  rows.push([`fork at turn ${middle}: fork call / first turn of the fork (restore included)`, `${forkMs.toFixed(0)} ms / ${replyMs.toFixed(0)} ms`]);
  await manager.delete(fork.id);
  await manager.delete(session.id);
} finally {
  await manager.close();
  await llm?.close();
  for (const view of await listMachines()) await removeMachine(view.config, { force: true }).catch(() => {});
  await log.close();
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}

const width = Math.max(...rows.map(([name]) => name.length));
const report = [
  `torpor rewind benchmark (a snapshot after every turn), ${new Date().toISOString().slice(0, 10)}`,
  `machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${release()}; TCG; load average at the end ${loadavg()[0]!.toFixed(2)}; wall time ${((performance.now() - began) / 1000).toFixed(0)} s`,
  '',
  ...rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`),
  '',
].join('\n');
process.stdout.write(report);
if (outputFile) await writeFile(outputFile, report);
