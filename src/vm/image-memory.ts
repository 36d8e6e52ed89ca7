import { open } from 'node:fs/promises';

/**
 * The image disk as guest memory (virtio-pmem), mounted in the guest with DAX: the guest reads the
 * image's files straight from the host's page cache of the image file instead of copying them into
 * its own page cache. Those pages are then shared by every machine of the image and are never part
 * of guest RAM, so snapshots neither read nor store them (architecture/lazy-memory.md).
 */

/** virtio-pmem regions are mapped by the guest kernel in 2 MiB units (memory hotplug subsections). */
export const imageMemoryAlignment = 2 * 1024 * 1024;

export type ImageDevice = 'block' | 'pmem';

export interface ImageMemoryCheck {
  usable: boolean;
  /** Why not, for a note: the image must be made again (`torpor image rm`, then build or import it) to get DAX. */
  reason: string;
  sizeBytes: number;
}

/**
 * Whether an image file can be given to the guest as DAX memory: ext4 can map files directly only
 * when its block size is the page size (4 KiB), and the region must be a whole number of 2 MiB.
 * Images made before torpor used 4 KiB blocks (mkfs picks 1 KiB for small filesystems) are not,
 * and keep the block device. Reads only the superblock: the file is trusted (torpor made it), but a
 * wrong answer would only make the guest fall back to mounting without DAX.
 */
export async function checkImageMemory(diskPath: string): Promise<ImageMemoryCheck> {
  const handle = await open(diskPath, 'r');
  try {
    const { size } = await handle.stat();
    const superblock = Buffer.alloc(1024);
    await handle.read(superblock, 0, 1024, 1024);
    if (superblock.readUInt16LE(56) !== 0xef53) return { usable: false, reason: 'the image is not ext4', sizeBytes: size };
    const blockSize = 1024 << superblock.readUInt32LE(24);
    if (blockSize !== 4096) return { usable: false, reason: `the image's ext4 has ${blockSize}-byte blocks (DAX needs 4096)`, sizeBytes: size };
    if (size === 0 || size % imageMemoryAlignment !== 0)
      return { usable: false, reason: `the image's size (${size} bytes) is not a multiple of 2 MiB`, sizeBytes: size };
    return { usable: true, reason: '', sizeBytes: size };
  } finally {
    await handle.close();
  }
}
