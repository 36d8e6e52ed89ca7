import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { TorporError } from '../util/errors.ts';
import { parseCpuInfo } from '../host/cpu-description.ts';
import { checkCpuFeatures, checkQemuRelease, checkSnapshotRuns } from './snapshot-compatibility.ts';
import { machineConfigSchema, type MachineConfig } from './machine-record.ts';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseQemuVersion, probeQemuVersion, qemuVersionCacheFile } from '../vm/qemu-version.ts';
import { qemuBinary } from '../vm/qemu-command.ts';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { shellIn } from './testing/guest-shell.ts';
import { createMachine, startMachine, removeMachine, findMachine } from './machines.ts';
import { snapshotMachine, restoreMachine } from './snapshots.ts';
import { bootTemplateName } from './boot-template.ts';

const config = (accelerator: 'kvm' | 'tcg', hostCpu?: MachineConfig['hostCpu']) =>
  ({ accelerator, kernelPath: '/nonexistent/vmlinuz', initramfsPath: '/nonexistent/initramfs', ...(hostCpu ? { hostCpu } : {}) }) as MachineConfig;

test('a kvm snapshot on a host whose machines run under tcg is refused with what to do', async () => {
  const saved = process.env.TORPOR_ACCEL;
  process.env.TORPOR_ACCEL = 'tcg';
  try {
    await assert.rejects(checkSnapshotRuns('web@1', config('kvm')), (error: unknown) => {
      assert.ok(error instanceof TorporError);
      assert.equal(error.code, 'snapshot-accelerator');
      assert.match(error.message, /web@1 was taken under kvm, and machines here run under tcg/);
      assert.match(error.hint ?? '', /host where KVM works/);
      return true;
    });
    // A tcg snapshot restores anywhere (it keeps running under tcg).
    await checkSnapshotRuns('web@2', config('tcg'));
  } finally {
    if (saved === undefined) delete process.env.TORPOR_ACCEL;
    else process.env.TORPOR_ACCEL = saved;
  }
});

test("a kvm snapshot needs every CPU feature of the CPU it was taken on; this host's own features pass", async () => {
  const here = parseCpuInfo(readFileSync('/proc/cpuinfo', 'utf8'));
  assert.ok(here.flags.length > 10, 'this host lists its CPU flags');
  await checkCpuFeatures('same', here, here);
  const older = { model: 'older', flags: here.flags.slice(0, 5) };
  await checkCpuFeatures('newer-host', older, here);
  const newer = { model: 'Future CPU', flags: [...here.flags, 'avx1024', 'amx-future'] };
  await assert.rejects(checkCpuFeatures('web@3', newer, here), (error: unknown) => {
    assert.ok(error instanceof TorporError);
    assert.equal(error.code, 'snapshot-cpu');
    assert.match(error.message, /Future CPU.*lacks: avx1024 amx-future/);
    return true;
  });
});

test('cpuinfo parsing takes the first processor and tolerates a missing model name', () => {
  const parsed = parseCpuInfo('processor\t: 0\nflags\t\t: sse2 fpu svm\n\nprocessor\t: 1\nmodel name\t: second\nflags\t: other\n');
  assert.deepEqual(parsed, { model: 'unknown', flags: ['fpu', 'sse2', 'svm'] });
});

// The QEMU release: a snapshot's device state loads only into the release (major.minor) that took
// it (measured with 7.2 and 10.0 in bench/qemu-versions.ts). The recorded version comes from an
// untrusted snapshot; the binary asked is the real one (TORPOR_QEMU, default Debian's).

const realQemu = () => {
  const version = probeQemuVersion(qemuBinary());
  assert.ok(version, `${qemuBinary()} --version names a version`);
  return version;
};

test('a snapshot of another QEMU release is refused with which QEMU to use; the same major.minor and unrecorded ones pass', () => {
  const here = realQemu();
  checkQemuRelease('same@1', `${here.major}.${here.minor}.${here.micro + 7}`, qemuBinary());
  checkQemuRelease('old@1', undefined, qemuBinary());
  for (const other of [`${here.major + 1}.0.2`, `${here.major}.${here.minor + 1}.0`, `${Math.max(0, here.major - 1)}.9.9`]) {
    assert.throws(
      () => checkQemuRelease('web@1', other, qemuBinary()),
      (error: unknown) => {
        assert.ok(error instanceof TorporError);
        assert.equal(error.code, 'snapshot-qemu');
        assert.match(error.message, new RegExp(`web@1 was taken under QEMU ${other.replaceAll('.', '\\.')}, and the QEMU here .* is ${here.major}\\.${here.minor}`));
        assert.match(error.hint ?? '', /TORPOR_QEMU/);
        return true;
      },
      other,
    );
  }
  // A binary that does not run is left to the start, which says it is not installed.
  checkQemuRelease('web@2', '99.0.0', '/nonexistent/qemu-system-x86_64');
});

