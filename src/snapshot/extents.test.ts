import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { allocatedExtents, chunksWithData, dataExtents } from './extents.ts';

test('reports the data extents of a sparse file without reading its holes', async () => {
  const directory = mkdtempSync('/dev/shm/torpor-extents-test-');
  try {
    const file = join(directory, 'sparse');
    const fd = openSync(file, 'w');
    ftruncateSync(fd, 4 * 1024 * 1024 * 1024);
    writeSync(fd, Buffer.alloc(8192, 1), 0, 8192, 1024 * 1024);
    writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 3 * 1024 * 1024 * 1024);
    closeSync(fd);
    const started = performance.now();
    const extents = await dataExtents(file);
    assert.deepEqual(extents, [
      { start: 1024 * 1024, end: 1024 * 1024 + 8192 },
      { start: 3 * 1024 * 1024 * 1024, end: 3 * 1024 * 1024 * 1024 + 4096 },
    ]);
    assert.ok(performance.now() - started < 2000, 'a 4 GiB hole is skipped, not read');
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test('allocated extents include unwritten ranges, which read as zeros and which data extents leave out', async () => {
  // On the state directory's file system (tmpfs has no unwritten ranges): QEMU's copy-before-write
  // marks a copied hole only this way.
  const directory = mkdtempSync('/var/tmp/torpor-extents-test-');
  try {
    const file = join(directory, 'copies');
    const fd = openSync(file, 'w');
    ftruncateSync(fd, 64 * 1024 * 1024);
    writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 8 * 1024 * 1024);
    closeSync(fd);
    assert.equal(spawnSync('fallocate', ['-z', '-o', String(1024 * 1024), '-l', String(65536), file]).status, 0);
    assert.deepEqual(await dataExtents(file), [{ start: 8 * 1024 * 1024, end: 8 * 1024 * 1024 + 4096 }]);
    const allocated = await allocatedExtents(file);
    assert.ok(
      allocated.some((extent) => extent.start <= 1024 * 1024 && extent.end >= 1024 * 1024 + 65536),
      JSON.stringify(allocated),
    );
    assert.ok(
      allocated.some((extent) => extent.start <= 8 * 1024 * 1024 && extent.end >= 8 * 1024 * 1024 + 4096),
      'written data too',
    );
    assert.ok(
      !allocated.some((extent) => extent.start < 1024 * 1024 || (extent.start > 1024 * 1024 + 65536 && extent.start < 8 * 1024 * 1024)),
      'holes stay out',
    );
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test('maps extents to the chunks they touch, each once', () => {
  const chunk = 256 * 1024;
  assert.deepEqual(
    chunksWithData(
      [
        { start: 0, end: 10 },
        { start: 100, end: chunk + 1 },
        { start: 5 * chunk - 1, end: 5 * chunk },
        { start: 7 * chunk, end: 7 * chunk },
      ],
      chunk,
    ),
    [0, 1, 4],
  );
});
