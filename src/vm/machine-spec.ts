export type Accelerator = 'kvm' | 'tcg';

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
