import type { Duplex } from 'node:stream';
import { createConnection } from 'node:net';
import {
  FrameDecoder,
  FrameType,
  encodeFrame,
  encodeExecRequest,
  encodePath,
  encodeSettings,
  decodeExit,
  decodeError,
  decodeFileStat,
  protocolVersion,
  maximumPayloadSize,
  type ExecRequest,
  type FileStat,
  type Frame,
} from './protocol.ts';

export class GuestError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
    this.name = 'GuestError';
  }
}

export interface ExecHandlers {
  stdout?: (data: Buffer) => void;
  stderr?: (data: Buffer) => void;
}

export interface ExitStatus {
  code: number;
  signal: number;
}

/** A process running in the guest, as seen from the host. */
export class GuestProcess {
  readonly exited: Promise<ExitStatus>;
  readonly started: Promise<number>;
  private resolveExit!: (status: ExitStatus) => void;
  private rejectExit!: (error: Error) => void;
  private resolveStart!: (pid: number) => void;
  private rejectStart!: (error: Error) => void;

  constructor(private readonly client: AgentClient, readonly stream: number, private readonly handlers: ExecHandlers) {
    this.exited = new Promise((resolve, reject) => {
      this.resolveExit = resolve;
      this.rejectExit = reject;
    });
    this.started = new Promise((resolve, reject) => {
      this.resolveStart = resolve;
      this.rejectStart = reject;
    });
    // A failed start rejects both; whoever awaits only `exited` still sees the error.
    this.started.catch(() => {});
  }

  /** @internal */
  receive(frame: Frame): boolean {
    switch (frame.type) {
      case FrameType.started:
        this.resolveStart(frame.payload.readUInt32LE(0));
        return false;
      case FrameType.stdout:
        this.handlers.stdout?.(frame.payload);
        return false;
      case FrameType.stderr:
        this.handlers.stderr?.(frame.payload);
        return false;
      case FrameType.exit:
        this.resolveExit(decodeExit(frame.payload));
        return true;
      case FrameType.error: {
        const { errno, message } = decodeError(frame.payload);
        const error = new GuestError(errno, message);
        this.rejectStart(error);
        this.rejectExit(error);
        return true;
      }
    }
    return false;
  }

  /** @internal */
  fail(error: Error): void {
    this.rejectStart(error);
    this.rejectExit(error);
  }

  write(data: Buffer | string): void {
    const bytes = typeof data === 'string' ? Buffer.from(data) : data;
    for (let offset = 0; offset < bytes.length; offset += maximumPayloadSize) {
      this.client.send(FrameType.stdin, this.stream, bytes.subarray(offset, offset + maximumPayloadSize));
    }
  }

  endInput(): void {
    this.client.send(FrameType.stdin, this.stream, Buffer.alloc(0));
  }

  signal(signalNumber: number): void {
    const payload = Buffer.alloc(4);
    payload.writeInt32LE(signalNumber, 0);
    this.client.send(FrameType.signal, this.stream, payload);
  }

  resize(rows: number, columns: number): void {
    const payload = Buffer.alloc(4);
    payload.writeUInt16LE(rows, 0);
    payload.writeUInt16LE(columns, 2);
    this.client.send(FrameType.resize, this.stream, payload);
  }
}

type StreamHandler = (frame: Frame) => boolean; // true: the stream is finished

/**
 * Speaks the guest protocol over any byte stream: the QEMU agent socket (in the supervisor) or a
 * supervisor's control socket (in the CLI), which routes frames to the guest unchanged.
 */
export class AgentClient {
  private readonly decoder = new FrameDecoder();
  private readonly streams = new Map<number, StreamHandler>();
  private nextStream: number;
  private closedError?: Error;
  private readonly closeListeners: Array<(error: Error) => void> = [];

  constructor(readonly socket: Duplex, options: { firstStream?: number } = {}) {
    // Random start: a restored guest still runs processes on the streams an earlier host opened.
    this.nextStream = options.firstStream ?? 16 + Math.floor(Math.random() * 0x3fffffff);
    socket.on('data', (chunk: Buffer) => {
      for (const frame of this.decoder.push(chunk)) this.dispatch(frame);
    });
    const onClose = () => this.shutdown(new Error('the connection to the guest agent closed'));
    socket.on('close', onClose);
    socket.on('error', (error) => this.shutdown(error));
  }

