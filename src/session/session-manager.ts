import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { ContextLog } from '../context/index.ts';
import { TorporError } from '../util/errors.ts';
import { createMachine, startMachine, findMachine, effectiveState, removeMachine, createSupervisorPool } from '../runtime/machines.ts';
import type { SupervisorPool } from '../runtime/supervisor-pool.ts';
import { snapshotMachine, restoreMachine } from '../runtime/snapshots.ts';
import { readMachineConfig } from '../runtime/machine-record.ts';
import { sessionNetworkOptions } from './session-network.ts';
import { removeSnapshot, readSnapshot } from '../snapshot/snapshot-store.ts';
import { AgentConnection } from './agent-connection.ts';
import { SessionStore, type SessionRecord, type SessionSpec, type SessionState } from './session-store.ts';
import { eventToEntries } from './agent-events-to-entries.ts';

export type AgentEvent = Record<string, unknown> & { type: string };

/** Events the manager itself adds to a turn's stream, beside the agent's own. */
export type SessionEvent = AgentEvent | { type: 'session-state'; state: SessionState; note?: string } | { type: 'turn-suspend'; until: string };

export interface SessionManagerOptions {
  log: ContextLog;
  store?: SessionStore;
  /** How often idle and wake timers are checked. */
  tickMs?: number;
  /** Longest a turn may take before the agent is considered hung. */
  turnTimeoutMs?: number;
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
export class SessionManager extends EventEmitter<{ change: [SessionRecord] }> {
  readonly store: SessionStore;
  private readonly log: ContextLog;
  private readonly live = new Map<string, LiveSession>();
  private readonly queues = new Map<string, Promise<unknown>>();
  /** Sessions whose events a `send` is logging right now. */
  private readonly turnsInFlight = new Set<string>();
  private timer?: NodeJS.Timeout;
  private closed = false;
  private readonly turnTimeoutMs: number;
  /** A warm spare supervisor, so a wake does not wait for a process to start. */
  private readonly supervisors: SupervisorPool = createSupervisorPool(1);

  constructor(options: SessionManagerOptions) {
    super();
    this.log = options.log;
    this.store = options.store ?? new SessionStore();
    this.turnTimeoutMs = options.turnTimeoutMs ?? 10 * 60_000;
    this.timer = setInterval(() => void this.tick(), options.tickMs ?? 250);
    this.timer.unref();
  }

  /** Runs `work` after every earlier operation on the same session: one VM, one turn at a time. */
  private serialize<T>(id: string, work: () => Promise<T>): Promise<T> {
    const previous = this.queues.get(id) ?? Promise.resolve();
    const next = previous.then(work, work);
    this.queues.set(id, next.catch(() => undefined));
    return next;
  }

  private update(id: string, patch: Partial<SessionRecord>): SessionRecord {
    const record = this.store.update(id, patch);
    this.emit('change', record);
    return record;
  }

  get(idOrName: string): SessionRecord {
    const record = this.store.get(idOrName);
    if (!record || record.state === 'deleted') {
      throw new TorporError('session-unknown', `no such session: ${idOrName}`, { hint: 'list sessions with `torpor session ls`', exitCode: 1 });
    }
    return record;
  }

  list(): SessionRecord[] {
    return this.store.list();
  }

  async create(spec: SessionSpec, options: { name?: string } = {}): Promise<SessionRecord> {
    const id = `s-${randomBytes(6).toString('hex')}`;
    const now = new Date().toISOString();
    const name = options.name ?? id;
    if (this.store.get(name)) throw new TorporError('session-exists', `a session named ${name} exists`, { hint: 'choose another --name' });
    this.store.insert({ id, name, spec, state: 'creating', turns: 0, createdAt: now, updatedAt: now, lastActivityAt: now });
    await this.log.append(id, [{ kind: 'metadata', data: { event: 'session-create', image: spec.image, command: spec.command } }]);
    return this.serialize(id, async () => {
      try {
        await this.startFresh(id, []);
        return this.update(id, { state: 'idle', lastActivityAt: new Date().toISOString() });
      } catch (error) {
        this.update(id, { state: 'failed', note: (error as Error).message });
        throw error;
      }
    });
  }

