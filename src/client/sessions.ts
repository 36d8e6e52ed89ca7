import type { SessionEvent, SessionState } from './events.ts';
import { SessionLog } from './session-log.ts';
import { readSessionEvents, type SessionEventBatch } from './session-events.ts';
import { readServerSentEvents } from './server-sent-events.ts';
import { encode, type Transport } from './transport.ts';
import { Turn } from './turn.ts';

/** A past turn a session can be forked at. */
export interface TurnSnapshotInfo {
  turn: number;
  /** The log's end offset when the turn ended: the fork's log is cut there. */
  logOffset: number;
  takenAt: string;
  snapshot: string;
}

/** A session as the server describes it. */
export interface SessionInfo {
  id: string;
  name: string;
  state: SessionState;
  spec: { image: string; command: string[]; env: string[]; cpus: number; memoryMiB: number; idleSeconds: number };
  machineId?: string;
  lastSnapshot?: string;
  snapshotLogOffset?: number;
  wakeAt?: string;
  note?: string;
  turns: number;
  createdAt: string;
  updatedAt: string;
  lastActivityAt: string;
  parentId?: string;
  storedBytes?: { referenced: number; exclusive: number };
}

export interface CreateSessionOptions {
  /** Image holding the agent program (e.g. "node", or one you imported). */
  image: string;
  /** The agent program and its arguments. */
  command: string[];
  /** Environment as KEY=VALUE strings, or an object. */
  env?: string[] | Record<string, string>;
  name?: string;
  resources?: { cpus?: number; memory?: string };
  /** Hibernate after this long idle: seconds, or "30s", "5m". */
  idle?: number | string;
}

/** A handle on one session: its last known description plus what can be done with it. */
export class Session {
  readonly log: SessionLog;

  constructor(
    private readonly sessions: Sessions,
    public info: SessionInfo,
  ) {
    this.log = sessions.log(info.id);
  }

  get id(): string {
    return this.info.id;
  }
  get name(): string {
    return this.info.name;
  }
  get state(): SessionState {
    return this.info.state;
  }

  /** Sends a user message; the returned turn streams the agent's events. */
  send(text: string, options: { signal?: AbortSignal } = {}): Turn {
    return this.sessions.send(this.id, text, options);
  }
  /** A new session from this one: as it is now, or as it was right after turn `atTurn` (rewind). */
  fork(options: { name?: string; atTurn?: number } = {}): Promise<Session> {
    return this.sessions.fork(this.id, options);
  }
  /** The past turns this session can be forked at. */
  turns(): Promise<TurnSnapshotInfo[]> {
    return this.sessions.turns(this.id);
  }
  delete(): Promise<void> {
    return this.sessions.delete(this.id);
  }
  /** The session's recorded turn events, resumable from a saved offset (see Sessions.events). */
  events(options: { offset?: string; live?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<SessionEventBatch> {
    return this.sessions.events(this.id, options);
  }
  /** Fetches the current description (state, turns, snapshot). */
  async refresh(): Promise<SessionInfo> {
    this.info = (await this.sessions.get(this.id)).info;
    return this.info;
  }
}

/** `torpor.sessions`: durable agent sessions (`/v1/sessions`). */
export class Sessions {
  constructor(private readonly transport: Transport) {}

  async create(options: CreateSessionOptions): Promise<Session> {
    const env = Array.isArray(options.env) ? options.env : Object.entries(options.env ?? {}).map(([key, value]) => `${key}=${value}`);
    const body = {
      image: options.image,
      command: options.command,
      env,
      ...(options.name === undefined ? {} : { name: options.name }),
      ...(options.resources === undefined ? {} : { resources: { cpus: options.resources.cpus ?? 1, memory: options.resources.memory ?? '512m' } }),
      ...(options.idle === undefined ? {} : { idle: options.idle }),
    };
    return new Session(this, await this.transport.json<SessionInfo>('POST', '/v1/sessions', body, 'creating a session'));
  }

  async get(idOrName: string): Promise<Session> {
    return new Session(this, await this.transport.json<SessionInfo>('GET', `/v1/sessions/${encode(idOrName)}`, undefined, `getting session ${idOrName}`));
  }

  async list(): Promise<SessionInfo[]> {
    return (await this.transport.json<{ sessions: SessionInfo[] }>('GET', '/v1/sessions', undefined, 'listing sessions')).sessions;
  }

  /**
   * Sends a user message to a session. Nothing is sent until the turn is iterated or awaited
   * (`.text()`, `.events()`): like a query builder, so a turn can be handed around before it starts.
   */
  send(idOrName: string, text: string, options: { signal?: AbortSignal } = {}): Turn {
    const transport = this.transport;
    return new Turn(async function* () {
      const response = await transport.fetch(`/v1/sessions/${encode(idOrName)}/messages`, {
        method: 'POST',
        what: `sending to session ${idOrName}`,
        headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
        body: JSON.stringify({ content: text }),
        signal: options.signal,
      });
      for await (const event of readServerSentEvents(response.body!, options.signal)) {
        yield JSON.parse(event.data) as SessionEvent;
      }
    });
  }

  /** The past turns a session can be forked at (`fork(id, { atTurn })`), oldest first. */
  async turns(idOrName: string): Promise<TurnSnapshotInfo[]> {
    return (
      await this.transport.json<{ turns: TurnSnapshotInfo[] }>(
        'GET',
        `/v1/sessions/${encode(idOrName)}/turns`,
        undefined,
        `listing the turns of session ${idOrName}`,
      )
    ).turns;
  }

  /**
   * A new session from this one. With `atTurn`, as it was right after that turn: its machine from
   * the turn's snapshot, its log forked where the turn ended (the server keeps the last
   * TORPOR_TURN_SNAPSHOTS turns).
   */
  async fork(idOrName: string, options: { name?: string; atTurn?: number } = {}): Promise<Session> {
    return new Session(this, await this.transport.json<SessionInfo>('POST', `/v1/sessions/${encode(idOrName)}/fork`, options, `forking session ${idOrName}`));
  }

  async delete(idOrName: string): Promise<void> {
    await this.transport.json<void>('DELETE', `/v1/sessions/${encode(idOrName)}`, undefined, `deleting session ${idOrName}`);
  }

  /**
   * Every event the session's turns produced, in order, from `offset` (default the start); with
   * `live` (default) it keeps following. Each batch carries the offset to resume after it, so a
   * page reload or a crashed worker continues exactly where it stopped.
   */
  events(sessionId: string, options: { offset?: string; live?: boolean; signal?: AbortSignal } = {}): AsyncGenerator<SessionEventBatch> {
    return readSessionEvents(this.transport, sessionId, options);
  }

  /** The context log of a session (its id, not its name). */
  log(sessionId: string): SessionLog {
    return new SessionLog(this.transport, sessionId);
  }
}
