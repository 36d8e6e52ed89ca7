import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../../../util/command.ts';

/** One path of a root filesystem as a test compares it: everything but timestamps. */
export interface SnapshotEntry {
  mode: string;
  uid: number;
  gid: number;
  /** sha256 of a file's bytes, or a symlink's target. */
  content?: string;
  /** The first path (sorted) of the hard-link group, when the inode has several names. */
  linkGroup?: string;
}

export type TreeSnapshot = Record<string, SnapshotEntry>;

function groupLinks(snapshot: TreeSnapshot, inodes: Map<string, string>): TreeSnapshot {
  const byInode = new Map<string, string[]>();
  for (const [path, inode] of inodes) byInode.set(inode, [...(byInode.get(inode) ?? []), path]);
  for (const paths of byInode.values()) {
    if (paths.length < 2) continue;
    const first = paths.sort()[0]!;
    for (const path of paths) snapshot[path]!.linkGroup = first;
  }
  return snapshot;
}

/** Snapshot of a directory on the host, read with lstat (never following links). */
export async function snapshotDirectory(root: string): Promise<TreeSnapshot> {
  const snapshot: TreeSnapshot = {};
  const inodes = new Map<string, string>();
  const walk = async (relative: string) => {
    for (const name of (await readdir(join(root, relative))).sort()) {
      const path = relative ? `${relative}/${name}` : name;
      const info = await lstat(join(root, path));
      const entry: SnapshotEntry = { mode: info.mode.toString(8), uid: info.uid, gid: info.gid };
      if (info.isSymbolicLink()) entry.content = `-> ${await readlink(join(root, path))}`;
      if (info.isFile())
        entry.content = createHash('sha256')
          .update(await readFile(join(root, path)))
          .digest('hex');
      if (!info.isDirectory()) inodes.set(path, String(info.ino));
      snapshot[path] = entry;
      if (info.isDirectory()) await walk(path);
    }
  };
  await walk('');
  return groupLinks(snapshot, inodes);
}

/**
 * Snapshot of an ext4 image read without mounting: metadata and inode numbers from `debugfs ls -p`
 * (one debugfs per directory level), file bytes and symlink targets from `debugfs rdump`.
 */
export async function snapshotExt4(disk: string): Promise<TreeSnapshot> {
  const dump = await mkdtemp(join(tmpdir(), 'torpor-ext4-dump-'));
  try {
    await runCommand('debugfs', ['-R', `rdump / ${dump}`, disk]);
    const snapshot: TreeSnapshot = {};
    const inodes = new Map<string, string>();
    let level = [''];
    while (level.length > 0) {
      const commands = level.map((directory) => `ls -p "/${directory}"`).join('\n') + '\n';
      const { stdout } = await runCommand('debugfs', ['-f', '-', disk], { input: commands });
      const next: string[] = [];
      let current = '';
      for (const line of stdout.split('\n')) {
        const command = /^debugfs: ls -p "\/(.*)"$/.exec(line);
        if (command) {
          current = command[1]!;
          continue;
        }
        const fields = line.split('/');
        if (fields.length < 7 || fields[0] !== '') continue;
        const [, inode, mode, uid, gid] = fields;
        const name = fields.slice(5, fields.length - 2).join('/');
        if (name === '.' || name === '..') continue;
        const path = current ? `${current}/${name}` : name;
        if (path === 'lost+found') continue;
        const numericMode = parseInt(mode!, 8);
        const entry: SnapshotEntry = { mode: numericMode.toString(8), uid: Number(uid), gid: Number(gid) };
        const type = numericMode & 0o170000;
        if (type === 0o120000) entry.content = `-> ${await readlink(join(dump, path))}`;
        if (type === 0o100000)
          entry.content = createHash('sha256')
            .update(await readFile(join(dump, path)))
            .digest('hex');
        if (type === 0o040000) next.push(path);
        else inodes.set(path, inode!);
        snapshot[path] = entry;
      }
      level = next;
    }
    return groupLinks(Object.fromEntries(Object.entries(snapshot).sort(([a], [b]) => (a < b ? -1 : 1))), inodes);
  } finally {
    await rm(dump, { recursive: true, force: true });
  }
}

/** The value of one extended attribute of a file inside an ext4 image. */
export async function ext4Xattr(disk: string, path: string, name: string): Promise<string | undefined> {
  const result = await runCommand('debugfs', ['-R', `ea_get ${path} ${name}`, disk], { allowFailure: true });
  const value = /= "(.*)"$/m.exec(result.stdout);
  return result.code === 0 && value ? value[1] : undefined;
}

/** A path's mtime (whole seconds) in an ext4 image, read with debugfs. */
export async function ext4Mtime(disk: string, path: string): Promise<number | undefined> {
  const result = await runCommand('debugfs', ['-R', `stat ${path}`, disk], { allowFailure: true });
  const value = /mtime: 0x([0-9a-f]+)/.exec(result.stdout);
  return result.code === 0 && value ? parseInt(value[1]!, 16) : undefined;
}
