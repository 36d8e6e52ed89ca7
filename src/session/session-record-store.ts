import type { AppendFence } from '../context/index.ts';
import type { AgentSessionRecord } from './session-store.ts';

/**
 * Where the session manager keeps its session records: SQLite beside one server (session-store.ts),
 * or PostgreSQL shared by a cluster of nodes (cluster/postgres-session-store.ts).
 *
 * Reads are synchronous on purpose: routes, the dashboard and the manager's timers read records
 * often, and a cluster store answers them from records it keeps current (its own writes, and
 * notifications of other nodes'). Writes may be asynchronous and are awaited: a state change is
 * durable, and for a cluster store fenced by the node's lease, before the manager acts on it.
 */
export interface SessionRecordStore {
  insert(record: AgentSessionRecord): void | Promise<void>;
  /** Throws `lease-lost` (a TorporError) when another node has taken the session over. */
  update(id: string, patch: Partial<Omit<AgentSessionRecord, 'id' | 'createdAt'>>): AgentSessionRecord | Promise<AgentSessionRecord>;
  get(idOrName: string): AgentSessionRecord | undefined;
  list(options?: { includeDeleted?: boolean }): AgentSessionRecord[];
  /** Whether this server runs the session (always, for a single host). */
  holds(id: string): boolean;
  /** What a log append for the session must carry so it cannot land after a takeover (none for a single host). */
  logFence(id: string): AppendFence | undefined;
  close(): void | Promise<void>;
}
