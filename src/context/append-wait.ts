import type { EventEmitter } from 'node:events';

/**
 * A storage's `waitForAppend`: resolves when `appends` emits the session's id (an append made in this
 * process, or a database notification), when `signal` aborts, or when `appended` says the session
 * has moved on or fails (it is asked at once, then every `pollIntervalMs`). The poll is the safety
 * net for what no event announces: appends by other processes, or an append that committed before
 * the listener was in place. Like `waitForAppend`, it may resolve spuriously; callers re-read.
 */
export function waitForSessionAppend(options: {
  appends: EventEmitter;
  sessionId: string;
  signal?: AbortSignal | undefined;
  pollIntervalMs: number;
  appended: () => boolean | Promise<boolean>;
}): Promise<void> {
  const { appends, sessionId, signal } = options;
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    let timer: NodeJS.Timeout | undefined;
    const finish = () => {
      appends.off(sessionId, finish);
      signal?.removeEventListener('abort', finish);
      clearInterval(timer);
      resolve();
    };
    appends.on(sessionId, finish);
    signal?.addEventListener('abort', finish, { once: true });
    const check = () => {
      let answer: boolean | Promise<boolean>;
      try {
        answer = options.appended();
      } catch {
        return finish();
      }
      if (typeof answer === 'boolean') {
        if (answer) finish();
      } else answer.then((moved) => moved && finish(), finish);
    };
    timer = setInterval(check, options.pollIntervalMs);
    check();
  });
}
