import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NestedMachine, clockSourceOfRunRm, succeeded } from './nested-machine.ts';

// The short part of the KVM suite, run by `npm test` (~5 min here on a quiet host: the torpor image,
// a 2 GiB machine under TCG, then a base machine's first boot under nested KVM); `npm run test:kvm`
// runs all of it. Torpor inside a `torpor` machine, on KVM over the emulated SVM this host's TCG
// offers. Slow by nature (TCG runs a guest that runs KVM), so one machine for the whole file and one
// thing at a time.
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
  assert.deepEqual(await clockSourceOfRunRm(nest, 'user'), ['kvm-clock', '1']);
});
