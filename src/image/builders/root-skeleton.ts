import { mkdir, writeFile, copyFile, symlink, chmod } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { environment } from '../../config/environment.ts';

/** The files every built-in image has: a busybox userland, users, and the directories programs expect. */
export async function writeBusyboxRoot(root: string): Promise<void> {
  const busybox = environment().TORPOR_BUSYBOX;
  const check = await runCommand(busybox, ['--list'], { allowFailure: true }).catch(() => undefined);
  if (!check || check.code !== 0) {
    throw new TorporError('busybox-missing', `${busybox} is not a usable static busybox`, { hint: 'apt-get install -y busybox-static' });
  }
  for (const directory of [
    'bin',
    'sbin',
    'usr/bin',
    'usr/sbin',
    'etc',
    'root',
    'home',
    'tmp',
    'var/tmp',
    'var/log',
    'run',
    'dev',
    'proc',
    'sys',
    'mnt',
    'opt',
  ]) {
    await mkdir(join(root, directory), { recursive: true });
  }
  await chmod(join(root, 'tmp'), 0o1777);
  await chmod(join(root, 'var/tmp'), 0o1777);
  await chmod(join(root, 'root'), 0o700);
  await copyFile(busybox, join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);
  for (const applet of check.stdout
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean)) {
    if (applet === 'busybox') continue;
    await symlink('busybox', join(root, 'bin', applet)).catch(() => {});
  }
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n');
  await writeFile(join(root, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  await writeFile(join(root, 'etc/hostname'), 'torpor\n');
  await writeFile(join(root, 'etc/hosts'), '127.0.0.1\tlocalhost\n');
  await writeFile(join(root, 'etc/resolv.conf'), '');
  await writeFile(join(root, 'etc/os-release'), 'NAME="torpor base"\nID=torpor\nPRETTY_NAME="torpor base (busybox)"\n');
}
