import { createConnection, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    description: string,
  ) {
    super(`QMP ${command}: ${description}`);
  }
}

/** A QEMU Machine Protocol client over a unix socket: JSON commands matched to replies by id. */
export class QmpClient extends EventEmitter<{ event: [QmpEvent]; close: [] }> {
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, { command: string; resolve: (value: unknown) => void; reject: (error: Error) => void }>();
  private closed = false;

  private constructor(private readonly socket: Socket) {
    super();
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.onData(text));
    socket.on('close', () => {
      this.closed = true;
      for (const waiter of this.pending.values()) waiter.reject(new Error(`QMP connection closed during ${waiter.command}`));
      this.pending.clear();
      this.emit('close');
    });
    socket.on('error', () => {});
  }

  /** `givenUp` stops the retries early (QEMU already exited: nobody will ever listen). */
  static async connect(path: string, timeoutMs = 10_000, givenUp: () => boolean = () => false): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const candidate = createConnection(path, () => resolve(candidate));
          candidate.once('error', reject);
        });
        const client = new QmpClient(socket);
        await client.greeting();
        await client.execute('qmp_capabilities');
        return client;
      } catch (error) {
        if (Date.now() > deadline || givenUp()) throw error;
        // Every start and restore waits here for QEMU's socket: a 10 ms step cost ~5 ms on average.
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
  }

  private greetingWaiter?: (value: unknown) => void;

  private greeting(): Promise<unknown> {
    return new Promise((resolve, reject) => {
      this.greetingWaiter = resolve;
      this.socket.once('close', () => reject(new Error('QMP closed before its greeting')));
    });
  }

  private onData(text: string): void {
    this.buffer += text;
    let newline: number;
    while ((newline = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, newline).trim();
      this.buffer = this.buffer.slice(newline + 1);
      if (!line) continue;
      const message = JSON.parse(line) as Record<string, unknown>;
      if ('QMP' in message) {
        this.greetingWaiter?.(message);
      } else if ('event' in message) {
        this.emit('event', message as unknown as QmpEvent);
      } else if (typeof message.id === 'number') {
        const waiter = this.pending.get(message.id);
        if (!waiter) continue;
        this.pending.delete(message.id);
        if ('error' in message) {
          const error = message.error as { class: string; desc: string };
          waiter.reject(new QmpError(waiter.command, error.class, error.desc));
        } else {
          waiter.resolve(message.return);
        }
      }
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closed) return Promise.reject(new Error(`QMP connection closed; cannot run ${command}`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { command, resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(JSON.stringify({ execute: command, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  /** Resolves with the first event of this name (for which `accept` holds). */
  waitForEvent(name: string, timeoutMs: number, accept: (event: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('event', listener);
        reject(new Error(`timed out after ${timeoutMs} ms waiting for QMP event ${name}`));
      }, timeoutMs);
      const listener = (event: QmpEvent) => {
        if (event.event !== name || !accept(event)) return;
        clearTimeout(timer);
        this.off('event', listener);
        resolve(event);
      };
      this.on('event', listener);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
