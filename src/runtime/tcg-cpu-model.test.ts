import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { useTemporaryHome } from './testing/temporary-home.ts';
import { shellIn } from './testing/guest-shell.ts';
import { createMachine, startMachine, removeMachine, findMachine } from './machines.ts';
import { snapshotMachine, restoreMachine } from './snapshots.ts';
import { readMachineState, readMachineConfig, machineFiles } from './machine-files.ts';
import { machineConfigSchema, type MachineConfig } from './machine-record.ts';
import { bootTemplateName } from './boot-template.ts';
import { tcgCpuArgument, tcgCpuModels, type MachineSpec } from '../vm/machine-spec.ts';
import { qemuArguments } from '../vm/qemu-command.ts';
import { environment } from '../config/environment.ts';
import { TorporError } from '../util/errors.ts';
import { paths } from '../state/paths.ts';

// The TCG CPU model is part of the snapshot format: a guest picked its code paths by the CPU it
// booted on, so it must resume on the same one. New TCG machines get `max-without-erms`; configs
// without the field (every machine and snapshot made before it) keep `max`. The value reaches
// QEMU's command line, so only names of a fixed list may pass.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let accelerator: string;

before(async () => {
  home = await useTemporaryHome();
});

after(async () => {
  delete process.env.TORPOR_TCG_CPU;
  await home.cleanup();
});

const spec: MachineSpec = {
  id: 'abc',
  cpus: 1,
  memoryMiB: 256,
  accelerator: 'tcg',
  kernelPath: '/boot/vmlinuz',
  initramfsPath: '/cache/initramfs.cpio',
  kernelArguments: [],
  imageDisk: '/images/rootfs.ext4',
  memoryFile: '/dev/shm/torpor/abc.ram',
  agentSocket: '/run/agent.sock',
  qmpSocket: '/run/qmp.sock',
  consoleLog: '/machines/abc/console.log',
  network: false,
  ports: [],
};
const cpuOf = (args: string[]) => args[args.indexOf('-cpu') + 1];

test('the -cpu argument: absent is max (older snapshots), each model its own, kvm always the host', () => {
  assert.equal(cpuOf(qemuArguments(spec)), 'max');
  assert.equal(cpuOf(qemuArguments({ ...spec, cpuModel: 'max' })), 'max');
  assert.equal(cpuOf(qemuArguments({ ...spec, cpuModel: 'max-without-erms' })), 'max,-erms,-fsrm');
  assert.equal(cpuOf(qemuArguments({ ...spec, accelerator: 'kvm', cpuModel: 'max-without-erms' })), 'host,-arch-capabilities');
  // Nothing else of the command line changes with the model.
  const withoutCpu = (args: string[]) => args.filter((_, index) => args[index - 1] !== '-cpu');
  assert.deepEqual(withoutCpu(qemuArguments({ ...spec, cpuModel: 'max-without-erms' })), withoutCpu(qemuArguments(spec)));
});

test('hostile model names are refused everywhere they could enter: config schema, config.json, environment, the command line', async () => {
  for (const hostile of ['max,+pmu', 'host', 'max,-erms,-fsrm', '', 'MAX', 7, null]) {
    // The schema snapshots are parsed with.
    const config = { ...(await sampleConfig()), cpuModel: hostile };
    assert.equal(machineConfigSchema.safeParse(config).success, false, `schema took ${JSON.stringify(hostile)}`);
    // The last line before QEMU.
    assert.throws(() => tcgCpuArgument(hostile as never), /unknown TCG CPU model/);
  }
  // The environment: a clear error naming the choices.
  process.env.TORPOR_TCG_CPU = 'max,+pmu';
  assert.throws(
    () => environment(),
    (error: unknown) => error instanceof TorporError && error.code === 'invalid-environment' && /max-without-erms/.test(error.message),
  );
  // Every name the environment takes is a model the command line knows, and the other way round.
  for (const model of tcgCpuModels) {
    process.env.TORPOR_TCG_CPU = model;
    assert.equal(environment().TORPOR_TCG_CPU, model);
  }
  delete process.env.TORPOR_TCG_CPU;
  assert.equal(environment().TORPOR_TCG_CPU, 'max-without-erms');
});

test('boot template names: unchanged without a model (templates made before keep theirs), each model its own', async () => {
  const config = await sampleConfig();
  const before = createHash('sha256')
    .update(
      JSON.stringify([
        config.image.digest,
        config.kernelPath,
        config.initramfsPath,
        config.kernelArguments,
        config.accelerator,
        config.cpus,
        config.memoryMiB,
        config.network,
      ]),
    )
    .digest('hex')
    .slice(0, 16);
  assert.equal(bootTemplateName(config), `template-${before}`);
  const names = new Set(tcgCpuModels.map((cpuModel) => bootTemplateName({ ...config, cpuModel })));
  assert.equal(names.size, tcgCpuModels.length);
  assert.ok(!names.has(bootTemplateName(config)));
});

/** The guest's CPU flags and the -cpu QEMU was started with. */
async function cpuOfMachine(config: MachineConfig): Promise<{ flags: Set<string>; qemuCpu: string }> {
  const flags = new Set((await shellIn(config, "grep -m1 '^flags' /proc/cpuinfo")).split(/\s+/));
  const { qemuPid } = await readMachineState(config.id);
  const args = (await readFile(`/proc/${qemuPid}/cmdline`, 'utf8')).split('\0');
  return { flags, qemuCpu: args[args.indexOf('-cpu') + 1]! };
}

