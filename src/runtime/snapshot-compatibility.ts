import { TorporError } from '../util/errors.ts';
import { chooseAccelerator } from '../vm/accelerator-probe.ts';
import { hostCpu, type CpuDescription } from '../host/cpu-description.ts';
import { paths } from '../state/paths.ts';
import type { MachineConfig } from './machine-record.ts';
import { qemuBinary } from '../vm/qemu-command.ts';
import { parseQemuVersion, probeQemuVersion, qemuVersionText } from '../vm/qemu-version.ts';

/**
 * A snapshot's device state belongs to the accelerator and CPU it was taken under. Under KVM the
 * guest runs on the host CPU's own features (`-cpu host`): its kernel chose code paths by them and
 * kvm-clock's state is KVM's. QEMU would either refuse the stream with an opaque message or, worse,
 * resume a guest that then faults on a missing instruction. So a restore checks first and refuses
 * with what to do. A TCG snapshot needs no particular host: its CPU model (`-cpu max`, or the model
 * in its config, vm/machine-spec.ts) is emulated, and a machine restored from it keeps running under
 * TCG even on a KVM host. Under either, the device state belongs to the QEMU release that took it
 * (`checkQemuRelease`).
 */
export async function checkSnapshotRuns(snapshotName: string, original: MachineConfig): Promise<void> {
  checkQemuRelease(snapshotName, original.qemuVersion, qemuBinary());
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

/**
 * A snapshot restores only under the QEMU release (major.minor) that took it. Measured with 7.2 and
 * 10.0 (bench/qemu-versions.ts): neither loads the other's device state. q35 is an alias of the
 * release's own machine type (`pc-q35-7.2` against `pc-q35-10.0`: "Machine type received is ..."),
 * and microvm, which has no versioned types, differs in its firmware block ("Size mismatch:
 * pc.bios"). QEMU says so only after it started, in terms a user cannot act on; this says it
 * before, with which QEMU to use. Micro releases of one major.minor (Debian's stable updates) keep
 * the format. A snapshot without a recorded release (made before it was recorded) is not checked.
 */
export function checkQemuRelease(snapshotName: string, recorded: string | undefined, binary: string): void {
  if (recorded === undefined) return;
  const taken = parseQemuVersion(`version ${recorded}`);
  // The config schema allows only digits and dots; a version that still does not parse is not ours to judge.
  if (!taken) return;
  // A binary that does not run is reported by the start itself ("is not installed").
  const here = probeQemuVersion(binary);
  if (!here || (here.major === taken.major && here.minor === taken.minor)) return;
  throw new TorporError(
    'snapshot-qemu',
    `snapshot ${snapshotName} was taken under QEMU ${recorded}, and the QEMU here (${binary}) is ${qemuVersionText(here)}: QEMU restores a snapshot only under the release (${taken.major}.${taken.minor}) that took it`,
    {
      hint: `set TORPOR_QEMU to a QEMU ${taken.major}.${taken.minor} binary to restore it (Debian 12's qemu-system-x86_64 is 7.2; scripts/install-qemu-10.sh puts 10.0 under /opt/qemu-10), or run the program again under this QEMU and take a new snapshot`,
    },
  );
}
