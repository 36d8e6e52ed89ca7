import { watch, type FSWatcher } from 'node:fs';

export interface MachineDirectoryWatch {
  /** Resolves at the next change in the directory (or one since the last call), or after `fallbackMs`. */
  next: (fallbackMs: number) => Promise<void>;
  close: () => void;
}

/**
 * Watches a machine's directory: its supervisor replaces state.json by a rename at every change and
 * the directory goes away at removal, so a waiter wakes when something happened instead of polling
 * (a poll reads state.json and /proc; a `run` polled ~70 times). `next` still resolves after its
 * fallback time: a missed event or a host without inotify costs latency, never a hang.
 */
export function watchMachineDirectory(directory: string): MachineDirectoryWatch {
  let changed = false;
  let wake: (() => void) | undefined;
  let watcher: FSWatcher | undefined;
  try {
    // Not persistent: a caller that forgets to close it does not keep the process alive.
    watcher = watch(directory, { persistent: false }, () => {
      changed = true;
      wake?.();
    });
    watcher.on('error', () => {
      watcher?.close();
      watcher = undefined;
    });
  } catch {
    // the directory is gone already, or no inotify: the fallback time polls
  }
  return {
    next: (fallbackMs) =>
      new Promise<void>((resolve) => {
        if (changed) {
          changed = false;
          resolve();
          return;
        }
        const finish = () => {
          clearTimeout(timer);
          wake = undefined;
          changed = false;
          resolve();
        };
        const timer = setTimeout(finish, fallbackMs);
        wake = finish;
      }),
    close: () => {
      watcher?.close();
      watcher = undefined;
    },
  };
}
