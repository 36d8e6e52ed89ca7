import { access, constants, statfs, mkdir } from 'node:fs/promises';
import { runCommand, commandExists } from '../util/command.ts';
import { findGuestKernel } from './kernel.ts';
import { guestArtifactsBuilt } from './guest-artifacts.ts';
import { memoryDirectory, stateHome } from '../state/paths.ts';
import { environment } from '../config/environment.ts';

export interface DoctorCheck {
  name: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

const mebibytes = (info: { bavail: number; bsize: number }) => Math.floor((info.bavail * info.bsize) / 1024 ** 2);

/** Whether a directory torpor writes to can be created and has at least `minimumMiB` free. */
async function freeSpaceCheck(options: {
  name: string;
  directory: string;
  minimumMiB: number;
  fixWhenLow: string;
  fixWhenUnusable: string;
}): Promise<DoctorCheck> {
  const { name, directory, minimumMiB } = options;
  try {
    await mkdir(directory, { recursive: true });
    const free = mebibytes(await statfs(directory));
    return { name, ok: free >= minimumMiB, detail: `${directory}: ${free} MiB free`, ...(free >= minimumMiB ? {} : { fix: options.fixWhenLow }) };
  } catch (error) {
    return { name, ok: false, detail: (error as Error).message, fix: options.fixWhenUnusable };
  }
}

/** What the host has and lacks for torpor, each with the command that fixes it. */
export async function runDoctorChecks(options: { accelerator?: () => Promise<{ accelerator: string; reason: string }> } = {}): Promise<DoctorCheck[]> {
  const checks: DoctorCheck[] = [];
  // The same variable vm/ starts QEMU from (host/ sits below vm/ and does not import it).
  const qemuBinary = environment().TORPOR_QEMU;
  const qemu = await runCommand(qemuBinary, ['--version'], { allowFailure: true }).catch(() => undefined);
  checks.push(
    qemu && qemu.code === 0
      ? { name: 'qemu', ok: true, detail: qemu.stdout.split('\n')[0]! }
      : { name: 'qemu', ok: false, detail: `${qemuBinary} not found`, fix: 'apt-get install -y qemu-system-x86' },
  );
  try {
    const kernel = await findGuestKernel();
    checks.push({ name: 'guest kernel', ok: true, detail: `${kernel.imagePath} (modules in ${kernel.modulesDirectory})` });
  } catch (error) {
    checks.push({ name: 'guest kernel', ok: false, detail: (error as Error).message, fix: 'apt-get install -y linux-image-cloud-amd64' });
  }
  for (const [program, pkg] of [
    ['musl-gcc', 'musl-tools'],
    ['mkfs.ext4', 'e2fsprogs'],
    ['busybox', 'busybox-static'],
    ['zstd', 'zstd'],
  ] as const) {
    const present = await commandExists(program);
    if (!present && program === 'musl-gcc' && (await guestArtifactsBuilt())) {
      checks.push({ name: program, ok: true, detail: 'not installed, not needed: the guest agent is built already' });
      continue;
    }
    checks.push({ name: program, ok: present, detail: present ? 'found' : 'missing', ...(present ? {} : { fix: `apt-get install -y ${pkg}` }) });
  }
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    checks.push({ name: '/dev/kvm', ok: true, detail: 'present and accessible' });
  } catch {
    checks.push({
      name: '/dev/kvm',
      ok: false,
      detail: 'missing or not accessible: machines run under TCG (software emulation)',
      fix: 'on bare metal or a VM with nested virtualization: modprobe kvm_intel/kvm_amd and add yourself to group kvm',
    });
  }
  if (options.accelerator) {
    try {
      const choice = await options.accelerator();
      checks.push({ name: 'accelerator', ok: true, detail: `${choice.accelerator}: ${choice.reason}` });
    } catch (error) {
      checks.push({ name: 'accelerator', ok: false, detail: (error as Error).message });
    }
  }
  const vsock = await access('/dev/vhost-vsock').then(
    () => true,
    () => false,
  );
  checks.push({
    name: 'vhost-vsock',
    ok: true,
    detail: vsock ? 'available (not needed: the agent channel is virtio-serial)' : 'not available; the agent channel uses virtio-serial, which needs nothing',
  });
  checks.push(
    await freeSpaceCheck({
      name: 'tmpfs for guest RAM',
      directory: memoryDirectory(),
      minimumMiB: 1024,
      fixWhenLow: 'mount -o remount,size=8G /dev/shm, or set TORPOR_MEMORY_DIR to a larger tmpfs',
      fixWhenUnusable: 'set TORPOR_MEMORY_DIR to a writable tmpfs directory',
    }),
  );
  checks.push(
    await freeSpaceCheck({
      name: 'state directory',
      directory: stateHome(),
      minimumMiB: 2048,
      fixWhenLow: 'free disk space or set TORPOR_HOME elsewhere',
      fixWhenUnusable: 'set TORPOR_HOME to a writable directory',
    }),
  );
  return checks;
}
