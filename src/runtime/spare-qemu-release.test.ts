import { test } from 'node:test';
import { createHash } from 'node:crypto';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spareKey } from './spare-pool.ts';
import { qemuVersionCacheFile } from '../vm/qemu-version.ts';

// A spare is a guest already restored in a running QEMU. Seen by hand: a `run` under
// TORPOR_QEMU=QEMU 10.0 was handed a spare running 7.2 (its guest saw 7.2's CPU). So the pool a
// run claims from is per QEMU release; 7.2, which every pool before was made with, keeps its key.

const settings = { image: 'base', cpus: 1, memoryMiB: 512, network: true };

function withQemu<T>(version: string | undefined, body: () => T): T {
  const saved = process.env.TORPOR_QEMU;
  const directory = mkdtempSync(join(tmpdir(), 'tp-sq-'));
  const binary = join(directory, 'qemu-system-x86_64');
  let cacheFile: string | undefined;
  try {
    if (version !== undefined) {
      writeFileSync(binary, `#!/bin/sh\necho "QEMU emulator version ${version} (test build)"\n`);
      chmodSync(binary, 0o755);
      cacheFile = qemuVersionCacheFile(binary);
      process.env.TORPOR_QEMU = binary;
    }
    return body();
  } finally {
    if (saved === undefined) delete process.env.TORPOR_QEMU;
    else process.env.TORPOR_QEMU = saved;
    if (cacheFile) rmSync(cacheFile, { force: true });
    rmSync(directory, { recursive: true, force: true });
  }
}

test('spares are pooled per QEMU release: another release never claims them; micro releases share a pool; 7.2 keeps its key', () => {
  // The key every 7.2 pool had before releases were told apart (sha256 of the settings alone).
  const before = createHash('sha256')
    .update(JSON.stringify([settings.image, settings.cpus, settings.memoryMiB, settings.network, null]))
    .digest('hex')
    .slice(0, 16);
  const seven = withQemu('7.2.22', () => spareKey(settings));
  const sevenOther = withQemu('7.2.5', () => spareKey(settings));
  const ten = withQemu('10.0.2', () => spareKey(settings));
  const tenOther = withQemu('10.0.7', () => spareKey(settings));
  const eight = withQemu('8.2.2', () => spareKey(settings));
  assert.equal(seven, before);
  assert.equal(seven, sevenOther);
  assert.equal(ten, tenOther);
  assert.notEqual(seven, ten);
  assert.notEqual(seven, eight);
  assert.notEqual(ten, eight);
  // A binary that cannot tell its version: the key of before, and its start then fails on its own.
  const missing = withQemu(undefined, () => {
    process.env.TORPOR_QEMU = '/nonexistent/qemu-system-x86_64';
    return spareKey(settings);
  });
  assert.equal(missing, seven);
});

test('spares are pooled per TCG CPU model: a run under TORPOR_TCG_CPU=max never claims a spare booted on the default model', () => {
  const saved = process.env.TORPOR_TCG_CPU;
  const keyUnder = (model: string | undefined) => {
    if (model === undefined) delete process.env.TORPOR_TCG_CPU;
    else process.env.TORPOR_TCG_CPU = model;
    return withQemu('7.2.22', () => spareKey(settings));
  };
  try {
    const unset = keyUnder(undefined);
    assert.equal(keyUnder('max-without-erms'), unset, 'the default named or not is one pool, the one of before');
    assert.notEqual(keyUnder('max'), unset);
  } finally {
    if (saved === undefined) delete process.env.TORPOR_TCG_CPU;
    else process.env.TORPOR_TCG_CPU = saved;
  }
});
