import type { BlobStore } from './blob-store.ts';
import type { EntryKind } from './entry.ts';
import type { ProducerStamp } from './producer.ts';

/**
 * What a backend must provide. The ContextLog does validation, size limits, blobs and model
 * conversion once; a backend only stores rows atomically and durably, so SQLite and PostgreSQL
 * cannot drift apart in behaviour (the contract test suite checks the rest).
 */
export interface SessionRecord {
  id: string;
  /** The session this one was forked from, or null for a root session. */
  parentId: string | null;
  /** Entries below this offset are the parent's, shared copy-on-write; null for a root session. */
  forkOffset: number | null;
  /** The offset the next appended entry gets; equals the number of entries, inherited ones included. */
  nextOffset: number;
  createdAt: string;
}

export interface StorageRow {
  kind: EntryKind;
  /** The entry as JSON text, or a blob reference envelope for an oversized entry. */
  body: string;
}

export interface AppendCommand {
  sessionId: string;
  rows: StorageRow[];
  expectedOffset?: number;
  producer?: ProducerStamp & { digest: string };
  /** Runs inside the transaction once the first offset is known; throwing aborts the batch. */
  validate?: (firstOffset: number) => void;
  /** Append only while this writer still holds the session's lease (see AppendFence). */
  fence?: AppendFence;
}

/**
 * A cluster node's claim on a session: the append commits only if the lease table still names this
 * holder at this epoch, checked inside the append's transaction. A node that was paused or cut off
 * while another took the session over (epoch + 1) thus cannot add to the log. Only the PostgreSQL
 * backend has leases (it is the one several hosts share); SQLite ignores a fence.
 */
export interface AppendFence {
  holder: string;
  epoch: number;
}

export interface AppendOutcome {
  firstOffset: number;
  count: number;
  /** The session's next offset after this call. */
  nextOffset: number;
  /** True when this was a retry of an already committed producer batch: nothing new was written. */
  duplicate: boolean;
}

export interface StoredRow {
  offset: number;
  body: string;
  appendedAt: string;
}

export interface LogStorage {
  readonly kind: 'sqlite' | 'postgres';
  readonly blobs: BlobStore;
  append(command: AppendCommand): Promise<AppendOutcome>;
  describe(sessionId: string): Promise<SessionRecord | undefined>;
  /** Rows in [from, to) in offset order, following fork parents; the session must exist. */
  readRows(sessionId: string, from: number, to: number, limit: number): Promise<StoredRow[]>;
  /** Only the summary rows in offset order, following fork parents: compaction needs them without reading everything. */
  readSummaryRows(sessionId: string): Promise<StoredRow[]>;
  listSessions(): Promise<SessionRecord[]>;
  fork(parentId: string, atOffset: number, newId: string): Promise<SessionRecord>;
  /**
   * Resolves once the session's next offset may have moved past `knownNextOffset`, or the signal
   * aborts. It may resolve spuriously; callers re-read.
   */
  waitForAppend(sessionId: string, knownNextOffset: number, signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
}

/** One ancestor's share of a forked session: its own rows in [from, to). */
export interface ChainSegment<Key> {
  key: Key;
  from: number;
  to: number;
}

/**
 * Splits a read of [from, to) over a fork chain (root first). Each session owns the rows from its
 * own fork offset up to the fork offset of the next session down the chain; rows a parent wrote
 * after the fork point are not part of the child.
 */
export function chainSegments<Key>(chain: ReadonlyArray<{ key: Key; forkOffset: number | null }>, from: number, to: number): ChainSegment<Key>[] {
  const segments: ChainSegment<Key>[] = [];
  // A descendant may fork below its parent's own fork point, so each ancestor's share ends at the
  // lowest fork offset anywhere below it in the chain.
  let upper = Number.POSITIVE_INFINITY;
  for (let index = chain.length - 1; index >= 0; index--) {
    const lower = chain[index].forkOffset ?? 0;
    const segmentFrom = Math.max(from, lower);
    const segmentTo = Math.min(to, upper);
    if (segmentFrom < segmentTo) segments.unshift({ key: chain[index].key, from: segmentFrom, to: segmentTo });
    upper = Math.min(upper, lower);
  }
  return segments;
}
