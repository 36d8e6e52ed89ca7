import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../util/command.ts';
import { TorporError } from '../util/errors.ts';
import { listImages } from '../image/image-store.ts';
import { resolveOrBuildImage } from '../runtime/image-resolution.ts';
import { writeFixtureLayerTrees, tarDirectory, writeOciLayout, handWrittenTar, type FixtureImage } from '../image/import/testing/image-fixtures.ts';
import { hostileCorpus } from '../image/import/testing/hostile/corpus.ts';
import { snapshotDirectory, snapshotExt4, ext4Xattr, type TreeSnapshot } from '../image/import/testing/tree-snapshot.ts';
import { ensureDebianPackages } from './testing/ensure-debian-packages.ts';
import { startLocalRegistry, pushLayout, freePort, type LocalRegistry } from './testing/local-registry.ts';
import { startFaultProxy, type Fault } from './testing/fault-proxy.ts';
import { pullImage, type PullOptions } from './pull.ts';
import { login } from './login.ts';
import { pushImage } from './push.ts';
import { torporAuthPath } from './credentials.ts';
import { createPullReporter } from './pull-progress.ts';

let work: string;
let registry: LocalRegistry;
let privateRegistry: LocalRegistry;
let layeredDigest: string;
let bigLayerDigest: string;
let bigLayerSize: number;
let canary: string;
const fast: PullOptions = { retry: { attempts: 3, delayMs: 10 } };

function withoutRoot(snapshot: TreeSnapshot): TreeSnapshot {
  const copy = { ...snapshot };
  delete copy[''];
  return copy;
}

/** Each test that counts downloads or injects faults gets an empty store, so nothing is cached. */
async function freshHome(): Promise<string> {
  const home = await mkdtemp(join(work, 'home-'));
  process.env.TORPOR_HOME = home;
  return home;
}

async function storeContents(home: string): Promise<{ images: number; layers: string[]; staging: string[]; downloads: string[] }> {
  const list = async (path: string) => (existsSync(path) ? readdir(path) : []);
  return {
    images: (await listImages()).length,
    layers: await list(join(home, 'images/layers/sha256')),
    staging: (await list(join(home, 'images'))).filter((name) => name.startsWith('.')),
    downloads: await list(join(home, 'images/downloads')),
  };
}

