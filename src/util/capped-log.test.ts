import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CappedLogWriter, capForeignLog, rotatedPath } from './capped-log.ts';

test('a capped log keeps the newest records within its limit, in whole records, in files of mode 0600', () => {
  const directory = mkdtempSync(join(tmpdir(), 'capped-'));
  try {
    const path = join(directory, 'process.log');
    const writer = new CappedLogWriter(path, 64 * 1024);
    for (let index = 0; index < 10_000; index++) writer.write(`${JSON.stringify({ index, log: 'x'.repeat(50) })}\n`);
    writer.end();
    const kept = readFileSync(rotatedPath(path), 'utf8') + readFileSync(path, 'utf8');
    assert.ok(kept.length <= 64 * 1024, `kept ${kept.length}`);
    const records = kept
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { index: number });
    assert.equal(records.at(-1)!.index, 9999, 'the newest record is kept');
    assert.ok(
      records.every((record, position) => position === 0 || record.index === records[position - 1]!.index + 1),
      'no record lost or cut inside what is kept',
    );
    assert.equal(statSync(path).mode & 0o777, 0o600);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test('a log another process appends to is cut to its newest half-limit and keeps growing from zero', () => {
  const directory = mkdtempSync(join(tmpdir(), 'capped-'));
  try {
    const path = join(directory, 'console.log');
    writeFileSync(path, '');
    const stop = capForeignLog(path, { maxBytes: 1000, intervalMs: 10 });
    appendFileSync(path, 'a'.repeat(5000) + 'END');
    stop();
    assert.equal(statSync(path).size, 0);
    const rotated = readFileSync(rotatedPath(path), 'utf8');
    assert.equal(rotated.length, 500);
    assert.ok(rotated.endsWith('END'));
    appendFileSync(path, 'next');
    assert.equal(readFileSync(path, 'utf8'), 'next');
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});
