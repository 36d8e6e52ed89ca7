import { appendFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';
import { readSnapshot, storeUsage } from '../snapshot/snapshot-store.ts';
import type { SessionManager } from '../session/session-manager.ts';
import type { AgentSessionRecord } from '../session/session-store.ts';
import type { HistoryEvent } from './client/shapes.ts';

/** The newest events kept in a reply: a long-lived session's file keeps growing, the page needs its recent past. */
const maxEventsRead = 5000;

/**
 * What happened to each session over time (states with their times, snapshots with their sizes
 * and durations, notes about crashes and recoveries, turns), which the session store does not
 * keep: it holds only the present. One JSON line per event in `session-history/<id>.jsonl` under
 * the state directory, appended as the session manager reports changes. Append-only, so a server
 * killed mid-write leaves at most one torn last line, which the reader skips.
 */
export class SessionHistory {
  private readonly directory: string;
  private readonly last = new Map<string, AgentSessionRecord>();
  private readonly listener: (record: AgentSessionRecord) => void;
  /** Snapshot lookups in flight, so tests and shutdown can wait for the last one. */
  private pending: Promise<void> = Promise.resolve();

  constructor(
    private readonly manager: SessionManager,
    directory = join(stateHome(), 'session-history'),
  ) {
    this.directory = directory;
    mkdirSync(directory, { recursive: true, mode: 0o700 });
    for (const record of manager.list()) this.last.set(record.id, record);
    this.listener = (record) => this.observe(record);
    manager.on('change', this.listener);
  }

  private pathOf(id: string): string {
    // Ids come from the session store (s-<hex>), never from a request; refuse anything else anyway.
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/.test(id)) throw new Error(`not a session id: ${id}`);
    return join(this.directory, `${id}.jsonl`);
  }

  private append(id: string, event: HistoryEvent): void {
    try {
      appendFileSync(this.pathOf(id), `${JSON.stringify(event)}\n`, { mode: 0o600 });
    } catch {
      // History is for people looking at the dashboard; losing a line must never fail a session.
    }
  }

  private observe(record: AgentSessionRecord): void {
    const before = this.last.get(record.id);
    this.last.set(record.id, record);
    const at = record.updatedAt;
    if (!before) {
      // The manager inserts a session without announcing it: a new one starts creating (booting), a
      // fork starts hibernated on its parent's snapshot. Record that first span from createdAt.
      const first = record.parentId ? 'hibernated' : 'creating';
      if (record.state !== first) this.append(record.id, { at: record.createdAt, kind: 'state', state: first, turns: record.turns });
    }
    if (!before || before.state !== record.state) {
      this.append(record.id, {
        at,
        kind: 'state',
        ...(before ? { from: before.state } : {}),
        state: record.state,
        turns: record.turns,
        ...(record.wakeAt ? { wakeAt: record.wakeAt } : {}),
      });
    } else if (before.turns !== record.turns) {
      this.append(record.id, { at, kind: 'turn', turns: record.turns });
    }
    if (record.note && record.note !== before?.note) this.append(record.id, { at, kind: 'note', note: record.note });
    if (record.snapshot && record.snapshot !== before?.snapshot) {
      const snapshot = record.snapshot;
      this.pending = this.pending.then(() => this.recordSnapshot(record.id, at, snapshot));
    }
  }

  /** The snapshot's own numbers (new bytes, time taken) and what it references in the store now. */
  private async recordSnapshot(id: string, at: string, name: string): Promise<void> {
    try {
      const manifest = await readSnapshot(name);
      const usage = (await storeUsage()).snapshots.find((each) => each.name === name);
      this.append(id, {
        at,
        kind: 'snapshot',
        snapshot: name,
        newBytes: manifest.stats.newCompressedBytes,
        milliseconds: manifest.stats.milliseconds.total,
        memoryBytes: manifest.memory.size,
        ...(usage ? { referencedBytes: usage.referencedBytes } : {}),
      });
    } catch {
      this.append(id, { at, kind: 'snapshot', snapshot: name });
    }
  }

  /** Resolves when every change seen so far is written. */
  settled(): Promise<void> {
    return this.pending;
  }

  read(id: string): HistoryEvent[] {
    let text: string;
    try {
      text = readFileSync(this.pathOf(id), 'utf8');
    } catch {
      return [];
    }
    const events: HistoryEvent[] = [];
    for (const line of text.split('\n').slice(-maxEventsRead - 1)) {
      if (!line) continue;
      try {
        events.push(JSON.parse(line) as HistoryEvent);
      } catch {
        // a line torn by a crash mid-append
      }
    }
    return events;
  }

  close(): void {
    this.manager.off('change', this.listener);
  }
}
