import { mkdir, readFile, readdir, rm, rename, stat, writeFile, open, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { paths } from '../state/paths.ts';
import { refPath } from './image-refs.ts';
import { runCommand } from '../util/command.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import { writeFileAtomic, writeJsonAtomic, syncDirectory } from '../util/atomic-file.ts';
import { digestTree } from './tree-digest.ts';
import { assertDigest, digestHex } from './digest.ts';
import { imageRecordSchema, type ImageConfig, type ImageRecord } from './image-config.ts';
import { type Progress, silentProgress } from '../util/progress.ts';

// Layout:  images/blobs/<hex>/rootfs.ext4 + image.json   (content-addressed, immutable)
//          images/refs/<encoded name>                      (a name pointing at a digest)

// Every digest is checked before it becomes a path (a ref file or a command line could hold anything).
const blobDirectory = (digest: string) => join(paths.images(), 'blobs', digestHex(digest, 'image digest'));

export function validateImageName(name: string): void {
  if (!/^[a-z0-9][a-z0-9._\-/:@]*$/.test(name) || name.length > 255) {
    throw new TorporError('invalid-image-name', `invalid image name ${JSON.stringify(name)}`, {
      hint: 'use lowercase letters, digits and . _ - / : (like docker: myimage, team/tool:1.0)',
    });
  }
}

// Images are whole 2 MiB: one may be given to the guest as memory (vm/image-memory.ts checks it).
const imageMemoryAlignment = 2 * 1024 * 1024;

function ext4SizeFor(bytes: number, entries: number): number {
  // Data plus 4 KiB per entry of block slack, inode tables and metadata; mkfs.ext4 -d fails when short.
  const estimate = bytes * 1.1 + entries * 4096 + entries * 256 + 16 * 1024 * 1024;
  return Math.ceil(estimate / imageMemoryAlignment) * imageMemoryAlignment;
}

/** Turns a root filesystem directory into a read-only ext4 image without mounting it. */
async function makeExt4(sourceDirectory: string, target: string, bytes: number, entries: number): Promise<void> {
  let size = ext4SizeFor(bytes, entries);
  for (let attempt = 0; ; attempt++) {
    await rm(target, { force: true });
    await writeFile(target, '');
    await truncate(target, size);
    const result = await runCommand(
      'mkfs.ext4',
      // -b 4096: the guest can map files of the image directly (DAX) only when ext4's block is the
      // page size; mkfs would pick 1 KiB blocks for images under 512 MiB.
      ['-q', '-F', '-b', '4096', '-m', '0', '-O', '^has_journal', '-E', 'root_owner=0:0', '-L', 'torpor-image', '-d', sourceDirectory, target],
      { allowFailure: true },
    );
    if (result.code === 0) return;
    if (attempt >= 3 || !/space|inode|full/i.test(result.stderr)) {
      throw new Error(`mkfs.ext4 failed: ${result.stderr.trim()}`);
    }
    size *= 2;
  }
}

export async function readImageRecord(digest: string): Promise<ImageRecord | undefined> {
  try {
    const record = imageRecordSchema.parse(JSON.parse(await readFile(join(blobDirectory(digest), 'image.json'), 'utf8')));
    return { ...record, diskPath: join(blobDirectory(digest), 'rootfs.ext4') };
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return undefined;
    throw error;
  }
}

export async function resolveImage(reference: string): Promise<ImageRecord | undefined> {
  if (reference.startsWith('sha256:')) {
    assertDigest(reference, 'image reference', { hint: 'give an image name (see `torpor images`) or its full sha256:<64 hex digits> digest' });
    return readImageRecord(reference);
  }
  // '.' and '..' encode to themselves and would name the refs directory or its parent.
  if (reference === '.' || reference === '..' || reference === '') return undefined;
  let digest: string;
  try {
    digest = (await readFile(refPath(reference), 'utf8')).trim();
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return undefined;
    throw error;
  }
  const record = await readImageRecord(digest);
  return record && { ...record, name: reference };
}

export async function tagImage(name: string, digest: string): Promise<void> {
  validateImageName(name);
  assertDigest(digest, `digest for ${name}`);
  await writeFileAtomic(refPath(name), digest + '\n');
}

/**
 * Stores a root filesystem directory as an image. The ext4 is written under a temporary name and
 * renamed into place last, so a crash or a full disk never leaves a half image in the store.
 */
export async function addImageFromDirectory(
  rootDirectory: string,
  options: { name?: string; config: ImageConfig; source: string; progress?: Progress },
): Promise<ImageRecord> {
  const progress = options.progress ?? silentProgress;
  if (options.name) validateImageName(options.name);
  progress('hashing the root filesystem');
  const { digest, bytes, entries } = await digestTree(rootDirectory);
  const existing = await readImageRecord(digest);
  if (!existing) {
    const final = blobDirectory(digest);
    const staging = `${final}.${randomBytes(4).toString('hex')}.partial`;
    await mkdir(staging, { recursive: true });
    try {
      progress(`writing ext4 image (${(bytes / 1048576).toFixed(1)} MiB in ${entries} entries)`);
      const disk = join(staging, 'rootfs.ext4');
      await makeExt4(rootDirectory, disk, bytes, entries);
      const handle = await open(disk, 'r');
      await handle.sync();
      await handle.close();
      const record = { digest, config: options.config, sizeBytes: (await stat(disk)).size, createdAt: new Date().toISOString(), source: options.source };
      await writeJsonAtomic(join(staging, 'image.json'), record);
      await rename(staging, final).catch(async (error) => {
        // Another import of the same content won the race: theirs is identical.
        if (!isNodeError(error, 'ENOTEMPTY') && !isNodeError(error, 'EEXIST')) throw error;
        await rm(staging, { recursive: true, force: true });
      });
      await syncDirectory(join(paths.images(), 'blobs'));
    } catch (error) {
      await rm(staging, { recursive: true, force: true });
      if (isNodeError(error, 'ENOSPC'))
        throw new TorporError('disk-full', 'no space left while writing the image; nothing was stored', {
          hint: 'free disk space, or `torpor image rm` unused images',
        });
      throw error;
    }
  }
  if (options.name) await tagImage(options.name, digest);
  const record = (await readImageRecord(digest))!;
  return { ...record, name: options.name };
}

export async function listImages(): Promise<Array<ImageRecord & { name: string }>> {
  let names: string[] = [];
  try {
    names = await readdir(join(paths.images(), 'refs'));
  } catch (error) {
    if (!isNodeError(error, 'ENOENT')) throw error;
  }
  const images: Array<ImageRecord & { name: string }> = [];
  for (const encoded of names.sort()) {
    if (encoded.startsWith('.')) continue;
    const name = decodeURIComponent(encoded);
    const record = await resolveImage(name);
    if (record) images.push({ ...record, name });
  }
  return images;
}

/** Removes a name; the content goes too when no other name points at it. */
export async function removeImage(name: string): Promise<{ digest: string; contentRemoved: boolean }> {
  const record = await resolveImage(name);
  if (!record) throw new TorporError('image-unknown', `no such image: ${name}`, { hint: 'see `torpor images`', status: 404 });
  await rm(refPath(name), { force: true });
  const stillNamed = (await listImages()).some((image) => image.digest === record.digest);
  if (!stillNamed) await rm(blobDirectory(record.digest), { recursive: true, force: true });
  return { digest: record.digest, contentRemoved: !stillNamed };
}
