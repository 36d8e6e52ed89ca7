import { createHash } from 'node:crypto';
import { tcgCpuArgument, type MachineSpec } from './machine-spec.ts';
import { environment } from '../config/environment.ts';
import { qemuAtLeast, qemuVersionOf, qemuVersionText, type QemuVersion } from './qemu-version.ts';

/** Descriptor numbers of the layer disk in QEMU's process (read-write, then read-only: QEMU dups whichever access mode it opens with). */
export const layerDescriptors = [3, 4] as const;
const layerFdSet = 1;
/**
 * The target of the disk copy job of a checkpoint that continues (runtime/disk-capture-job.ts): a
 * file the supervisor opened and unlinked, passed as this descriptor in this fd set, because a QEMU
 * that dropped root cannot open a file in the machine's directory.
 */
export const diskCaptureDescriptor = 5;
export const diskCaptureFdSet = 2;

/** Read when QEMU starts, not at import: a bad environment is then an error the CLI reports. */
export const qemuBinary = (): string => environment().TORPOR_QEMU;

/**
 * The QEMU command line for a microvm. Device order and ids are part of the snapshot format:
 * a restore must build the same devices, so change them only with a new snapshot version.
 * `qemu`: the version of the binary that will run it (options QEMU renamed between releases).
 */
