// Helpers shared by the benchmarks (run by hand; see bench/*.ts).
import { loadavg } from 'node:os';
import { readdirSync, readFileSync } from 'node:fs';
import type { SessionSpec } from '../src/session/session-store.ts';

export const MiB = 1024 ** 2;
export const sorted = (values: number[]) => [...values].sort((a, b) => a - b);
/** Nearest-rank percentile. */
export const percentile = (values: number[], p: number) =>
  values.length === 0 ? NaN : sorted(values)[Math.min(values.length - 1, Math.ceil((values.length * p) / 100) - 1)]!;
export const ms = (value: number) => `${value.toFixed(0)} ms`;
export const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

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
