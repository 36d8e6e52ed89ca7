import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, symlink, writeFile, readFile, link } from 'node:fs/promises';
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
    const result = await runCommand('tar', ['--create', `--format=${format}`, `--file=${archive}`, '--sort=name', '-C', join(work, 'tree'), '.'], { allowFailure: true });
    if (format === 'ustar') {
      // ustar cannot store a 150-character symlink target: GNU tar refuses that member, we list the rest.
      assert.notEqual(result.code, 0);
    }
    const entries = await list(await readFile(archive));
    const expected = (await runCommand('tar', ['--list', `--file=${archive}`])).stdout.trim().split('\n');
    assert.deepEqual(entries.map((entry) => entry.name.replace(/\/$/, '')), expected.map((name) => name.replace(/\/$/, '')), format);
    const byName = new Map(entries.map((entry) => [entry.name.replace(/\/$/, ''), entry]));
    assert.equal(byName.get(`./${longDirectory}/file-with-a-long-path.txt`)?.size, 1500);
    assert.equal(byName.get('./hard')?.type, 'hardlink');
    if (format !== 'ustar') assert.equal(byName.get('./long-link')?.linkTarget, longTarget);
  }
});

test('a truncated archive and a file that is not a tar are errors', async () => {
  const archive = await readFile(join(work, 'gnu.tar'));
  // Cut in the middle of the 1500-byte file's data.
  await assert.rejects(list(archive.subarray(0, archive.indexOf('x'.repeat(100)) + 700)), (error: unknown) => error instanceof TorporError && error.code === 'tar-truncated');
  await assert.rejects(list(Buffer.from('this is not a tar archive at all'.repeat(40))), (error: unknown) => error instanceof TorporError && error.code === 'tar-invalid');
});
