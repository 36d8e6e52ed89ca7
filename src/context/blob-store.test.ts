import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { FileBlobStore, MissingBlobError, blobDigest } from './blob-store.ts';
import { StorageUnavailableError } from './errors.ts';

const directory = mkdtempSync(join(tmpdir(), 'torpor-blob-test-'));
after(() => rmSync(directory, { recursive: true, force: true }));

describe('file blob store', () => {
  it('stores content once under its digest and reads it back', async () => {
    const store = new FileBlobStore(directory);
    const bytes = Buffer.from('hello blobs');
    const first = await store.put(bytes);
    const second = await store.put(bytes);
    assert.deepEqual(first, second);
    assert.equal(first.digest, blobDigest(bytes));
    assert.deepEqual(Buffer.from(await store.get(first)), bytes);
    const hex = first.digest.slice(7);
    assert.deepEqual(readdirSync(join(directory, 'sha256', hex.slice(0, 2))), [hex]);
  });

  it('reports missing and corrupt blobs', async () => {
    const store = new FileBlobStore(directory);
    await assert.rejects(store.get({ digest: blobDigest(Buffer.from('never stored')), size: 1 }), MissingBlobError);
    const reference = await store.put(Buffer.from('will rot'));
    const hex = reference.digest.slice(7);
    writeFileSync(join(directory, 'sha256', hex.slice(0, 2), hex), 'rotted');
    await assert.rejects(store.get(reference), StorageUnavailableError);
    await assert.rejects(store.get({ digest: '../../etc/passwd', size: 1 }), StorageUnavailableError);
  });
});