async function expectPullError(reference: string, code: string, message: RegExp, options: PullOptions = fast): Promise<TorporError> {
  let caught: TorporError | undefined;
  await assert.rejects(pullImage(reference, options), (error: unknown) => {
    assert.ok(error instanceof TorporError, `expected a TorporError, got ${(error as Error)?.stack}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, message);
    assert.ok(error.hint, 'every error says what to do');
    caught = error;
    return true;
  });
  return caught!;
}

before(async () => {
  ensureDebianPackages();
  work = await mkdtemp(join(tmpdir(), 'torpor-pull-test-'));
  await freshHome();
  [registry, privateRegistry] = await Promise.all([startLocalRegistry(), startLocalRegistry({ user: 'alice', password: 's3cret' })]);
  const trees = await writeFixtureLayerTrees(work);
  const gzipLayers: FixtureImage = { layers: [] };
  for (const [index, tree] of trees.entries())
    gzipLayers.layers.push({ ...(await tarDirectory(tree, join(work, `layer-${index}.tar.gz`), 'gzip')), compression: 'gzip' });
  const zstdLayers: FixtureImage = {
    layers: [...gzipLayers.layers.slice(0, 2), { ...(await tarDirectory(trees[2]!, join(work, 'layer-2.tar.zst'), 'zstd')), compression: 'zstd' }],
  };
  const armTree = join(work, 'arm-tree');
  await mkdir(join(armTree, 'etc'), { recursive: true });
  await writeFile(join(armTree, 'etc/arch'), 'arm64\n');
  const arm: FixtureImage = { architecture: 'arm64', layers: [{ ...(await tarDirectory(armTree, join(work, 'arm.tar.gz'), 'gzip')), compression: 'gzip' }] };
  const bigTree = join(work, 'big-tree');
  await mkdir(bigTree);
  await writeFile(join(bigTree, 'random.bin'), randomBytes(512 * 1024));
  const big: FixtureImage = { layers: [{ ...(await tarDirectory(bigTree, join(work, 'big.tar.gz'), 'gzip')), compression: 'gzip' }] };
  const bigBytes = await import('node:fs/promises').then((fs) => fs.readFile(join(work, 'big.tar.gz')));
  bigLayerDigest = `sha256:${createHash('sha256').update(bigBytes).digest('hex')}`;
  bigLayerSize = bigBytes.length;
  const hostileTar = handWrittenTar([
    { name: 'etc/', type: 'directory' },
    { name: 'etc/../../escaped', content: 'x' },
  ]);
  await writeFile(join(work, 'hostile.tar'), hostileTar);
  const hostile: FixtureImage = {
    layers: [{ path: join(work, 'hostile.tar'), diffId: `sha256:${createHash('sha256').update(hostileTar).digest('hex')}`, compression: 'none' }],
  };

  // Three archives of the hostile corpus, aimed at a canary directory next to the stores.
  canary = join(work, 'canary');
  await mkdir(canary);
  await writeFile(join(canary, 'precious'), 'keep\n');
  const corpus = new Map(hostileCorpus(canary).map((entry) => [entry.name, entry]));
  const corpusImage = async (name: string): Promise<FixtureImage> => {
    const image: FixtureImage = { layers: [] };
    for (const [index, layer] of corpus.get(name)!.layers.entries()) {
      const path = join(work, `${name}-${index}.tar${layer.compression === 'gzip' ? '.gz' : layer.compression === 'zstd' ? '.zst' : ''}`);
      await writeFile(path, layer.bytes);
      image.layers.push({ path, compression: layer.compression, diffId: layer.diffId ?? `sha256:${createHash('sha256').update(layer.bytes).digest('hex')}` });
    }
    return image;
  };

  const layouts: Array<[string, FixtureImage[]]> = [
    ['layered', [gzipLayers]],
    ['multi', [arm, gzipLayers]],
    ['zstd', [zstdLayers]],
    ['arm', [arm, { ...arm, architecture: 'ppc64le' }]],
    ['big', [big]],
    ['hostile', [hostile]],
    ['planted', [await corpusImage('symlink-then-file-lower-layer')]],
    ['garbage-size', [await corpusImage('size-trailing-garbage')]],
    ['gzip-bomb', [await corpusImage('gzip-bomb')]],
  ];
  await Promise.all(
    layouts.map(async ([name, images]) => {
      await writeOciLayout(join(work, `layout-${name}`), images);
      await pushLayout(join(work, `layout-${name}`), 'latest', `${registry.address}/fixture/${name}:1`);
    }),
  );
  await pushLayout(join(work, 'layout-layered'), 'latest', `${privateRegistry.address}/private/layered:1`, 'alice:s3cret');
});

after(async () => {
  await Promise.all([registry?.stop(), privateRegistry?.stop()]);
  await rm(work, { recursive: true, force: true });
  delete process.env.TORPOR_HOME;
});

describe('pulling from a registry', () => {
  test('a pulled image has the same files, modes, owners and links as skopeo copy + umoci unpack', async () => {
    const reference = `${registry.address}/fixture/layered:1`;
    const record = await pullImage(reference, fast);
    layeredDigest = record.digest;
    assert.equal(record.name, reference);
    assert.match(record.source, new RegExp(`^registry:${registry.address}/fixture/layered@sha256:[0-9a-f]{64}$`));
    assert.deepEqual(record.config.entrypoint, ['/usr/bin/tool']);
    assert.deepEqual(record.config.exposedPorts, ['53/udp', '8080/tcp']);
    await runCommand('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reference}`, `oci:${join(work, 'skopeo-layout')}:1`]);
    await runCommand('umoci', ['unpack', '--image', `${join(work, 'skopeo-layout')}:1`, join(work, 'umoci-bundle')]);
    const reference_ = withoutRoot(await snapshotDirectory(join(work, 'umoci-bundle/rootfs')));
    const pulled = withoutRoot(await snapshotExt4(record.diskPath));
    assert.deepEqual(pulled, reference_);
    assert.equal(pulled['usr/bin/tool-hardlink']!.linkGroup, 'usr/bin/tool');
    assert.equal(pulled['etc/removed'], undefined);
    assert.equal((await listImages()).find((image) => image.name === reference)?.digest, record.digest);
  });

  test('an index gives linux/amd64, and layers already cached are not downloaded again', async () => {
    const proxy = await startFaultProxy(registry.address, () => ({ kind: 'pass' }));
    try {
      const record = await pullImage(`${proxy.address}/fixture/multi:1`, fast);
      assert.equal(record.digest, layeredDigest);
      // The amd64 image is the one pulled before: its config and layers all come from the cache.
      assert.deepEqual(
        proxy.requests.filter((request) => request.path.includes('/blobs/')),
        [],
      );
      assert.equal(proxy.requests.filter((request) => request.path.includes('/manifests/')).length, 2);
    } finally {
      await proxy.stop();
    }
  });

  test('Docker media types (schema 2 manifest and manifest list) pull like OCI ones', async () => {
    for (const name of ['layered', 'multi']) {
      await runCommand('skopeo', [
        'copy',
        '--quiet',
        '--all',
        '--format',
        'v2s2',
        '--src-tls-verify=false',
        '--dest-tls-verify=false',
        `docker://${registry.address}/fixture/${name}:1`,
        `docker://${registry.address}/docker-format/${name}:1`,
      ]);
      const manifest = JSON.parse(
        (await runCommand('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${registry.address}/docker-format/${name}:1`])).stdout,
      );
      assert.equal(manifest.mediaType, `application/vnd.docker.distribution.manifest.${name === 'multi' ? 'list.v2' : 'v2'}+json`);
      assert.equal((await pullImage(`${registry.address}/docker-format/${name}:1`, fast)).digest, layeredDigest);
    }
  });

  test('a zstd layer gives the same tree as its gzip twin', async () => {
    const record = await pullImage(`${registry.address}/fixture/zstd:1`, fast);
    assert.equal(record.digest, layeredDigest);
  });

  test('a digest pins the manifest; a digest the registry does not have is not found', async () => {
    const source = (await listImages()).find((image) => image.name === `${registry.address}/fixture/layered:1`)!.source;
    const pinned = source.replace(/^registry:/, '');
    const record = await pullImage(pinned, fast);
    assert.equal(record.name, pinned);
    assert.equal(record.digest, layeredDigest);
    await expectPullError(`${registry.address}/fixture/layered@sha256:${'0'.repeat(64)}`, 'image-not-found', /not found \(MANIFEST_UNKNOWN/);
  });

  test('run falls back to a pull for a registry name, and leaves local names alone', async () => {
    const home = await freshHome();
    const record = await resolveOrBuildImage(`${registry.address}/fixture/layered:1`);
    assert.equal(record?.digest, layeredDigest);
    assert.equal(await resolveOrBuildImage('no-such-local-image'), undefined);
    assert.equal((await storeContents(home)).images, 1);
  });

  test('progress: a plain line per step when stderr is not a terminal', async () => {
    await freshHome();
    const lines: string[] = [];
    const sink = {
      isTTY: false,
      write: (text: string) => {
        lines.push(text);
        return true;
      },
    } as unknown as NodeJS.WriteStream;
    await pullImage(`${registry.address}/fixture/big:1`, { ...fast, reporter: createPullReporter(sink) });
    const output = lines.join('');
    assert.match(output, new RegExp(`${bigLayerDigest.slice(0, 19)}: downloading \\(0\\.\\d MiB\\)`));
    assert.match(output, new RegExp(`${bigLayerDigest.slice(0, 19)}: done`));
    assert.match(output, /pulled .*fixture\/big:1 \(sha256:/);
    assert.ok(!output.includes('\x1b['), 'no terminal escapes in a log');
  });
});

describe('authentication', () => {
  test('a private registry needs login; wrong passwords are refused; stored credentials work', async () => {
    const home = await freshHome();
    const reference = `${privateRegistry.address}/private/layered:1`;
    const denied = await expectPullError(reference, 'registry-unauthorized', /requires authentication/);
    assert.match(denied.hint!, /torpor login/);
    await assert.rejects(login(privateRegistry.address, { username: 'alice', password: 'wrong' }, fast), /refused the credentials/);
    assert.equal(existsSync(torporAuthPath()), false);
    await login(privateRegistry.address, { username: 'alice', password: 's3cret' }, fast);
    assert.equal((await stat(torporAuthPath())).mode & 0o777, 0o600);
    assert.equal((await pullImage(reference, fast)).digest, layeredDigest);
    assert.equal((await storeContents(home)).images, 1);
  });

  test('credentials from ~/.docker/config.json are used', async () => {
    await freshHome();
    const dockerConfig = join(work, 'docker-config');
    await mkdir(dockerConfig, { recursive: true });
    await writeFile(
      join(dockerConfig, 'config.json'),
      JSON.stringify({ auths: { [`http://${privateRegistry.address}`]: { auth: Buffer.from('alice:s3cret').toString('base64') } } }),
    );
    process.env.DOCKER_CONFIG = dockerConfig;
    try {
      assert.equal((await pullImage(`${privateRegistry.address}/private/layered:1`, fast)).digest, layeredDigest);
    } finally {
      delete process.env.DOCKER_CONFIG;
    }
  });

  test('an anonymous bearer token is fetched from the WWW-Authenticate challenge', async () => {
    await freshHome();
    const proxy = await startFaultProxy(registry.address, () => ({ kind: 'pass' }), { bearer: true });
    try {
      assert.equal((await pullImage(`${proxy.address}/fixture/layered:1`, fast)).digest, layeredDigest);
      const tokenRequests = proxy.requests.filter((request) => request.path.startsWith('/token'));
      assert.ok(tokenRequests.length >= 1);
      assert.match(tokenRequests[0]!.path, /service=test-registry&scope=repository%3Afixture%2Flayered%3Apull/);
      assert.ok(proxy.requests.filter((request) => request.path.includes('/blobs/')).every((request) => request.authorization === 'Bearer granted-token'));
    } finally {
      await proxy.stop();
    }
  });

  test('a token service that wants credentials gets those stored by login', async () => {
    await freshHome();
    const proxy = await startFaultProxy(registry.address, () => ({ kind: 'pass' }), {
      bearer: true,
      tokenCredentials: { user: 'bob', password: 'token-pass' },
    });
    try {
      await expectPullError(`${proxy.address}/fixture/layered:1`, 'registry-unauthorized', /requires authentication/);
      await assert.rejects(login(proxy.address, { username: 'bob', password: 'nope' }, fast), /refused the credentials/);
      await login(proxy.address, { username: 'bob', password: 'token-pass' }, fast);
      assert.equal((await pullImage(`${proxy.address}/fixture/layered:1`, fast)).digest, layeredDigest);
    } finally {
      await proxy.stop();
    }
  });
});

describe('failures leave nothing half-written', () => {
  test('unknown repository, unknown tag, no linux/amd64, a hostile layer', async () => {
    const home = await freshHome();
    await expectPullError(`${registry.address}/fixture/nothing:1`, 'image-not-found', /fixture\/nothing:1 not found \((NAME|MANIFEST)_UNKNOWN/);
    await expectPullError(`${registry.address}/fixture/layered:nope`, 'image-not-found', /layered:nope not found \(MANIFEST_UNKNOWN/);
    await expectPullError(`${registry.address}/fixture/arm:1`, 'image-platform-missing', /no linux\/amd64 image \(it has: linux\/arm64, linux\/ppc64le\)/);
    await expectPullError(`${registry.address}/fixture/hostile:1`, 'layer-unsafe-path', /escapes the root/);
    const contents = await storeContents(home);
    assert.equal(contents.images, 0);
    assert.deepEqual(contents.staging, []);
    assert.deepEqual(contents.downloads, []);
  });

  test('hostile images: a planted symlink, a size field with garbage, a gzip bomb, a manifest over the limit', async () => {
    const home = await freshHome();
    await expectPullError(
      `${registry.address}/fixture/planted:1`,
      'layer-unsafe-path',
      /layer 2\/2 .*"escape\/pwned" would go through the symbolic link "escape"/,
    );
    await expectPullError(`${registry.address}/fixture/garbage-size:1`, 'tar-invalid', /layer 2\/2 .*size field "00000002000x"/);
    await expectPullError(`${registry.address}/fixture/gzip-bomb:1`, 'layer-too-large', /uncompressed layer exceeds the limit of 8 MiB/, {
      ...fast,
      limits: { maxLayerBytes: 8 * 1024 * 1024 },
    });
    await expectPullError(`${registry.address}/fixture/big:1`, 'layer-too-large', /compressed layers \(\d+ bytes\) exceeds the limit of 1 KiB/, {
      ...fast,
      limits: { maxImageBytes: 1024 },
    });
    const contents = await storeContents(home);
    assert.equal(contents.images, 0);
    assert.deepEqual(contents.staging, []);
    assert.deepEqual(contents.downloads, []);
    assert.ok(!contents.layers.includes(bigLayerDigest.slice(7)), 'a layer over the limit is not even downloaded');
    assert.deepEqual(await readdir(canary), ['precious']);
    assert.equal(await readFile(join(canary, 'precious'), 'utf8'), 'keep\n');
  });

  test('a registry that is down gives a clear error after the retries', async () => {
    const port = await freePort();
    const started = Date.now();
    await expectPullError(
      `127.0.0.1:${port}/fixture/layered:1`,
      'registry-unreachable',
      new RegExp(`cannot reach registry 127.0.0.1:${port} \\(connection refused\\) after 3 attempts`),
    );
    assert.ok(Date.now() - started < 5000);
  });

  test('a connection cut mid-blob and a 500 are retried, resuming with a Range request', async () => {
    await freshHome();
    let blobGets = 0;
    const proxy = await startFaultProxy(registry.address, (request): Fault => {
      if (!request.url!.includes(`/blobs/${bigLayerDigest}`)) return { kind: 'pass' };
      blobGets++;
      if (blobGets === 1) return { kind: 'cut', afterBytes: bigLayerSize >> 1 };
      if (blobGets === 2) return { kind: 'status', status: 500 };
      return { kind: 'pass' };
    });
    try {
      await pullImage(`${proxy.address}/fixture/big:1`, fast);
      const ranges = proxy.requests.filter((request) => request.path.includes(bigLayerDigest)).map((request) => request.range);
      assert.deepEqual(ranges, [undefined, `bytes=${bigLayerSize >> 1}-`, `bytes=${bigLayerSize >> 1}-`]);
    } finally {
      await proxy.stop();
    }
  });

  test('a blob that keeps failing is an error; its partial download is resumed by the next pull', async () => {
    const home = await freshHome();
    const failing = await startFaultProxy(registry.address, (request): Fault =>
      request.url!.includes(`/blobs/${bigLayerDigest}`) ? { kind: 'cut', afterBytes: 100_000 } : { kind: 'pass' },
    );
    try {
      await expectPullError(`${failing.address}/fixture/big:1`, 'download-failed', /keeps breaking off/);
    } finally {
      await failing.stop();
    }
    let contents = await storeContents(home);
    assert.equal(contents.images, 0);
    assert.deepEqual(contents.staging, []);
    assert.ok(!contents.layers.includes(bigLayerDigest.slice(7)), 'an incomplete blob never enters the cache');
    assert.deepEqual(contents.downloads, [`${bigLayerDigest.slice(7)}.partial`]);
    const partialSize = (await stat(join(home, 'images/downloads', `${bigLayerDigest.slice(7)}.partial`))).size;
    assert.equal(partialSize, 300_000, 'each of the 3 attempts resumed where the previous one broke off');
    const healthy = await startFaultProxy(registry.address, () => ({ kind: 'pass' }));
    try {
      await pullImage(`${healthy.address}/fixture/big:1`, fast);
      assert.deepEqual(
        healthy.requests.filter((request) => request.path.includes(bigLayerDigest)).map((request) => request.range),
        [`bytes=${partialSize}-`],
      );
    } finally {
      await healthy.stop();
    }
    contents = await storeContents(home);
    assert.equal(contents.images, 1);
    assert.deepEqual(contents.downloads, []);
  });

  test('a tampered blob and a registry that keeps answering 500 are errors, and nothing is cached', async () => {
    const home = await freshHome();
    const tampering = await startFaultProxy(registry.address, (request): Fault =>
      request.url!.includes(`/blobs/${bigLayerDigest}`) ? { kind: 'tamper' } : { kind: 'pass' },
    );
    try {
      await expectPullError(`${tampering.address}/fixture/big:1`, 'blob-digest-mismatch', /is corrupt: its content hashes to/);
    } finally {
      await tampering.stop();
    }
    const broken = await startFaultProxy(registry.address, (request): Fault =>
      request.url!.includes('/blobs/') ? { kind: 'status', status: 500 } : { kind: 'pass' },
    );
    try {
      await expectPullError(`${broken.address}/fixture/big:1`, 'registry-error', /keeps failing: UNKNOWN: injected failure \(after 3 attempts\)/);
    } finally {
      await broken.stop();
    }
    const contents = await storeContents(home);
    assert.equal(contents.images, 0);
    assert.ok(!contents.layers.includes(bigLayerDigest.slice(7)), 'a corrupt blob never enters the cache');
    assert.deepEqual(contents.staging, []);
    assert.deepEqual(
      contents.downloads.filter((name) => name.endsWith('.partial')),
      [],
    );
  });
});

describe('push', () => {
  test('an image pushed as one layer pulls back to the same tree, xattrs and all', async () => {
    await freshHome();
    const original = await pullImage(`${registry.address}/fixture/layered:1`, fast);
    const originalSnapshot = await snapshotExt4(original.diskPath);
    const pushed = await pushImage(original.name!, `${registry.address}/pushed/layered:2`, fast);
    assert.match(pushed.digest, /^sha256:[0-9a-f]{64}$/);
    const inspected = JSON.parse((await runCommand('skopeo', ['inspect', '--tls-verify=false', `docker://${registry.address}/pushed/layered:2`])).stdout);
    assert.equal(inspected.Layers.length, 1);
    assert.equal(inspected.Digest, pushed.digest);
    await freshHome();
    const back = await pullImage(`${registry.address}/pushed/layered:2`, fast);
    assert.deepEqual(withoutRoot(await snapshotExt4(back.diskPath)), withoutRoot(originalSnapshot));
    assert.equal(back.digest, original.digest);
    assert.deepEqual(back.config, original.config);
    assert.equal(await ext4Xattr(back.diskPath, '/data/with-xattr', 'user.test'), 'hello-xattr');
    assert.equal(withoutRoot(await snapshotExt4(back.diskPath))['usr/bin/tool']!.mode, '104755');
    // Reproducible: pushing the same image again uploads nothing new and gives the same manifest.
    const again = await pushImage(back.name!, `${registry.address}/pushed/layered:3`, fast);
    assert.equal(again.digest, pushed.digest);
  });
});
