import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { probeQemuVersion, qemuVersionCacheFile, qemuVersionOf, baselineQemuVersion } from './qemu-version.ts';

// A QEMU's version decides how its command line is spelled (qemu-command.ts) and which snapshots it
// may restore (runtime/snapshot-compatibility.ts). It is asked once per binary file and kept in the
// cache directory, because `--version` costs 40-130 ms on the restore path under load. The binary
// here is a script that counts how often it was asked: real processes, no stand-in for the probe.

function fakeQemu(directory: string, version: string, name = 'qemu-system-x86_64'): { binary: string; asked: () => number } {
  const binary = join(directory, name);
  const counter = join(directory, 'asked');
  writeFileSync(binary, `#!/bin/sh\necho x >> ${counter}\necho "QEMU emulator version ${version} (test build)"\n`);
  chmodSync(binary, 0o755);
  return { binary, asked: () => readFileSync(counter, 'utf8').split('\n').filter(Boolean).length };
}

test('a binary is asked once: later processes take the cached answer; a replaced binary is asked again', (t) => {
  const directory = mkdtempSync(join(tmpdir(), 'tp-qv-'));
  const cacheFiles: string[] = [];
  t.after(() => {
    for (const file of cacheFiles) rmSync(file, { force: true });
    rmSync(directory, { recursive: true, force: true });
  });
  const first = fakeQemu(directory, '8.1.3');
  cacheFiles.push(qemuVersionCacheFile(first.binary)!);
  assert.deepEqual(probeQemuVersion(first.binary), { major: 8, minor: 1, micro: 3 });
  assert.deepEqual(probeQemuVersion(first.binary), { major: 8, minor: 1, micro: 3 });
  assert.equal(first.asked(), 1);
  // Another process (a machine's supervisor) reads the cache instead of running the binary.
  const other = execFileSync(
    process.execPath,
    ['--import', 'tsx', '-e', `import('${join(import.meta.dirname, 'qemu-version.ts')}').then((m) => console.log(JSON.stringify(m.probeQemuVersion(${JSON.stringify(first.binary)}))))`],
    { encoding: 'utf8' },
  );
  assert.deepEqual(JSON.parse(other), { major: 8, minor: 1, micro: 3 });
  assert.equal(first.asked(), 1);

  // An upgrade replaces the file: a new answer, in this process too.
  const upgraded = fakeQemu(directory, '10.0.12');
  cacheFiles.push(qemuVersionCacheFile(upgraded.binary)!);
  assert.deepEqual(probeQemuVersion(upgraded.binary), { major: 10, minor: 0, micro: 12 });
  assert.equal(upgraded.asked(), 2);
});

test('a damaged or foreign cache entry is not believed: the binary is asked', (t) => {
  const directory = mkdtempSync(join(tmpdir(), 'tp-qv-'));
  const cacheFiles: string[] = [];
  t.after(() => {
    for (const file of cacheFiles) rmSync(file, { force: true });
    rmSync(directory, { recursive: true, force: true });
  });
  const forged = [
    'not json',
    JSON.stringify({ identity: 'another file', major: 99, minor: 0, micro: 0 }),
    JSON.stringify({ major: 99, minor: 0, micro: 0 }),
    '[]',
    'null',
  ];
  forged.forEach((content, index) => {
    const qemu = fakeQemu(directory, `9.${index}.1`, `qemu-${index}`);
    const cacheFile = qemuVersionCacheFile(qemu.binary)!;
    cacheFiles.push(cacheFile);
    mkdirSync(dirname(cacheFile), { recursive: true });
    writeFileSync(cacheFile, content);
    assert.deepEqual(probeQemuVersion(qemu.binary), { major: 9, minor: index, micro: 1 }, content);
  });
  // The right identity with numbers that are not versions: asked again (in another process, as
  // this one remembers its own answer).
  const qemu = fakeQemu(directory, '9.9.9', 'qemu-numbers');
  const cacheFile = qemuVersionCacheFile(qemu.binary)!;
  cacheFiles.push(cacheFile);
  probeQemuVersion(qemu.binary);
  const { identity } = JSON.parse(readFileSync(cacheFile, 'utf8')) as { identity: string };
  writeFileSync(cacheFile, JSON.stringify({ identity, major: -1, minor: '0; reboot', micro: 1.5 }));
  const other = execFileSync(
    process.execPath,
    ['--import', 'tsx', '-e', `import('${join(import.meta.dirname, 'qemu-version.ts')}').then((m) => console.log(JSON.stringify(m.probeQemuVersion(${JSON.stringify(qemu.binary)}))))`],
    { encoding: 'utf8' },
  );
  assert.deepEqual(JSON.parse(other), { major: 9, minor: 9, micro: 9 });
  assert.equal(qemu.asked(), forged.length + 2);
});

test('a binary that does not run or names no version: no answer, and the command line falls back to the baseline', (t) => {
  const directory = mkdtempSync(join(tmpdir(), 'tp-qv-'));
  t.after(() => rmSync(directory, { recursive: true, force: true }));
  assert.equal(probeQemuVersion(join(directory, 'missing')), undefined);
  assert.deepEqual(qemuVersionOf(join(directory, 'missing')), baselineQemuVersion);
  const silent = join(directory, 'silent');
  writeFileSync(silent, '#!/bin/sh\necho hello\n');
  chmodSync(silent, 0o755);
  assert.equal(probeQemuVersion(silent), undefined);
  // Nothing was cached for it: the next ask runs it again.
  assert.equal(probeQemuVersion(silent), undefined);
});

test('the real QEMU answers with a version', () => {
  const version = probeQemuVersion(process.env.TORPOR_QEMU || 'qemu-system-x86_64');
  assert.ok(version && version.major >= 7, JSON.stringify(version));
});
