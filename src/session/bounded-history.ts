import type { ContextLog, Entry } from '../context/index.ts';

/** Largest history the host sends an agent in one line (TORPOR_AGENT_MAX_HISTORY, bytes). Default 4 MiB. */
export function agentMaxHistoryBytes(environment: NodeJS.ProcessEnv = process.env): number {
  const value = Number(environment.TORPOR_AGENT_MAX_HISTORY);
  return Number.isSafeInteger(value) && value >= 1024 ? value : 4 * 1024 * 1024;
}

export interface BoundedHistory {
  entries: Entry[];
  /** Log offset of the first entry sent. */
  from: number;
  /** True when older entries were left out to stay within the limit. */
  truncated: boolean;
}

const pageSize = 500;

/**
 * The newest entries of a session's log (before `to`) whose JSON fits in `maxBytes`, oldest first.
 * An agent may ask for its history as often as it likes and a log may be long: reading backwards
 * page by page, and stopping at the limit, keeps each answer's memory and time bounded by the
 * limit instead of by the log (the agent still gets the newest part, where a turn continues).
 */
export async function readBoundedHistory(log: ContextLog, sessionId: string, options: { to?: number; maxBytes: number }): Promise<BoundedHistory> {
  const end = options.to ?? (await log.read(sessionId, { from: 0, limit: 0 })).endOffset;
  const kept: Entry[][] = [];
  let bytes = 2; // the enclosing []
  let from = end;
  while (from > 0) {
    const pageStart = Math.max(0, from - pageSize);
    const { entries } = await log.read(sessionId, { from: pageStart, to: from });
    const page: Entry[] = [];
    for (let index = entries.length - 1; index >= 0; index--) {
      const size = Buffer.byteLength(JSON.stringify(entries[index]!.entry)) + 1;
      if (bytes + size > options.maxBytes) {
        kept.unshift(page.reverse());
        return { entries: kept.flat(), from, truncated: true };
      }
      bytes += size;
      page.push(entries[index]!.entry);
      from = entries[index]!.offset;
    }
    kept.unshift(page.reverse());
    if (entries.length === 0) break;
  }
  return { entries: kept.flat(), from, truncated: false };
}
