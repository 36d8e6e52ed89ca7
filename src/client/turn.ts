import { TorporApiError } from './errors.ts';
import type { SessionEvent } from './events.ts';

/**
 * One turn in flight: iterate it for the events as they come (`for await (const event of turn)`),
 * or await `text()` / `events()` for the whole answer. The response is read once: iterating and
 * then calling `text()` gives the text of what was iterated (the events are kept).
 */
export class Turn implements AsyncIterable<SessionEvent> {
  private readonly seen: SessionEvent[] = [];
  private source?: AsyncIterator<SessionEvent>;
  private finished = false;
  private consuming?: Promise<void>;

  constructor(start: () => AsyncIterable<SessionEvent>) {
    this.start = start;
  }
  private readonly start: () => AsyncIterable<SessionEvent>;

  async *[Symbol.asyncIterator](): AsyncIterator<SessionEvent> {
    let index = 0;
    for (;;) {
      while (index < this.seen.length) yield this.seen[index++];
      if (this.finished) return;
      const next = await this.pull();
      if (next === undefined && this.finished && index >= this.seen.length) return;
    }
  }

  private async pull(): Promise<SessionEvent | undefined> {
    this.source ??= this.start()[Symbol.asyncIterator]();
    const { value, done } = await this.source.next();
    if (done) {
      this.finished = true;
      return undefined;
    }
    this.seen.push(value);
    return value;
  }

  /** Every event of the turn, once it ended. */
  async events(): Promise<SessionEvent[]> {
    this.consuming ??= (async () => {
      for await (const _event of this) {
        // collect: the iterator keeps them
      }
    })();
    await this.consuming;
    return [...this.seen];
  }

  /**
   * The assistant's text of the turn (its text deltas joined). Rejects with a TorporApiError if the
   * turn reported an error, so a failed turn is not mistaken for an empty answer.
   */
  async text(): Promise<string> {
    const events = await this.events();
    const failure = events.find((event) => event.type === 'error');
    if (failure) throw new TorporApiError(502, failure.code ?? 'turn-failed', failure.message);
    return events.map((event) => (event.type === 'text-delta' ? event.delta : '')).join('');
  }
}
