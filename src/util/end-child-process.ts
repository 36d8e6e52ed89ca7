import type { ChildProcess } from 'node:child_process';

/**
 * Ends a child process this process started (by its handle, never by name): `signal` (SIGTERM
 * unless the program has a better one, like PostgreSQL's SIGINT fast shutdown), then SIGKILL if it
 * is still there after `graceMs`. Resolves once it has exited; at once if it already had.
 */
export async function endChildProcess(child: ChildProcess, options: { graceMs: number; signal?: NodeJS.Signals }): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(options.signal ?? 'SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), options.graceMs);
  await exited;
  clearTimeout(timer);
}
