export type Accelerator = 'kvm' | 'tcg';

/**
 * CPU models a TCG machine may be given, by name: a fixed list, never text passed through to QEMU
 * (a config or snapshot is untrusted input, and `-cpu` takes comma-separated options).
 * - `max`: every feature TCG emulates; machines made before the field existed (and KVM's probe) use it.
 * - `max-without-erms`: `max` without ERMS and FSRM, the CPUID bits that tell the guest `rep movsb` /
 *   `rep stosb` are fast. On hardware they are; TCG runs a rep string instruction one element per
 *   loop turn, so a guest that believes them (Linux's clear_page and copy_user, glibc's memset and
 *   memcpy) zeroes and copies several times slower (measured in architecture/runtime.md). They are
 *   hints only: no program needs them to run, so every image that runs on `max` runs on this.
 */
export const tcgCpuModels = ['max', 'max-without-erms'] as const;
export type TcgCpuModel = (typeof tcgCpuModels)[number];

/** QEMU's `-cpu` value for a model of `tcgCpuModels`; absent is `max`, as before the field existed. */
export function tcgCpuArgument(model: TcgCpuModel | undefined): string {
  if (model === undefined || model === 'max') return 'max';
  if (model === 'max-without-erms') return 'max,-erms,-fsrm';
  // Configs are checked when read (machine-files.ts, machine-record.ts); this is the last line.
  throw new Error(`unknown TCG CPU model ${JSON.stringify(model)} (known: ${tcgCpuModels.join(', ')})`);
}

export interface PortMapping {
  hostAddress: string; // '' means every address, as docker does
  hostPort: number;
  guestPort: number;
  protocol: 'tcp' | 'udp';
}

/** Everything a VM driver needs to start one machine; drivers (QEMU now, Firecracker later) map it to their own terms. */
export interface MachineSpec {
  id: string;
  cpus: number;
  memoryMiB: number;
  accelerator: Accelerator;
  /**
   * Under TCG, the CPU model QEMU emulates (qemu-command.ts); absent: `max`. Part of the snapshot
   * format: a guest resumes only on the CPU it was booted on. Ignored under KVM (`host`).
   */
  cpuModel?: TcgCpuModel;
  kernelPath: string;
  initramfsPath: string;
  kernelArguments: string[];
  imageDisk: string; // read-only ext4 image shared by every machine of the image
  /**
   * Give the image as read-only shared memory of this many bytes (virtio-pmem, mounted with DAX in
   * the guest) instead of a block device. Needs a q35 machine (QEMU 7.2's microvm has no place for
   * memory devices), so the whole device set differs: part of the snapshot format (qemu-command.ts).
   */
  imageMemoryBytes?: number;
  layerDisk?: string; // this machine's writable layer (raw ext4)
  /** An open read-write descriptor (in this process) QEMU gets as the target of disk copy jobs (`diskCaptureDescriptor`). */
  diskCaptureDescriptor?: number;
  memoryFile: string; // guest RAM, in tmpfs
  agentSocket: string;
  qmpSocket: string;
  consoleLog: string;
  network: boolean;
  ports: PortMapping[];
  /** Drop root after opening every file: QEMU then runs as this machine's own uid, which the network filter matches. */
  runAs?: { uid: number; gid: number };
  /** Restore: `memoryFile` already holds the guest's RAM; wait for its device state (-incoming defer). */
  incoming?: boolean;
  /** Added to QEMU's environment (the lazy memory pager is preloaded this way). */
  environment?: Record<string, string>;
}
