import { closeSync, openSync, readSync, renameSync, statSync, truncateSync, writeFileSync, writeSync } from 'node:fs';

/** Bytes a log may keep (TORPOR_LOG_MAX, bytes; a current file plus one rotated `.1`). Default 16 MiB. */
export function logMaxBytes(environment: NodeJS.ProcessEnv = process.env): number {
  const value = Number(environment.TORPOR_LOG_MAX);
  return Number.isSafeInteger(value) && value >= 64 * 1024 ? value : 16 * 1024 * 1024;
}

/** The rotated predecessor of a capped log: read it before the log itself to get everything kept. */
export function rotatedPath(path: string): string {
  return `${path}.1`;
}

/**
 * An append-only log whose disk use is bounded, whatever a guest prints: when the file would
 * pass half the limit it becomes `path.1` (replacing the previous one) and a new file starts, so
 * the newest output (between half the limit and the whole of it) is always kept.
 * Writes are synchronous: a flooding guest is slowed by the disk instead of growing a queue in
 * the supervisor's memory.
 */
export class CappedLogWriter {
  private descriptor?: number;
  private size = 0;
  private readonly fileLimit: number;

  constructor(
    readonly path: string,
    readonly maxBytes: number = logMaxBytes(),
  ) {
    this.fileLimit = Math.max(1, Math.floor(maxBytes / 2));
  }

  private open(): number {
    if (this.descriptor === undefined) {
      this.descriptor = openSync(this.path, 'a', 0o600);
      this.size = statSync(this.path).size;
    }
    return this.descriptor;
  }

  private rotate(): void {
    if (this.descriptor !== undefined) closeSync(this.descriptor);
    this.descriptor = undefined;
    renameSync(this.path, rotatedPath(this.path));
  }

  write(data: string | Buffer): void {
    // Writes are whole records (a JSON line): never cut one. Callers keep them small (one guest
    // frame each), so a file passes its half of the limit by at most one record.
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    this.open();
    if (this.size > 0 && this.size + bytes.length > this.fileLimit) this.rotate();
    const descriptor = this.open();
    writeSync(descriptor, bytes);
    this.size += bytes.length;
  }

  end(callback?: () => void): void {
    if (this.descriptor !== undefined) closeSync(this.descriptor);
    this.descriptor = undefined;
    callback?.();
  }
}

/**
 * Caps a log another process appends to (QEMU's serial console, opened with append=on): when it
 * has grown past half the limit, its content moves to `path.1` and the file is truncated; the
 * writer's O_APPEND writes then land at the new end. Output written between the copy and the
 * truncation is lost, which is acceptable for a console log and is the price of not proxying
 * every byte. Returns the function that stops the checks.
 */
export function capForeignLog(path: string, options: { maxBytes?: number; intervalMs?: number } = {}): () => void {
  const fileLimit = Math.floor((options.maxBytes ?? logMaxBytes()) / 2);
  const check = () => {
    try {
      const size = statSync(path).size;
      if (size <= fileLimit) return;
      // Keep the newest fileLimit bytes: the file may have grown well past the limit between checks.
      const descriptor = openSync(path, 'r');
      const tail = Buffer.alloc(fileLimit);
      let length: number;
      try {
        length = readSync(descriptor, tail, 0, fileLimit, size - fileLimit);
      } finally {
        closeSync(descriptor);
      }
      writeFileSync(rotatedPath(path), tail.subarray(0, length), { mode: 0o600 });
      truncateSync(path, 0);
    } catch {
      // Not created yet, or removed with the machine: nothing to cap.
    }
  };
  const timer = setInterval(check, options.intervalMs ?? 1000);
  timer.unref();
  return () => {
    clearInterval(timer);
    check();
  };
}
