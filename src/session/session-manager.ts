import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ContextLog, Entry } from '../context/index.ts';
import { TorporError } from '../util/errors.ts';
import { createMachine, startMachine, findMachine, effectiveState, removeMachine, createSupervisorPool } from '../runtime/machines.ts';
import type { SupervisorPool } from '../runtime/supervisor-pool.ts';
import { snapshotMachine, restoreMachine, resumeMachine } from '../runtime/snapshots.ts';
import { machineMemoryBytes, pausedBudgetBytes } from '../runtime/paused-machines.ts';
import { releaseWarmMemory, trimWarmMemory, warmBudgetBytes } from '../runtime/warm-memory.ts';
import { hostMemoryShortfallBytes } from '../host/host-memory.ts';
import { readMachineConfig } from '../runtime/machine-files.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';
import { sessionNetworkOptions } from './session-network.ts';
import { removeSnapshot, readSnapshot } from '../snapshot/snapshot-store.ts';
import { AgentConnection, type InvalidAgentEvent } from './agent-connection.ts';
import { SessionStore, type AgentSessionRecord, type SessionSpec, type SessionState } from './session-store.ts';
import type { SessionRecordStore } from './session-record-store.ts';
import type { SnapshotReplication } from './snapshot-replication.ts';
import { eventToEntries, invalidEventEntry } from './agent-events-to-entries.ts';
import { protocolVersion, type AgentEvent, type ErrorEvent } from './agent-protocol.ts';
import { agentMaxHistoryBytes, readBoundedHistory } from './bounded-history.ts';
import { checkMachineCount, checkMachineSize, checkSessionCount, type ResourceLimits } from '../runtime/limits.ts';
import { environment } from '../config/environment.ts';
import { TurnHistory, type TurnSnapshot } from './turn-history.ts';
import { StartTimeline } from '../runtime/start-timeline.ts';

/** Events the manager itself adds to a turn's stream, beside the agent's own (validated) events. */
export type SessionEvent = AgentEvent | { type: 'session-state'; state: SessionState; note?: string } | { type: 'turn-suspend'; until: string };

/** The turn an event belongs to, for the events that name one. */
const turnOf = (event: AgentEvent): string | undefined => ('turnId' in event ? event.turnId : undefined);

/** What the stream shows for a line the agent got wrong (the log keeps the line itself). */
const invalidEventError = (invalid: InvalidAgentEvent): ErrorEvent => ({
  type: 'error',
  code: 'invalid-agent-event',
  message: `the agent sent an invalid event: ${invalid.problem}`,
});

export interface SessionManagerOptions {
  log: ContextLog;
  store?: SessionRecordStore;
  /** How often idle and wake timers are checked. */
  tickMs?: number;
  /** Longest a turn may take before the agent is considered hung. */
  turnTimeoutMs?: number;
  /** Server-wide maximums (runtime/limits.ts); none when not given. */
  limits?: ResourceLimits;
  /**
   * How many past turns to keep a machine snapshot of, so a session can be forked as it was after
   * any of them (rewind). 0 turns it off. Default: TORPOR_TURN_SNAPSHOTS, else 0.
   */
  turnSnapshots?: number;
  turnHistory?: TurnHistory;
  /** Shares snapshots with other nodes of a cluster (pushed at hibernation, pulled before a restore). */
  replication?: SnapshotReplication;
  /**
   * The host's pool of spare supervisors (`torpor serve` makes one from TORPOR_POOL_SPARES and
   * TORPOR_POOL_STANDBYS and shares it with the machine routes); the manager closes it. Default: a
   * pool of one spare of its own.
   */
  pool?: SupervisorPool;
}

interface LiveSession {
  connection: AgentConnection;
  machineId: string;
}

const activeStates: SessionState[] = ['running', 'idle', 'waking', 'creating'];

/**
 * Sessions: a context log plus a machine that runs only while it works. Between turns the machine
 * is snapshotted and stopped; a message or a timer brings it back. Everything the manager decides
 * is recorded in the session store first, so a restarted server picks up where it was.
 */
