import { activeSummaries, assertSummariesCoverThePast } from './compaction.ts';
import { parseEntries, type Entry, type StoredEntry } from './entry.ts';
import { EntryTooLargeError, InvalidArgumentError, OffsetBeyondEndError, UnknownSessionError } from './errors.ts';
import { entriesToModelMessages, type ModelMessage, type ToModelMessagesOptions } from './model-messages.ts';
import { assertProducerStamp, batchDigest, type ProducerStamp } from './producer.ts';
import { assertSessionId, forkSessionId } from './session-identifier.ts';
import type { AppendFence, LogStorage, SessionRecord, StorageRow, StoredRow } from './storage.ts';

export interface ContextLogOptions {
  /** Largest entry kept inline in the database, in bytes of JSON; larger ones go to the blob store. Default 4 MiB. */
  maxEntryBytes?: number;
  /** Largest entry accepted at all (stored as a blob). Default 64 MiB; 0 disables blobs so oversized entries fail. */
  maxBlobBytes?: number;
}

export interface AppendOptions {
  /** Optimistic concurrency: fail with OffsetConflictError unless the session's next offset is this. */
  expectedOffset?: number;
  /** Idempotent producer stamp: a retry with the same stamp returns the original offsets. */
  producer?: ProducerStamp;
  /** Commit only while this holder's lease on the session is current (cluster nodes; PostgreSQL only). */
  fence?: AppendFence;
}

export interface AppendResult {
  sessionId: string;
  /** Offsets of the appended entries, in order. */
  offsets: number[];
  /** The session's next offset after this append. */
  nextOffset: number;
  /** True when this call was a retry of a batch already committed; nothing new was written. */
  duplicate: boolean;
}

export interface ReadOptions {
  /** First offset to return (inclusive). Default 0. */
  from?: number;
  /** Offset to stop before (exclusive). Default: the end. */
  to?: number;
  /** At most this many entries. Default: no limit. */
  limit?: number;
}

export interface ReadResult {
  entries: StoredEntry[];
  /** Where to continue reading: one past the last entry returned, or `from` when none was. */
  nextOffset: number;
  /** The session's next offset at the time of the read. */
  endOffset: number;
}

export interface TailOptions {
  from?: number;
  signal?: AbortSignal;
}

export interface SessionInfo extends SessionRecord {}

/** The operations shared by the embedded log and the HTTP client, so the CLI can use either. */
export interface ContextLogClient {
  append(sessionId: string, entries: readonly unknown[], options?: AppendOptions): Promise<AppendResult>;
  read(sessionId: string, options?: ReadOptions): Promise<ReadResult>;
  tail(sessionId: string, options?: TailOptions): AsyncIterable<StoredEntry>;
  fork(sessionId: string, atOffset: number, options?: { name?: string }): Promise<SessionInfo>;
  sessions(): Promise<SessionInfo[]>;
  describe(sessionId: string): Promise<SessionInfo>;
  toModelMessages(sessionId: string, options?: ToModelMessagesOptions): Promise<ModelMessage[]>;
  close(): Promise<void>;
}

const mebibyte = 1024 * 1024;

function assertOffset(name: string, value: unknown): asserts value is number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) {
    throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
}

interface BlobEnvelope {
  $blob: { digest: string; size: number };
}

/**
 * The context log: an append-only, durable, per-session log of what goes into and comes out of an
 * LLM. Entries are validated here, once, for every backend; the backend stores them atomically.
 */
export class ContextLog implements ContextLogClient {
  readonly storage: LogStorage;
  readonly maxEntryBytes: number;
  readonly maxBlobBytes: number;

  constructor(storage: LogStorage, options: ContextLogOptions = {}) {
    this.storage = storage;
    this.maxEntryBytes = options.maxEntryBytes ?? 4 * mebibyte;
    this.maxBlobBytes = options.maxBlobBytes ?? 64 * mebibyte;
  }

  async append(sessionId: string, entries: readonly unknown[], options: AppendOptions = {}): Promise<AppendResult> {
    assertSessionId(sessionId);
    if (options.expectedOffset !== undefined) assertOffset('expectedOffset', options.expectedOffset);
    if (options.producer !== undefined) assertProducerStamp(options.producer);
    const parsed = parseEntries(entries);
    const serialized = parsed.map((entry) => JSON.stringify(entry));
    const rows: StorageRow[] = [];
    for (let index = 0; index < parsed.length; index++) {
      const text = serialized[index];
      const size = Buffer.byteLength(text);
      if (size <= this.maxEntryBytes) {
        rows.push({ kind: parsed[index].kind, body: text });
        continue;
      }
      if (size > this.maxBlobBytes) {
        throw new EntryTooLargeError(
          index,
          size,
          Math.max(this.maxEntryBytes, this.maxBlobBytes),
          this.maxBlobBytes > 0
            ? 'Store large data elsewhere and log a reference (e.g. a URL in a file part), or raise maxBlobBytes.'
            : 'Enable the blob store (maxBlobBytes > 0) or raise maxEntryBytes.',
        );
      }
      // The blob is durable before the row that points at it commits; an orphan blob is harmless.
      const reference = await this.storage.blobs.put(Buffer.from(text));
      const envelope: BlobEnvelope = { $blob: reference };
      rows.push({ kind: parsed[index].kind, body: JSON.stringify(envelope) });
    }
    const outcome = await this.storage.append({
      sessionId,
      rows,
      expectedOffset: options.expectedOffset,
      producer: options.producer ? { ...options.producer, digest: batchDigest(serialized) } : undefined,
      fence: options.fence,
      validate: (firstOffset) => assertSummariesCoverThePast(parsed as Array<Entry & { covers?: { from: number; to: number } }>, firstOffset),
    });
    const offsets = Array.from({ length: outcome.count }, (_, index) => outcome.firstOffset + index);
    return { sessionId, offsets, nextOffset: outcome.nextOffset, duplicate: outcome.duplicate };
  }

