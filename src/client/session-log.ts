import type { JsonValue } from './events.ts';
import { readServerSentEvents } from './server-sent-events.ts';
import { encode, type Transport } from './transport.ts';

/** One entry of a context log (a message, a tool result, a summary...): see torpor/context's Entry. */
export interface LogEntry {
  kind: string;
  [field: string]: JsonValue | undefined;
}

/** An entry as stored: where it is in the log and when it was appended. */
export interface StoredEntry {
  sessionId: string;
  offset: number;
  appendedAt: string;
  entry: LogEntry;
}

export interface ReadResult {
  entries: StoredEntry[];
  nextOffset: number;
  endOffset: number;
}

export interface AppendResult {
  offsets: number[];
  nextOffset: number;
  duplicate: boolean;
}

/** A session's context log (`/v1/logs/:id`): read a range, append, and tail it live with resume. */
export class SessionLog {
  constructor(
    private readonly transport: Transport,
    readonly sessionId: string,
  ) {}

  private get path(): string {
    return `/v1/logs/${encode(this.sessionId)}`;
  }

  async read(options: { from?: number; to?: number; limit?: number } = {}): Promise<ReadResult> {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(options)) if (value !== undefined) query.set(key, String(value));
    return this.transport.json<ReadResult>('GET', `${this.path}/entries?${query}`, undefined, `reading the log of ${this.sessionId}`);
  }

  async append(
    entries: Array<Record<string, unknown>>,
    options: { expectedOffset?: number; producer?: { id: string; epoch: number; sequence: number } } = {},
  ): Promise<AppendResult> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (options.expectedOffset !== undefined) headers['Expected-Offset'] = String(options.expectedOffset);
    if (options.producer) {
      headers['Producer-Id'] = options.producer.id;
      headers['Producer-Epoch'] = String(options.producer.epoch);
      headers['Producer-Seq'] = String(options.producer.sequence);
    }
    const response = await this.transport.fetch(`${this.path}/entries`, {
      method: 'POST',
      what: `appending to the log of ${this.sessionId}`,
      headers,
      body: JSON.stringify(entries),
    });
    return (await response.json()) as AppendResult;
  }

  /**
   * Follows the log live from `from` (default 0): yields every entry, then waits for new ones. On a
   * dropped connection it reconnects after the last offset it yielded, so nothing repeats or goes
   * missing. Stop with `signal` or by breaking out of the loop.
   */
  async *tail(options: { from?: number; signal?: AbortSignal; retryDelayMs?: number } = {}): AsyncGenerator<StoredEntry> {
    let next = options.from ?? 0;
    const retryDelayMs = options.retryDelayMs ?? 500;
    while (!options.signal?.aborted) {
      const controller = new AbortController();
      const abort = () => controller.abort();
      options.signal?.addEventListener('abort', abort, { once: true });
      try {
        const response = await this.transport.fetch(`${this.path}/entries?live=sse&from=${next}`, {
          what: `tailing the log of ${this.sessionId}`,
          headers: { accept: 'text/event-stream' },
          signal: controller.signal,
        });
        for await (const event of readServerSentEvents(response.body!, controller.signal)) {
          if (event.event !== 'entry') continue;
          const entry = JSON.parse(event.data) as StoredEntry;
          if (entry.offset < next) continue;
          next = entry.offset + 1;
          yield entry;
        }
      } catch (error) {
        // Typed API errors (unknown session, bad offset) do not heal by retrying.
        if (options.signal?.aborted || (error as { status?: number }).status !== undefined) {
          if (options.signal?.aborted) return;
          throw error;
        }
      } finally {
        options.signal?.removeEventListener('abort', abort);
        controller.abort();
      }
      if (options.signal?.aborted) return;
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs));
    }
  }
}
