import { TorporApiError } from './errors.ts';
import type { SessionEvent } from './events.ts';
import { encode, type Transport } from './transport.ts';

/** Events of a session as they were recorded, with the offset to resume after them. */
export interface SessionEventBatch {
  events: SessionEvent[];
  /** Opaque; pass it back as `offset` to continue exactly after these events (survives restarts). */
  offset: string;
  /** True when the batch reached the end of what is recorded so far. */
  upToDate: boolean;
}

/**
 * Reads a session's recorded turn events (`/v1/stream/sessions/<id>/events`, Durable Streams
 * protocol): everything from `offset` ("-1" = the start, "now" = only new ones), then, when
 * `live`, new events as they happen (long-poll). Store `batch.offset` to resume after a reload.
 */
export async function* readSessionEvents(
  transport: Transport,
  sessionId: string,
  options: { offset?: string; live?: boolean; signal?: AbortSignal; retryDelayMs?: number } = {},
): AsyncGenerator<SessionEventBatch> {
  let offset = options.offset ?? '-1';
  let cursor: string | undefined;
  const live = options.live ?? true;
  const path = `/v1/stream/sessions/${encode(sessionId)}/events`;
  while (!options.signal?.aborted) {
    const query = new URLSearchParams({ offset });
    if (live && offset !== '-1') query.set('live', 'long-poll');
    if (cursor) query.set('cursor', cursor);
    let response: Response;
    try {
      response = await transport.fetch(`${path}?${query}`, { what: `reading the events of session ${sessionId}`, signal: options.signal });
    } catch (error) {
      if (options.signal?.aborted) return;
      // No event recorded yet: the stream appears with the first one.
      if (error instanceof TorporApiError && error.status === 404) {
        if (!live) return;
        await new Promise((resolve) => setTimeout(resolve, options.retryDelayMs ?? 500));
        continue;
      }
      throw error;
    }
    cursor = response.headers.get('Stream-Cursor') ?? cursor;
    const next = response.headers.get('Stream-Next-Offset') ?? offset;
    const upToDate = response.headers.get('Stream-Up-To-Date') === 'true';
    if (response.status === 200) {
      const events = (await response.json()) as SessionEvent[];
      if (events.length > 0 || next !== offset) yield { events, offset: next, upToDate };
    } else {
      await response.body?.cancel();
    }
    offset = next;
    if (!live && upToDate) return;
  }
}
