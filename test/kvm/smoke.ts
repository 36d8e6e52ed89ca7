import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NestedMachine, clockSourceOfRunRm, succeeded } from './nested-machine.ts';

// The short part of the KVM suite (`npm run test:kvm:smoke`; `npm run test:kvm` runs all of it). Meant
// for `npm test` (rename it to smoke.test.ts) once it has passed within a few minutes here: on a host
// at load 20-80 its nested Node and QEMU start-ups alone took many minutes. Torpor inside a `torpor`
// machine, on KVM over the emulated SVM this host's TCG offers. Slow by nature (TCG runs a guest
// that runs KVM), so one machine for the whole file and one thing at a time.
let nest: NestedMachine;

before(async () => {
  nest = await NestedMachine.start();
});

after(async () => {
  await nest?.remove();
});

test('inside the torpor image, the KVM modules are loaded and doctor picks kvm', async () => {
  succeeded(await nest.shell('test -c /dev/kvm && grep -q "^kvm_amd \\|^kvm_intel " /proc/modules'), '/dev/kvm and the kvm module');
  const checks = JSON.parse(succeeded(await nest.torpor('doctor', '--json'), 'doctor')) as { name: string; ok: boolean; detail: string }[];
  const byName = new Map(checks.map((check) => [check.name, check]));
  assert.equal(byName.get('/dev/kvm')?.ok, true);
  assert.match(byName.get('accelerator')?.detail ?? '', /^kvm: KVM works/);
});

test('run --rm under KVM: the guest reports the KVM hypervisor and kvm-clock', async () => {
  assert.deepEqual(await clockSourceOfRunRm(nest), ['kvm-clock', '1']);
});

test('snapshot and restore under KVM: the process continues, the restored guest is still on kvm-clock', async () => {
  succeeded(
    await nest.torpor(
      'run',
      '-d',
      '--name',
      'counter',
      '--network',
      'none',
      'base',
      'sh',
      '-c',
      'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done',
    ),
    'run -d',
  );
  await new Promise((resolve) => setTimeout(resolve, 3000));
  succeeded(await nest.torpor('snapshot', 'counter', '--name', 'counter@1', '--stop'), 'snapshot');
  succeeded(await nest.torpor('restore', 'counter@1', '--name', 'counter2'), 'restore');
  const first = Number(succeeded(await nest.torpor('exec', 'counter2', 'cat', '/tmp/count'), 'exec').trim());
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const second = Number(succeeded(await nest.torpor('exec', 'counter2', 'cat', '/tmp/count'), 'exec').trim());
  assert.ok(first >= 1 && second > first, `the counter goes on after the restore (${first} then ${second})`);
  const clock = succeeded(await nest.torpor('exec', 'counter2', 'cat', '/sys/devices/system/clocksource/clocksource0/current_clocksource'), 'exec');
  assert.equal(clock.trim(), 'kvm-clock');
  succeeded(await nest.torpor('rm', '-f', 'counter2'), 'rm');
});
