import type { MachineSpec } from './machine-spec.ts';
import { environment } from '../config/environment.ts';

/** Read when QEMU starts, not at import: a bad environment is then an error the CLI reports. */
export const qemuBinary = (): string => environment().TORPOR_QEMU;

/**
 * The QEMU command line for a microvm. Device order and ids are part of the snapshot format:
 * a restore must build the same devices, so change them only with a new snapshot version.
 */
export function qemuArguments(spec: MachineSpec): string[] {
  const memory = `${spec.memoryMiB}M`;
  const args = [
    '-name', `torpor-${spec.id},debug-threads=off`,
    '-machine', 'microvm,memory-backend=mem,rtc=on,pit=off,pic=off,isa-serial=on',
    ...(spec.accelerator === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host,-arch-capabilities'] : ['-accel', 'tcg,tb-size=64', '-cpu', 'max']),
    '-smp', String(spec.cpus),
    '-m', memory,
    // share=on: the RAM file in tmpfs *is* guest memory, so a snapshot reads it without QEMU copying
    // it, and a restored machine (its own materialized file) can be snapshotted again the same way.
    '-object', `memory-backend-file,id=mem,size=${memory},mem-path=${spec.memoryFile},share=on,prealloc=off`,
    '-kernel', spec.kernelPath,
    '-initrd', spec.initramfsPath,
    '-append', ['console=ttyS0', 'quiet', 'panic=-1', 'reboot=t', ...spec.kernelArguments].join(' '),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    // append=on: the supervisor caps the console log by truncating it (util/capped-log.ts); with
    // O_APPEND, QEMU's next write lands at the new end instead of leaving a hole of the old size.
    '-chardev', `file,id=console,path=${spec.consoleLog},append=on`,
    '-serial', 'chardev:console',
    '-drive', `id=image,file=${spec.imageDisk},format=raw,if=none,readonly=on`,
    '-device', 'virtio-blk-device,drive=image,serial=torpor-image',
  ];
  if (spec.layerDisk) {
    args.push('-drive', `id=layer,file=${spec.layerDisk},format=raw,if=none,discard=unmap,cache=writeback`);
    args.push('-device', 'virtio-blk-device,drive=layer,serial=torpor-layer');
  }
  args.push(
    '-device', 'virtio-serial-device,max_ports=2',
    '-chardev', `socket,id=agent,path=${spec.agentSocket},server=on,wait=off`,
    '-device', 'virtserialport,chardev=agent,name=torpor.agent,nr=1',
  );
  if (spec.network) {
    const forwards = spec.ports.map((port) => `,hostfwd=${port.protocol}:${port.hostAddress}:${port.hostPort}-:${port.guestPort}`).join('');
    args.push('-netdev', `user,id=net0${forwards}`, '-device', 'virtio-net-device,netdev=net0');
  }
  args.push('-qmp', `unix:${spec.qmpSocket},server=on,wait=off`);
  if (spec.incoming) args.push('-incoming', 'defer');
  return args;
}
