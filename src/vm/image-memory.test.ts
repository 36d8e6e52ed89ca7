import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { checkImageMemory } from './image-memory.ts';
import { runCommand } from '../util/command.ts';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { shellIn } from '../runtime/testing/guest-shell.ts';
import { createMachine, startMachine, removeMachine } from '../runtime/machines.ts';
import { snapshotMachine, restoreMachine, forkMachine } from '../runtime/snapshots.ts';
import { readSnapshot } from '../snapshot/snapshot-store.ts';
import { addImageFromDirectory } from '../image/image-store.ts';
import { writeBusyboxRoot } from '../image/builders/root-skeleton.ts';
import { baseImageConfig } from '../image/builders/base-image.ts';
import type { MachineConfig } from '../runtime/machine-record.ts';

// The image as shared read-only memory (virtio-pmem on q35, ext4 mounted with DAX in the guest),
// against real QEMU machines: its files never enter the guest's page cache, the guest cannot change
// the image, and snapshots, lazy restores and forks of such machines work; a machine made with
// the image as a block device (before this existed, or TORPOR_IMAGE_DAX=0) still restores as one.

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let scratch: string;
let imageDisk = '';
let imageHash = '';
let dataHash = '';
const dataMiB = 24;

const sha256 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

const run = shellIn;

/** The main command runs once the machine answers: wait for what it writes. */
async function waitForFile(config: MachineConfig, path: string): Promise<void> {
  for (let attempt = 0; attempt < 300; attempt++) {
    if ((await run(config, `test -f ${path} && echo yes`)) === 'yes') return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`${path} never appeared in ${config.name}`);
}

const cachedKiB = async (config: MachineConfig) => Number(await run(config, "awk '/^Cached:/ {print $2}' /proc/meminfo"));

before(async () => {
  home = await useTemporaryHome();
  scratch = await mkdtemp(join(tmpdir(), 'tp-dax-'));
  // An image with a large file: reading it through a page cache would show in the guest's Cached.
  const root = join(scratch, 'root');
  await writeBusyboxRoot(root);
  await mkdir(join(root, 'data'), { recursive: true });
  const data = randomBytes(dataMiB * 1024 * 1024);
  await writeFile(join(root, 'data/big'), data);
  dataHash = createHash('md5').update(data).digest('hex');
  const image = await addImageFromDirectory(root, { name: 'dax-probe', config: baseImageConfig, source: 'test' });
  imageDisk = image.diskPath;
  imageHash = await sha256(imageDisk);
});

after(async () => {
  await home.cleanup();
  await rm(scratch, { recursive: true, force: true });
});

test('only an ext4 with 4 KiB blocks and a whole number of 2 MiB can be image memory', async () => {
  const disk = join(scratch, 'check.ext4');
  await writeFile(disk, '');
  await truncate(disk, 8 * 1024 * 1024);
  await runCommand('mkfs.ext4', ['-q', '-F', '-b', '1024', disk]);
  assert.match((await checkImageMemory(disk)).reason, /1024-byte blocks/);
  await runCommand('mkfs.ext4', ['-q', '-F', '-b', '4096', disk]);
  assert.deepEqual(await checkImageMemory(disk), { usable: true, reason: '', sizeBytes: 8 * 1024 * 1024 });
  await truncate(disk, 9 * 1024 * 1024);
  assert.match((await checkImageMemory(disk)).reason, /not a multiple of 2 MiB/);
  await writeFile(disk, Buffer.alloc(4 * 1024 * 1024));
  assert.match((await checkImageMemory(disk)).reason, /not ext4/);
  // Images torpor makes qualify.
  assert.equal((await checkImageMemory(imageDisk)).usable, true);
});

test("the image's files are read from shared memory, not copied into the guest's page cache", async () => {
  const machine = await createMachine({ image: 'dax-probe', name: 'dax', command: ['sleep', '3600'], memoryMiB: 256 });
  try {
    assert.equal(machine.imageMemoryBytes, (await readFile(imageDisk)).length);
    await startMachine(machine.id);
    assert.equal(await run(machine, 'ls /dev/pmem0; ls /dev | grep -c "^vd"'), '/dev/pmem0\n1', 'the image is memory; the only disk is the layer');
    // No 64 MiB bounce buffer taken from the guest (q35's window above 4 GiB; swiotlb=noforce).
    const totalKiB = Number(await run(machine, "awk '/^MemTotal:/ {print $2}' /proc/meminfo"));
    assert.ok(totalKiB > 200 * 1024, `MemTotal ${totalKiB} KiB of a 256 MiB machine`);
    const before = await cachedKiB(machine);
    assert.equal(await run(machine, 'md5sum /data/big | cut -c1-32'), dataHash);
    const grown = (await cachedKiB(machine)) - before;
    assert.ok(grown < 4096, `reading ${dataMiB} MiB of the image grew the guest's page cache by ${grown} KiB`);
  } finally {
    await removeMachine(machine, { force: true });
  }
});

