import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { TorporError } from '../util/errors.ts';
import { parseCpuInfo } from '../host/cpu-description.ts';
import { checkCpuFeatures, checkSnapshotRuns } from './snapshot-compatibility.ts';
import type { MachineConfig } from './machine-record.ts';

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