export class SessionManager extends EventEmitter<{
  change: [AgentSessionRecord];
  event: [string, SessionEvent];
  abandon: [string];
  /** A message woke the session: where the wake's time went, up to the message reaching the agent (benchmarks). */
  wake: [string, StartTimeline];
}> {
  readonly store: SessionRecordStore;
  private readonly log: ContextLog;
  private readonly live = new Map<string, LiveSession>();
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Sessions whose events a `send` is logging right now. */
  private readonly turnsInFlight = new Set<string>();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readonly turnTimeoutMs: number;
  private readonly turnSnapshots: number;
  readonly turnHistory: TurnHistory;
  /** Warm spare supervisors, so a wake does not wait for a process (or QEMU) to start. */
  private readonly supervisors: SupervisorPool;
  private readonly limits?: ResourceLimits;
  /** Machines being started and not yet attached: they count against the machine limit too. */
  private startingMachines = 0;
  /** Sessions whose history-request is being answered: more requests meanwhile are dropped. */
  private readonly historyInFlight = new Set<string>();
  private readonly maxHistoryBytes = agentMaxHistoryBytes();
  private readonly replication?: SnapshotReplication;
  /**
   * The paused tier: hibernated sessions whose machine is kept paused at their snapshot (session id
   * -> machine id, oldest hibernation first). The record keeps that machine's id too (a hibernated
   * record with a `machineId`), so a restarted server adopts or removes it (recoverAll).
   */
  private readonly paused = new Map<string, string>();

  constructor(options: SessionManagerOptions) {
    super();
    this.log = options.log;
    this.store = options.store ?? new SessionStore();
    this.turnTimeoutMs = options.turnTimeoutMs ?? 10 * 60_000;
    this.limits = options.limits;
    const fromEnvironment = environment().TORPOR_TURN_SNAPSHOTS ?? 0;
    this.turnSnapshots = options.turnSnapshots ?? (Number.isInteger(fromEnvironment) && fromEnvironment > 0 ? fromEnvironment : 0);
    this.turnHistory = options.turnHistory ?? new TurnHistory();
    this.replication = options.replication;
    this.supervisors = options.pool ?? createSupervisorPool(1);
    this.timer = setInterval(() => void this.tick(), options.tickMs ?? 250);
    this.timer.unref();
  }

  /** The host's spare supervisors: the machine API's restores and forks take theirs from it too. */
  get supervisorPool(): SupervisorPool {
    return this.supervisors;
  }

  /** Runs `work` after every earlier operation on the same session: one VM, one turn at a time. */
  private serialize<T>(id: string, work: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(id) ?? Promise.resolve();
    const next = previous.then(work, work);
    this.queues.set(
      id,
      next.catch(() => undefined),
    );
    return next;
  }

  /** Records a change durably (and, in a cluster, only while this node holds the session) before acting on it. */
  private async update(id: string, patch: Partial<AgentSessionRecord>): Promise<AgentSessionRecord> {
    let record: AgentSessionRecord;
    try {
      record = await this.store.update(id, patch);
    } catch (error) {
      // Another node took the session over: its machine here must not act on it any more.
      if (error instanceof TorporError && error.code === 'lease-lost') this.abandon(id);
      throw error;
    }
    this.emit('change', record);
    return record;
  }

  /** Appends to the session's log, fenced by this server's lease on it when it runs in a cluster. */
  private async append(id: string, entries: Entry[]): Promise<{ offsets: number[] }> {
    try {
      return await this.log.append(id, entries, { fence: this.store.logFence(id) });
    } catch (error) {
      if (error instanceof TorporError && error.code === 'lease-lost') this.abandon(id);
      throw error;
    }
  }

  /**
   * Lets go of a session another node took over: closes the agent connection and removes the
   * machine, so the session never runs twice. Nothing is recorded: the record belongs to the new holder.
   */
  abandon(id: string): void {
    const live = this.live.get(id);
    this.live.delete(id);
    live?.connection.close();
    const paused = this.paused.get(id);
    this.paused.delete(id);
    for (const machineId of [live?.machineId, paused]) {
      if (machineId)
        void readMachineConfig(machineId)
          .then((machine) => removeMachine(machine, { force: true }))
          .catch(() => {});
    }
    this.emit('abandon', id);
  }

  get(idOrName: string): AgentSessionRecord {
    const record = this.store.get(idOrName);
    if (!record || record.state === 'deleted') {
      throw new TorporError('session-unknown', `no such session: ${idOrName}`, { hint: 'list sessions with `torpor session ls`', exitCode: 1, status: 404 });
    }
    return record;
  }

  list(): AgentSessionRecord[] {
    return this.store.list();
  }

  /** Machines this server runs for sessions (a cluster node's heartbeat reports it). */
  runningMachines(): number {
    return this.live.size;
  }

  /** Refuses to act on a session another cluster node runs (the API routes such calls to the holder). */
  private held(idOrName: string): AgentSessionRecord {
    const record = this.get(idOrName);
    if (!this.store.holds(record.id)) {
      throw new TorporError('session-elsewhere', `session ${record.name} runs on another node`, {
        hint: 'send the request again: any node routes it to the node that holds the session',
        status: 409,
      });
    }
    return record;
  }

  async create(spec: SessionSpec, options: { name?: string } = {}): Promise<AgentSessionRecord> {
    const id = `s-${randomBytes(6).toString('hex')}`;
    const now = new Date().toISOString();
    const name = options.name ?? id;
    if (this.store.get(name)) throw new TorporError('session-exists', `a session named ${name} exists`, { hint: 'choose another --name', status: 409 });
    if (this.limits) {
      checkMachineSize(this.limits, spec);
      checkSessionCount(this.limits, this.store.list().length);
      // Also checked when the machine starts; checked here first so a refused create leaves no record.
      checkMachineCount(this.limits, this.live.size + this.startingMachines);
    }
    await this.store.insert({ id, name, spec, state: 'creating', turns: 0, createdAt: now, updatedAt: now, lastActivityAt: now });
    await this.append(id, [{ kind: 'metadata', data: { event: 'session-create', image: spec.image, command: spec.command } }]);
    return this.serialize(id, async () => {
      try {
        await this.startFresh(id, []);
        return this.update(id, { state: 'idle', lastActivityAt: new Date().toISOString() });
      } catch (error) {
        await this.update(id, { state: 'failed', note: (error as Error).message });
        throw error;
      }
    });
  }

  /** Runs `work`, which starts a machine, if the machine limit has room for one more. */
  private async withMachineSlot<T>(work: () => Promise<T>): Promise<T> {
    if (this.limits) checkMachineCount(this.limits, this.live.size + this.startingMachines);
    this.startingMachines++;
    try {
      return await work();
    } finally {
      this.startingMachines--;
    }
  }

  /** A new machine on the session's image, its agent told the history (empty for a new session). */
  private async startFresh(id: string, history: Entry[]): Promise<void> {
    return this.withMachineSlot(() => this.startFreshMachine(id, history));
  }

  private async startFreshMachine(id: string, history: Entry[]): Promise<void> {
    const record = this.get(id);
    const machine = await createMachine({
      image: record.spec.image,
      command: record.spec.command,
      env: [...record.spec.env, `TORPOR_SESSION_ID=${id}`],
      cpus: record.spec.cpus,
      memoryMiB: record.spec.memoryMiB,
      ...(record.spec.diskGiB !== undefined ? { diskGiB: record.spec.diskGiB } : {}),
      ...sessionNetworkOptions(record.spec.network),
      interactive: true,
      name: `${id}-${Date.now().toString(36)}`,
      hostname: id,
    });
    await startMachine(machine.id, { pool: this.supervisors });
    await this.update(id, { machineId: machine.id, state: 'running' });
    const connection = await this.attach(id, machine.id);
    connection.send({ type: 'hello', protocol: protocolVersion, sessionId: id, ...(history.length > 0 ? { history } : {}) });
  }

  private async attach(id: string, machineId: string): Promise<AgentConnection> {
    const machine = await readMachineConfig(machineId);
    const connection = await AgentConnection.open(machine);
    this.live.set(id, { connection, machineId });
    // A failure while handling one agent's events fails that session, never the server.
    connection.on('event', (event) => void this.onBackgroundEvent(id, event).catch((error: unknown) => this.failSession(id, error)));
    connection.on('invalid', (invalid) => void this.onBackgroundInvalid(id, invalid).catch((error: unknown) => this.failSession(id, error)));
    connection.on('exit', (code) => void this.onMachineExit(id, machineId, code).catch((error: unknown) => this.failSession(id, error)));
    return connection;
  }

  /** An invalid line outside a `send`: the log records it (a buggy agent's output is never dropped silently). */
  private async onBackgroundInvalid(id: string, invalid: InvalidAgentEvent): Promise<void> {
    if (!this.live.get(id) || this.turnsInFlight.has(id)) return;
    await this.append(id, [invalidEventEntry(invalid.value, invalid.problem)]).catch(() => {});
  }

  /** Events outside a `send` (e.g. a turn that continues after a sleep-until): log them, and act on requests. */
  private async onBackgroundEvent(id: string, event: AgentEvent): Promise<void> {
    const live = this.live.get(id);
    if (!live) return;
    if (!this.turnsInFlight.has(id)) {
      const entries = eventToEntries(event);
      if (entries.length > 0) await this.append(id, entries).catch(() => {});
      if (event.type === 'turn-finish') {
        void this.serialize(id, async () => {
          const record = this.get(id);
          await this.update(id, { state: 'idle', turns: record.turns + 1, lastActivityAt: new Date().toISOString() });
        });
      } else if (event.type === 'sleep-until') {
        void this.serialize(id, () => this.hibernate(id, { wakeAt: event.until }));
      }
    }
    if (event.type === 'checkpoint') {
      void this.serialize(id, async () => {
        try {
          const snapshot = await this.takeSnapshot(id, false);
          live.connection.send({ type: 'checkpoint-done', snapshot });
        } catch (error) {
          live.connection.send({ type: 'checkpoint-failed', error: (error as Error).message });
        }
      });
    } else if (event.type === 'history-request') {
      // One answer at a time per session, each bounded: a flood of requests costs one bounded read.
      if (this.historyInFlight.has(id)) return;
      this.historyInFlight.add(id);
      try {
        const history = await readBoundedHistory(this.log, id, { maxBytes: this.maxHistoryBytes });
        live.connection.send({ type: 'history', entries: history.entries, from: history.from, truncated: history.truncated });
      } finally {
        this.historyInFlight.delete(id);
      }
    }
  }

  private failSession(id: string, error: unknown): void {
    try {
      if (this.store.get(id)?.state === 'deleted' || this.closed) return;
      void this.update(id, {
        state: 'failed',
        note: `the server failed handling this session's agent: ${error instanceof Error ? error.message : String(error)}`,
      }).catch(() => {});
    } catch {
      // The store itself failed: the process-level guard logs what escapes here.
    }
  }

  private async onMachineExit(id: string, machineId: string, code: number): Promise<void> {
    const live = this.live.get(id);
    if (!live || live.machineId !== machineId) return; // an expected stop (hibernation) already detached it
    this.live.delete(id);
    live.connection.close();
    const record = this.store.get(id);
    if (!record || record.state === 'deleted' || record.state === 'hibernating' || record.state === 'hibernated' || this.closed) return;
    await this.serialize(id, async () => {
      // A turn in flight may already have brought the session back on another machine.
      if (this.get(id).machineId === machineId) await this.recover(id, `the machine stopped unexpectedly (exit ${code})`);
    }).catch(() => {});
  }

  /**
   * Each machine of a session gets a new machine name, but the guest's hostname stays the session
   * id: a hostname that changed at every wake made the guest agent rewrite /etc/hosts and
   * /etc/hostname while the wake waited (file writes in a guest TCG was still re-translating). A
   * fork is a new session, so it still gets a name of its own.
   */
  private restoreOptions(id: string) {
    return { name: `${id}-${Date.now().toString(36)}`, pool: this.supervisors, configure: (config: MachineConfig) => ({ ...config, hostname: id }) };
  }

  /** Snapshot name for a session's n-th save: unique, so forks can share one while the session moves on. */
  private async takeSnapshot(id: string, stop: boolean, keepPaused = false): Promise<string> {
    const record = this.get(id);
    if (!record.machineId) throw new Error('the session has no machine');
    const machine = await readMachineConfig(record.machineId);
    const name = `session-${id}-${Date.now().toString(36)}`;
    const logEnd = (await this.log.read(id, { from: 0, limit: 1 })).endOffset;
    await snapshotMachine(machine, { name, stop, keepPaused });
    const previous = record.snapshot;
    // A snapshot older than the log must not be restored as the session's present: remember where it stands.
    await this.update(id, { snapshot: name, snapshotLogOffset: logEnd });
    if (previous) await this.dropSnapshotIfUnused(previous);
    return name;
  }

  private async dropSnapshotIfUnused(name: string): Promise<void> {
    if (this.store.list({ includeDeleted: false }).some((record) => record.snapshot === name)) return;
    if (this.turnHistory.uses(name)) return;
    await removeSnapshot(name).catch(() => {});
  }

  /** Keeps a snapshot of the machine after turn `turn`; drops those beyond the retention. */
  private async snapshotTurn(id: string, turn: number): Promise<void> {
    const record = this.store.get(id);
    if (!record || record.state !== 'idle' || !record.machineId || record.turns !== turn) return;
    const machine = await readMachineConfig(record.machineId);
    const name = `session-${id}-turn-${turn}-${Date.now().toString(36)}`;
    const logOffset = (await this.log.read(id, { from: 0, limit: 1 })).endOffset;
    await snapshotMachine(machine, { name, stop: false });
    this.turnHistory.record({ sessionId: id, turn, snapshot: name, logOffset });
    const kept = this.turnHistory.list(id);
    for (const old of kept.slice(0, Math.max(0, kept.length - this.turnSnapshots))) {
      this.turnHistory.remove(id, old.turn);
      await this.dropSnapshotIfUnused(old.snapshot);
    }
  }

  /** The turns a session can be forked at (oldest first). */
  turnsOf(idOrName: string): TurnSnapshot[] {
    return this.turnHistory.list(this.get(idOrName).id);
  }

  /** Delivers a user message; streams the turn's events to `onEvent`; resolves when the turn ends or suspends. */
  async send(idOrName: string, content: string, onTurnEvent: (event: SessionEvent) => void = () => {}): Promise<{ turnId: string; events: SessionEvent[] }> {
    const id = this.held(idOrName).id;
    // Every event of a turn also goes to 'event' listeners (the durable event stream records them).
    const onEvent = (event: SessionEvent) => {
      this.emit('event', id, event);
      onTurnEvent(event);
    };
    const timeline = new StartTimeline();
    timeline.mark('session: message received');
    return this.serialize(id, async () => {
      let record = this.get(id);
      const waking = record.state === 'hibernated';
      if (waking) record = await this.wake(id, 'message', onEvent, timeline);
      else if (record.state === 'failed') await this.recover(id, record.note ?? 'the session had failed');
      if (!this.live.get(id)) await this.recover(id, 'the machine was not attached');
      const turnId = `t-${randomBytes(4).toString('hex')}`;
      const { offsets } = await this.append(id, [{ kind: 'message', role: 'user', content, metadata: { turnId } }]).catch(async (error: unknown) => {
        // Woken for this message, the session was recorded running: without the message it is idle
        // again (else no idle timer would ever hibernate it).
        if (waking && this.store.get(id)?.state === 'running')
          await this.update(id, { state: 'idle', lastActivityAt: new Date().toISOString() }).catch(() => {});
        throw error;
      });
      timeline.mark('session: message logged');
      // A wake for this message recorded the session running already.
      if (!(waking && this.get(id).state === 'running')) await this.update(id, { state: 'running', lastActivityAt: new Date().toISOString() });
      timeline.mark('session: record running');
      if (waking) this.emit('wake', id, timeline);
      let turn: { events: SessionEvent[]; suspendedUntil?: string };
      try {
        turn = await this.deliver(id, turnId, content, onEvent);
      } catch (error) {
        if (!(error instanceof TorporError && error.code === 'agent-exited')) throw error;
        // The machine died under the message: bring the session back with the history up to this
        // message, then deliver it once more (the log already holds it, exactly once).
        await this.recover(id, error.message, { historyBefore: offsets[0] });
        turn = await this.deliver(id, turnId, content, onEvent);
      }
      const { events } = turn;
      const result = turn;
      if (result.suspendedUntil) {
        // Rate limited: sleep in a snapshot instead of holding a VM, and wake at the time asked for.
        const suspend: SessionEvent = { type: 'turn-suspend', until: result.suspendedUntil };
        events.push(suspend);
        onEvent(suspend);
        await this.hibernate(id, { wakeAt: result.suspendedUntil });
        return { turnId, events };
      }
      const turns = this.get(id).turns + 1;
      await this.update(id, { state: 'idle', turns, lastActivityAt: new Date().toISOString() });
      // Rewind: snapshot the machine as this turn left it, right after the turn (queued behind it,
      // ahead of the next message), so that the reply is not held up by it.
      if (this.turnSnapshots > 0) void this.serialize(id, () => this.snapshotTurn(id, turns)).catch(() => {});
      return { turnId, events };
    });
  }

  /** Hands one user message to the agent and follows its events until the turn ends or suspends. */
  private async deliver(
    id: string,
    turnId: string,
    content: string,
    onEvent: (event: SessionEvent) => void,
  ): Promise<{ events: SessionEvent[]; suspendedUntil?: string }> {
    const connection = this.live.get(id)!.connection;
    const events: SessionEvent[] = [];
    this.turnsInFlight.add(id);
    let appended: Promise<void> = Promise.resolve();
    const result = await new Promise<{ suspendedUntil?: string }>((resolve, reject) => {
      const timer = setTimeout(
        () => finish(new TorporError('agent-hung', `the agent did not finish the turn within ${this.turnTimeoutMs} ms`, { status: 504 })),
        this.turnTimeoutMs,
      );
      const logEntries = (entries: Entry[]) => {
        // One chain per turn keeps the log in the order the agent spoke.
        if (entries.length === 0) return;
        appended = appended
          .then(() => this.append(id, entries))
          .then(
            () => undefined,
            (error: Error) => onEvent({ type: 'error', message: `log append failed: ${error.message}` }),
          );
      };
      const onAgentEvent = (event: AgentEvent) => {
        events.push(event);
        onEvent(event);
        logEntries(eventToEntries(event));
        const ofThisTurn = turnOf(event) === undefined || turnOf(event) === turnId;
        if (event.type === 'turn-finish' && ofThisTurn) finish();
        else if (event.type === 'sleep-until' && ofThisTurn) finish(undefined, event.until);
      };
      const onInvalidEvent = (invalid: InvalidAgentEvent) => {
        const error = invalidEventError(invalid);
        events.push(error);
        onEvent(error);
        logEntries([invalidEventEntry(invalid.value, invalid.problem)]);
      };
      const onExit = (code: number) =>
        finish(
          new TorporError('agent-exited', `the agent program exited during the turn (code ${code})`, {
            hint: 'the session recovers on the next message',
            status: 502,
          }),
        );
      const finish = (error?: Error, suspendedUntil?: string) => {
        this.turnsInFlight.delete(id);
        clearTimeout(timer);
        connection.off('event', onAgentEvent);
        connection.off('invalid', onInvalidEvent);
        connection.off('exit', onExit);
        if (error) reject(error);
        else resolve({ suspendedUntil });
      };
      connection.on('event', onAgentEvent);
      connection.on('invalid', onInvalidEvent);
      connection.on('exit', onExit);
      connection.send({ type: 'message', turnId, message: { role: 'user', content } });
    });
    await appended;
    return { events, suspendedUntil: result.suspendedUntil };
  }

  /** Snapshot and stop: the session then costs only storage. If the store cannot take it, keep running and say why. */
  private async hibernate(id: string, options: { wakeAt?: string } = {}): Promise<void> {
    const record = this.get(id);
    if (!record.machineId || !['idle', 'running'].includes(record.state)) return;
    await this.update(id, { state: 'hibernating' });
    const live = this.live.get(id);
    this.live.delete(id);
    const keepPaused = await this.mayKeepPaused(record.machineId);
    try {
      await this.takeSnapshot(id, true, keepPaused);
    } catch (error) {
      if (live) this.live.set(id, live);
      await this.update(id, {
        state: 'idle',
        note: `could not hibernate, kept running: ${(error as Error).message}`,
        lastActivityAt: new Date().toISOString(),
      });
      if (options.wakeAt && live) {
        // The agent awaits its wake either way: deliver it at the time asked, from the running machine.
        const delay = Math.max(0, Date.parse(options.wakeAt) - Date.now());
        setTimeout(() => live.connection.send({ type: 'wake', reason: 'timer' }), delay).unref();
      }
      return;
    }
    live?.connection.close();
    const machine = await readMachineConfig(record.machineId).catch(() => undefined);
    const kept = keepPaused && machine !== undefined && (await effectiveState(machine)).status === 'paused';
    if (machine && !kept) await removeMachine(machine, { force: true }).catch(() => {});
    let note: string | undefined;
    const snapshot = this.get(id).snapshot;
    if (this.replication && snapshot) {
      // Other nodes can then wake it; if the push fails, they rebuild it from the log instead.
      note = await this.replication.push(snapshot).then(
        () => undefined,
        (error: Error) => `snapshot ${snapshot} stays on this node only: ${error.message}`,
      );
    }
    await this.update(id, { state: 'hibernated', machineId: kept ? record.machineId : undefined, wakeAt: options.wakeAt, ...(note ? { note } : {}) });
    if (kept) {
      this.paused.set(id, record.machineId);
      void this.evictPaused();
    }
  }

  /** Whether this hibernation may keep its machine paused: the tier is on and the machine alone fits its budget. */
  private async mayKeepPaused(machineId: string): Promise<boolean> {
    const budget = pausedBudgetBytes();
    if (budget === 0) return false;
    // A host below the reserve gets this machine's memory back at once (its snapshot is durable).
    if (hostMemoryShortfallBytes() > 0) return false;
    return (await machineMemoryBytes(machineId)) <= budget;
  }

  /**
   * The tiers are a cache of durable snapshots, so they yield first when the host runs short: while
   * its available memory is below TORPOR_WARM_RESERVE, the oldest paused machines end (each on its
   * session's queue; the session then wakes from its snapshot) until what they held covers the
   * shortfall, then warm RAM files go. Checked at most once a second, and only with a tier on.
   */
  private async relieveMemoryPressure(): Promise<void> {
    if (this.paused.size === 0 && warmBudgetBytes() === 0) return;
    const now = Date.now();
    if (now - this.pressureCheckedAt < 1000) return;
    this.pressureCheckedAt = now;
    let shortfall = hostMemoryShortfallBytes();
    if (shortfall === 0) return;
    for (const [sessionId, machineId] of [...this.paused]) {
      if (shortfall <= 0) break;
      shortfall -= await machineMemoryBytes(machineId);
      await this.serialize(sessionId, () => this.dropPaused(sessionId, machineId)).catch(() => {});
    }
    if (shortfall > 0) await releaseWarmMemory(shortfall).catch(() => 0);
  }

  /**
   * Ends the oldest paused machines while they hold more than the budget; then the warm tier's RAM
   * files yield to what stays (both share TORPOR_WARM_MEMORY). Each removal waits its session's turn.
   */
  private async evictPaused(): Promise<void> {
    const budget = pausedBudgetBytes();
    const entries = await Promise.all(
      [...this.paused].map(async ([sessionId, machineId]) => ({ sessionId, machineId, bytes: await machineMemoryBytes(machineId) })),
    );
    let total = entries.reduce((sum, entry) => sum + entry.bytes, 0);
    for (const entry of entries) {
      if (total <= budget) break;
      total -= entry.bytes;
      void this.serialize(entry.sessionId, () => this.dropPaused(entry.sessionId, entry.machineId)).catch(() => {});
    }
    if (budget > 0 && total > 0) await trimWarmMemory(Math.max(0, budget - total)).catch(() => {});
  }

  /** Ends a session's paused machine (the session wakes from its snapshot instead). Machine first, then the record. */
  private async dropPaused(sessionId: string, machineId: string): Promise<void> {
    if (this.paused.get(sessionId) === machineId) this.paused.delete(sessionId);
    const record = this.store.get(sessionId);
    // Another node holds the session now: this node's machine can only go (the record is not ours to change).
    const held = this.store.holds(sessionId);
    // Queued behind a wake that resumed it, it is the session's running machine now: not ours to end.
    if (held && (record?.state !== 'hibernated' || record.machineId !== machineId)) return;
    const machine = await readMachineConfig(machineId).catch(() => undefined);
    if (machine) await removeMachine(machine, { force: true }).catch(() => {});
    if (held) await this.update(sessionId, { machineId: undefined });
  }

  /**
   * Wakes a session from its paused machine when that machine is alive, paused, and paused at
   * exactly the session's snapshot; otherwise removes it (the caller restores the snapshot), so
   * that a session never has two machines.
   */
  private async resumePaused(id: string, record: AgentSessionRecord, timeline?: StartTimeline): Promise<MachineConfig | undefined> {
    const machineId = record.machineId!;
    this.paused.delete(id);
    const machine = await readMachineConfig(machineId).catch(() => undefined);
    if (!machine) return undefined;
    try {
      if (await pausedAtSnapshot(machine, record)) {
        await resumeMachine(machine);
        timeline?.mark('session: paused machine resumed');
        return machine;
      }
    } catch {
      // a supervisor that died or failed the resume: the snapshot is intact, restore it
    }
    await removeMachine(machine, { force: true }).catch(() => {});
    timeline?.mark('session: paused machine removed');
    return undefined;
  }

  private async wake(
    id: string,
    reason: 'message' | 'timer',
    onEvent: (event: SessionEvent) => void = () => {},
    timeline?: StartTimeline,
  ): Promise<AgentSessionRecord> {
    const record = this.get(id);
    // Refuse before touching the record: a session refused for lack of room stays hibernated.
    if (this.limits) checkMachineCount(this.limits, this.live.size + this.startingMachines);
    await this.update(id, { state: 'waking' });
    timeline?.mark('session: record waking');
    onEvent({ type: 'session-state', state: 'waking' });
    try {
      const { connection } = await this.withMachineSlot(async () => {
        const resumed = record.machineId ? await this.resumePaused(id, record, timeline) : undefined;
        if (!resumed) await this.replication?.ensureLocal(record.snapshot!);
        const machine = resumed ?? (await restoreMachine(record.snapshot!, { ...this.restoreOptions(id), timeline }));
        // The agent connection opens while the record learns the machine (neither needs the other).
        const attached = this.attach(id, machine.id);
        attached.catch(() => {});
        try {
          await this.update(id, { machineId: machine.id, state: 'running', ...(reason === 'message' ? { lastActivityAt: new Date().toISOString() } : {}) });
        } catch (error) {
          // Not recorded (or the session went to another node): this connection must not act for it.
          void attached.then(
            (connection) => {
              if (this.live.get(id)?.connection === connection) this.live.delete(id);
              connection.close();
            },
            () => {},
          );
          throw error;
        }
        timeline?.mark('session: record has the machine');
        const connection = await attached;
        timeline?.mark('session: attached to the agent');
        return { connection };
      });
      // The agent was asleep (sleep-until) or idle (waiting for a message): either way this continues it.
      // Always say wake: the agent learns it was restored (and drops connections that died with the snapshot).
      connection.send({ type: 'wake', reason });
      if (record.wakeAt) {
        // A turn was suspended (sleep-until): it goes on now, and its turn-finish makes the session idle.
        return this.update(id, { wakeAt: undefined, state: 'running', lastActivityAt: new Date().toISOString() });
      }
      // Woken by a message: it is delivered next, so the session stays running (recorded above) instead
      // of passing through idle (each record update is a synchronous SQLite commit on the wake's path).
      if (reason === 'message') {
        timeline?.mark('session: wake sent');
        return this.get(id);
      }
      return this.update(id, { state: 'idle' });
    } catch (error) {
      await this.recover(id, `could not restore snapshot ${record.snapshot}: ${(error as Error).message}`);
      return this.get(id);
    }
  }

  /**
   * Brings a session back after a crash: from its snapshot when that is intact and the log has not
   * moved past it; otherwise on a fresh machine whose agent receives the history from the log.
   */
  private async recover(id: string, why: string, options: { historyBefore?: number } = {}): Promise<void> {
    const record = this.get(id);
    const old = this.live.get(id);
    this.live.delete(id);
    this.paused.delete(id);
    old?.connection.close();
    if (record.machineId) {
      const machine = await readMachineConfig(record.machineId).catch(() => undefined);
      if (machine) await removeMachine(machine, { force: true }).catch(() => {});
    }
    const logEnd = (await this.log.read(id, { from: 0, limit: 1 })).endOffset;
    if (record.snapshot && record.snapshotLogOffset === (options.historyBefore ?? logEnd)) {
      try {
        await this.replication?.ensureLocal(record.snapshot);
        await readSnapshot(record.snapshot);
        const snapshot = record.snapshot;
        const connection = await this.withMachineSlot(async () => {
          const machine = await restoreMachine(snapshot, this.restoreOptions(id));
          await this.update(id, { machineId: machine.id, state: 'idle', note: `${why}; recovered from snapshot ${snapshot}` });
          return this.attach(id, machine.id);
        });
        connection.send({ type: 'wake', reason: 'message' });
        return;
      } catch (error) {
        why = `${why}; snapshot ${record.snapshot} unusable (${(error as Error).message})`;
      }
    }
    const history = await readBoundedHistory(this.log, id, { to: options.historyBefore, maxBytes: this.maxHistoryBytes });
    await this.startFresh(id, history.entries);
    const kept = history.truncated ? `the newest ${history.entries.length} entries, from offset ${history.from}` : `${history.entries.length} entries`;
    await this.update(id, { state: 'idle', note: `${why}; rebuilt on a fresh machine from the context log (${kept})` });
  }

  /**
   * A new session from this one: as it is now, or, with `atTurn`, as it was right after that turn
   * (machine from the turn's snapshot, log forked at the offset the turn ended at).
   */
  async fork(idOrName: string, options: { name?: string; atTurn?: number } = {}): Promise<AgentSessionRecord> {
    const source = this.held(idOrName);
    return this.serialize(source.id, async () => {
      const current = this.get(source.id);
      let snapshot = current.snapshot;
      let logEnd: number;
      let turns = current.turns;
      if (options.atTurn !== undefined) {
        const past = this.turnHistory.find(source.id, options.atTurn);
        if (!past) {
          const kept = this.turnHistory.list(source.id).map((entry) => entry.turn);
          throw new TorporError('turn-unknown', `session ${current.name} has no snapshot of turn ${options.atTurn}`, {
            hint: kept.length > 0 ? `turns kept: ${kept.join(', ')}` : 'start the server with TORPOR_TURN_SNAPSHOTS=N to keep the last N turns',
            status: 404,
          });
        }
        snapshot = past.snapshot;
        logEnd = past.logOffset;
        turns = past.turn;
      } else {
        if (current.machineId && current.state !== 'hibernated') snapshot = await this.takeSnapshot(source.id, false);
        logEnd = (await this.log.read(source.id, { from: 0, limit: 1 })).endOffset;
      }
      if (!snapshot) throw new TorporError('fork-impossible', `session ${current.name} has no machine state to fork yet`, { status: 409 });
      const id = `s-${randomBytes(6).toString('hex')}`;
      await this.log.fork(source.id, logEnd, { name: id });
      const now = new Date().toISOString();
      // The fork starts hibernated on the shared snapshot; its first message restores its own machine.
      await this.store.insert({
        id,
        name: options.name ?? id,
        spec: current.spec,
        state: 'hibernated',
        snapshot,
        snapshotLogOffset: logEnd,
        turns,
        createdAt: now,
        updatedAt: now,
        lastActivityAt: now,
        parentId: source.id,
      });
      return this.get(id);
    });
  }

  async delete(idOrName: string): Promise<void> {
    const record = this.held(idOrName);
    await this.serialize(record.id, async () => {
      const live = this.live.get(record.id);
      this.live.delete(record.id);
      this.paused.delete(record.id);
      live?.connection.close();
      if (record.machineId) {
        const machine = await readMachineConfig(record.machineId).catch(() => undefined);
        if (machine) await removeMachine(machine, { force: true }).catch(() => {});
      }
      await this.update(record.id, { state: 'deleted', machineId: undefined });
      if (record.snapshot) await this.dropSnapshotIfUnused(record.snapshot);
      for (const past of this.turnHistory.list(record.id)) {
        this.turnHistory.remove(record.id, past.turn);
        await this.dropSnapshotIfUnused(past.snapshot);
      }
    });
  }

  /** On server start: reattach to machines that still run, recover the rest; hibernated sessions wait for their timers. */
  async recoverAll(): Promise<void> {
    // Paused machines of hibernated sessions, oldest hibernation first: kept, or removed (never left orphaned).
    const hibernated = this.store.list().filter((record) => record.state === 'hibernated' && record.machineId && this.store.holds(record.id));
    for (const record of hibernated.sort((a, b) => a.updatedAt.localeCompare(b.updatedAt))) {
      await this.serialize(record.id, () => this.adoptPaused(record.id)).catch(() => {});
    }
    await this.evictPaused();
    for (const record of this.store.list()) {
      if (!this.store.holds(record.id)) continue;
      if (!activeStates.includes(record.state) && record.state !== 'hibernating') continue;
      await this.serialize(record.id, async () => {
        if (record.machineId) {
          const machine = await findMachine(record.machineId).catch(() => undefined);
          if (machine && (await effectiveState(machine)).status === 'running') {
            await this.attach(record.id, machine.id);
            await this.update(record.id, { state: 'idle', lastActivityAt: new Date().toISOString() });
            return;
          }
        }
        await this.recover(record.id, 'the server restarted and the machine was gone');
      }).catch((error: Error) => this.update(record.id, { state: 'failed', note: error.message }).catch(() => {}));
    }
  }

  /** A restarted server's view of a hibernated session's paused machine: kept when it still fits, else removed. */
  private async adoptPaused(id: string): Promise<void> {
    const record = this.get(id);
    if (record.state !== 'hibernated' || !record.machineId) return;
    const machine = await readMachineConfig(record.machineId).catch(() => undefined);
    if (machine && pausedBudgetBytes() > 0 && (await pausedAtSnapshot(machine, record).catch(() => false))) {
      this.paused.set(id, machine.id);
      return;
    }
    await this.dropPaused(id, record.machineId);
  }

  /**
   * Takes over a session whose node died (the cluster calls this once it holds the lease). A
   * hibernated session just waits here for its next message or timer. A session that was awake is
   * brought back from its snapshot or its log; a turn that was in flight is retried once when
   * nothing of its reply reached the log, and otherwise stands as recorded (never answered twice).
   */
  async adopt(id: string, why: string): Promise<{ retriedTurn?: string }> {
    return this.serialize(id, async () => {
      const record = this.held(id);
      if (record.state === 'hibernated' || record.state === 'deleted') return {};
      const unanswered = await this.unansweredTurn(id);
      if (!unanswered) {
        await this.recover(id, why);
        return {};
      }
      await this.recover(id, `${why}; retrying turn ${unanswered.turnId}`, { historyBefore: unanswered.offset });
      const onEvent = (event: SessionEvent) => this.emit('event', id, event);
      await this.update(id, { state: 'running', lastActivityAt: new Date().toISOString() });
      const turn = await this.deliver(id, unanswered.turnId, unanswered.content, onEvent);
      if (turn.suspendedUntil) await this.hibernate(id, { wakeAt: turn.suspendedUntil });
      else await this.update(id, { state: 'idle', turns: this.get(id).turns + 1, lastActivityAt: new Date().toISOString() });
      return { retriedTurn: unanswered.turnId };
    });
  }

  /** The newest user message, when no entry of its turn follows it in the log (its reply never arrived). */
  private async unansweredTurn(id: string): Promise<{ turnId: string; content: string; offset: number } | undefined> {
    const end = (await this.log.read(id, { from: 0, limit: 0 })).endOffset;
    const { entries } = await this.log.read(id, { from: Math.max(0, end - 200) });
    for (let index = entries.length - 1; index >= 0; index--) {
      const entry = entries[index]!.entry;
      const turnId = entry.metadata?.turnId;
      if (typeof turnId !== 'string') continue;
      if (entry.kind !== 'message' || entry.role !== 'user') return undefined; // the newest turn has a reply
      if (typeof entry.content !== 'string') return undefined;
      return { turnId, content: entry.content, offset: entries[index]!.offset };
    }
    return undefined;
  }

  private ticking = false;
  private pressureCheckedAt = 0;

  private async tick(): Promise<void> {
    if (this.ticking || this.closed) return;
    this.ticking = true;
    try {
      const now = Date.now();
      // A paused machine of a session another node took over (lease lost while it slept) must not stay.
      for (const [sessionId, machineId] of this.paused) {
        if (!this.store.holds(sessionId)) await this.serialize(sessionId, () => this.dropPaused(sessionId, machineId)).catch(() => {});
      }
      await this.relieveMemoryPressure();
      for (const record of this.store.list()) {
        if (!this.store.holds(record.id)) continue;
        if (record.state === 'idle' && record.machineId && now - Date.parse(record.lastActivityAt) >= record.spec.idleSeconds * 1000) {
          await this.serialize(record.id, async () => {
            const current = this.get(record.id);
            if (current.state === 'idle' && now - Date.parse(current.lastActivityAt) >= current.spec.idleSeconds * 1000) await this.hibernate(record.id);
          }).catch(() => {});
        } else if (record.state === 'hibernated' && record.wakeAt && Date.parse(record.wakeAt) <= now) {
          await this.serialize(record.id, async () => {
            if (this.get(record.id).state === 'hibernated') await this.wake(record.id, 'timer');
          }).catch(() => {});
        }
      }
    } finally {
      this.ticking = false;
    }
  }

  /** Stops the timers and lets go of connections; machines keep running (a restarted server reattaches). */
  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    const sparesEnded = this.supervisors.close();
    // A turn an agent never finishes must not keep the server from stopping: wait a little, then
    // let go (the machines keep running and a restarted server reattaches or recovers them).
    await Promise.race([Promise.allSettled([...this.queues.values()]), new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
    for (const live of this.live.values()) live.connection.close();
    this.live.clear();
    await sparesEnded;
    await this.store.close();
    this.turnHistory.close();
  }
}

/** Whether a session's kept machine may continue it: alive, paused, and paused at exactly the session's snapshot. */
async function pausedAtSnapshot(machine: MachineConfig, record: AgentSessionRecord): Promise<boolean> {
  const state = await effectiveState(machine);
  return state.status === 'paused' && record.snapshot !== undefined && state.snapshot === record.snapshot;
}
