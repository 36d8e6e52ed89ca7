import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeBusyboxRoot } from './builders/root-skeleton.ts';
import { applyImagePermissions } from './builtin-images.ts';

test('a built-in root made under the CLI umask (077) is readable by non-root users in the guest, /root and /tmp keep their modes', async () => {
  const root = await mkdtemp(join(tmpdir(), 'torpor-skeleton-'));
  const previous = process.umask(0o077);
  try {
    await writeBusyboxRoot(root);
  } finally {
    process.umask(previous);
  }
  const mode = async (path: string) => (await stat(join(root, path))).mode & 0o7777;
  try {
    assert.equal(await mode('run'), 0o700, 'the umask made it private (the bug this guards against)');
    await applyImagePermissions(root);
    assert.equal(await mode(''), 0o755);
    assert.equal(await mode('run'), 0o755);
    assert.equal(await mode('usr/bin'), 0o755);
    assert.equal(await mode('etc/passwd'), 0o644);
    assert.equal(await mode('bin/busybox'), 0o755);
    assert.equal(await mode('root'), 0o700);
    assert.equal(await mode('tmp'), 0o1777);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
