import { test } from 'node:test';
import assert from 'node:assert/strict';
import { access, constants, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chooseAccelerator } from './accelerator-probe.ts';

const kvmOpens = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
  () => true,
  () => false,
);

// Two torpor versions on one host build different initramfs files. With one shared cache file each
// overwrote the other's verdict, so every start of either paid the 8 s KVM probe again. A missing
// kernel makes the probe's QEMU fail at once, so this runs the real probe without a boot.
test('the accelerator verdicts of two guests are both kept', { skip: !kvmOpens && 'no usable /dev/kvm: no probe runs' }, async () => {
  const saved = process.env.TORPOR_ACCEL;
  delete process.env.TORPOR_ACCEL;
  const cacheDirectory = await mkdtemp(join(tmpdir(), 'tp-accel-'));
  try {
    const first = { kernelPath: join(cacheDirectory, 'no-kernel-a'), initramfsPath: join(cacheDirectory, 'a.cpio'), cacheDirectory };
    const second = { kernelPath: join(cacheDirectory, 'no-kernel-b'), initramfsPath: join(cacheDirectory, 'b.cpio'), cacheDirectory };
    const firstChoice = await chooseAccelerator(first);
    assert.equal(firstChoice.accelerator, 'tcg', 'QEMU cannot start a missing kernel under KVM');
    // Mark the first verdict, so that reading it back proves it came from the cache, not a new probe.
    const files = (await readdir(cacheDirectory)).filter((name) => name.startsWith('accelerator-'));
    assert.equal(files.length, 1);
    const cached = JSON.parse(await readFile(join(cacheDirectory, files[0]!), 'utf8')) as Record<string, string>;
    await writeFile(join(cacheDirectory, files[0]!), JSON.stringify({ ...cached, reason: 'marked by the test' }));
    await chooseAccelerator(second);
    assert.equal((await chooseAccelerator(first)).reason, 'marked by the test', "the second guest's probe must not replace the first's verdict");
    assert.equal((await readdir(cacheDirectory)).filter((name) => name.startsWith('accelerator-')).length, 2);
    assert.deepEqual(
      (await readdir(cacheDirectory)).filter((name) => name.startsWith('probe-')),
      [],
      'probe work directories are removed',
    );
  } finally {
    if (saved === undefined) delete process.env.TORPOR_ACCEL;
    else process.env.TORPOR_ACCEL = saved;
    await rm(cacheDirectory, { recursive: true, force: true });
  }
});

test('a damaged verdict file is probed again, not trusted', { skip: !kvmOpens && 'no usable /dev/kvm: no probe runs' }, async () => {
  const saved = process.env.TORPOR_ACCEL;
  delete process.env.TORPOR_ACCEL;
  const cacheDirectory = await mkdtemp(join(tmpdir(), 'tp-accel-'));
  try {
    const guest = { kernelPath: join(cacheDirectory, 'no-kernel'), initramfsPath: join(cacheDirectory, 'x.cpio'), cacheDirectory };
    await chooseAccelerator(guest);
    const [file] = (await readdir(cacheDirectory)).filter((name) => name.startsWith('accelerator-'));
    // Half a file (a crash mid-write by an older version) or another key's verdict must not be believed.
    await writeFile(join(cacheDirectory, file!), '{"accelerator":"kvm","rea');
    assert.equal((await chooseAccelerator(guest)).accelerator, 'tcg');
    await writeFile(join(cacheDirectory, file!), JSON.stringify({ accelerator: 'kvm', reason: 'forged', key: 'another guest' }));
    assert.equal((await chooseAccelerator(guest)).accelerator, 'tcg');
  } finally {
    if (saved === undefined) delete process.env.TORPOR_ACCEL;
    else process.env.TORPOR_ACCEL = saved;
    await rm(cacheDirectory, { recursive: true, force: true });
  }
});
