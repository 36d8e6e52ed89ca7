import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BoundedLineSplitter } from './bounded-lines.ts';

test('lines split across chunks, including inside a UTF-8 character, come out whole', () => {
  const splitter = new BoundedLineSplitter(1024);
  const text = Buffer.from('{"a":"é"}\n{"b":2}\n');
  const got: string[] = [];
  for (let index = 0; index < text.length; index++) got.push(...splitter.push(text.subarray(index, index + 1)).lines);
  assert.deepEqual(got, ['{"a":"é"}', '{"b":2}']);
});

test('a line over the limit is dropped and reported with its size; the next line is intact', () => {
  const splitter = new BoundedLineSplitter(100);
  const first = splitter.push(Buffer.from('ok\n' + 'x'.repeat(60)));
  assert.deepEqual(first, { lines: ['ok'], dropped: [] });
  const second = splitter.push(Buffer.from('y'.repeat(60)));
  assert.deepEqual(second, { lines: [], dropped: [] });
  assert.ok(splitter.discarding);
  const third = splitter.push(Buffer.from('z'.repeat(1000) + '\nafter\n'));
  assert.deepEqual(third, { lines: ['after'], dropped: [1120] });
  assert.ok(!splitter.discarding);
});

test('a 100 MiB line in 64 KiB chunks costs linear time and no more than the limit in memory', () => {
  const splitter = new BoundedLineSplitter(1024 * 1024);
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  const started = performance.now();
  for (let index = 0; index < 1600; index++) assert.deepEqual(splitter.push(chunk).lines, []);
  const end = splitter.push(Buffer.from('\n{"type":"turn-finish"}\n'));
  assert.deepEqual(end, { lines: ['{"type":"turn-finish"}'], dropped: [1600 * 64 * 1024] });
  // Not a speed target: a quadratic splitter takes minutes here, a linear one well under this.
  assert.ok(performance.now() - started < 20_000);
});