  /** A new machine on the session's image, its agent told the history (empty for a new session). */
  private async startFresh(id: string, history: unknown[]): Promise<void> {
    const record = this.get(id);
    const machine = await createMachine({
      image: record.spec.image,
      command: record.spec.command,
      env: [...record.spec.env, `TORPOR_SESSION_ID=${id}`],
      cpus: record.spec.cpus,
      memoryMiB: record.spec.memoryMiB,
      ...sessionNetworkOptions(record.spec.network),
      interactive: true,
      name: `${id}-${Date.now().toString(36)}`,
    });
    await startMachine(machine.id, { pool: this.supervisors });
    this.update(id, { machineId: machine.id, state: 'running' });
    const connection = await this.attach(id, machine.id);
    connection.send({ type: 'hello', protocol: 1, sessionId: id, ...(history.length > 0 ? { history } : {}) });
  }

  private async attach(id: string, machineId: string): Promise<AgentConnection> {
    const machine = await readMachineConfig(machineId);
    const connection = await AgentConnection.open(machine);
    this.live.set(id, { connection, machineId });
    connection.on('event', (event) => void this.onBackgroundEvent(id, event as AgentEvent));
    connection.on('exit', (code) => void this.onMachineExit(id, machineId, code));
    return connection;
  }

  /** Events outside a `send` (e.g. a turn that continues after a sleep-until): log them, and act on requests. */
  private async onBackgroundEvent(id: string, event: AgentEvent): Promise<void> {
    const live = this.live.get(id);
    if (!live) return;
    if (!this.turnsInFlight.has(id)) {
      const entries = eventToEntries(event as never);
      if (entries.length > 0) await this.log.append(id, entries as never).catch(() => {});
      if (event.type === 'turn-finish') {
        void this.serialize(id, async () => {
          const record = this.get(id);
          this.update(id, { state: 'idle', turns: record.turns + 1, lastActivityAt: new Date().toISOString() });
        });
      } else if (event.type === 'sleep-until') {
        void this.serialize(id, () => this.hibernate(id, { wakeAt: String(event.until) }));
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
      const { entries } = await this.log.read(id, { from: 0 });
      live.connection.send({ type: 'history', entries: entries.map((entry) => entry.entry) });
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

  /** Snapshot name for a session's n-th save: unique, so forks can share one while the session moves on. */
  private async takeSnapshot(id: string, stop: boolean): Promise<string> {
    const record = this.get(id);
    if (!record.machineId) throw new Error('the session has no machine');
    const machine = await readMachineConfig(record.machineId);
    const name = `session-${id}-${Date.now().toString(36)}`;
    const logEnd = (await this.log.read(id, { from: 0, limit: 1 })).endOffset;
    await snapshotMachine(machine, { name, stop });
    const previous = record.snapshot;
    // A snapshot older than the log must not be restored as the session's present: remember where it stands.
    this.update(id, { snapshot: name, snapshotLogOffset: logEnd });
    if (previous) await this.dropSnapshotIfUnused(previous);
    return name;
  }

  private async dropSnapshotIfUnused(name: string): Promise<void> {
    if (this.store.list({ includeDeleted: false }).some((record) => record.snapshot === name)) return;
    await removeSnapshot(name).catch(() => {});
  }

  /** Delivers a user message; streams the turn's events to `onEvent`; resolves when the turn ends or suspends. */
  async send(idOrName: string, content: string, onEvent: (event: SessionEvent) => void = () => {}): Promise<{ turnId: string; events: SessionEvent[] }> {
    const id = this.get(idOrName).id;
    return this.serialize(id, async () => {
      let record = this.get(id);
      if (record.state === 'hibernated') record = await this.wake(id, 'message', onEvent);
      else if (record.state === 'failed') await this.recover(id, record.note ?? 'the session had failed');
      if (!this.live.get(id)) await this.recover(id, 'the machine was not attached');
      const turnId = `t-${randomBytes(4).toString('hex')}`;
      const { offsets } = await this.log.append(id, [{ kind: 'message', role: 'user', content, metadata: { turnId } }]);
      this.update(id, { state: 'running', lastActivityAt: new Date().toISOString() });
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
      this.update(id, { state: 'idle', turns: this.get(id).turns + 1, lastActivityAt: new Date().toISOString() });
      return { turnId, events };
    });
  }

  /** Hands one user message to the agent and follows its events until the turn ends or suspends. */
  private async deliver(id: string, turnId: string, content: string, onEvent: (event: SessionEvent) => void): Promise<{ events: SessionEvent[]; suspendedUntil?: string }> {
    const connection = this.live.get(id)!.connection;
    const events: SessionEvent[] = [];
    this.turnsInFlight.add(id);
    let appended: Promise<void> = Promise.resolve();
    const result = await new Promise<{ suspendedUntil?: string }>((resolve, reject) => {
      const timer = setTimeout(() => finish(new TorporError('agent-hung', `the agent did not finish the turn within ${this.turnTimeoutMs} ms`)), this.turnTimeoutMs);
      const onAgentEvent = (raw: Record<string, unknown>) => {
        const event = raw as AgentEvent;
        events.push(event);
        onEvent(event);
        const entries = eventToEntries(event as never);
        // One chain per turn keeps the log in the order the agent spoke.
        if (entries.length > 0) {
          appended = appended.then(() => this.log.append(id, entries as never)).then(
            () => undefined,
            (error: Error) => onEvent({ type: 'error', message: `log append failed: ${error.message}` }),
          );
        }
        const ofThisTurn = event.turnId === undefined || event.turnId === turnId;
        if (event.type === 'turn-finish' && ofThisTurn) finish();
        else if (event.type === 'sleep-until' && ofThisTurn) finish(undefined, String(event.until));
      };
      const onExit = (code: number) => finish(new TorporError('agent-exited', `the agent program exited during the turn (code ${code})`, { hint: 'the session recovers on the next message' }));
      const finish = (error?: Error, suspendedUntil?: string) => {
        this.turnsInFlight.delete(id);
        clearTimeout(timer);
        connection.off('event', onAgentEvent);
        connection.off('exit', onExit);
        if (error) reject(error);
        else resolve({ suspendedUntil });
      };
      connection.on('event', onAgentEvent);
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
    this.update(id, { state: 'hibernating' });
    const live = this.live.get(id);
    this.live.delete(id);
    try {
      await this.takeSnapshot(id, true);
    } catch (error) {
      if (live) this.live.set(id, live);
      this.update(id, { state: 'idle', note: `could not hibernate, kept running: ${(error as Error).message}`, lastActivityAt: new Date().toISOString() });
      if (options.wakeAt && live) {
        // The agent awaits its wake either way: deliver it at the time asked, from the running machine.
        const delay = Math.max(0, Date.parse(options.wakeAt) - Date.now());
        setTimeout(() => live.connection.send({ type: 'wake', reason: 'timer' }), delay).unref();
      }
      return;
    }
    live?.connection.close();
    const machine = await readMachineConfig(record.machineId).catch(() => undefined);
    if (machine) await removeMachine(machine, { force: true }).catch(() => {});
    this.update(id, { state: 'hibernated', machineId: undefined, wakeAt: options.wakeAt });
  }

  private async wake(id: string, reason: 'message' | 'timer', onEvent: (event: SessionEvent) => void = () => {}): Promise<SessionRecord> {
    const record = this.get(id);
    this.update(id, { state: 'waking' });
    onEvent({ type: 'session-state', state: 'waking' });
    try {
      const machine = await restoreMachine(record.snapshot!, { name: `${id}-${Date.now().toString(36)}`, pool: this.supervisors });
      this.update(id, { machineId: machine.id, state: 'running' });
      const connection = await this.attach(id, machine.id);
      // The agent was asleep (sleep-until) or idle (waiting for a message): either way this continues it.
      // Always say wake: the agent learns it was restored (and drops connections that died with the snapshot).
      connection.send({ type: 'wake', reason });
      if (record.wakeAt) {
        // A turn was suspended (sleep-until): it goes on now, and its turn-finish makes the session idle.
        return this.update(id, { wakeAt: undefined, state: 'running', lastActivityAt: new Date().toISOString() });
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
    old?.connection.close();
    if (record.machineId) {
      const machine = await readMachineConfig(record.machineId).catch(() => undefined);
      if (machine) await removeMachine(machine, { force: true }).catch(() => {});
    }
    const logEnd = (await this.log.read(id, { from: 0, limit: 1 })).endOffset;
    if (record.snapshot && record.snapshotLogOffset === (options.historyBefore ?? logEnd)) {
      try {
        await readSnapshot(record.snapshot);
        const machine = await restoreMachine(record.snapshot, { name: `${id}-${Date.now().toString(36)}`, pool: this.supervisors });
        this.update(id, { machineId: machine.id, state: 'idle', note: `${why}; recovered from snapshot ${record.snapshot}` });
        const connection = await this.attach(id, machine.id);
        connection.send({ type: 'wake', reason: 'message' });
        return;
      } catch (error) {
        why = `${why}; snapshot ${record.snapshot} unusable (${(error as Error).message})`;
      }
    }
    const { entries } = await this.log.read(id, { from: 0, ...(options.historyBefore !== undefined ? { to: options.historyBefore } : {}) });
    await this.startFresh(id, entries.map((entry) => entry.entry));
    this.update(id, { state: 'idle', note: `${why}; rebuilt on a fresh machine from the context log (${entries.length} entries)` });
  }

  async fork(idOrName: string, options: { name?: string } = {}): Promise<SessionRecord> {
    const source = this.get(idOrName);
    return this.serialize(source.id, async () => {
      const current = this.get(source.id);
      let snapshot = current.snapshot;
      if (current.machineId && current.state !== 'hibernated') snapshot = await this.takeSnapshot(source.id, false);
      if (!snapshot) throw new TorporError('fork-impossible', `session ${current.name} has no machine state to fork yet`);
      const id = `s-${randomBytes(6).toString('hex')}`;
      const logEnd = (await this.log.read(source.id, { from: 0, limit: 1 })).endOffset;
      await this.log.fork(source.id, logEnd, { name: id });
      const now = new Date().toISOString();
      // The fork starts hibernated on the shared snapshot; its first message restores its own machine.
      this.store.insert({ id, name: options.name ?? id, spec: current.spec, state: 'hibernated', snapshot, snapshotLogOffset: logEnd, turns: current.turns, createdAt: now, updatedAt: now, lastActivityAt: now, parentId: source.id });
      return this.get(id);
    });
  }

  async delete(idOrName: string): Promise<void> {
    const record = this.get(idOrName);
    await this.serialize(record.id, async () => {
      const live = this.live.get(record.id);
      this.live.delete(record.id);
      live?.connection.close();
      if (record.machineId) {
        const machine = await readMachineConfig(record.machineId).catch(() => undefined);
        if (machine) await removeMachine(machine, { force: true }).catch(() => {});
      }
      this.update(record.id, { state: 'deleted', machineId: undefined });
      if (record.snapshot) await this.dropSnapshotIfUnused(record.snapshot);
    });
  }

  /** On server start: reattach to machines that still run, recover the rest; hibernated sessions wait for their timers. */
  async recoverAll(): Promise<void> {
    for (const record of this.store.list()) {
      if (!activeStates.includes(record.state) && record.state !== 'hibernating') continue;
      await this.serialize(record.id, async () => {
        if (record.machineId) {
          const machine = await findMachine(record.machineId).catch(() => undefined);
          if (machine && (await effectiveState(machine)).status === 'running') {
            await this.attach(record.id, machine.id);
            this.update(record.id, { state: 'idle', lastActivityAt: new Date().toISOString() });
            return;
          }
        }
        await this.recover(record.id, 'the server restarted and the machine was gone');
      }).catch((error: Error) => this.update(record.id, { state: 'failed', note: error.message }));
    }
  }

  private ticking = false;

  private async tick(): Promise<void> {
    if (this.ticking || this.closed) return;
    this.ticking = true;
    try {
      const now = Date.now();
      for (const record of this.store.list()) {
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
    this.supervisors.close();
    await Promise.allSettled([...this.queues.values()]);
    for (const live of this.live.values()) live.connection.close();
    this.live.clear();
    this.store.close();
  }
}
