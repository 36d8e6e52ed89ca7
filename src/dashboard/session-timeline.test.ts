import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildTimeline } from './session-timeline.ts';
import type { HistoryEvent } from './client/shapes.ts';

const at = (second: number) => new Date(Date.UTC(2026, 10, 29, 1, 0, second)).toISOString();

test('states become spans; wakes get their latency; each turn gets the wake before it and the bytes stored by then', () => {
  const history: HistoryEvent[] = [
    { at: at(0), kind: 'state', state: 'creating', turns: 0 },
    { at: at(3), kind: 'state', from: 'creating', state: 'idle', turns: 0 },
    { at: at(4), kind: 'state', from: 'idle', state: 'running', turns: 0 },
    { at: at(5), kind: 'state', from: 'running', state: 'idle', turns: 1 },
    { at: at(6), kind: 'state', from: 'idle', state: 'hibernating', turns: 1 },
    { at: at(7), kind: 'snapshot', snapshot: 'session-a-1', newBytes: 4096, milliseconds: 120, referencedBytes: 10_000 },
    { at: at(7), kind: 'state', from: 'hibernating', state: 'hibernated', turns: 1 },
    { at: at(20), kind: 'state', from: 'hibernated', state: 'waking', turns: 1 },
    { at: at(21), kind: 'state', from: 'waking', state: 'running', turns: 1 },
    { at: at(22), kind: 'state', from: 'running', state: 'idle', turns: 2 },
    { at: at(23), kind: 'note', note: 'the machine stopped unexpectedly (exit 137); recovered from snapshot session-a-1' },
    { at: at(24), kind: 'state', from: 'idle', state: 'hibernated', turns: 2, wakeAt: at(30) },
  ];
  const timeline = buildTimeline(history);
  assert.deepEqual(
    timeline.spans.map((span) => [span.state, span.from, span.to]),
    [
      ['creating', at(0), at(3)],
      ['idle', at(3), at(4)],
      ['running', at(4), at(5)],
      ['idle', at(5), at(6)],
      ['hibernating', at(6), at(7)],
      ['hibernated', at(7), at(20)],
      ['waking', at(20), at(21)],
      ['running', at(21), at(22)],
      ['idle', at(22), at(24)],
      ['hibernated', at(24), undefined],
    ],
  );
  assert.equal(timeline.spans.at(-1)?.wakeAt, at(30), 'a sleep-until hibernation carries its wake time');
  assert.deepEqual(timeline.wakes, [{ at: at(21), milliseconds: 1000 }]);
  assert.deepEqual(timeline.turns, [
    { turn: 1, at: at(5) },
    { turn: 2, at: at(22), wakeMilliseconds: 1000, storedBytes: 10_000 },
  ]);
  assert.deepEqual(
    timeline.marks.map((mark) => mark.kind),
    ['snapshot', 'recovery'],
  );
  assert.match(timeline.marks[0]!.label, /\+4\.0 KiB new in 120 ms/);
});

test('a history that starts mid-life (a fork) does not invent turns it did not see', () => {
  const timeline = buildTimeline([
    { at: at(0), kind: 'state', state: 'hibernated', turns: 9 },
    { at: at(1), kind: 'state', from: 'hibernated', state: 'waking', turns: 9 },
    { at: at(3), kind: 'state', from: 'waking', state: 'failed', turns: 9 },
  ]);
  assert.deepEqual(timeline.turns, []);
  assert.deepEqual(timeline.wakes, []);
  assert.deepEqual(
    timeline.marks.map((mark) => mark.kind),
    ['crash'],
  );
});
