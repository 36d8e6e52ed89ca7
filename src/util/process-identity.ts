import { readFileSync } from 'node:fs';

/** True when a process with this pid exists (EPERM: it exists but belongs to someone else). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** True when `pid` is alive and its command line contains `marker` (guards against PID reuse). */
export function processMatches(pid: number | undefined, marker: string): boolean {
  if (!pid) return false;
  try {
    const commandLine = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (!commandLine.includes(marker)) return false;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // state field after the "(comm)": Z means a zombie nobody reaped, which is not running.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** Sends a signal only to the process we started, identified by pid and command-line marker. */
export function signalIfMatches(pid: number | undefined, marker: string, signal: NodeJS.Signals): boolean {
  if (!processMatches(pid, marker)) return false;
  try {
    process.kill(pid!, signal);
    return true;
  } catch {
    return false;
  }
}
