import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TorporError } from '../util/errors.ts';
import { assertDigest, isDigest } from './digest.ts';
import { readImageRecord, resolveImage, tagImage } from './image-store.ts';
import { cachedBlob, fetchBlob } from '../registry/blob-cache.ts';
import { parseReference } from '../registry/reference.ts';
import type { RegistryClient } from '../registry/registry-client.ts';

// A digest is a file name in the store: `sha256:../../..` must be refused by every entry point
// before it reaches a path, and nothing outside the store may be read or written through one.

let work: string;
const good = `sha256:${'ab'.repeat(32)}`;
const hostile = [
  'sha256:../../../etc',
  `sha256:${'a'.repeat(63)}/`,
  `sha256:${'A'.repeat(64)}`,
  `sha512:${'a'.repeat(64)}`,
  `sha256:${'a'.repeat(64)}\n`,
  'sha256:',
  `sha256:${'a'.repeat(65)}`,
  `sha256:${'0'.repeat(62)}..`,
];

const refused =
  (code = 'invalid-digest') =>
  (error: unknown) =>
    error instanceof TorporError && error.code === code && /is not a sha256 digest/.test(error.message) && !!error.hint;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'torpor-digest-'));
  process.env.TORPOR_HOME = join(work, 'home');
  await mkdir(join(work, 'home/images/refs'), { recursive: true });
  // What a traversal would reach: an image.json outside the store.
  await mkdir(join(work, 'outside'));
  await writeFile(join(work, 'outside/image.json'), '{}');
});

after(async () => {
  await rm(work, { recursive: true, force: true });
  delete process.env.TORPOR_HOME;
});

test('only sha256: and 64 lowercase hex digits is a digest', () => {
  assert.ok(isDigest(good));
  for (const value of [...hostile, 42, undefined, null]) {
    assert.equal(isDigest(value), false, String(value));
    assert.throws(() => assertDigest(value, 'test'), refused());
  }
});

test('the image store, the blob cache, the registry client and references refuse a hostile digest', async () => {
  for (const value of hostile) {
    await assert.rejects(resolveImage(value.startsWith('sha256:') ? value : `sha256:${value}`), refused(), value);
    await assert.rejects(readImageRecord(value), refused(), value);
    await assert.rejects(tagImage('name', value), refused(), value);
    await assert.rejects(cachedBlob(value), refused(), value);
    const unreachable = {
      send() {
        throw new Error('a hostile digest must not reach the network');
      },
    } as unknown as RegistryClient;
    await assert.rejects(fetchBlob(unreachable, 'library/x', { mediaType: 'application/octet-stream', digest: value, size: 1 }), refused(), value);
    // (A command line is trimmed first, so only the trailing-newline case is a valid reference.)
    if (value.trim() === value)
      assert.throws(
        () => parseReference(`alpine@${value}`),
        (error: unknown) => error instanceof TorporError && error.code === 'invalid-reference',
        value,
      );
  }
  // A tampered ref file pointing outside the store is refused too.
  await writeFile(join(work, 'home/images/refs/evil'), '../../../outside\n');
  await assert.rejects(resolveImage('evil'), refused());
  assert.equal(await resolveImage('..'), undefined);
  assert.equal(await resolveImage('.'), undefined);
  assert.deepEqual(await readdir(join(work, 'outside')), ['image.json']);
});
