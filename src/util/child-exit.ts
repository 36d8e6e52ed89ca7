import type { ChildProcess } from 'node:child_process';

/** Whether a child process this process started has exited (by a code or a signal). */
export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

/**
 * Resolves when `child` has exited, or after `timeoutMs`. The timer is not unref'd: a caller that
 * waits for its (unref'd) children must stay alive until they are gone or the time is up.
 */
export function exitOf(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (hasExited(child)) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Ends a child process this process started (by its handle, never by name): `signal` (SIGTERM
 * unless the program has a better one, like PostgreSQL's SIGINT fast shutdown), then SIGKILL if it
 * is still there after `graceMs`. Resolves once it has exited; at once if it already had.
 */
export async function endChildProcess(child: ChildProcess, options: { graceMs: number; signal?: NodeJS.Signals }): Promise<void> {
  if (hasExited(child)) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(options.signal ?? 'SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), options.graceMs);
  await exited;
  clearTimeout(timer);
}
