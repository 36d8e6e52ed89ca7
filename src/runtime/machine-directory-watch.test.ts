import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile, rename } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { watchMachineDirectory } from './machine-directory-watch.ts';

test('a state.json replaced by a rename wakes the waiter long before its fallback time', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-watch-'));
  const changes = watchMachineDirectory(directory);
  let replaced: Promise<void> = Promise.resolve();
  try {
    const started = performance.now();
    setTimeout(
      () => (replaced = writeFile(join(directory, '.state.tmp'), '{}').then(() => rename(join(directory, '.state.tmp'), join(directory, 'state.json')))),
      50,
    );
    await changes.next(5000);
    assert.ok(performance.now() - started < 2000, 'woken by the change, not by the 5 s fallback');
  } finally {
    changes.close();
    // The write wakes the waiter before the rename lands: removing the directory first raced it (ENOTEMPTY).
    await replaced.catch(() => {});
    await rm(directory, { recursive: true, force: true });
  }
});

test('a change between two waits is not lost, and the directory going away wakes the waiter', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-watch-'));
  const changes = watchMachineDirectory(directory);
  try {
    await writeFile(join(directory, 'state.json'), '{}');
    await new Promise((resolve) => setTimeout(resolve, 100)); // the event arrives while nobody waits
    const started = performance.now();
    await changes.next(5000);
    assert.ok(performance.now() - started < 1000, 'the earlier change is remembered');
    const removal = performance.now();
    setTimeout(() => void rm(directory, { recursive: true, force: true }), 50);
    await changes.next(5000);
    assert.ok(performance.now() - removal < 2000, 'removal of the machine wakes the waiter');
  } finally {
    changes.close();
    await rm(directory, { recursive: true, force: true });
  }
});

test('a directory that does not exist falls back to the timeout instead of throwing', async () => {
  const changes = watchMachineDirectory(join(tmpdir(), 'tp-watch-missing-' + process.pid));
  const started = performance.now();
  await changes.next(150);
  assert.ok(performance.now() - started >= 140);
  changes.close();
});
