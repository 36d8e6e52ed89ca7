import { TorporApiError } from './errors.ts';
import { readServerSentEvents } from './server-sent-events.ts';
import { encode, type Transport } from './transport.ts';

export type MachineStatus = 'created' | 'starting' | 'running' | 'paused' | 'stopping' | 'exited' | 'failed';

/** A machine as the server describes it: its configuration plus its current state. */
export interface MachineInfo {
  id: string;
  name: string;
  image: string;
  command: string[];
  env: string[];
  cpus: number;
  memoryMiB: number;
  createdAt: string;
  state: { status: MachineStatus; exitCode?: number; error?: string; startedAt?: string; finishedAt?: string };
  [field: string]: unknown;
}

export interface CreateMachineOptions {
  image: string;
  name?: string;
  /** The main process (default: the image's command). */
  command?: string[];
  env?: string[] | Record<string, string>;
  workdir?: string;
  user?: string;
  network?: boolean;
  resources?: { cpus?: number; memory?: string };
}

export interface ExecOptions {
  env?: string[] | Record<string, string>;
  workdir?: string;
  user?: string;
  /** Written to the command's standard input, which is then closed. */
  stdin?: string;
  signal?: AbortSignal;
}

export type ExecEvent =
  | { type: 'stdout'; data: string }
  | { type: 'stderr'; data: string }
  | { type: 'exit'; code: number; signal: number }
  | { type: 'error'; message: string; errno?: number };

export interface SnapshotInfo {
  name: string;
  pauseMs: number;
  totalMs: number;
  [field: string]: unknown;
}

const environment = (env: CreateMachineOptions['env']) => (Array.isArray(env) ? env : Object.entries(env ?? {}).map(([key, value]) => `${key}=${value}`));

/**
 * A command running in a machine: iterate it for output as it comes, or await `output()`. The
 * request is made when it is first iterated or awaited.
 */
export class Execution implements AsyncIterable<ExecEvent> {
  private started?: AsyncGenerator<ExecEvent>;
  constructor(private readonly start: () => AsyncGenerator<ExecEvent>) {}

  [Symbol.asyncIterator](): AsyncIterator<ExecEvent> {
    if (this.started) throw new Error('an execution can be read once');
    this.started = this.start();
    return this.started;
  }

  /** All output and the exit code; rejects if the command could not start (e.g. not found). */
  async output(): Promise<{ stdout: string; stderr: string; exitCode: number }> {
    let stdout = '';
    let stderr = '';
    for await (const event of this) {
      if (event.type === 'stdout') stdout += event.data;
      else if (event.type === 'stderr') stderr += event.data;
      else if (event.type === 'exit') return { stdout, stderr, exitCode: event.code };
      else throw new TorporApiError(400, event.errno === 2 ? 'command-not-found' : 'exec-failed', event.message);
    }
    throw new TorporApiError(502, 'exec-interrupted', 'the output ended before the command exited');
  }
}

/** A handle on one machine. */
export class Machine {
  constructor(
    private readonly machines: Machines,
    public info: MachineInfo,
  ) {}

  get id(): string {
    return this.info.id;
  }
  get name(): string {
    return this.info.name;
  }

  exec(command: string[], options: ExecOptions = {}): Execution {
    return this.machines.exec(this.id, command, options);
  }
  readonly files = {
    read: (path: string): Promise<Uint8Array> => this.machines.readFile(this.id, path),
    write: (path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> => this.machines.writeFile(this.id, path, data, options),
  };
  snapshot(name: string, options: { stop?: boolean; replace?: boolean } = {}): Promise<SnapshotInfo> {
    return this.machines.snapshot(this.id, name, options);
  }
  fork(options: { count?: number; namePrefix?: string } = {}): Promise<Machine[]> {
    return this.machines.fork(this.id, options);
  }
  stop(): Promise<void> {
    return this.machines.stop(this.id);
  }
  remove(options: { force?: boolean } = {}): Promise<void> {
    return this.machines.remove(this.id, options);
  }
  async refresh(): Promise<MachineInfo> {
    this.info = (await this.machines.get(this.id)).info;
    return this.info;
  }
}

/** `torpor.machines`: microVMs over the API, like `torpor run / exec / cp / snapshot / restore / fork / rm`. */
export class Machines {
  constructor(private readonly transport: Transport) {}