test('a recorded QEMU version from a snapshot is digits and dots only, or the snapshot is refused', () => {
  const base = { qemuVersion: '7.2.22' };
  const schema = machineConfigSchema.pick({ qemuVersion: true });
  assert.equal(schema.safeParse(base).success, true);
  assert.equal(schema.safeParse({}).success, true);
  for (const hostile of ['7.2; reboot', '7.2.22\n', '$(id).1.1', '7.2', '1.2.3.4', '12345.0.0', 'x'.repeat(100_000), 7.2, null, ['7.2.0']])
    assert.equal(schema.safeParse({ qemuVersion: hostile }).success, false, JSON.stringify(hostile).slice(0, 40));
});

test('a QEMU version is read from --version output, Debian suffixes and all', () => {
  assert.deepEqual(parseQemuVersion('QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright'), { major: 7, minor: 2, micro: 22 });
  assert.deepEqual(parseQemuVersion('QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)'), { major: 10, minor: 0, micro: 2 });
  assert.deepEqual(parseQemuVersion('QEMU emulator version 9.1'), { major: 9, minor: 1, micro: 0 });
  assert.equal(parseQemuVersion('not a qemu'), undefined);
});

test('end to end: a machine records its QEMU, and its snapshot is refused under another release, then restores under its own', async (t) => {
  const home = await useTemporaryHome();
  const scratch = await mkdtemp(join(tmpdir(), 'tp-qemu-'));
  const savedQemu = process.env.TORPOR_QEMU;
  let cacheFile: string | undefined;
  try {
    const here = realQemu();
    const config = await createMachine({ image: 'base', name: 'release', command: ['sleep', '100000'], memoryMiB: 256 });
    assert.match(config.qemuVersion ?? '', new RegExp(`^${here.major}\\.${here.minor}\\.\\d+$`));
    await startMachine(config.id);
    await snapshotMachine(config, { name: 'release@1', stop: true });
    await removeMachine(await findMachine(config.id), { force: true });
    // Another release on TORPOR_QEMU: a script that answers --version as one and runs the real QEMU
    // otherwise (it is never started here: the refusal comes first).
    const other = join(scratch, 'qemu-system-x86_64');
    await writeFile(
      other,
      `#!/bin/sh\nif [ "$1" = --version ]; then echo "QEMU emulator version ${here.major + 1}.0.0"; exit 0; fi\nexec ${qemuBinary()} "$@"\n`,
    );
    await chmod(other, 0o755);
    cacheFile = qemuVersionCacheFile(other);
    process.env.TORPOR_QEMU = other;
    await assert.rejects(restoreMachine('release@1', { name: 'elsewhere' }), (error: unknown) => {
      assert.ok(error instanceof TorporError);
      assert.equal(error.code, 'snapshot-qemu');
      assert.match(error.message, new RegExp(`is ${here.major + 1}\\.0\\.0`));
      return true;
    });
    // Nothing was left of the refused restore.
    await assert.rejects(findMachine('elsewhere'));
    if (savedQemu === undefined) delete process.env.TORPOR_QEMU;
    else process.env.TORPOR_QEMU = savedQemu;
    const restored = await restoreMachine('release@1', { name: 'at-home' });
    assert.equal(await shellIn(restored, 'echo back'), 'back');
    await removeMachine(await findMachine(restored.id), { force: true });
    t.diagnostic(`QEMU ${here.major}.${here.minor}`);
  } finally {
    if (savedQemu === undefined) delete process.env.TORPOR_QEMU;
    else process.env.TORPOR_QEMU = savedQemu;
    await rm(scratch, { recursive: true, force: true });
    if (cacheFile) await rm(cacheFile, { force: true });
    await home.cleanup();
  }
});

test('boot templates: one per QEMU release (major.minor), shared by its micro releases, unchanged for configs without one', async () => {
  const sample = { ...config('tcg'), image: { reference: 'base', digest: 'sha256:00', diskPath: '/x' }, cpus: 1, memoryMiB: 256, network: false, kernelArguments: [] };
  const name = (qemuVersion?: string) => bootTemplateName({ ...sample, ...(qemuVersion ? { qemuVersion } : {}) } as MachineConfig);
  assert.equal(name('7.2.1'), name('7.2.22'));
  assert.notEqual(name('7.2.22'), name('10.0.2'));
  assert.notEqual(name('7.2.22'), name());
  assert.equal(name(), name(undefined));
});
