import { formatBytes } from '../util/byte-size.ts';
import type { HistoryEvent, SessionTimeline, StateSpan, TimelineMark, TurnPoint } from './client/shapes.ts';

/** Notes the session manager writes when it brought a session back, or when something broke. */
const recoveryNote = /recovered from snapshot|rebuilt on a fresh machine/;
const crashNote = /stopped unexpectedly|exited|could not restore|unusable|had failed|could not hibernate/;

/** Bytes as people read them; the timeline's labels are plain text. */
const readableBytes = (bytes: number): string => formatBytes(bytes, { separator: ' ', decimals: 'always' });

const between = (from: string, to: string) => Date.parse(to) - Date.parse(from);

/**
 * Turns a session's recorded history into what the timeline and the chart draw: spans of states,
 * instants (snapshots, crashes, recoveries), the latency of each wake, and per turn the wake that
 * preceded it and the bytes stored by then. Pure, so it is tested without a server or browser.
 */
export function buildTimeline(history: readonly HistoryEvent[]): SessionTimeline {
  const spans: StateSpan[] = [];
  const marks: TimelineMark[] = [];
  const turns: TurnPoint[] = [];
  const wakes: SessionTimeline['wakes'] = [];
  const snapshots: SessionTimeline['snapshots'] = [];
  let wakeStartedAt: string | undefined;
  let pendingWake: number | undefined;
  let storedBytes: number | undefined;
  // A history may begin mid-life (a fork inherits its parent's turns; older servers recorded nothing).
  const first = history.find((event) => event.kind === 'state' || event.kind === 'turn');
  let lastTurns = first ? first.turns : 0;
  for (const event of history) {
    if (event.kind === 'state') {
      const open = spans.at(-1);
      if (open && open.to === undefined) open.to = event.at;
      spans.push({ state: event.state, from: event.at, ...(event.state === 'hibernated' && event.wakeAt ? { wakeAt: event.wakeAt } : {}) });
      if (event.state === 'waking') wakeStartedAt = event.at;
      else if (wakeStartedAt && (event.state === 'running' || event.state === 'idle')) {
        const milliseconds = between(wakeStartedAt, event.at);
        wakes.push({ at: event.at, milliseconds });
        pendingWake = milliseconds;
        wakeStartedAt = undefined;
      } else if (event.state === 'failed') {
        marks.push({ at: event.at, kind: 'crash', label: 'failed' });
        wakeStartedAt = undefined;
      }
      if (event.turns > lastTurns) addTurn(event.turns, event.at);
    } else if (event.kind === 'snapshot') {
      snapshots.push({ at: event.at, snapshot: event.snapshot, newBytes: event.newBytes, milliseconds: event.milliseconds });
      if (event.referencedBytes !== undefined) storedBytes = event.referencedBytes;
      const size = event.newBytes === undefined ? '' : ` +${readableBytes(event.newBytes)} new`;
      const took = event.milliseconds === undefined ? '' : ` in ${Math.round(event.milliseconds)} ms`;
      marks.push({ at: event.at, kind: 'snapshot', label: `snapshot${size}${took}` });
    } else if (event.kind === 'note') {
      const kind = recoveryNote.test(event.note) ? 'recovery' : crashNote.test(event.note) ? 'crash' : 'note';
      marks.push({ at: event.at, kind, label: event.note });
    } else if (event.kind === 'turn' && event.turns > lastTurns) {
      addTurn(event.turns, event.at);
    }
  }
  return { spans, marks, turns, wakes, snapshots };

  function addTurn(count: number, at: string): void {
    for (let turn = lastTurns + 1; turn <= count; turn++) {
      turns.push({ turn, at, ...(pendingWake !== undefined ? { wakeMilliseconds: pendingWake } : {}), ...(storedBytes !== undefined ? { storedBytes } : {}) });
      pendingWake = undefined;
    }
    lastTurns = count;
  }
}