  /** Creates and starts a machine (from the image's boot template when there is one). */
  async create(options: CreateMachineOptions): Promise<Machine> {
    const body = {
      image: options.image,
      ...(options.name === undefined ? {} : { name: options.name }),
      ...(options.command === undefined ? {} : { command: options.command }),
      env: environment(options.env),
      ...(options.workdir === undefined ? {} : { workdir: options.workdir }),
      ...(options.user === undefined ? {} : { user: options.user }),
      ...(options.network === undefined ? {} : { network: options.network }),
      ...(options.resources === undefined ? {} : { resources: { cpus: options.resources.cpus ?? 1, memory: options.resources.memory ?? '512m' } }),
    };
    return new Machine(this, await this.transport.json<MachineInfo>('POST', '/v1/machines', body, 'creating a machine'));
  }

  async get(reference: string): Promise<Machine> {
    return new Machine(this, await this.transport.json<MachineInfo>('GET', `/v1/machines/${encode(reference)}`, undefined, `getting machine ${reference}`));
  }

  async list(): Promise<MachineInfo[]> {
    return (await this.transport.json<{ machines: MachineInfo[] }>('GET', '/v1/machines', undefined, 'listing machines')).machines;
  }

  exec(reference: string, command: string[], options: ExecOptions = {}): Execution {
    const transport = this.transport;
    return new Execution(async function* () {
      const response = await transport.fetch(`/v1/machines/${encode(reference)}/exec`, {
        method: 'POST',
        what: `running a command in machine ${reference}`,
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({
          command,
          env: environment(options.env),
          ...(options.workdir === undefined ? {} : { workdir: options.workdir }),
          ...(options.user === undefined ? {} : { user: options.user }),
          ...(options.stdin === undefined ? {} : { stdin: options.stdin }),
        }),
        signal: options.signal,
      });
      for await (const event of readServerSentEvents(response.body!, options.signal)) {
        yield { type: event.event, ...(JSON.parse(event.data) as object) } as ExecEvent;
      }
    });
  }

  async readFile(reference: string, path: string): Promise<Uint8Array> {
    const response = await this.transport.fetch(`/v1/machines/${encode(reference)}/files?path=${encode(path)}`, {
      what: `reading ${path} in machine ${reference}`,
    });
    return new Uint8Array(await response.arrayBuffer());
  }

  async writeFile(reference: string, path: string, data: string | Uint8Array, options: { mode?: number } = {}): Promise<void> {
    const mode = options.mode === undefined ? '' : `&mode=${options.mode.toString(8)}`;
    const response = await this.transport.fetch(`/v1/machines/${encode(reference)}/files?path=${encode(path)}${mode}`, {
      method: 'PUT',
      what: `writing ${path} in machine ${reference}`,
      headers: { 'content-type': 'application/octet-stream' },
      body: typeof data === 'string' ? data : new Blob([data as Uint8Array<ArrayBuffer>]),
    });
    await response.body?.cancel();
  }

  /** Saves the running machine whole (memory, processes, files) as a named snapshot. */
  snapshot(reference: string, name: string, options: { stop?: boolean; replace?: boolean } = {}): Promise<SnapshotInfo> {
    return this.transport.json<SnapshotInfo>('POST', `/v1/machines/${encode(reference)}/snapshot`, { name, ...options }, `snapshotting machine ${reference}`);
  }

  /** A new running machine from a snapshot, exactly where it was. */
  async restore(snapshot: string, options: { name?: string } = {}): Promise<Machine> {
    return new Machine(this, await this.transport.json<MachineInfo>('POST', '/v1/machines/restore', { snapshot, ...options }, `restoring ${snapshot}`));
  }

  /** Snapshots the machine and starts `count` copies of it. */
  async fork(reference: string, options: { count?: number; namePrefix?: string } = {}): Promise<Machine[]> {
    const { forks } = await this.transport.json<{ forks: MachineInfo[] }>(
      'POST',
      `/v1/machines/${encode(reference)}/fork`,
      options,
      `forking machine ${reference}`,
    );
    return forks.map((info) => new Machine(this, info));
  }

  async stop(reference: string): Promise<void> {
    await this.transport.json('POST', `/v1/machines/${encode(reference)}/stop`, {}, `stopping machine ${reference}`);
  }

  async remove(reference: string, options: { force?: boolean } = {}): Promise<void> {
    await this.transport.json('DELETE', `/v1/machines/${encode(reference)}${options.force ? '?force=true' : ''}`, undefined, `removing machine ${reference}`);
  }
}
