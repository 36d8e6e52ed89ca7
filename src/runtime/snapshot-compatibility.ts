import { TorporError } from '../util/errors.ts';
import { chooseAccelerator } from '../vm/accelerator-probe.ts';
import { hostCpu, type CpuDescription } from '../host/cpu-description.ts';
import { paths } from '../state/paths.ts';
import type { MachineConfig } from './machine-record.ts';

/**
 * A snapshot's device state belongs to the accelerator and CPU it was taken under. Under KVM the
 * guest runs on the host CPU's own features (`-cpu host`): its kernel chose code paths by them and
 * kvm-clock's state is KVM's. QEMU would either refuse the stream with an opaque message or, worse,
 * resume a guest that then faults on a missing instruction. So a restore checks first and refuses
 * with what to do. A TCG snapshot needs nothing: its CPU model (`-cpu max`, or the model in its
 * config, vm/machine-spec.ts) under TCG is the same wherever QEMU's version is, and a machine
 * restored from it keeps running under TCG even on a KVM host.
 */
export async function checkSnapshotRuns(snapshotName: string, original: MachineConfig): Promise<void> {
  if (original.accelerator !== 'kvm') return;
  const choice = await chooseAccelerator({ kernelPath: original.kernelPath, initramfsPath: original.initramfsPath, cacheDirectory: paths.artifacts() });
  if (choice.accelerator !== 'kvm') {
    throw new TorporError(
      'snapshot-accelerator',
      `snapshot ${snapshotName} was taken under kvm, and machines here run under ${choice.accelerator} (${choice.reason})`,
      {
        hint: 'restore it on a host where KVM works (`torpor doctor` shows accelerator kvm), or run the program again here and take a new snapshot',
      },
    );
  }
  if (original.hostCpu) await checkCpuFeatures(snapshotName, original.hostCpu, await hostCpu());
}

export async function checkCpuFeatures(snapshotName: string, taken: CpuDescription, here: CpuDescription): Promise<void> {
  const present = new Set(here.flags);
  const missing = taken.flags.filter((flag) => !present.has(flag));
  if (missing.length > 0) {
    throw new TorporError(
      'snapshot-cpu',
      `snapshot ${snapshotName} was taken under kvm on a CPU (${taken.model}) with features this one (${here.model}) lacks: ${missing.slice(0, 12).join(' ')}${missing.length > 12 ? ' ...' : ''}`,
      { hint: 'restore it on a host with the same CPU model (or a newer one of the same vendor), or take a new snapshot here' },
    );
  }
}
