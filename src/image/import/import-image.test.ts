import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, readdir, rm, writeFile, readFile, truncate, cp, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { createHash } from 'node:crypto';
import { ensureDebianPackages } from '../../registry/testing/ensure-debian-packages.ts';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { listImages } from '../image-store.ts';
import { importImage } from './import-image.ts';
import {
  writeFixtureLayerTrees,
  tarDirectory,
  writeOciLayout,
  writeDockerArchive,
  tarOf,
  handWrittenTar,
  type FixtureImage,
} from './testing/image-fixtures.ts';
import { snapshotDirectory, snapshotExt4, ext4Mtime, ext4Xattr, type TreeSnapshot } from './testing/tree-snapshot.ts';

let work: string;
let home: string;
let trees: string[];
let ociImage: FixtureImage;
let umociRoot: TreeSnapshot;

function withoutRoot(snapshot: TreeSnapshot): TreeSnapshot {
  const copy = { ...snapshot };
  delete copy[''];
  return copy;
}

/** Nothing half-written: only finished images, no staging directories, no partial blobs. */
async function assertStoreClean(): Promise<void> {
  const images = join(home, 'images');
  if (!existsSync(images)) return;
  for (const name of await readdir(images)) assert.ok(!name.startsWith('.'), `leftover ${name} in the store`);
  if (existsSync(join(images, 'blobs'))) {
    for (const name of await readdir(join(images, 'blobs'))) assert.ok(!name.endsWith('.partial'), `partial blob ${name}`);
  }
}

