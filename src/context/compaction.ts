import type { StoredEntry, SummaryEntry } from './entry.ts';
import { InvalidEntryError } from './errors.ts';

/**
 * Compaction without loss: a summary entry stands for the range [from, to) of earlier entries when
 * model context is built; `read` still returns every original. The log itself is never rewritten.
 */
export type ContextItem = { type: 'entry'; stored: StoredEntry } | { type: 'summary'; stored: StoredEntry & { entry: SummaryEntry } };

interface ActiveSummary {
  from: number;
  to: number;
  stored: StoredEntry & { entry: SummaryEntry };
}

/** Checked inside the append transaction, where each summary's own offset is known. */
export function assertSummariesCoverThePast(entries: ReadonlyArray<{ kind: string; covers?: { from: number; to: number } }>, firstOffset: number): void {
  entries.forEach((entry, index) => {
    if (entry.kind !== 'summary' || !entry.covers) return;
    const offset = firstOffset + index;
    if (entry.covers.to > offset) {
      throw new InvalidEntryError([
        {
          index,
          path: 'covers.to',
          message: `a summary at offset ${offset} can only cover earlier entries: covers.to is ${entry.covers.to}, at most ${offset} is allowed`,
        },
      ]);
    }
  });
}

/**
 * Chooses which summaries apply. Later summaries supersede earlier ones whose ranges they contain
 * (re-summarizing a summary is the normal way to compact again). A summary that would only partly
 * overlap an applied one is ignored rather than guessed at, so no entry is ever hidden without a
 * summary standing in for it.
 */
export function activeSummaries(stored: readonly StoredEntry[]): ActiveSummary[] {
  let active: ActiveSummary[] = [];
  for (const item of stored) {
    if (item.entry.kind !== 'summary') continue;
    const { from, to } = item.entry.covers;
    const overlapping = active.filter((range) => range.from < to && from < range.to);
    if (overlapping.every((range) => from <= range.from && range.to <= to)) {
      active = active.filter((range) => !overlapping.includes(range));
      active.push({ from, to, stored: item as StoredEntry & { entry: SummaryEntry } });
    }
  }
  return active.sort((left, right) => left.from - right.from);
}

/** The entries as the model should see them: covered ranges replaced by their summaries, in order. */
export function contextItems(stored: readonly StoredEntry[]): ContextItem[] {
  const summaries = activeSummaries(stored);
  const items: ContextItem[] = [];
  let next = 0;
  for (const item of stored) {
    while (next < summaries.length && summaries[next].to <= item.offset) {
      // A range whose entries were never read (e.g. a partial read) still gets its summary.
      items.push({ type: 'summary', stored: summaries[next].stored });
      next++;
    }
    const current = summaries[next];
    if (current && current.from <= item.offset && item.offset < current.to) continue;
    if (item.entry.kind === 'summary') continue;
    items.push({ type: 'entry', stored: item });
  }
  while (next < summaries.length) items.push({ type: 'summary', stored: summaries[next++].stored });
  return items;
}
