import { Console } from 'node:console';
import { createInterface, type Interface } from 'node:readline';
import { format } from 'node:util';
import type { Entry } from '../context/entry.ts';
import { entriesToModelMessages, type ModelMessage } from '../context/model-messages.ts';
import {
  encodeLine,
  parseAgentEvent,
  parseHostMessage,
  protocolVersion,
  type AgentEvent,
  type HelloMessage,
  type HostMessage,
  type UserMessage,
  type WakeMessage,
} from '../session/agent-protocol.ts';
import { retryWithRateLimitSleep, type RateLimitSleepOptions } from './rate-limit.ts';
import { forwardStream, type ForwardStreamOptions, type ForwardStreamResult, type StreamTextResultLike } from './stream-text.ts';

/** A user message and the turn it starts. */
export interface Turn {
  turnId: string;
  message: UserMessage;
  /** The message's text (text parts joined), for programs that only deal in text. */
  text: string;
}

export interface AgentOptions {
  /** Handle each message; the SDK sends `turn-start` before and `turn-finish` after (and `error` if it throws). */
  onMessage?: (turn: Turn, agent: Agent) => unknown;
  /** Where host messages come from and events go: the process's stdin and stdout by default. */
  input?: NodeJS.ReadableStream;
  output?: NodeJS.WritableStream;
  /** Where `agent.log` writes: stderr by default. */
  logOutput?: NodeJS.WritableStream;
  /**
   * stdout carries the protocol, so a stray `console.log` would corrupt it. By default (when the
   * output is the real stdout) console.log/info/debug are sent to stderr instead.
   */
  redirectConsole?: boolean;
}

class Closed extends Error {
  constructor(what: string) {
    super(`the host closed the connection before ${what}`);
    this.name = 'AgentClosedError';
  }
}

export class CheckpointFailedError extends Error {
  constructor(message: string) {
    super(`checkpoint failed: ${message}`);
    this.name = 'CheckpointFailedError';
  }
}

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: Error) => void;
}

function textOf(message: UserMessage): string {
  if (typeof message.content === 'string') return message.content;
  return message.content.flatMap((part) => (part.type === 'text' ? [part.text] : [])).join('');
}

/** Log entries (from `hello.history` or `agent.history()`) as AI SDK messages, summaries applied. */
export function historyToModelMessages(entries: readonly Entry[]): ModelMessage[] {
  // History is the whole log from offset 0, so positions are offsets (summaries name ranges by them).
  return entriesToModelMessages(entries.map((entry, offset) => ({ sessionId: '', offset, appendedAt: '', entry })));
}

/**
 * The agent program's end of the torpor agent protocol. One per process: it owns stdin and stdout.
 *
 * Nothing here knows about snapshots: while the machine is hibernated the process is simply frozen,
 * and every pending promise (a sleep, a checkpoint, the next message) resolves after the restore as
 * if no time had passed, except the clock.
 */
export class Agent {
  /** Resolves with the host's hello (session id, and history when the session was rebuilt from its log). */
  readonly hello: Promise<HelloMessage>;
  /** Resolves when the host sends `shutdown` or closes stdin. */
  readonly closed: Promise<void>;
  /** With `onMessage`: resolves when every message was handled and the host closed. */
  readonly done: Promise<void>;

  private readonly output: NodeJS.WritableStream;
  private readonly logOutput: NodeJS.WritableStream;
  private helloReceived?: HelloMessage;
  private resolveHello!: (hello: HelloMessage) => void;
  private rejectHello!: (error: Error) => void;
  private resolveClosed!: () => void;
  private isClosed = false;
  private readonly queuedTurns: Turn[] = [];
  private turnWaiter?: Waiter<Turn | undefined>;
  private readonly sleepers: Array<Waiter<WakeMessage>> = [];
  private readonly checkpointWaiters: Array<Waiter<string>> = [];
  private readonly historyWaiters: Array<Waiter<Entry[]>> = [];
  private readonly finishedTurns = new Set<string>();
  private currentTurnId?: string;
  private outputBroken = false;
  private readonly lines: Interface;
  private readonly input: NodeJS.ReadableStream;

  constructor(options: AgentOptions = {}) {
    const input = options.input ?? process.stdin;
    this.input = input;
    this.output = options.output ?? process.stdout;
    this.logOutput = options.logOutput ?? process.stderr;
    this.hello = new Promise((resolve, reject) => {
      this.resolveHello = resolve;
      this.rejectHello = reject;
    });
    this.hello.catch(() => {}); // a program that never awaits hello must not die of an unhandled rejection
    this.closed = new Promise((resolve) => (this.resolveClosed = resolve));
    if (options.redirectConsole ?? this.output === process.stdout) {
      const toStderr = new Console({ stdout: process.stderr, stderr: process.stderr });
      console.log = toStderr.log.bind(toStderr);
      console.info = toStderr.info.bind(toStderr);
      console.debug = toStderr.debug.bind(toStderr);
      console.dir = toStderr.dir.bind(toStderr);
      console.table = toStderr.table.bind(toStderr);
    }
    // The host went away (EPIPE): there is no one left to talk to, which is a shutdown, not a crash.
    this.output.on('error', (error: Error) => {
      if (!this.outputBroken) this.log(`torpor agent: cannot write to the host (${error.message}); stopping`);
      this.outputBroken = true;
      this.close();
    });
    this.lines = createInterface({ input, crlfDelay: Infinity });
    this.lines.on('line', (line) => this.receive(line));
    this.lines.on('close', () => this.close());
    this.done = options.onMessage ? this.runHandler(options.onMessage) : this.closed;
    currentAgent = this;
  }

