import type { MachineSpec } from './machine-spec.ts';
import { environment } from '../config/environment.ts';

/** Descriptor numbers of the layer disk in QEMU's process (read-write, then read-only: QEMU dups whichever access mode it opens with). */
export const layerDescriptors = [3, 4] as const;
const layerFdSet = 1;

/** Read when QEMU starts, not at import: a bad environment is then an error the CLI reports. */
export const qemuBinary = (): string => environment().TORPOR_QEMU;

/**
 * The QEMU command line for a microvm. Device order and ids are part of the snapshot format:
 * a restore must build the same devices, so change them only with a new snapshot version.
 */
export function qemuArguments(spec: MachineSpec): string[] {
  const memory = `${spec.memoryMiB}M`;
  const args = [
    '-name',
    `torpor-${spec.id},debug-threads=off`,
    '-machine',
    'microvm,memory-backend=mem,rtc=on,pit=off,pic=off,isa-serial=on',
    ...(spec.accelerator === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host,-arch-capabilities'] : ['-accel', 'tcg,tb-size=64', '-cpu', 'max']),
    '-smp',
    String(spec.cpus),
    '-m',
    memory,
    // share=on: the RAM file in tmpfs *is* guest memory, so a snapshot reads it without QEMU copying
    // it, and a restored machine (its own materialized file) can be snapshotted again the same way.
    '-object',
    `memory-backend-file,id=mem,size=${memory},mem-path=${spec.memoryFile},share=on,prealloc=off`,
    '-kernel',
    spec.kernelPath,
    '-initrd',
    spec.initramfsPath,
    '-append',
    ['console=ttyS0', 'quiet', 'panic=-1', 'reboot=t', ...spec.kernelArguments].join(' '),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    // append=on: the supervisor caps the console log by truncating it (util/capped-log.ts); with
    // O_APPEND, QEMU's next write lands at the new end instead of leaving a hole of the old size.
    '-chardev',
    `file,id=console,path=${spec.consoleLog},append=on`,
    '-serial',
    'chardev:console',
    '-drive',
    `id=image,file=${spec.imageDisk},format=raw,if=none,readonly=on`,
    '-device',
    'virtio-blk-device,drive=image,serial=torpor-image',
  ];
  if (spec.layerDisk) {
    // A QEMU that dropped root reopens the layer read-write when an incoming migration completes,
    // and may no longer reach its path: it gets open descriptors instead (see `layerDescriptors`).
    // Image locking is off for it: the fd set's own descriptors keep the open file descriptions alive, so
    // the OFD locks a stop/cont cycle (snapshot) drops would stay held by them and conflict. The layer
    // belongs to one machine; its supervisor, not a lock, keeps a second QEMU away from it.
    const layerFile = spec.runAs ? `/dev/fdset/${layerFdSet},file.locking=off` : spec.layerDisk;
    if (spec.runAs) for (const fd of layerDescriptors) args.push('-add-fd', `fd=${fd},set=${layerFdSet}`);
    args.push('-drive', `id=layer,file=${layerFile},format=raw,if=none,discard=unmap,cache=writeback`);
    args.push('-device', 'virtio-blk-device,drive=layer,serial=torpor-layer');
  }
  args.push(
    '-device',
    'virtio-serial-device,max_ports=2',
    '-chardev',
    `socket,id=agent,path=${spec.agentSocket},server=on,wait=off`,
    '-device',
    'virtserialport,chardev=agent,name=torpor.agent,nr=1',
  );
  if (spec.network) {
    const forwards = spec.ports.map((port) => `,hostfwd=${port.protocol}:${port.hostAddress}:${port.hostPort}-:${port.guestPort}`).join('');
    args.push('-netdev', `user,id=net0${forwards}`, '-device', 'virtio-net-device,netdev=net0');
  }
  args.push('-qmp', `unix:${spec.qmpSocket},server=on,wait=off`);
  args.push(...confinementArguments(spec));
  if (spec.incoming) args.push('-incoming', 'defer');
  return args;
}

/**
 * Not part of the snapshot format (nothing here reaches the guest). A seccomp filter for every
 * QEMU: no obsolete system calls, no new processes, no scheduler or resource changes. With `-runas`
 * QEMU calls setuid itself after it opened its files, which `elevateprivileges=deny` would kill it
 * for (seen with QEMU 7.2: SIGSYS); once it runs as an unprivileged uid it cannot regain root anyway.
 */
export function confinementArguments(spec: Pick<MachineSpec, 'runAs'>): string[] {
  const sandbox = 'on,obsolete=deny,spawn=deny,resourcecontrol=deny';
  if (!spec.runAs) return ['-sandbox', `${sandbox},elevateprivileges=deny`];
  return ['-sandbox', sandbox, '-runas', `${spec.runAs.uid}:${spec.runAs.gid}`];
}