async function expectImportError(path: string, code: string, message: RegExp): Promise<void> {
  const before = (await listImages()).length;
  await assert.rejects(importImage(path, { name: 'should-not-exist' }), (error: unknown) => {
    assert.ok(error instanceof TorporError, `expected a TorporError, got ${error}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    return true;
  });
  assert.equal((await listImages()).length, before);
  await assertStoreClean();
}

before(async () => {
  ensureDebianPackages(['tar', 'setfattr', 'debugfs', 'mkfs.ext4', 'umoci']);
  work = await mkdtemp(join(tmpdir(), 'torpor-import-test-'));
  home = join(work, 'home');
  process.env.TORPOR_HOME = home;
  trees = await writeFixtureLayerTrees(work);
  ociImage = {
    layers: [
      { ...(await tarDirectory(trees[0]!, join(work, 'layer-1.tar.gz'), 'gzip')), compression: 'gzip' },
      { ...(await tarDirectory(trees[1]!, join(work, 'layer-2.tar.gz'), 'gzip')), compression: 'gzip' },
      { ...(await tarDirectory(trees[2]!, join(work, 'layer-3.tar.zst'), 'zstd')), compression: 'zstd' },
    ],
  };
  await writeOciLayout(join(work, 'oci'), [ociImage]);
  // umoci is an independent implementation of the same layer rules: its result is the reference.
  // It predates zstd layers, so it gets the same image with the last layer gzipped.
  const gzipOnly: FixtureImage = {
    layers: [...ociImage.layers.slice(0, 2), { ...(await tarDirectory(trees[2]!, join(work, 'layer-3.tar.gz'), 'gzip')), compression: 'gzip' }],
  };
  await writeOciLayout(join(work, 'oci-gzip'), [gzipOnly]);
  await runCommand('umoci', ['unpack', '--image', `${join(work, 'oci-gzip')}:latest`, join(work, 'umoci-bundle')]);
  umociRoot = withoutRoot(await snapshotDirectory(join(work, 'umoci-bundle/rootfs')));
});

after(async () => {
  await rm(work, { recursive: true, force: true });
  delete process.env.TORPOR_HOME;
});

describe('root filesystem tars and directories', () => {
  test('a plain, gzip and zstd tar of the same tree give one image identical to the tree', async () => {
    const digests = new Set<string>();
    for (const compression of ['none', 'gzip', 'zstd'] as const) {
      const { path } = await tarDirectory(trees[0]!, join(work, `rootfs-${compression}.tar`), compression);
      const record = await importImage(path, { name: `rootfs-${compression}` });
      digests.add(record.digest);
      assert.deepEqual(withoutRoot(await snapshotExt4(record.diskPath)), withoutRoot(await snapshotDirectory(trees[0]!)));
      assert.deepEqual(record.config.cmd, ['/bin/sh']);
    }
    assert.equal(digests.size, 1, 'same content, same digest');
    const fromDirectory = await importImage(trees[0]!, { name: 'rootfs-directory' });
    assert.ok(digests.has(fromDirectory.digest));
    const disk = (await listImages()).find((image) => image.name === 'rootfs-zstd')!.diskPath;
    assert.equal(await ext4Xattr(disk, '/data/with-xattr', 'user.test'), 'hello-xattr');
    // Modification times survive too, of files and of directories (set after their content).
    for (const path of ['etc/hostname', 'usr/bin', 'home/user']) {
      assert.equal(await ext4Mtime(disk, `/${path}`), Math.floor((await stat(join(trees[0]!, path))).mtimeMs / 1000), path);
    }
    await assertStoreClean();
  });
});

describe('layered images', () => {
  let ociDigest: string;

  test('an OCI layout directory applies whiteouts, opaque dirs, links and modes like umoci', async () => {
    const record = await importImage(join(work, 'oci'), { name: 'layered:oci' });
    ociDigest = record.digest;
    const ext4 = withoutRoot(await snapshotExt4(record.diskPath));
    assert.deepEqual(ext4, umociRoot);
    // And by hand, so that a shared mistake with umoci would still show.
    assert.equal(ext4['etc/removed'], undefined);
    assert.equal(ext4['opaque/old'], undefined);
    assert.equal(ext4['opaque/sub'], undefined);
    assert.ok(ext4['opaque/new']);
    assert.equal(ext4['replaced']!.mode, '100600');
    assert.equal(ext4['replaced/inner'], undefined);
    assert.equal(ext4['usr/bin/tool']!.mode, '104755');
    assert.equal(ext4['usr/bin/tool']!.linkGroup, 'usr/bin/tool');
    assert.equal(ext4['usr/bin/tool-hardlink']!.linkGroup, 'usr/bin/tool');
    assert.equal(ext4['var/log/app.log.1']!.linkGroup, 'var/log/app.log');
    assert.equal(ext4['usr/bin/tool-absolute']!.content, '-> /usr/bin/tool');
    assert.equal(ext4['usr/bin/tool-relative']!.content, '-> tool');
    assert.deepEqual([ext4['home/user/notes.txt']!.uid, ext4['home/user/notes.txt']!.gid, ext4['home/user/notes.txt']!.mode], [1000, 1000, '100640']);
    assert.equal(ext4['tmp']!.mode, '41777');
    assert.equal(ext4['dev/null']!.mode, '20666');
    assert.equal(ext4['dev/fifo']!.mode, '10600');
    assert.equal(await ext4Xattr(record.diskPath, '/data/with-xattr', 'user.test'), 'hello-xattr');
    assert.deepEqual(record.config, {
      entrypoint: ['/usr/bin/tool'],
      cmd: ['--serve'],
      env: ['PATH=/usr/bin:/bin', 'MODE=test'],
      workingDir: '/home/user',
      user: '1000:1000',
      exposedPorts: ['53/udp', '8080/tcp'],
    });
    assert.match(record.source, /^oci:oci@sha256:/);
  });

  test('extracting on the worker thread gives the same image', async () => {
    process.env.TORPOR_IMPORT_THREAD = '1';
    try {
      assert.equal((await importImage(join(work, 'oci'), { name: 'layered:thread' })).digest, ociDigest);
    } finally {
      delete process.env.TORPOR_IMPORT_THREAD;
    }
  });

  test('the same image as an OCI tar, a docker-save directory and a docker-save tar has the same digest', async () => {
    const ociTar = await tarOf(join(work, 'oci'), join(work, 'oci-image.tar'));
    assert.equal((await importImage(ociTar, { name: 'layered:oci-tar' })).digest, ociDigest);
    const plainLayers: FixtureImage = { layers: [] };
    for (const [index, tree] of trees.entries()) {
      plainLayers.layers.push({ ...(await tarDirectory(tree, join(work, `docker-layer-${index}.tar`))), compression: 'none' });
    }
    await writeDockerArchive(join(work, 'docker'), plainLayers);
    const fromDirectory = await importImage(join(work, 'docker'), { name: 'layered:docker' });
    assert.equal(fromDirectory.digest, ociDigest);
    const dockerTar = await tarOf(join(work, 'docker'), join(work, 'docker-save.tar'));
    assert.equal((await importImage(dockerTar, { name: 'layered:docker-tar' })).digest, ociDigest);
    await assertStoreClean();
  });

  test('an index picks linux/amd64; an index without it is refused', async () => {
    const arm: FixtureImage = { architecture: 'arm64', layers: [ociImage.layers[2]!] };
    await writeOciLayout(join(work, 'multi'), [arm, ociImage]);
    assert.equal((await importImage(join(work, 'multi'), { name: 'layered:multi' })).digest, ociDigest);
    await writeOciLayout(join(work, 'arm-only'), [arm, { ...arm, architecture: 's390x' }]);
    await expectImportError(join(work, 'arm-only'), 'image-platform-missing', /no linux\/amd64 image \(it has: linux\/arm64, linux\/s390x\)/);
  });

  test('a tampered blob, a truncated layer and a wrong diff_id are refused', async () => {
    await cp(join(work, 'oci'), join(work, 'tampered'), { recursive: true });
    const blobs = await readdir(join(work, 'tampered/blobs/sha256'));
    const secondLayerDigest = createHash('sha256')
      .update(await readFile(ociImage.layers[1]!.path))
      .digest('hex');
    assert.ok(blobs.includes(secondLayerDigest));
    const target = join(work, 'tampered/blobs/sha256', secondLayerDigest);
    const bytes = await readFile(target);
    bytes[bytes.length - 10] ^= 0xff;
    await writeFile(target, bytes);
    await expectImportError(join(work, 'tampered'), 'blob-digest-mismatch', /layer 2 sha256:[0-9a-f]{64} is corrupt/);

    const truncatedTar = join(work, 'truncated.tar.gz');
    await writeFile(truncatedTar, gzipSync(await readFile(join(work, 'docker-layer-0.tar'))));
    await truncate(truncatedTar, 300);
    await expectImportError(truncatedTar, 'layer-corrupt', /cannot decompress/);

    const wrongDiff: FixtureImage = { layers: [{ ...ociImage.layers[0]!, diffId: ociImage.layers[1]!.diffId }] };
    await writeOciLayout(join(work, 'wrong-diff'), [wrongDiff]);
    await expectImportError(join(work, 'wrong-diff'), 'layer-digest-mismatch', /uncompressed content is sha256:/);
  });
});

describe('hostile layers', () => {
  let outside: string;

  before(async () => {
    outside = join(work, 'outside');
    await mkdir(outside);
  });

  async function layered(name: string, layers: Buffer[]): Promise<string> {
    const image: FixtureImage = { layers: [] };
    for (const [index, tar] of layers.entries()) {
      const path = join(work, `${name}-${index}.tar`);
      await writeFile(path, tar);
      image.layers.push({ path, diffId: `sha256:${createHash('sha256').update(tar).digest('hex')}`, compression: 'none' });
    }
    await writeOciLayout(join(work, name), [image]);
    return join(work, name);
  }

  test('a member with ../ is refused', async () => {
    const tar = join(work, 'dotdot.tar');
    await writeFile(
      tar,
      handWrittenTar([
        { name: 'etc/', type: 'directory' },
        { name: 'etc/../../escaped', content: 'x' },
      ]),
    );
    await expectImportError(tar, 'layer-unsafe-path', /"etc\/\.\.\/\.\.\/escaped" escapes the root/);
  });

  test('a hard link to a path outside the root is refused', async () => {
    const tar = join(work, 'hardlink.tar');
    await writeFile(
      tar,
      handWrittenTar([
        { name: 'etc/', type: 'directory' },
        { name: 'etc/passwd', type: 'hardlink', linkTarget: '../../../../etc/passwd' },
      ]),
    );
    await expectImportError(tar, 'layer-unsafe-path', /hard link target .* escapes the root/);
  });

  test('a layer cannot write through a symlink planted by a lower layer', async () => {
    const path = await layered('planted', [
      handWrittenTar([{ name: 'escape', type: 'symlink', linkTarget: outside }]),
      handWrittenTar([{ name: 'escape/pwned', content: 'should never land outside' }]),
    ]);
    await expectImportError(path, 'layer-unsafe-path', /"escape\/pwned" would go through the symbolic link "escape"/);
    assert.deepEqual(await readdir(outside), []);
  });

  test('a whiteout cannot delete through a planted symlink', async () => {
    await writeFile(join(outside, 'precious'), 'keep me');
    const path = await layered('whiteout-through', [
      handWrittenTar([{ name: 'escape', type: 'symlink', linkTarget: outside }]),
      handWrittenTar([{ name: 'escape/.wh.precious' }, { name: 'escape/.wh..wh..opq' }]),
    ]);
    await expectImportError(path, 'layer-unsafe-path', /symbolic link "escape"/);
    assert.deepEqual(await readdir(outside), ['precious']);
  });

  test('an absolute symlink is stored as is, and a later layer may replace it with a directory', async () => {
    const path = await layered('replace-link', [
      handWrittenTar([{ name: 'data', type: 'symlink', linkTarget: outside }]),
      handWrittenTar([
        { name: 'data/', type: 'directory' },
        { name: 'data/file', content: 'inside' },
      ]),
    ]);
    const record = await importImage(path, { name: 'replace-link' });
    const snapshot = await snapshotExt4(record.diskPath);
    assert.equal(snapshot['data']!.mode, '40755');
    assert.ok(snapshot['data/file']);
    assert.deepEqual(await readdir(outside), ['precious']);
  });
});
