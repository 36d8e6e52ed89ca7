// Helpers shared by the benchmarks (run by hand; see bench/*.ts).
import { spawn } from 'node:child_process';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import type { SessionSpec } from '../src/session/session-store.ts';
import type { MachineConfig } from '../src/runtime/machine-record.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';

export const MiB = 1024 ** 2;
export const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
/** Nearest-rank percentile. */
export const percentile = (values: number[], p: number) =>
  values.length === 0 ? NaN : sorted(values)[Math.min(values.length - 1, Math.ceil((values.length * p) / 100) - 1)]!;
export const ms = (value: number) => `${value.toFixed(0)} ms`;
export const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

/** Progress on stderr, with the time of day (the table goes to stdout). */
export const progress = (text: string) => process.stderr.write(`[${new Date().toISOString().slice(11, 19)}] ${text}\n`);

/**
 * A state directory and a RAM directory of the benchmark's own (`tp-<prefix>-…` under /tmp and
 * /dev/shm), set as TORPOR_HOME and TORPOR_MEMORY_DIR before the runtime is loaded; the caller
 * removes both at the end.
 */
export async function useBenchmarkHome(prefix: string, options: { bootTemplates: boolean }): Promise<{ home: string; memoryDirectory: string }> {
  const home = await mkdtemp(join(tmpdir(), `tp-${prefix}-`));
  const memoryDirectory = await mkdtemp(`/dev/shm/tp-${prefix}-`);
  process.env.TORPOR_HOME = home;
  process.env.TORPOR_MEMORY_DIR = memoryDirectory;
  process.env.TORPOR_BOOT_TEMPLATES = options.bootTemplates ? '1' : '0';
  return { home, memoryDirectory };
}

/**
 * Runs a benchmark's child (`node --import tsx <script> ...args`: one tree's or one system's
 * measurement) and returns the JSON of the last line it printed; its stderr (progress) passes
 * through. Read at `close`, not `exit`: stdout may still hold the line when the process has exited.
 */
export async function runJsonChild<T>(script: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<T> {
  const { code, stdout } = await new Promise<{ code: number | null; stdout: string }>((resolveChild, rejectChild) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: options.cwd, env: options.env, stdio: ['ignore', 'pipe', 'inherit'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', rejectChild);
    child.on('close', (exitCode) => resolveChild({ code: exitCode, stdout: output }));
  });
  const line = stdout.trim().split('\n').at(-1) ?? '';
  if (code !== 0 || !line.startsWith('{')) throw new Error(`${script} ${args.join(' ')} failed (code ${code}): ${stdout.slice(-2000)}`);
  return JSON.parse(line) as T;
}

/** CPU seconds a process used so far (user + system), from /proc; NaN without a pid. */
export async function cpuSecondsOf(pid: number | undefined): Promise<number> {
  if (!pid) return NaN;
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

// The runtime is imported when first used: a benchmark sets TORPOR_HOME and the like before it loads it.
const runtime = () => import('../src/runtime/machines.ts');

/** One ping through the machine's supervisor to its guest agent, and its answer. */
export async function pingMachine(config: MachineConfig): Promise<void> {
  const client = await (await runtime()).connectToMachine(config);
  try {
    await client.ping(30_000);
  } finally {
    client.close();
  }
}

/** The message the benchmark's shell agent is given in a timed turn (`timedGuestCommand`'s MESSAGE). */
export const shellAgentMessage = '{"type":"message","turnId":"t1","content":"please look at the retry loop"}';

/** Runs `argv` in the guest, the shell agent as AGENT and its message as MESSAGE in its environment; ms until it exited (status 0 or it throws). */
export async function timedGuestCommand(config: MachineConfig, argv: string[]): Promise<number> {
  const client = await (await runtime()).connectToMachine(config);
  try {
    const began = performance.now();
    const status = await client.exec({
      argv,
      env: [`AGENT=${shellAgent}`, `MESSAGE=${shellAgentMessage}`, 'PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin'],
      workingDirectory: '/',
      user: '',
      tty: false,
      stdin: false,
    }).exited;
    const elapsed = performance.now() - began;
    if ((status as { code?: number }).code !== 0) throw new Error(`${argv.join(' ').slice(0, 60)}: ${JSON.stringify(status)}`);
    return elapsed;
  } finally {
    client.close();
  }
}

/** Other work on the host during the run (other test suites start VMs too): load and foreign QEMUs. */
export function startHostSampler(ownMarker: string): () => { loadStart: number; loadMax: number; foreignQemuMax: number; foreignQemuMean: number } {
  const loadStart = loadavg()[0]!;
  let loadMax = loadStart;
  let samples = 0;
  let foreignSum = 0;
  let foreignQemuMax = 0;
  const sample = () => {
    loadMax = Math.max(loadMax, loadavg()[0]!);
    let foreign = 0;
    for (const pid of readdirSync('/proc')) {
      if (!/^\d+$/.test(pid)) continue;
      try {
        const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
        if (commandLine.startsWith('qemu-system') && !commandLine.includes(ownMarker)) foreign++;
      } catch {
        // gone
      }
    }
    samples++;
    foreignSum += foreign;
    foreignQemuMax = Math.max(foreignQemuMax, foreign);
  };
  sample();
  const timer = setInterval(sample, 2000);
  timer.unref();
  return () => {
    clearInterval(timer);
    return { loadStart, loadMax, foreignQemuMax, foreignQemuMean: foreignSum / samples };
  };
}

/**
 * The example coding agent as a session (node, 512 MiB) talking to a `torpor dev-llm` on the host's
 * loopback: the network policy lets the guest reach that one port (10.0.2.2:PORT) and nothing else.
 */
export function codingAgentSpec(llmPort: number, idleSeconds: number): SessionSpec {
  return {
    image: 'coding-agent',
    command: ['node', '/app/agent.mjs'],
    env: [`OPENAI_BASE_URL=http://10.0.2.2:${llmPort}/v1`],
    cpus: 1,
    memoryMiB: 512,
    idleSeconds,
    network: { allowHost: [llmPort] },
  };
}