  get sessionId(): string | undefined {
    return this.helloReceived?.sessionId;
  }

  private receive(line: string): void {
    if (!line.trim()) return;
    let message: HostMessage;
    try {
      message = parseHostMessage(line);
    } catch (error) {
      this.log(`torpor agent: ignoring a line from the host: ${(error as Error).message}`);
      return;
    }
    switch (message.type) {
      case 'hello':
        if (message.protocol !== protocolVersion) {
          this.log(`torpor agent: the host speaks protocol ${message.protocol}, this SDK speaks ${protocolVersion}; continuing, but update one of them`);
        }
        this.helloReceived = message;
        this.resolveHello(message);
        break;
      case 'message': {
        const turn: Turn = { turnId: message.turnId, message: message.message, text: textOf(message.message) };
        if (this.turnWaiter) {
          const waiter = this.turnWaiter;
          this.turnWaiter = undefined;
          waiter.resolve(turn);
        } else this.queuedTurns.push(turn);
        break;
      }
      case 'wake': {
        // The machine was restored: TCP connections kept alive from before the snapshot are dead
        // (the host side of them is gone), and reusing them fails with ECONNRESET.
        resetHttpConnections();
        // Every pending sleep ends: the machine is running again, whoever asked for the wake-up.
        for (const sleeper of this.sleepers.splice(0)) sleeper.resolve(message);
        break;
      }
      case 'checkpoint-done':
        this.checkpointWaiters.shift()?.resolve(message.snapshot);
        break;
      case 'checkpoint-failed':
        this.checkpointWaiters.shift()?.reject(new CheckpointFailedError(message.error));
        break;
      case 'history':
        this.historyWaiters.shift()?.resolve(message.entries);
        break;
      case 'shutdown':
        this.close();
        break;
    }
  }

