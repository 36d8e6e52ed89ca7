import { createHash } from 'node:crypto';
import { readdir, readFile, rm, stat, access } from 'node:fs/promises';
import { join } from 'node:path';
import { memoryDirectory, stateHome } from '../state/paths.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

/** The prefix of one state directory's template RAM files (several installs share one tmpfs). */
function prefixOf(home: string): string {
  return `${createHash('sha256').update(home).digest('hex').slice(0, 8)}-`;
}

/** This state directory's prefix (its template and warm RAM files in tmpfs start with it). */
export function homePrefix(): string {
  return prefixOf(stateHome());
}

/**
 * Names the state directory that owns the template RAM files of a prefix: the prefix is a hash, so
 * without this file nobody could tell, once the state directory is deleted, that its templates
 * (~120 MiB of tmpfs each) serve no one any more.
 */
const ownerFile = (prefix: string) => join(memoryDirectory(), `${prefix}owner`);

/** Where a boot template's RAM stays materialized in tmpfs, as the base for restores built on it. */
export function templateMemoryFile(templateName: string): string {
  return join(memoryDirectory(), `${homePrefix()}${templateName}.ram`);
}

/** Records this state directory as the owner of its template RAM files; call before making one. */
export async function recordTemplateMemoryOwner(): Promise<void> {
  const path = ownerFile(homePrefix());
  const current = await readFile(path, 'utf8').catch(() => undefined);
  if (current !== stateHome()) await writeFileAtomic(path, stateHome());
}

/** Frees the tmpfs held by this state directory's template RAM files (they are only a cache). */
export async function dropTemplateMemory(): Promise<{ files: number; bytes: number }> {
  return removeWithPrefix(homePrefix());
}

async function removeWithPrefix(prefix: string): Promise<{ files: number; bytes: number }> {
  const names = await readdir(memoryDirectory()).catch(() => [] as string[]);
  let files = 0;
  let bytes = 0;
  for (const name of names.filter((name) => name.startsWith(prefix))) {
    const path = join(memoryDirectory(), name);
    bytes += await allocatedBytes(path);
    if (name.endsWith('.ram')) files++;
    await rm(path, { force: true });
  }
  return { files, bytes };
}

/** Bytes a file really takes (tmpfs RAM files are sparse: their size says little). */
export async function allocatedBytes(path: string): Promise<number> {
  return stat(path).then(
    (status) => status.blocks * 512,
    () => 0,
  );
}

export interface TemplateMemoryFile {
  file: string;
  /** the RAM file's, plus its cached disk layer and device state */
  allocatedBytes: number;
  /** this: this state directory's; other: a live state directory's; orphaned: its state directory is gone; unknown: no owner recorded */
  owner: 'this' | 'other' | 'orphaned' | 'unknown';
  home?: string;
}

/** Every template RAM file in the memory directory, with whose it is. */
export async function templateMemoryFiles(): Promise<TemplateMemoryFile[]> {
  const directory = memoryDirectory();
  const names = await readdir(directory).catch(() => [] as string[]);
  const owners = new Map<string, string | undefined>();
  for (const name of names.filter((name) => /^[0-9a-f]{8}-owner$/.test(name))) {
    const prefix = name.slice(0, 9);
    const home = await readFile(join(directory, name), 'utf8').catch(() => undefined);
    // A marker whose content does not hash to its prefix names nobody (a stray or forged file).
    owners.set(prefix, home !== undefined && prefixOf(home) === prefix ? home : undefined);
  }
  const own = homePrefix();
  const result: TemplateMemoryFile[] = [];
  for (const name of names.filter((name) => /^[0-9a-f]{8}-template-[0-9a-f]+\.ram$/.test(name))) {
    const prefix = name.slice(0, 9);
    const home = owners.get(prefix);
    let owner: TemplateMemoryFile['owner'];
    if (prefix === own) owner = 'this';
    else if (home === undefined) owner = 'unknown';
    else
      owner = await access(home).then(
        () => 'other' as const,
        () => 'orphaned' as const,
      );
    // With the disk layer and device state a start from the template keeps beside its RAM.
    const path = join(directory, name);
    const bytes =
      (await allocatedBytes(path)) + (await allocatedBytes(path.replace(/\.ram$/, '.layer'))) + (await allocatedBytes(path.replace(/\.ram$/, '.device-state')));
    result.push({ file: path, allocatedBytes: bytes, owner, ...(home === undefined ? {} : { home }) });
  }
  return result;
}

/**
 * Frees template RAM whose state directory is gone (deleted without `torpor system prune`): no
 * snapshot store is left to restore from it, so it only holds RAM until the next reboot.
 */
export async function freeOrphanedTemplateMemory(): Promise<{ files: number; bytes: number }> {
  const orphans = (await templateMemoryFiles()).filter((file) => file.owner === 'orphaned');
  const prefixes = new Set(orphans.map((file) => file.file.slice(memoryDirectory().length + 1, memoryDirectory().length + 10)));
  let files = 0;
  let bytes = 0;
  for (const prefix of prefixes) {
    const freed = await removeWithPrefix(prefix);
    files += freed.files;
    bytes += freed.bytes;
  }
  return { files, bytes };
}