test('the guest cannot change the image: its writes fail, and where root forces them they are dropped; the host file stays the same', async () => {
  const machine = await createMachine({ image: 'dax-probe', name: 'writer', command: ['sleep', '3600'], memoryMiB: 256 });
  try {
    await startMachine(machine.id);
    // The agent marked the device read-only: a plain write fails, and so does a writable mount.
    assert.match(await run(machine, 'dd if=/dev/zero of=/dev/pmem0 bs=4096 count=1 2>&1; echo "exit $?"'), /exit [1-9]/);
    // (ext4 mounts a read-only device read-only even when asked for rw: the write into it is what fails.)
    assert.match(await run(machine, 'mkdir -p /mnt; mount -t ext4 -o rw /dev/pmem0 /mnt; touch /mnt/written 2>&1; echo "exit $?"'), /exit [1-9]/);
    // Root in the guest can undo that flag; the host's read-only mapping still drops the writes.
    // Direct I/O, so that the guest reads the region back, not its own cache of what it wrote.
    const forced = await run(
      machine,
      'blocks=$(( $(blockdev --getsize64 /dev/pmem0) / 4096 - 64 )); ' +
        'before=$(dd if=/dev/pmem0 bs=4096 skip=$blocks count=64 iflag=direct 2>/dev/null | md5sum | cut -c1-32); ' +
        'blockdev --setrw /dev/pmem0; ' +
        // No fsync: QEMU 7.2 never answers a flush of a read-only region (the flushing thread
        // would wait forever; only a guest that undid the flag can send one, and it stalls itself).
        'dd if=/dev/urandom of=/dev/pmem0 bs=4096 seek=$blocks count=64 oflag=direct 2>/dev/null; echo "write exit $?"; ' +
        'after=$(dd if=/dev/pmem0 bs=4096 skip=$blocks count=64 iflag=direct 2>/dev/null | md5sum | cut -c1-32); ' +
        '[ "$before" = "$after" ] && echo same || echo changed; md5sum /data/big | cut -c1-32',
    );
    assert.match(forced, /write exit 0/, `the forced write went through the guest's side: ${forced}`);
    assert.match(forced, /^same$/m, forced);
    assert.ok(forced.endsWith(dataHash), forced);
    assert.equal(await sha256(imageDisk), imageHash, 'the image file on the host is unchanged');
  } finally {
    await removeMachine(machine, { force: true });
  }
  assert.equal(await sha256(imageDisk), imageHash);
});

test('snapshot, lazy restore and fork of a machine with image memory; the image is not in the snapshot', async () => {
  const origin = await createMachine({ image: 'dax-probe', name: 'origin', command: ['sh', '-c', 'echo kept > /tmp/kept; sleep 3600'], memoryMiB: 256 });
  try {
    await startMachine(origin.id);
    await waitForFile(origin, '/tmp/kept');
    assert.equal(await run(origin, 'md5sum /data/big | cut -c1-32'), dataHash);
    await snapshotMachine(origin, { name: 'origin@1' });
    const manifest = await readSnapshot('origin@1');
    // The guest read 24 MiB of the image; none of it is guest RAM.
    assert.ok(Number(manifest.stats.nonZeroBytes) < 256 * 1024 * 1024);
    assert.equal((manifest.metadata as { machine: MachineConfig }).machine.imageMemoryBytes, origin.imageMemoryBytes);
    const restored = await restoreMachine('origin@1', { name: 'restored' });
    try {
      assert.equal(restored.imageMemoryBytes, origin.imageMemoryBytes);
      assert.equal(await run(restored, 'cat /tmp/kept; md5sum /data/big | cut -c1-32'), `kept\n${dataHash}`);
      const { forks } = await forkMachine(restored, { count: 2 });
      try {
        for (const fork of forks) assert.equal(await run(fork, 'cat /tmp/kept; md5sum /data/big | cut -c1-32'), `kept\n${dataHash}`);
      } finally {
        for (const fork of forks) await removeMachine(fork, { force: true });
      }
    } finally {
      await removeMachine(restored, { force: true });
    }
  } finally {
    await removeMachine(origin, { force: true });
  }
  assert.equal(await sha256(imageDisk), imageHash);
});

test('a machine with the image as a block device (TORPOR_IMAGE_DAX=0, or made before) snapshots and restores as one', async () => {
  process.env.TORPOR_IMAGE_DAX = '0';
  let origin: MachineConfig;
  try {
    origin = await createMachine({ image: 'dax-probe', name: 'blocky', command: ['sh', '-c', 'echo kept > /tmp/kept; sleep 3600'], memoryMiB: 256 });
  } finally {
    delete process.env.TORPOR_IMAGE_DAX;
  }
  try {
    assert.equal(origin.imageMemoryBytes, undefined);
    await startMachine(origin.id);
    await waitForFile(origin, '/tmp/kept');
    assert.equal(await run(origin, 'ls /dev/pmem0 2>/dev/null; ls /dev | grep -c "^vd"'), '2', 'image and layer are disks');
    await snapshotMachine(origin, { name: 'blocky@1' });
    // Restored with image memory on: the snapshot's own devices win.
    const restored = await restoreMachine('blocky@1', { name: 'blocky-restored' });
    try {
      assert.equal(restored.imageMemoryBytes, undefined);
      assert.equal(await run(restored, 'cat /tmp/kept; ls /dev/pmem0 2>/dev/null; md5sum /data/big | cut -c1-32'), `kept\n${dataHash}`);
    } finally {
      await removeMachine(restored, { force: true });
    }
  } finally {
    await removeMachine(origin, { force: true });
  }
});
