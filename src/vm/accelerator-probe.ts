import { access, constants, mkdir, readFile, rm, writeFile, truncate, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { release } from 'node:os';
import { createHash } from 'node:crypto';
import { qemuDriver } from './qemu-driver.ts';
import { AgentClient } from '../guest/agent-client.ts';
import { runCommand } from '../util/command.ts';
import type { Accelerator } from './machine-spec.ts';
import { environment } from '../config/environment.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

export interface AcceleratorChoice {
  accelerator: Accelerator;
  /** Why, in words a user can act on. */
  reason: string;
}

async function kvmDeviceUsable(): Promise<string | undefined> {
  try {
    await access('/dev/kvm', constants.R_OK | constants.W_OK);
    return undefined;
  } catch {
    return '/dev/kvm is missing or not accessible';
  }
}

/**
 * Opening /dev/kvm is not enough: some hosts (nested PVM) accept KVM_CREATE_VM but cannot run a
 * stock guest kernel. So boot the real guest under KVM once and see whether its agent answers.
 */
async function probeKvm(kernelPath: string, initramfsPath: string, workDirectory: string): Promise<string | undefined> {
  const disk = join(workDirectory, 'probe.ext4');
  await writeFile(disk, '');
  await truncate(disk, 8 * 1024 * 1024);
  // The agent mounts /dev, /proc and /sys on the image read-only: an empty file system has no
  // such directories, so it found no agent port and powered off (seen first on nested KVM; no host
  // of ours had run this probe to success before).
  const root = join(workDirectory, 'probe-root');
  for (const directory of ['dev', 'proc', 'sys', 'tmp', 'etc']) await mkdir(join(root, directory), { recursive: true });
  await runCommand('mkfs.ext4', ['-q', '-F', '-d', root, disk]);
  const files = { agentSocket: join(workDirectory, 'a.sock'), qmpSocket: join(workDirectory, 'q.sock'), consoleLog: join(workDirectory, 'console.log') };
  let vm;
  try {
    vm = await qemuDriver.launch(
      {
        id: `probe-${process.pid}`,
        cpus: 1,
        memoryMiB: 256,
        accelerator: 'kvm',
        kernelPath,
        initramfsPath,
        kernelArguments: [],
        imageDisk: disk,
        memoryFile: join(workDirectory, 'probe.ram'),
        ...files,
        network: false,
        ports: [],
      },
      { logPath: join(workDirectory, 'qemu.log') },
    );
  } catch (error) {
    return `QEMU could not start with KVM: ${(error as Error).message.split('\n')[0]}`;
  }
  try {
    const agent = await AgentClient.connect(files.agentSocket, { timeoutMs: 5000 });
    const failed = vm.exited.then((exit) => `QEMU exited under KVM: ${exit.message.split('\n').pop()}`);
    const waitMs = environment().TORPOR_KVM_PROBE_MS;
    const answered = agent.hello(waitMs).then(
      () => undefined,
      async (error: Error) => {
        const log = await readFile(join(workDirectory, 'qemu.log'), 'utf8').catch(() => '');
        if (/KVM internal error|emulation failure/.test(log))
          return 'KVM cannot run a stock guest kernel here (KVM internal error: emulation failure; nested PVM?)';
        if (/did not say hello within/.test(error.message))
          return `the guest did not boot under KVM within ${waitMs / 1000} s (a stock kernel hangs on nested PVM hosts; a slow nested host may need a larger TORPOR_KVM_PROBE_MS)`;
        // Anything else (the channel broke: QEMU exited, the guest powered off) is said as it is, with the
        // guest's last console line: guessing hid the cause.
        const console = await readFile(files.consoleLog, 'utf8').catch(() => '');
        const lastLine = (console.trim() || log.trim()).split('\n').pop()?.trim();
        return `the probe guest's agent failed under KVM: ${error.message}${lastLine ? ` (last console line: ${lastLine})` : ''}`;
      },
    );
    const verdict = await Promise.race([answered, failed]);
    agent.close();
    return verdict;
  } finally {
    vm.kill('SIGKILL');
    await vm.exited;
  }
}

/** KVM when it really works, else TCG; the probe result is cached per host kernel, QEMU and guest kernel. */
export async function chooseAccelerator(options: { kernelPath: string; initramfsPath: string; cacheDirectory: string }): Promise<AcceleratorChoice> {
  const forced = environment().TORPOR_ACCEL;
  if (forced !== 'auto') return { accelerator: forced, reason: `TORPOR_ACCEL=${forced}` };
  const deviceProblem = await kvmDeviceUsable();
  if (deviceProblem) return { accelerator: 'tcg', reason: `${deviceProblem}; using TCG software emulation (slower)` };
  const key = `${release()}|${options.kernelPath}|${options.initramfsPath}`;
  // One file per key, not one shared file: two torpor versions (or worktrees) on a host build
  // different initramfs files, and with a single file each overwrote the other's verdict, so every
  // start of either paid the 8 s KVM probe again (the 9 s CLI `run --rm` of bench/start.ts).
  const cachePath = join(options.cacheDirectory, `accelerator-${createHash('sha256').update(key).digest('hex').slice(0, 16)}.json`);
  try {
    const cached = JSON.parse(await readFile(cachePath, 'utf8')) as AcceleratorChoice & { key: string };
    if (cached.key === key) return { accelerator: cached.accelerator, reason: cached.reason };
  } catch {
    // no cache yet
  }
  await mkdir(options.cacheDirectory, { recursive: true });
  const workDirectory = await mkdtemp(join(options.cacheDirectory, 'probe-'));
  let choice: AcceleratorChoice;
  try {
    const problem = await probeKvm(options.kernelPath, options.initramfsPath, workDirectory);
    choice = problem
      ? { accelerator: 'tcg', reason: `${problem}; using TCG software emulation (slower; snapshot and restore cost the same)` }
      : { accelerator: 'kvm', reason: 'KVM works (a probe guest booted)' };
  } finally {
    await rm(workDirectory, { recursive: true, force: true });
  }
  // Atomic: a start running beside this one reads the verdict or nothing, never half of it (and probes again).
  await writeFileAtomic(cachePath, JSON.stringify({ ...choice, key }));
  return choice;
}
