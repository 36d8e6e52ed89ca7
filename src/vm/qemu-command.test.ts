import { test } from 'node:test';
import assert from 'node:assert/strict';
import { confinementArguments, qemuArguments } from './qemu-command.ts';
import type { MachineSpec } from './machine-spec.ts';

// The device set is part of the snapshot format: a machine without image memory must keep the
// exact microvm command line every older snapshot was taken with, and one with image memory must
// give the guest the image read-only.

const spec: MachineSpec = {
  id: 'abc',
  cpus: 1,
  memoryMiB: 512,
  accelerator: 'tcg',
  kernelPath: '/boot/vmlinuz',
  initramfsPath: '/cache/initramfs.cpio',
  kernelArguments: ['init_on_free=1'],
  imageDisk: '/images/rootfs.ext4',
  layerDisk: '/machines/abc/layer.ext4',
  memoryFile: '/dev/shm/torpor/abc.ram',
  agentSocket: '/run/agent.sock',
  qmpSocket: '/run/qmp.sock',
  consoleLog: '/machines/abc/console.log',
  network: true,
  ports: [],
};

const devices = (args: string[]) => args.flatMap((value, index) => (args[index - 1] === '-device' || args[index - 1] === '-machine' ? [value] : []));

test('without image memory: microvm with virtio-mmio devices, as every older snapshot was taken', () => {
  const args = qemuArguments(spec);
  assert.deepEqual(devices(args), [
    'microvm,memory-backend=mem,rtc=on,pit=off,pic=off,isa-serial=on',
    'virtio-blk-device,drive=image,serial=torpor-image',
    'virtio-blk-device,drive=layer,serial=torpor-layer',
    'virtio-serial-device,max_ports=2',
    'virtserialport,chardev=agent,name=torpor.agent,nr=1',
    'virtio-net-device,netdev=net0',
  ]);
  assert.ok(args.includes('512M'));
  assert.ok(!args.join(' ').includes('pmem'));
  assert.ok(args.includes('id=image,file=/images/rootfs.ext4,format=raw,if=none,readonly=on'));
});

test('with image memory: q35, the image a read-only shared memory backend behind virtio-pmem, the rest on PCI', () => {
  const args = qemuArguments({ ...spec, imageMemoryBytes: 130 * 1024 * 1024 });
  assert.deepEqual(devices(args), [
    'q35,memory-backend=mem,vmport=off,smbus=off,sata=off,usb=off',
    'virtio-pmem-pci,memdev=image-memory,id=image',
    'virtio-blk-pci,drive=layer,serial=torpor-layer',
    'virtio-serial-pci,max_ports=2',
    'virtserialport,chardev=agent,name=torpor.agent,nr=1',
    'virtio-net-pci,netdev=net0,romfile=',
  ]);
  assert.ok(args.includes(`memory-backend-file,id=image-memory,mem-path=/images/rootfs.ext4,size=${130 * 1024 * 1024},share=on,readonly=on`));
  // Room for the region beyond RAM.
  assert.ok(args.includes('512M,slots=1,maxmem=2560M'));
  assert.match(args[args.indexOf('-append') + 1]!, / torpor\.image=pmem$/);
  // The image is not also a disk.
  assert.ok(!args.some((value) => value.startsWith('id=image,file=')));
});

test('the target of the disk copy job goes in as an fd set, not a device: the device set (and the snapshot format) stays the same', () => {
  const plain = qemuArguments(spec);
  const args = qemuArguments({ ...spec, diskCaptureDescriptor: 17 });
  assert.deepEqual(devices(args), devices(plain));
  assert.equal(args[args.indexOf('fd=5,set=2') - 1], '-add-fd');
  assert.ok(!plain.includes('fd=5,set=2'));
});

test('the uid switch is spelled for the QEMU release at hand: -runas before 9.1, -run-with user= from 9.1 (10.0 has no -runas)', () => {
  const confined = { ...spec, runAs: { uid: 1234, gid: 1235 } };
  const after = (args: string[], option: string) => args[args.indexOf(option) + 1];
  const old = qemuArguments(confined, { major: 7, minor: 2, micro: 22 });
  assert.equal(after(old, '-runas'), '1234:1235');
  assert.ok(!old.includes('-run-with'));
  for (const version of [
    { major: 9, minor: 1, micro: 0 },
    { major: 10, minor: 0, micro: 2 },
  ]) {
    const args = qemuArguments(confined, version);
    assert.equal(after(args, '-run-with'), 'user=1234:1235');
    assert.ok(!args.includes('-runas'));
    // Everything else is the same command line: the device set does not depend on the release.
    assert.deepEqual(
      args.filter((value) => value !== '-run-with' && value !== 'user=1234:1235'),
      old.filter((value) => value !== '-runas' && value !== '1234:1235'),
    );
  }
  // Without a uid switch, QEMU may not change its privileges at all, in every release.
  for (const version of [
    { major: 7, minor: 2, micro: 0 },
    { major: 10, minor: 0, micro: 0 },
  ])
    assert.deepEqual(confinementArguments({}, version), ['-sandbox', 'on,obsolete=deny,spawn=deny,resourcecontrol=deny,elevateprivileges=deny']);
});