test('a new TCG machine runs without ERMS/FSRM, keeps its model through a snapshot, and its clock is right after the restore', async (t) => {
  delete process.env.TORPOR_TCG_CPU;
  const config = await createMachine({ image: 'base', name: 'new-model', command: ['sleep', '100000'], memoryMiB: 256 });
  accelerator = config.accelerator;
  if (accelerator !== 'tcg') {
    await removeMachine(config, { force: true });
    t.skip('machines here run under kvm (-cpu host)');
    return;
  }
  assert.equal(config.cpuModel, 'max-without-erms');
  await startMachine(config.id);
  const running = await cpuOfMachine(config);
  assert.equal(running.qemuCpu, 'max,-erms,-fsrm');
  assert.ok(!running.flags.has('erms') && !running.flags.has('fsrm'), 'the guest sees no ERMS/FSRM');
  // Everything else of max stays: what images built for x86-64-v3 need, and svm for nested KVM.
  for (const flag of ['avx2', 'sse4_2', 'svm']) assert.ok(running.flags.has(flag), `the guest lacks ${flag}`);

  await snapshotMachine(config, { name: 'new-model@1', stop: true });
  await removeMachine(await findMachine(config.id), { force: true });
  // Long enough that a clock that was not set would show it.
  await new Promise((resolve) => setTimeout(resolve, 3000));
  const restored = await restoreMachine('new-model@1', { name: 'new-model-restored' });
  // Read right after the restore: the guest's wall clock is the host's, not the snapshot's.
  const guestSeconds = Number(await shellIn(restored, 'date +%s'));
  assert.ok(Math.abs(guestSeconds - Date.now() / 1000) < 2, `guest clock ${guestSeconds}, host ${Date.now() / 1000}`);
  assert.equal((await readMachineConfig(restored.id)).cpuModel, 'max-without-erms');
  const after = await cpuOfMachine(restored);
  assert.equal(after.qemuCpu, 'max,-erms,-fsrm');
  assert.ok(!after.flags.has('erms'));
  // A restore under a new name renames the guest (the resume skips only an unchanged name).
  assert.equal(await shellIn(restored, 'hostname; cat /etc/hostname'), 'new-model-restored\nnew-model-restored');
  await removeMachine(await findMachine(restored.id), { force: true });
});

test('a machine made with max (no model in its config, as before the field) restores with max, whatever new machines get', async (t) => {
  if (accelerator !== 'tcg') return t.skip('machines here run under kvm');
  process.env.TORPOR_TCG_CPU = 'max';
  const config = await createMachine({
    image: 'base',
    name: 'old-model',
    command: ['sh', '-c', 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done'],
    memoryMiB: 256,
  });
  assert.equal(config.cpuModel, undefined);
  await startMachine(config.id);
  assert.ok((await cpuOfMachine(config)).flags.has('erms'), 'max offers ERMS');
  await new Promise((resolve) => setTimeout(resolve, 1000));
  await snapshotMachine(config, { name: 'old-model@1', stop: true });
  await removeMachine(await findMachine(config.id), { force: true });

  delete process.env.TORPOR_TCG_CPU; // new machines would get max-without-erms now
  const restored = await restoreMachine('old-model@1', { name: 'old-model-restored' });
  const after = await cpuOfMachine(restored);
  assert.equal(after.qemuCpu, 'max');
  assert.ok(after.flags.has('erms'), 'the guest resumed on the CPU it booted on');
  const counter = Number(await shellIn(restored, 'cat /tmp/counter'));
  await new Promise((resolve) => setTimeout(resolve, 1000));
  assert.ok(Number(await shellIn(restored, 'cat /tmp/counter')) > counter, 'its process goes on');
  await removeMachine(await findMachine(restored.id), { force: true });
});

test('a snapshot or a machine config with a model outside the list is refused before QEMU starts', async (t) => {
  if (accelerator !== 'tcg') return t.skip('machines here run under kvm');
  const manifestFile = join(paths.snapshots(), 'manifests', 'new-model@1.json');
  const manifest = JSON.parse(await readFile(manifestFile, 'utf8'));
  manifest.metadata.machine.cpuModel = 'max,+pmu';
  await writeFile(manifestFile, JSON.stringify(manifest));
  await assert.rejects(restoreMachine('new-model@1'), (error: unknown) => error instanceof TorporError && error.code === 'snapshot-invalid');

  const config = await createMachine({ image: 'base', name: 'tampered', command: ['sleep', '100000'], memoryMiB: 256 });
  const file = machineFiles(config.id).config;
  await writeFile(file, JSON.stringify({ ...JSON.parse(await readFile(file, 'utf8')), cpuModel: 'host' }));
  await assert.rejects(readMachineConfig(config.id), (error: unknown) => error instanceof TorporError && error.code === 'machine-record-invalid');
  await assert.rejects(startMachine(config.id));
  assert.equal((await readMachineState(config.id)).qemuPid, undefined, 'no QEMU was started');
  await removeMachine(await findMachine(config.id).catch(() => config), { force: true }).catch(() => {});
});

/** A plausible config to vary (schema-valid, no machine behind it). */
async function sampleConfig(): Promise<MachineConfig> {
  return {
    id: 'abc',
    name: 'sample',
    createdAt: new Date(0).toISOString(),
    image: { reference: 'base', digest: 'sha256:00', diskPath: '/images/base.ext4' },
    command: ['sleep', '1'],
    env: [],
    workingDir: '/',
    user: '',
    hostname: 'sample',
    tty: false,
    interactive: false,
    cpus: 1,
    memoryMiB: 256,
    ports: [],
    network: false,
    autoRemove: false,
    accelerator: 'tcg',
    kernelPath: '/boot/vmlinuz',
    initramfsPath: '/cache/initramfs.cpio',
    kernelArguments: [],
    bootTimeoutMs: 60_000,
  };
}