export function qemuArguments(spec: MachineSpec, qemu: QemuVersion = qemuVersionOf(qemuBinary())): string[] {
  const memory = `${spec.memoryMiB}M`;
  // Two device sets. The image as shared memory (virtio-pmem) needs a machine with room for memory
  // devices: q35, whose devices sit on PCI. Without it, microvm with virtio-mmio devices (faster to
  // boot, fewer devices to migrate). Which one a machine has is in its config (`imageMemoryBytes`).
  const pmem = spec.imageMemoryBytes !== undefined;
  const transport = pmem ? 'pci' : 'device';
  const args = [
    '-name',
    `torpor-${spec.id},debug-threads=off`,
    '-machine',
    pmem ? 'q35,memory-backend=mem,vmport=off,smbus=off,sata=off,usb=off' : 'microvm,memory-backend=mem,rtc=on,pit=off,pic=off,isa-serial=on',
    ...(spec.accelerator === 'kvm'
      ? ['-accel', 'kvm', '-cpu', 'host,-arch-capabilities']
      : ['-accel', 'tcg,tb-size=64', '-cpu', tcgCpuArgument(spec.cpuModel)]),
    '-smp',
    String(spec.cpus),
    '-m',
    pmem ? `${memory},slots=1,maxmem=${spec.memoryMiB + imageMemoryWindowMiB(spec.imageMemoryBytes!)}M` : memory,
    // share=on: the RAM file in tmpfs *is* guest memory, so a snapshot reads it without QEMU copying
    // it, and a restored machine (its own materialized file) can be snapshotted again the same way.
    '-object',
    `memory-backend-file,id=mem,size=${memory},mem-path=${spec.memoryFile},share=on,prealloc=off`,
    '-kernel',
    spec.kernelPath,
    '-initrd',
    spec.initramfsPath,
    '-append',
    ['console=ttyS0', 'quiet', 'panic=-1', 'reboot=t', ...spec.kernelArguments, ...(pmem ? ['torpor.image=pmem'] : [])].join(' '),
    '-nodefaults',
    '-no-user-config',
    // No self-announce after a restore. Its rounds (5 by default) each had the guest's virtio-net
    // send gratuitous ARP and IPv6 neighbour adverts, for switches to learn where the machine went:
    // with user-mode networking there is no switch, and under TCG they were ~940 blocks of kernel
    // code to translate before the restored agent answered its first ping (bench/translated-blocks.ts).
    // A destination-side migration parameter: snapshots are unaffected.
    '-global',
    'migration.announce-rounds=0',
    '-display',
    'none',
    '-no-reboot',
    // append=on: the supervisor caps the console log by truncating it (util/capped-log.ts); with
    // O_APPEND, QEMU's next write lands at the new end instead of leaving a hole of the old size.
    '-chardev',
    `file,id=console,path=${spec.consoleLog},append=on`,
    '-serial',
    'chardev:console',
  ];
  if (pmem) {
    // readonly=on: QEMU opens the file read-only and maps it read-only; the guest's writes to the
    // region are dropped (a ROM to the guest), so no guest can change the image others share.
    // share=on: the mapping is the host's page cache of the image file, one copy for every machine.
    // A shared block is also what x-ignore-shared leaves out of a snapshot: it is never migrated,
    // and it is not the RAM file, so the chunk store never sees it.
    args.push('-object', `memory-backend-file,id=image-memory,mem-path=${spec.imageDisk},size=${spec.imageMemoryBytes},share=on,readonly=on`);
    args.push('-device', 'virtio-pmem-pci,memdev=image-memory,id=image');
  } else {
    args.push('-drive', `id=image,file=${spec.imageDisk},format=raw,if=none,readonly=on`);
    args.push('-device', 'virtio-blk-device,drive=image,serial=torpor-image');
  }
  if (spec.layerDisk) {
    // A QEMU that dropped root reopens the layer read-write when an incoming migration completes,
    // and may no longer reach its path: it gets open descriptors instead (see `layerDescriptors`).
    // Image locking is off for it: the fd set's own descriptors keep the open file descriptions alive, so
    // the OFD locks a stop/cont cycle (snapshot) drops would stay held by them and conflict. The layer
    // belongs to one machine; its supervisor, not a lock, keeps a second QEMU away from it.
    const layerFile = spec.runAs ? `/dev/fdset/${layerFdSet},file.locking=off` : spec.layerDisk;
    if (spec.runAs) for (const fd of layerDescriptors) args.push('-add-fd', `fd=${fd},set=${layerFdSet}`);
    args.push('-drive', `id=layer,file=${layerFile},format=raw,if=none,discard=unmap,cache=writeback`);
    args.push('-device', `virtio-blk-${transport},drive=layer,serial=torpor-layer`);
    // Not a device: nothing of it reaches the guest or the migration stream.
    if (spec.diskCaptureDescriptor !== undefined) args.push('-add-fd', `fd=${diskCaptureDescriptor},set=${diskCaptureFdSet}`);
  }
  args.push(
    '-device',
    `virtio-serial-${transport},max_ports=2`,
    '-chardev',
    `socket,id=agent,path=${spec.agentSocket},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=agent,name=torpor.agent,nr=1',
  );
  if (spec.network) {
    const forwards = spec.ports.map((port) => `,hostfwd=${port.protocol}:${port.hostAddress}:${port.hostPort}-:${port.guestPort}`).join('');
    // romfile= on PCI: no iPXE option ROM (nothing here boots from the network; a missing ROM file fails QEMU's start).
    args.push('-netdev', `user,id=net0${forwards}`, '-device', `virtio-net-${transport},netdev=net0${transport === 'pci' ? ',romfile=' : ''}`);
  }
  args.push('-qmp', `unix:${spec.qmpSocket},server=on,wait=off`);
  args.push(...confinementArguments(spec, qemu));
  if (spec.incoming) args.push('-incoming', 'defer');
  return args;
}

/** Address space for memory devices beyond RAM (QEMU's `maxmem`): the image, in whole GiB (QEMU aligns each slot to 1 GiB). */
function imageMemoryWindowMiB(imageBytes: number): number {
  return Math.ceil(imageBytes / 1024 ** 3) * 1024 + 1024;
}

/**
 * Not part of the snapshot format (nothing here reaches the guest). A seccomp filter for every
 * QEMU: no obsolete system calls, no new processes, no scheduler or resource changes. With `-runas`
 * QEMU calls setuid itself after it opened its files, which `elevateprivileges=deny` would kill it
 * for (seen with QEMU 7.2: SIGSYS); once it runs as an unprivileged uid it cannot regain root anyway.
 * QEMU 9.1 added `-run-with user=` for the uid switch and 10.0 removed `-runas`: the same switch,
 * spelled for the binary at hand.
 */
export function confinementArguments(spec: Pick<MachineSpec, 'runAs'>, qemu: QemuVersion = qemuVersionOf(qemuBinary())): string[] {
  const sandbox = 'on,obsolete=deny,spawn=deny,resourcecontrol=deny';
  if (!spec.runAs) return ['-sandbox', `${sandbox},elevateprivileges=deny`];
  const user = `${spec.runAs.uid}:${spec.runAs.gid}`;
  return ['-sandbox', sandbox, ...(qemuAtLeast(qemu, 9, 1) ? ['-run-with', `user=${user}`] : ['-runas', user])];
}

/** Stand-ins for what a standby QEMU (runtime/standby-qemu.ts) is started with before it has a machine. */
const shapePlaceholders = {
  id: 'shape',
  memoryFile: '/shape/ram',
  layerDisk: '/shape/layer',
  agentSocket: '/shape/agent.sock',
  qmpSocket: '/shape/qmp.sock',
  consoleLog: '/shape/console.log',
} as const;

/**
 * A machine's shape: its QEMU command line with every per-machine path, id and uid replaced by a
 * stand-in, plus the layer disk's size (fixed when QEMU opens it), hashed. A standby QEMU started
 * for one shape may take the restore of any machine of the same shape; of another shape never (its
 * devices would not match the device state, and the guest would run on the wrong hardware). Taken
 * from `qemuArguments` itself, so a device added there changes every shape at once.
 */
export function machineShape(spec: MachineSpec, layerBytes: number): string {
  // The binary's version too: a standby QEMU of one release must not take a machine meant for another.
  const qemu = qemuVersionOf(qemuBinary());
  const args = qemuArguments(
    {
      ...spec,
      ...shapePlaceholders,
      layerDisk: spec.layerDisk === undefined ? undefined : shapePlaceholders.layerDisk,
      runAs: spec.runAs ? { uid: 1, gid: 1 } : undefined,
      diskCaptureDescriptor: spec.diskCaptureDescriptor === undefined ? undefined : diskCaptureDescriptor,
      environment: undefined,
    },
    qemu,
  );
  return createHash('sha256')
    .update(JSON.stringify({ args, layerBytes: spec.layerDisk === undefined ? 0 : layerBytes, qemu: qemuVersionText(qemu) }))
    .digest('hex');
}