  private close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.rejectHello(new Closed('saying hello'));
    this.turnWaiter?.resolve(undefined);
    this.turnWaiter = undefined;
    for (const waiter of this.sleepers.splice(0)) waiter.reject(new Closed('the wake-up'));
    for (const waiter of this.checkpointWaiters.splice(0)) waiter.reject(new Closed('the checkpoint was taken'));
    for (const waiter of this.historyWaiters.splice(0)) waiter.reject(new Closed('sending the history'));
    // Stop reading, so that an open stdin does not keep the process alive once the program is done.
    this.lines.close();
    (this.input as { unref?: () => void }).unref?.();
    this.resolveClosed();
  }

  /** Sends one event to the host. Events are validated here, so a mistake fails in the agent, with a stack. */
  send(event: AgentEvent): void {
    const valid = parseAgentEvent(event);
    if (valid.type === 'turn-finish') {
      this.finishedTurns.add(valid.turnId);
      if (this.currentTurnId === valid.turnId) this.currentTurnId = undefined;
    }
    if (!this.outputBroken) this.output.write(encodeLine(valid));
  }

  /** Writes to stderr (the program's own log; stdout is the protocol). */
  log(...values: unknown[]): void {
    this.logOutput.write(`${format(...values)}\n`);
  }

  /** Logs entries of the program's own (metadata, summaries, messages it added to the conversation). */
  appendEntries(entries: Entry[]): void {
    this.send({ type: 'entries-append', entries });
  }

  private nextTurn(): Promise<Turn | undefined> {
    const queued = this.queuedTurns.shift();
    if (queued) return Promise.resolve(queued);
    if (this.isClosed) return Promise.resolve(undefined);
    return new Promise((resolve, reject) => (this.turnWaiter = { resolve, reject }));
  }

  private startTurn(turn: Turn): void {
    this.currentTurnId = turn.turnId;
    this.send({ type: 'turn-start', turnId: turn.turnId });
  }

  /** Ends the turn unless the program already did (or paused it and finished it later). */
  finishTurn(turnId: string): void {
    if (!this.finishedTurns.has(turnId)) this.send({ type: 'turn-finish', turnId });
  }

  /**
   * User messages, one turn at a time. Each message's turn starts when it is yielded and finishes
   * when the loop body asks for the next one (or leaves the loop), so a plain `for await` loop is a
   * correct agent. Ends when the host shuts the session down.
   */
  async *messages(): AsyncGenerator<Turn, void, undefined> {
    for (;;) {
      const turn = await this.nextTurn();
      if (!turn) return;
      this.startTurn(turn);
      try {
        yield turn;
      } finally {
        this.finishTurn(turn.turnId);
      }
    }
  }

  private async runHandler(onMessage: (turn: Turn, agent: Agent) => unknown): Promise<void> {
    for await (const turn of this.messages()) {
      try {
        await onMessage(turn, this);
      } catch (error) {
        this.log(`torpor agent: turn ${turn.turnId} failed:`, error);
        this.send({ type: 'error', turnId: turn.turnId, message: error instanceof Error ? error.message : String(error), code: 'agent_error' });
      }
    }
  }

  /**
   * Pauses until `until` without holding a machine: the host snapshots and stops the VM and restores
   * it then (or earlier, when a user message arrives: see `WakeMessage.reason`). Resolves on `wake`.
   */
  sleepUntil(until: Date | string | number, options: { reason?: string; turnId?: string } = {}): Promise<WakeMessage> {
    if (this.isClosed) return Promise.reject(new Closed('the wake-up'));
    const date = new Date(until);
    if (Number.isNaN(date.getTime())) return Promise.reject(new TypeError(`sleepUntil: not a date: ${String(until)}`));
    const turnId = options.turnId ?? this.currentTurnId;
    const wake = new Promise<WakeMessage>((resolve, reject) => this.sleepers.push({ resolve, reject }));
    this.send({ type: 'sleep-until', until: date.toISOString(), ...(options.reason ? { reason: options.reason } : {}), ...(turnId ? { turnId } : {}) });
    return wake;
  }

  /** Asks the host for a snapshot now; resolves with its name once it is durable. */
  checkpoint(): Promise<string> {
    if (this.isClosed) return Promise.reject(new Closed('the checkpoint was taken'));
    const done = new Promise<string>((resolve, reject) => this.checkpointWaiters.push({ resolve, reject }));
    this.send({ type: 'checkpoint' });
    return done;
  }

  /** Every entry of the session's context log, oldest first. */
  history(): Promise<Entry[]> {
    if (this.isClosed) return Promise.reject(new Closed('sending the history'));
    const answer = new Promise<Entry[]>((resolve, reject) => this.historyWaiters.push({ resolve, reject }));
    this.send({ type: 'history-request' });
    return answer;
  }

  /**
   * Streams an AI SDK `streamText` result to the host as protocol events and logs each step's
   * messages. Pass the conversation as `messages` to have completed steps appended to it. Throws the
   * stream's error (a 429, say) after forwarding what completed.
   */
  streamText(result: StreamTextResultLike, turn: string | Turn | ForwardStreamOptions): Promise<ForwardStreamResult> {
    const options: ForwardStreamOptions = typeof turn === 'string' ? { turnId: turn } : 'message' in turn ? { turnId: turn.turnId } : turn;
    return forwardStream(result, options, (event) => this.send(event));
  }

  /**
   * Runs `fn`, and when it fails with HTTP 429 sleeps (hibernated) until the Retry-After time and
   * runs it again. Give the model call `maxRetries: 0`, or the AI SDK waits out short Retry-Afters
   * itself, awake.
   */
  withRateLimitSleep<T>(fn: () => Promise<T>, options: RateLimitSleepOptions = {}): Promise<T> {
    return retryWithRateLimitSleep(fn, (until, sleep) => this.sleepUntil(until, sleep), { turnId: this.currentTurnId, ...options });
  }
}

let currentAgent: Agent | undefined;

/** Starts speaking the protocol on stdin/stdout. With `onMessage`, also starts handling messages. */
export function createAgent(options: AgentOptions = {}): Agent {
  return new Agent(options);
}

/**
 * `agent.withRateLimitSleep` for the process's agent (the last one created), so that model-calling
 * code deep in a program need not carry the agent around.
 */
export function withRateLimitSleep<T>(fn: () => Promise<T>, options: RateLimitSleepOptions & { agent?: Agent } = {}): Promise<T> {
  const agent = options.agent ?? currentAgent;
  if (!agent) return Promise.reject(new Error('withRateLimitSleep: create the agent first (createAgent())'));
  return agent.withRateLimitSleep(fn, options);
}

/**
 * Swaps Node's global fetch dispatcher (undici's, found under its well-known symbol) for a fresh one,
 * so the next request opens a new connection instead of reusing one that died with the snapshot.
 */
export function resetHttpConnections(): void {
  const key = Symbol.for('undici.globalDispatcher.1');
  const holder = globalThis as unknown as Record<symbol, { constructor: new () => unknown; close?: () => Promise<void> } | undefined>;
  const current = holder[key];
  if (!current) return;
  holder[key] = new current.constructor() as typeof current;
  current.close?.().catch(() => {});
}
