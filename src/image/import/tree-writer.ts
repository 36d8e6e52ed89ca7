import { spawnSync } from 'node:child_process';
import {
  chmodSync,
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { TorporError, isNodeError } from '../../util/errors.ts';
import { ancestorsOf, MAX_PATH_BYTES, parentOf } from './member-path.ts';
import type { TarEntry } from './tar-reader.ts';

// Writes tar members into a directory tree without ever following a symbolic link inside it.
// Node has no openat(), so the same guarantee is built from what it has: every ancestor of a
// path is checked with lstat (or known to be a directory this writer created or checked) before
// anything is created below it, the final component is created with O_CREAT|O_EXCL|O_NOFOLLOW
// (or symlink/link/mkdir/mknod, which never follow a final symlink), and whatever was there is
// unlinked first, never written through. Nothing but this writer touches the tree while it works
// (it lives in a 0700 staging directory of the store), so a check stays true until the write.

export interface WriterPolicy {
  /** How errors name what is being written, e.g. "layer 2/3 (sha256:ab12…)". */
  description: string;
  /** Apply the members' uid/gid (needs root). */
  owners: boolean;
  /** Apply the members' modes (with setuid/setgid/sticky); otherwise 0644 files, 0755 directories. */
  modes: boolean;
  /** Create device nodes and fifos (needs root); otherwise they are refused. */
  devices: boolean;
  /** Apply extended attributes (user., security., trusted.); otherwise they are refused. */
  xattrs: boolean;
}

type Kind = 'directory' | 'symlink' | 'other' | 'absent';

const xattrNamePattern = /^(user|security|trusted)\.[A-Za-z0-9._@+:-]{1,240}$/;
const MAX_XATTR_VALUE = 64 * 1024;

export class TreeWriter {
  /** Paths known to be real directories right now (checked with lstat or created here). */
  private readonly directories = new Set<string>(['']);
  /** Paths this layer wrote, and their ancestors: what an opaque directory keeps. */
  private readonly touched = new Set<string>();
  /** Directory mtimes, set last, since creating their children changes them. */
  private readonly directoryTimes = new Map<string, number>();
  /** Directories with the setgid bit: a file created in one takes its group, not ours. */
  private readonly setgidDirectories = new Set<string>();

  private readonly umask: number;
  private readonly ownUid: number;
  private readonly ownGid: number;

  constructor(
    private readonly root: string,
    private readonly policy: WriterPolicy,
  ) {
    // Reading the umask (no argument) works on worker threads too; only setting it does not.
    this.umask = process.umask();
    this.ownUid = process.geteuid?.() ?? -1;
    this.ownGid = process.getegid?.() ?? -1;
    if (lstatSync(root).mode & 0o2000) this.setgidDirectories.add('');
  }

  private unsafe(message: string): TorporError {
    return new TorporError('layer-unsafe-path', `${this.policy.description}: ${message}`, {
      hint: 'the image is malformed or malicious; nothing was imported',
    });
  }

  private full(path: string): string {
    const full = path === '' ? this.root : `${this.root}/${path}`;
    if (Buffer.byteLength(full) > MAX_PATH_BYTES)
      throw this.unsafe(`${JSON.stringify(path.slice(0, 100))}… is too long to create under the store (${MAX_PATH_BYTES} bytes with the store's path)`);
    return full;
  }

  private kindOf(path: string): Kind {
    if (this.directories.has(path)) return 'directory';
    const info = lstatSync(this.full(path), { throwIfNoEntry: false });
    if (!info) return 'absent';
    if (info.isDirectory()) {
      this.directories.add(path);
      if (info.mode & 0o2000) this.setgidDirectories.add(path);
      return 'directory';
    }
    return info.isSymbolicLink() ? 'symlink' : 'other';
  }

  /**
   * Checks that every ancestor of `path` is a real directory (never a symlink, never a file);
   * missing ones are created (0755, like tar) when `create`, else the answer is false.
   */
  private ancestorsAreDirectories(path: string, why: string, create: boolean): boolean {
    for (const ancestor of ancestorsOf(path)) {
      const kind = this.kindOf(ancestor);
      if (kind === 'directory') continue;
      if (kind === 'symlink') throw this.unsafe(`${why} ${JSON.stringify(path)} would go through the symbolic link ${JSON.stringify(ancestor)}`);
      if (kind === 'other') throw this.unsafe(`${why} ${JSON.stringify(path)} is below ${JSON.stringify(ancestor)}, which is not a directory`);
      if (!create) return false;
      mkdirSync(this.full(ancestor), { mode: 0o755 });
      chmodSync(this.full(ancestor), 0o755);
      this.directories.add(ancestor);
    }
    return true;
  }

  private forgetDirectory(path: string): void {
    this.directories.delete(path);
    this.setgidDirectories.delete(path);
    const prefix = `${path}/`;
    for (const directory of this.directories) if (directory.startsWith(prefix)) this.directories.delete(directory);
    for (const directory of this.setgidDirectories) if (directory.startsWith(prefix)) this.setgidDirectories.delete(directory);
  }

  /** Removes whatever is at `path` (a directory with its content; a symlink itself, never its target). */
  private clear(path: string): void {
    const kind = this.kindOf(path);
    if (kind === 'absent') return;
    if (kind === 'directory') {
      rmSync(this.full(path), { recursive: true, force: true });
      this.forgetDirectory(path);
    } else {
      unlinkSync(this.full(path));
    }
  }

  private touch(path: string): void {
    this.touched.add(path);
    for (const ancestor of ancestorsOf(path)) this.touched.add(ancestor);
  }

  /** Makes `path` free for a new non-directory member: real parent directories, nothing at the path. */
  private prepare(path: string): string {
    if (path === '') throw this.unsafe('the root must be a directory');
    this.ancestorsAreDirectories(path, 'member', true);
    this.clear(path);
    this.touch(path);
    return this.full(path);
  }

  private checkXattrs(path: string, xattrs: Map<string, Buffer>): void {
    if (xattrs.size === 0) return;
    if (!this.policy.xattrs) throw this.unsafe(`${JSON.stringify(path)} carries extended attributes, which are not accepted here`);
    for (const [name, value] of xattrs) {
      if (!xattrNamePattern.test(name))
        throw this.unsafe(`${JSON.stringify(path)} has the extended attribute ${JSON.stringify(name.slice(0, 80))}, outside user., security. and trusted.`);
      if (value.length > MAX_XATTR_VALUE) throw this.unsafe(`${JSON.stringify(path)} has an extended attribute of ${value.length} bytes`);
    }
  }

  /** Extended attributes through setfattr (Node has no setxattr); `target` is a path that was just checked. */
  private setXattrs(target: string, path: string, xattrs: Map<string, Buffer>, dereference: boolean): void {
    if (xattrs.size === 0) return;
    const dump = `# file: ${target}\n${[...xattrs].map(([name, value]) => `${name}=0x${value.toString('hex')}`).join('\n')}\n\n`;
    const result = spawnSync('setfattr', [...(dereference ? [] : ['-h']), '--restore=-'], { input: dump, encoding: 'utf8' });
    if (result.error && isNodeError(result.error, 'ENOENT')) {
      throw new TorporError('missing-program', 'setfattr is not installed (the image has extended attributes)', { hint: 'apt-get install -y attr' });
    }
    if (result.status !== 0) {
      throw new TorporError(
        'layer-extract-failed',
        `${this.policy.description}: cannot set the extended attributes of ${JSON.stringify(path)}: ${(result.stderr ?? '').trim().split('\n')[0]}`,
        {
          hint: 'the filesystem under the store must support extended attributes (ext4, xfs, tmpfs as root)',
        },
      );
    }
  }

  private mode(entry: TarEntry, fallback: number): number {
    return this.policy.modes ? entry.mode : fallback;
  }

  /** A directory member: created, or (already a directory) given the member's owner and mode. */
  directory(path: string, entry: TarEntry): void {
    this.checkXattrs(path, entry.xattrs);
    if (path !== '') {
      this.ancestorsAreDirectories(path, 'member', true);
      if (this.kindOf(path) !== 'directory') {
        this.clear(path);
        mkdirSync(this.full(path), { mode: 0o700 });
        this.directories.add(path);
      }
      this.touch(path);
    }
    const full = this.full(path);
    if (this.policy.owners) lchownSync(full, entry.uid, entry.gid);
    // chmod follows a final symlink, but `full` was just checked or made to be a directory.
    const mode = this.mode(entry, 0o755);
    chmodSync(full, mode);
    if (mode & 0o2000) this.setgidDirectories.add(path);
    else this.setgidDirectories.delete(path);
    this.setXattrs(full, path, entry.xattrs, false);
    this.directoryTimes.set(path, entry.mtime);
  }

  /** A regular file, its bytes streamed from `data`. */
  async file(path: string, entry: TarEntry, data: AsyncIterable<Buffer>): Promise<void> {
    this.checkXattrs(path, entry.xattrs);
    if (path === '') throw this.unsafe('the root must be a directory');
    this.ancestorsAreDirectories(path, 'member', true);
    this.touch(path);
    const full = this.full(path);
    const mode = this.mode(entry, 0o644);
    // Created with its final permission bits when the umask keeps them all and there are no
    // setuid/setgid/sticky bits; otherwise 0600 now and fchmod after fchown.
    const exactAtCreation = (mode & 0o7000) === 0 && (mode & this.umask) === 0;
    const create = () => openSync(full, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, exactAtCreation ? mode : 0o600);
    let descriptor: number;
    try {
      descriptor = create();
    } catch (error) {
      // Something is there (O_EXCL fails even on a symlink, never following it): remove it, then create.
      if (!isNodeError(error, 'EEXIST')) throw error;
      this.clear(path);
      descriptor = create();
    }
    try {
      for await (const chunk of data) {
        for (let written = 0; written < chunk.length;) written += writeSync(descriptor, chunk, written);
      }
      // Owner first: chown clears setuid/setgid bits and file capabilities, which come after it.
      // A new file is ours (root:root) already, unless its directory hands down its group (setgid).
      const ownedAlready = entry.uid === this.ownUid && entry.gid === this.ownGid && !this.setgidDirectories.has(parentOf(path));
      if (this.policy.owners && !ownedAlready) fchownSync(descriptor, entry.uid, entry.gid);
      if (!exactAtCreation) fchmodSync(descriptor, mode);
      // /proc/<pid>/fd/<n> is the file just created, whatever happens to its name.
      this.setXattrs(`/proc/${process.pid}/fd/${descriptor}`, path, entry.xattrs, true);
      futimesSync(descriptor, entry.mtime, entry.mtime);
    } finally {
      closeSync(descriptor);
    }
  }

  /** A symbolic link, stored as written (absolute targets resolve inside the guest, never here). */
  symlink(path: string, entry: TarEntry): void {
    this.checkXattrs(path, entry.xattrs);
    const full = this.prepare(path);
    symlinkSync(entry.linkTarget, full);
    if (this.policy.owners) lchownSync(full, entry.uid, entry.gid);
    this.setXattrs(full, path, entry.xattrs, false);
    lutimesSync(full, entry.mtime, entry.mtime);
  }

  /** A hard link to a path that exists in the tree already (earlier in this layer or below), never a directory. */
  hardlink(path: string, target: string): void {
    if (target === '') throw this.unsafe(`hard link ${JSON.stringify(path)} points at the root directory`);
    if (target === path) throw this.unsafe(`hard link ${JSON.stringify(path)} points at itself`);
    const exists = this.ancestorsAreDirectories(target, 'hard link target', false);
    const kind = exists ? this.kindOf(target) : 'absent';
    if (kind === 'absent') throw this.unsafe(`hard link ${JSON.stringify(path)} points at ${JSON.stringify(target)}, which does not exist (yet)`);
    if (kind === 'directory') throw this.unsafe(`hard link ${JSON.stringify(path)} points at the directory ${JSON.stringify(target)}`);
    const full = this.prepare(path);
    try {
      // link(2) does not follow a symlink target on Linux: a link to a symlink is a second name for the symlink.
      linkSync(this.full(target), full);
    } catch (error) {
      if (isNodeError(error, 'ENOENT'))
        throw this.unsafe(`hard link ${JSON.stringify(path)} points at ${JSON.stringify(target)}, which replacing ${JSON.stringify(path)} removed`);
      throw error;
    }
  }

  /** A character or block device, or a fifo: OCI layers may carry them (docker's /dev/null and friends). */
  device(path: string, entry: TarEntry): void {
    if (!this.policy.devices) throw this.unsafe(`${JSON.stringify(path)} is a ${entry.type}, which is not accepted here`);
    this.checkXattrs(path, entry.xattrs);
    const full = this.prepare(path);
    const mode = (this.mode(entry, 0o644) & 0o777).toString(8);
    const args =
      entry.type === 'fifo'
        ? ['-m', mode, full, 'p']
        : ['-m', mode, full, entry.type === 'character-device' ? 'c' : 'b', String(entry.deviceMajor), String(entry.deviceMinor)];
    // mknod(1) fails on an existing name, so it cannot follow a symlink put there meanwhile.
    const result = spawnSync('mknod', args, { encoding: 'utf8' });
    if (result.status !== 0) {
      throw new TorporError(
        'layer-extract-failed',
        `${this.policy.description}: cannot create the ${entry.type} ${JSON.stringify(path)}: ${(result.stderr ?? String(result.error)).trim()}`,
        {
          hint: 'device nodes need root; run the import as root',
        },
      );
    }
    if (this.policy.owners) lchownSync(full, entry.uid, entry.gid);
    chmodSync(full, this.mode(entry, 0o644));
    this.setXattrs(full, path, entry.xattrs, false);
    lutimesSync(full, entry.mtime, entry.mtime);
  }

  /** An OCI whiteout: `path` of a lower layer goes. A path under a symlink is refused, a missing one ignored. */
  remove(path: string): void {
    if (path === '') throw this.unsafe('a whiteout names the root directory');
    if (!this.ancestorsAreDirectories(path, 'whiteout', false)) return;
    if (this.touched.has(path)) throw this.unsafe(`a whiteout removes ${JSON.stringify(path)}, which this same layer writes`);
    this.clear(path);
  }

  /** An OCI opaque directory: everything a lower layer put in `directory` goes; what this layer wrote stays. */
  opaque(directory: string): void {
    if (directory !== '') {
      if (!this.ancestorsAreDirectories(directory, 'opaque directory', false)) return;
      const kind = this.kindOf(directory);
      if (kind === 'symlink') throw this.unsafe(`opaque directory ${JSON.stringify(directory)} is a symbolic link`);
      if (kind === 'other') throw this.unsafe(`opaque directory ${JSON.stringify(directory)} is not a directory`);
      if (kind === 'absent') return;
    }
    const sweep = (path: string) => {
      for (const name of readdirSync(this.full(path))) {
        const child = path ? `${path}/${name}` : name;
        if (!this.touched.has(child)) this.clear(child);
        else if (this.kindOf(child) === 'directory') sweep(child);
      }
    };
    sweep(directory);
  }

  /** Sets directory times, once nothing more is written into them. */
  finish(): void {
    for (const [path, time] of this.directoryTimes) {
      if (this.kindOf(path) === 'directory') lutimesSync(this.full(path), time, time);
    }
  }
}