  static async connect(path: string, options: { timeoutMs?: number; firstStream?: number } = {}): Promise<AgentClient> {
    const deadline = Date.now() + (options.timeoutMs ?? 5000);
    for (;;) {
      try {
        const socket = await new Promise<Duplex>((resolve, reject) => {
          const candidate = createConnection(path, () => resolve(candidate));
          candidate.once('error', reject);
        });
        return new AgentClient(socket, options);
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
  }

  private shutdown(error: Error): void {
    if (this.closedError) return;
    this.closedError = error;
    for (const handler of this.streams.values()) {
      handler({ type: FrameType.error, flags: 0, stream: 0, payload: Buffer.concat([Buffer.alloc(4), Buffer.from(error.message)]) });
    }
    this.streams.clear();
    for (const listener of this.closeListeners) listener(error);
  }

  onClose(listener: (error: Error) => void): void {
    if (this.closedError) listener(this.closedError);
    else this.closeListeners.push(listener);
  }

  get closed(): boolean {
    return this.closedError !== undefined;
  }

  private dispatch(frame: Frame): void {
    const handler = this.streams.get(frame.stream);
    if (handler && handler(frame)) this.streams.delete(frame.stream);
  }

  send(type: number, stream: number, payload?: Buffer): void {
    if (this.closedError) throw this.closedError;
    this.socket.write(encodeFrame(type, stream, payload));
  }

  /** Hands every frame of `stream` to `handler` until it returns true (used to relay streams). */
  route(stream: number, handler: (frame: Frame) => boolean): void {
    this.streams.set(stream, handler);
  }

  allocateStream(): number {
    const stream = this.nextStream++;
    if (this.nextStream > 0x7fffffff) this.nextStream = 16;
    return stream;
  }

  /** Sends one request and collects frames until `done` says the reply is complete. */
  request<T>(type: number, payload: Buffer | undefined, collect: (frame: Frame) => { done: boolean; value?: T }, timeoutMs = 0): Promise<T> {
    const stream = this.allocateStream();
    return new Promise<T>((resolve, reject) => {
      if (this.closedError) return reject(this.closedError);
      const timer = timeoutMs > 0 ? setTimeout(() => {
        this.streams.delete(stream);
        reject(new Error(`the guest agent did not answer within ${timeoutMs} ms`));
      }, timeoutMs) : undefined;
      this.streams.set(stream, (frame) => {
        if (frame.type === FrameType.error) {
          clearTimeout(timer);
          const { errno, message } = decodeError(frame.payload);
          reject(new GuestError(errno, message));
          return true;
        }
        try {
          const result = collect(frame);
          if (result.done) {
            clearTimeout(timer);
            resolve(result.value as T);
          }
          return result.done;
        } catch (error) {
          clearTimeout(timer);
          reject(error);
          return true;
        }
      });
      this.send(type, stream, payload);
    });
  }

  /** Resolves when the agent answers a hello; resends it, since early bytes can be lost at boot. */
  async hello(timeoutMs: number): Promise<number> {
    const stream = this.allocateStream();
    return new Promise<number>((resolve, reject) => {
      const resend = setInterval(() => this.trySend(FrameType.hello, stream), 100);
      const timer = setTimeout(() => finish(new Error(`the guest agent did not say hello within ${timeoutMs} ms`)), timeoutMs);
      const finish = (error?: Error, version?: number) => {
        clearInterval(resend);
        clearTimeout(timer);
        this.streams.delete(stream);
        if (error) reject(error);
        else resolve(version!);
      };
      this.streams.set(stream, (frame) => {
        if (frame.type === FrameType.error) finish(new Error(decodeError(frame.payload).message));
        else if (frame.type === FrameType.hello) {
          const version = frame.payload.readUInt32LE(0);
          if (version !== protocolVersion) finish(new Error(`guest agent speaks protocol ${version}, host speaks ${protocolVersion}: rebuild the initramfs (torpor doctor)`));
          else finish(undefined, version);
        }
        return false;
      });
      this.trySend(FrameType.hello, stream);
    });
  }

  private trySend(type: number, stream: number): void {
    try {
      this.send(type, stream);
    } catch {
      // closed: the hello timeout reports it
    }
  }

  async ping(timeoutMs = 5000): Promise<number> {
    const started = performance.now();
    await this.request(FrameType.ping, undefined, (frame) => ({ done: frame.type === FrameType.pong }), timeoutMs);
    return performance.now() - started;
  }

  configure(settings: Record<string, string>, type: number = FrameType.configure, timeoutMs = 10_000): Promise<void> {
    return this.request(type, encodeSettings(settings), (frame) => ({ done: frame.type === FrameType.ok }), timeoutMs);
  }

  exec(request: ExecRequest, handlers: ExecHandlers = {}): GuestProcess {
    const stream = this.allocateStream();
    const process = new GuestProcess(this, stream, handlers);
    if (this.closedError) {
      process.fail(this.closedError);
      return process;
    }
    this.streams.set(stream, (frame) => process.receive(frame));
    this.send(FrameType.exec, stream, encodeExecRequest(request));
    return process;
  }

  /** Follows a process that is already running on `stream` (a restored guest's main process). */
  adopt(stream: number, handlers: ExecHandlers = {}): GuestProcess {
    const process = new GuestProcess(this, stream, handlers);
    this.streams.set(stream, (frame) => process.receive(frame));
    return process;
  }

  async writeFile(path: string, data: AsyncIterable<Buffer> | Buffer, mode = 0o644): Promise<void> {
    const stream = this.allocateStream();
    const done = new Promise<void>((resolve, reject) => {
      this.streams.set(stream, (frame) => {
        if (frame.type === FrameType.ok) resolve();
        else if (frame.type === FrameType.error) {
          const { errno, message } = decodeError(frame.payload);
          reject(new GuestError(errno, message));
        }
        return true;
      });
    });
    done.catch(() => {});
    this.send(FrameType.fileWrite, stream, encodePath(mode, path));
    const chunks: AsyncIterable<Buffer> | Buffer[] = Buffer.isBuffer(data) ? [data] : data;
    for await (const chunk of chunks) {
      for (let offset = 0; offset < chunk.length; offset += 65536) {
        if (this.closedError) break;
        const piece = chunk.subarray(offset, offset + 65536);
        if (!this.socket.write(encodeFrame(FrameType.fileData, stream, piece))) {
          await new Promise((resolve) => this.socket.once('drain', resolve));
        }
      }
    }
    if (!this.closedError) this.send(FrameType.fileData, stream, Buffer.alloc(0));
    return done;
  }

  /** Streams a guest file's bytes to `sink`; resolves with its stat once all bytes arrived. */
  readFile(path: string, sink: (chunk: Buffer) => void): Promise<FileStat> {
    let stat: FileStat | undefined;
    return this.request(FrameType.fileRead, encodePath(0, path), (frame) => {
      if (frame.type === FrameType.fileStat) stat = decodeFileStat(frame.payload);
      else if (frame.type === FrameType.fileData) {
        if (frame.payload.length === 0) return { done: true, value: stat };
        sink(frame.payload);
      }
      return { done: false };
    });
  }

  makeDirectory(path: string, mode = 0o755): Promise<void> {
    return this.request(FrameType.makeDirectory, encodePath(mode, path), (frame) => ({ done: frame.type === FrameType.ok }));
  }

  /** lstat of `path`, and its entries when it is a directory. */
  list(path: string): Promise<{ stat: FileStat; entries: FileStat[] }> {
    let stat: FileStat | undefined;
    const entries: FileStat[] = [];
    return this.request(FrameType.listDirectory, encodePath(0, path), (frame) => {
      if (frame.type === FrameType.fileStat) stat = decodeFileStat(frame.payload);
      else if (frame.type === FrameType.directoryEntry) entries.push(decodeFileStat(frame.payload));
      else if (frame.type === FrameType.ok) return { done: true, value: { stat: stat!, entries } };
      return { done: false };
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
