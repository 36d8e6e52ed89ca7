import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathIsPresent } from './path-exists.ts';

test('pathIsPresent: false only for ENOENT, other failures thrown; stat follows links, lstat does not', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'torpor-path-'));
  try {
    const file = join(directory, 'file');
    await writeFile(file, 'x');
    await symlink(join(directory, 'nowhere'), join(directory, 'dangling'));
    assert.equal(await pathIsPresent(file), true);
    assert.equal(await pathIsPresent(join(directory, 'missing')), false);
    assert.equal(await pathIsPresent(join(directory, 'dangling')), false, 'stat: a dangling link leads nowhere');
    assert.equal(await pathIsPresent(join(directory, 'dangling'), lstat), true, 'lstat: the link itself is there');
    // A path through a regular file is ENOTDIR: not "missing", so the caller hears of it.
    await assert.rejects(pathIsPresent(join(file, 'below')), (error: NodeJS.ErrnoException) => error.code === 'ENOTDIR');
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
});