  async describe(sessionId: string): Promise<SessionInfo> {
    assertSessionId(sessionId);
    const record = await this.storage.describe(sessionId);
    if (!record) throw new UnknownSessionError(sessionId);
    return record;
  }

  private async decode(sessionId: string, row: StoredRow): Promise<StoredEntry> {
    let value = JSON.parse(row.body) as Entry | BlobEnvelope;
    if ('$blob' in value) value = JSON.parse(Buffer.from(await this.storage.blobs.get(value.$blob)).toString('utf8')) as Entry;
    return { sessionId, offset: row.offset, appendedAt: row.appendedAt, entry: value };
  }

  async read(sessionId: string, options: ReadOptions = {}): Promise<ReadResult> {
    const from = options.from ?? 0;
    assertOffset('from', from);
    if (options.to !== undefined) assertOffset('to', options.to);
    if (options.limit !== undefined) assertOffset('limit', options.limit);
    const session = await this.describe(sessionId);
    if (from > session.nextOffset) throw new OffsetBeyondEndError(sessionId, from, session.nextOffset);
    const to = Math.min(options.to ?? session.nextOffset, session.nextOffset);
    const limit = options.limit ?? Number.MAX_SAFE_INTEGER;
    const rows = from < to && limit > 0 ? await this.storage.readRows(sessionId, from, to, limit) : [];
    const entries: StoredEntry[] = [];
    for (const row of rows) entries.push(await this.decode(sessionId, row));
    const nextOffset = entries.length > 0 ? entries[entries.length - 1].offset + 1 : from;
    return { entries, nextOffset, endOffset: session.nextOffset };
  }

  /**
   * Reads from `from`, waiting up to `timeoutMs` for entries when there are none yet (long-poll).
   * Returns an empty result on timeout or abort.
   */
  async readOrWait(sessionId: string, options: ReadOptions & { timeoutMs: number; signal?: AbortSignal }): Promise<ReadResult> {
    const deadline = AbortSignal.timeout(Math.max(0, options.timeoutMs));
    const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
    for (;;) {
      const result = await this.read(sessionId, options);
      if (result.entries.length > 0 || signal.aborted) return result;
      await this.storage.waitForAppend(sessionId, result.endOffset, signal);
    }
  }

  /** Follows a session live: yields every entry from `from` on, then new ones as they commit, until the signal aborts. */
  async *tail(sessionId: string, options: TailOptions = {}): AsyncGenerator<StoredEntry> {
    let next = options.from ?? 0;
    const signal = options.signal;
    const batch = 1000;
    while (!signal?.aborted) {
      const result = await this.read(sessionId, { from: next, limit: batch });
      for (const stored of result.entries) {
        if (signal?.aborted) return;
        yield stored;
      }
      next = result.nextOffset;
      if (result.entries.length < batch && !signal?.aborted) await this.storage.waitForAppend(sessionId, next, signal);
    }
  }

  async fork(sessionId: string, atOffset: number, options: { name?: string } = {}): Promise<SessionInfo> {
    assertSessionId(sessionId);
    assertOffset('atOffset', atOffset);
    const name = options.name ?? forkSessionId(sessionId, atOffset);
    assertSessionId(name);
    return this.storage.fork(sessionId, atOffset, name);
  }

  async sessions(): Promise<SessionInfo[]> {
    return this.storage.listSessions();
  }

  /**
   * The entries that model context is built from: every summary plus the entries outside
   * summarized ranges. A compacted 10,000-turn session costs what its context costs, not what its
   * history costs. Feed the result to entriesToModelMessages, entriesToOpenAIChat or entriesToAnthropic.
   */
  async contextEntries(sessionId: string): Promise<StoredEntry[]> {
    const session = await this.describe(sessionId);
    const summaries: StoredEntry[] = [];
    for (const row of await this.storage.readSummaryRows(sessionId)) summaries.push(await this.decode(sessionId, row));
    const covered = activeSummaries(summaries);
    if (covered.length === 0) return (await this.read(sessionId)).entries;
    const wanted: StoredEntry[] = [];
    let from = 0;
    for (const range of [...covered, { from: session.nextOffset, to: session.nextOffset }]) {
      if (from < range.from) wanted.push(...(await this.read(sessionId, { from, to: range.from })).entries);
      from = Math.max(from, range.to);
    }
    const stored = [...wanted, ...summaries].sort((left, right) => left.offset - right.offset);
    // A result whose call was summarized away still needs the call's tool name: fall back to everything.
    const calls = new Set(stored.flatMap((item) => (item.entry.kind === 'tool-call' ? [item.entry.toolCallId] : [])));
    const orphaned = stored.some((item) => item.entry.kind === 'tool-result' && item.entry.toolName === undefined && !calls.has(item.entry.toolCallId));
    return orphaned ? (await this.read(sessionId)).entries : stored;
  }

  /** The session as AI SDK `ModelMessage`s, with summarized ranges replaced by their summaries. */
  async toModelMessages(sessionId: string, options: ToModelMessagesOptions = {}): Promise<ModelMessage[]> {
    const entries = options.ignoreSummaries ? (await this.read(sessionId)).entries : await this.contextEntries(sessionId);
    return entriesToModelMessages(entries, options);
  }

  async close(): Promise<void> {
    await this.storage.close();
  }
}
