import { stat, readdir, mkdir, lstat, rename, rm, chmod } from 'node:fs/promises';
import { createReadStream, createWriteStream } from 'node:fs';
import { join, basename, posix } from 'node:path';
import { GuestError, type AgentClient } from '../guest/agent-client.ts';
import { TorporError } from '../util/errors.ts';

const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

async function guestKind(client: AgentClient, path: string): Promise<'directory' | 'file' | 'link' | 'missing' | 'other'> {
  try {
    const { stat: info } = await client.list(path);
    const type = info.mode & S_IFMT;
    return type === S_IFDIR ? 'directory' : type === S_IFREG ? 'file' : type === S_IFLNK ? 'link' : 'other';
  } catch (error) {
    if (error instanceof GuestError && error.errno === 2) return 'missing';
    throw error;
  }
}

/** docker cp semantics: into an existing directory (or a path ending in /) the source keeps its name. */
export async function copyIntoMachine(client: AgentClient, hostPath: string, guestPath: string): Promise<number> {
  const source = await stat(hostPath).catch(() => {
    throw new TorporError('no-such-file', `${hostPath}: no such file or directory`);
  });
  let target = guestPath;
  if (guestPath.endsWith('/') || (await guestKind(client, guestPath)) === 'directory') target = posix.join(guestPath, basename(hostPath));
  let bytes = 0;
  const copy = async (from: string, to: string): Promise<void> => {
    const info = await lstat(from);
    if (info.isDirectory()) {
      await client.makeDirectory(to, info.mode & 0o7777);
      for (const name of await readdir(from)) await copy(join(from, name), posix.join(to, name));
    } else if (info.isFile()) {
      bytes += info.size;
      await client.writeFile(to, createReadStream(from) as AsyncIterable<Buffer>, info.mode & 0o7777);
    }
    // Symbolic links and special files are skipped: the protocol carries regular files and directories.
  };
  if (!source.isDirectory() && !source.isFile()) throw new TorporError('unsupported-file', `${hostPath} is not a regular file or directory`);
  await copy(hostPath, target);
  return bytes;
}

/** `torpor cp MACHINE:PATH HOST_PATH`: copies a guest file or directory tree to the host; returns the bytes copied. */
export async function copyFromMachine(client: AgentClient, guestPath: string, hostPath: string): Promise<number> {
  const kind = await guestKind(client, guestPath);
  if (kind === 'missing') throw new TorporError('no-such-file', `${guestPath}: no such file or directory in the machine`);
  let target = hostPath;
  const local = await stat(hostPath).catch(() => undefined);
  if (hostPath.endsWith('/') || local?.isDirectory()) target = join(hostPath, posix.basename(guestPath));
  let bytes = 0;
  const copy = async (from: string, to: string): Promise<void> => {
    const { stat: info, entries } = await client.list(from);
    const type = info.mode & S_IFMT;
    if (type === S_IFDIR) {
      await mkdir(to, { recursive: true, mode: info.mode & 0o7777 });
      for (const entry of entries) await copy(posix.join(from, entry.name), join(to, entry.name));
      // mkdir's mode passes through the umask (077 in the CLI, which keeps its state private):
      // set the guest's mode explicitly, as for files (last, so a read-only directory is filled first).
      await chmod(to, info.mode & 0o7777);
    } else if (type === S_IFREG) {
      // Into a temporary file, renamed when complete: a failed copy leaves nothing half-written.
      const partial = `${to}.torpor-partial`;
      const output = createWriteStream(partial, { mode: info.mode & 0o7777 });
      try {
        await client.readFile(from, (chunk) => {
          bytes += chunk.length;
          output.write(chunk);
        });
        await new Promise<void>((resolve, reject) => output.end((error?: Error | null) => (error ? reject(error) : resolve())));
        await chmod(partial, info.mode & 0o7777);
        await rename(partial, to);
      } catch (error) {
        output.destroy();
        await rm(partial, { force: true });
        throw error;
      }
    }
  };
  await copy(guestPath, target);
  return bytes;
}
