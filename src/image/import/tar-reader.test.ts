import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chown, mkdtemp, mkdir, rm, symlink, writeFile, readFile, link } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { readTarEntries, type TarEntry } from './tar-reader.ts';

let work: string;
const longDirectory = 'a'.repeat(60) + '/' + 'b'.repeat(60);
const longTarget = '/' + 'target/'.repeat(20) + 'end';

async function list(bytes: Buffer): Promise<TarEntry[]> {
  const entries: TarEntry[] = [];
  for await (const entry of readTarEntries(Readable.from([bytes.subarray(0, 1000), bytes.subarray(1000)]))) entries.push(entry);
  return entries;
}

/** Lists `archive` with our reader, checking that it names the members GNU tar names, in its order. */
async function listLikeGnuTar(archive: string, label: string): Promise<TarEntry[]> {
  const entries = await list(await readFile(archive));
  const expected = (await runCommand('tar', ['--list', `--file=${archive}`])).stdout.trim().split('\n');
  assert.deepEqual(
    entries.map((entry) => entry.name.replace(/\/$/, '')),
    expected.map((name) => name.replace(/\/$/, '')),
    label,
  );
  return entries;
}

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'torpor-tar-reader-'));
  await mkdir(join(work, 'tree', longDirectory), { recursive: true });
  await writeFile(join(work, 'tree', longDirectory, 'file-with-a-long-path.txt'), 'x'.repeat(1500));
  await symlink(longTarget, join(work, 'tree', 'long-link'));
  await link(join(work, 'tree', longDirectory, 'file-with-a-long-path.txt'), join(work, 'tree', 'hard'));
});

after(() => rm(work, { recursive: true, force: true }));

test('GNU, PAX and ustar archives list the same names, types and link targets as GNU tar', async () => {
  for (const format of ['gnu', 'posix', 'ustar']) {
    const archive = join(work, `${format}.tar`);
    const result = await runCommand('tar', ['--create', `--format=${format}`, `--file=${archive}`, '--sort=name', '-C', join(work, 'tree'), '.'], {
      allowFailure: true,
    });
    if (format === 'ustar') {
      // ustar cannot store a 150-character symlink target: GNU tar refuses that member, we list the rest.
      assert.notEqual(result.code, 0);
    }
    const entries = await listLikeGnuTar(archive, format);
    const byName = new Map(entries.map((entry) => [entry.name.replace(/\/$/, ''), entry]));
    assert.equal(byName.get(`./${longDirectory}/file-with-a-long-path.txt`)?.size, 1500);
    assert.equal(byName.get('./hard')?.type, 'hardlink');
    if (format !== 'ustar') assert.equal(byName.get('./long-link')?.linkTarget, longTarget);
  }
});

test('archives written by GNU tar (oldgnu, gnu, posix), Python tarfile (GNU, PAX) and busybox read the same; v7 is refused', async () => {
  const tree = join(work, 'interop');
  await mkdir(join(tree, longDirectory), { recursive: true });
  await writeFile(join(tree, longDirectory, 'big-owner'), 'owned by a uid too large for octal\n');
  await chown(join(tree, longDirectory, 'big-owner'), 3_000_000, 3_000_001);
  await symlink(longTarget, join(tree, 'long-link'));
  await writeFile(join(tree, 'empty'), '');
  const archives: Record<string, string> = {};
  for (const format of ['oldgnu', 'gnu', 'posix']) {
    archives[`gnu-tar-${format}`] = join(work, `interop-${format}.tar`);
    await runCommand('tar', ['--create', `--format=${format}`, '--numeric-owner', `--file=${archives[`gnu-tar-${format}`]}`, '-C', tree, '.']);
  }
  for (const format of ['GNU_FORMAT', 'PAX_FORMAT']) {
    archives[`python-${format}`] = join(work, `interop-${format}.tar`);
    await runCommand('python3', [
      '-c',
      `import tarfile; t = tarfile.open(${JSON.stringify(archives[`python-${format}`])}, 'w', format=tarfile.${format}); t.add(${JSON.stringify(tree)}, arcname='.'); t.close()`,
    ]);
  }
  if ((await runCommand('sh', ['-c', 'command -v busybox'], { allowFailure: true })).code === 0) {
    archives.busybox = join(work, 'interop-busybox.tar');
    await runCommand('sh', ['-c', `cd ${tree} && busybox tar -cf ${archives.busybox} empty long-link`]);
  }
  for (const [writer, archive] of Object.entries(archives)) {
    const entries = await listLikeGnuTar(archive, writer);
    const byName = new Map(entries.map((entry) => [entry.name.replace(/^\.\//, '').replace(/\/$/, ''), entry]));
    assert.equal(byName.get('long-link')?.linkTarget, longTarget, writer);
    assert.equal(byName.get('empty')?.size, 0, writer);
    if (writer !== 'busybox') {
      const owner = byName.get(`${longDirectory}/big-owner`);
      assert.deepEqual([owner?.uid, owner?.gid, owner?.size], [3_000_000, 3_000_001, 35], writer);
    }
  }
  const v7 = join(work, 'interop-v7.tar');
  await runCommand('tar', ['--create', '--format=v7', `--file=${v7}`, '-C', tree, 'empty']);
  await assert.rejects(list(await readFile(v7)), (error: unknown) => error instanceof TorporError && error.code === 'tar-invalid' && /v7/.test(error.message));
});

test('a truncated archive and a file that is not a tar are errors', async () => {
  const archive = await readFile(join(work, 'gnu.tar'));
  // Cut in the middle of the 1500-byte file's data.
  await assert.rejects(
    list(archive.subarray(0, archive.indexOf('x'.repeat(100)) + 700)),
    (error: unknown) => error instanceof TorporError && error.code === 'tar-truncated',
  );
  await assert.rejects(
    list(Buffer.from('this is not a tar archive at all'.repeat(40))),
    (error: unknown) => error instanceof TorporError && error.code === 'tar-invalid',
  );
});
