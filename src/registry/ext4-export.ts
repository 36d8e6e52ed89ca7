import { chmod, lchown, link, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from '../util/command.ts';

// A stored image is an ext4 file, and torpor never mounts. `debugfs rdump` copies the files out,
// but drops setuid bits, hard links, fifos, device nodes and xattrs; this puts them back from
// what `debugfs ls -p`, `stat` and `ea_get` report, so the tree matches the image exactly.

interface Ext4Entry {
  path: string;
  inode: string;
  mode: number;
  uid: number;
  gid: number;
}

const quote = (path: string) => `"/${path}"`;

async function debugfsBatch(disk: string, commands: string[]): Promise<string> {
  if (commands.length === 0) return '';
  const { stdout } = await runCommand('debugfs', ['-f', '-', disk], { input: commands.join('\n') + '\n' });
  return stdout;
}

/** Splits batched debugfs output by command: echo lines are "debugfs: COMMAND". */
function outputsByCommand(output: string): string[] {
  return output.split(/^debugfs: .*$/m).slice(1);
}

async function listTree(disk: string): Promise<Ext4Entry[]> {
  const entries: Ext4Entry[] = [];
  let level = [''];
  while (level.length > 0) {
    const outputs = outputsByCommand(
      await debugfsBatch(
        disk,
        level.map((directory) => `ls -p ${quote(directory)}`),
      ),
    );
    const next: string[] = [];
    for (const [index, output] of outputs.entries()) {
      const directory = level[index]!;
      for (const line of output.split('\n')) {
        const fields = line.split('/');
        if (fields.length < 7 || fields[0] !== '') continue;
        const name = fields.slice(5, fields.length - 2).join('/');
        if (name === '.' || name === '..') continue;
        const path = directory ? `${directory}/${name}` : name;
        if (path === 'lost+found') continue; // made by mkfs, not part of the image
        const entry = { path, inode: fields[1]!, mode: parseInt(fields[2]!, 8), uid: Number(fields[3]), gid: Number(fields[4]) };
        entries.push(entry);
        if ((entry.mode & 0o170000) === 0o040000) next.push(path);
      }
    }
    level = next;
  }
  return entries;
}

/** Copies an ext4 image's tree into `target` (which must not exist), exactly, without mounting. */
export async function exportExt4Tree(disk: string, target: string): Promise<void> {
  await mkdir(target);
  await runCommand('debugfs', ['-R', `rdump / ${target}`, disk]);
  await rm(join(target, 'lost+found'), { recursive: true, force: true });
  const entries = await listTree(disk);

  const firstPathOfInode = new Map<string, string>();
  const specials: Ext4Entry[] = [];
  for (const entry of entries) {
    const type = entry.mode & 0o170000;
    if (type === 0o040000 || type === 0o120000) continue;
    const first = firstPathOfInode.get(entry.inode);
    if (first) {
      await rm(join(target, entry.path), { force: true });
      await link(join(target, first), join(target, entry.path));
      continue;
    }
    firstPathOfInode.set(entry.inode, entry.path);
    if (type !== 0o100000) specials.push(entry);
  }
  if (specials.length > 0) {
    const outputs = outputsByCommand(
      await debugfsBatch(
        disk,
        specials.map((entry) => `stat ${quote(entry.path)}`),
      ),
    );
    for (const [index, entry] of specials.entries()) {
      const type = entry.mode & 0o170000;
      const device = /Device major\/minor number: (\d+):(\d+)/.exec(outputs[index] ?? '');
      const kind =
        type === 0o010000 ? ['p'] : type === 0o020000 ? ['c', device?.[1], device?.[2]] : type === 0o060000 ? ['b', device?.[1], device?.[2]] : undefined;
      if (!kind || kind.includes(undefined)) continue; // sockets are not image content
      await rm(join(target, entry.path), { force: true });
      await runCommand('mknod', [join(target, entry.path), ...(kind as string[])]);
    }
  }
  // Owners before modes: chown clears setuid and setgid.
  for (const entry of [...entries].reverse()) {
    const path = join(target, entry.path);
    await lchown(path, entry.uid, entry.gid);
    if ((entry.mode & 0o170000) !== 0o120000) await chmod(path, entry.mode & 0o7777);
  }
  await restoreXattrs(disk, target, entries);
}

async function restoreXattrs(disk: string, target: string, entries: Ext4Entry[]): Promise<void> {
  const candidates = entries.filter((entry) => (entry.mode & 0o170000) !== 0o120000);
  const lists = outputsByCommand(
    await debugfsBatch(
      disk,
      candidates.map((entry) => `ea_list ${quote(entry.path)}`),
    ),
  );
  const wanted: Array<{ entry: Ext4Entry; name: string }> = [];
  for (const [index, output] of lists.entries()) {
    for (const match of output.matchAll(/^\s+(\S+) \(\d+\)/gm)) wanted.push({ entry: candidates[index]!, name: match[1]! });
  }
  if (wanted.length === 0) return;
  const valuesDirectory = `${target}.xattrs`;
  await mkdir(valuesDirectory);
  try {
    // ea_get -f writes the raw value, so binary attributes (capabilities) survive intact.
    await debugfsBatch(
      disk,
      wanted.map(({ entry, name }, index) => `ea_get -f ${join(valuesDirectory, String(index))} ${quote(entry.path)} ${name}`),
    );
    let dump = '';
    for (const [index, { entry, name }] of wanted.entries()) {
      const value = await readFile(join(valuesDirectory, String(index))).catch(() => undefined);
      if (value === undefined) continue;
      dump += `# file: ${join(target, entry.path).replace(/\n/g, '')}\n${name}=0x${value.toString('hex')}\n\n`;
    }
    await writeFile(join(valuesDirectory, 'restore'), dump);
    await runCommand('setfattr', ['-h', `--restore=${join(valuesDirectory, 'restore')}`]);
  } finally {
    await rm(valuesDirectory, { recursive: true, force: true });
  }
}
