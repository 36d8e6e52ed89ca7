import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { replaceFile } from './atomic-file.ts';

test('replaceFile: a reader racing many replacements sees one whole version or another, never a mix or a half', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-replace-'));
  try {
    const path = join(directory, 'state.json');
    const version = (n: number) => JSON.stringify({ n, padding: String(n % 10).repeat(200_000) });
    await replaceFile(path, version(0));
    let writing = true;
    const writer = (async () => {
      for (let n = 1; n <= 40; n++) await replaceFile(path, version(n));
      writing = false;
    })();
    let reads = 0;
    while (writing) {
      const text = await readFile(path, 'utf8');
      const parsed = JSON.parse(text) as { n: number; padding: string };
      assert.equal(parsed.padding, String(parsed.n % 10).repeat(200_000), 'a whole version');
      reads++;
    }
    await writer;
    assert.ok(reads > 0);
    assert.equal((JSON.parse(await readFile(path, 'utf8')) as { n: number }).n, 40);
    assert.deepEqual(await readdir(directory), ['state.json'], 'no temporary file is left');
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
});

test('replaceFile: a replacement that cannot be made leaves the old target and no temporary file', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-replace-'));
  try {
    // A directory where the file should go: the rename fails.
    const path = join(directory, 'state.json');
    await mkdir(join(path, 'inside'), { recursive: true });
    await assert.rejects(replaceFile(path, 'new'));
    assert.deepEqual(await readdir(directory), ['state.json']);
    assert.deepEqual(await readdir(path), ['inside'], 'the old target is untouched');
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
});
