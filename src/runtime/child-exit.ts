import type { ChildProcess } from 'node:child_process';

/**
 * Resolves when `child` has exited, or after `timeoutMs`. The timer is not unref'd: a caller that
 * waits for its (unref'd) children must stay alive until they are gone or the time is up.
 */
export function exitOf(child: ChildProcess, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
