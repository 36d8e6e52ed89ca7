import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDebianPackages } from '../../registry/testing/ensure-debian-packages.ts';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { listImages } from '../image-store.ts';
import { importImage } from './import-image.ts';
import { tarOf, writeDockerArchive, writeOciLayout, type FixtureImage } from './testing/image-fixtures.ts';
import { snapshotExt4 } from './testing/tree-snapshot.ts';
import { hostileCorpus, type HostileCase } from './testing/hostile/corpus.ts';
import { archive, member } from './testing/hostile/tar-builder.ts';

// Every archive of the hostile corpus goes through `torpor image import` in each form it can take
// (a root filesystem tar, an OCI layout, a docker-save archive), into a temporary TORPOR_HOME
// next to a canary directory. Whatever the archive does, the canary must not change, the store
// must hold no half-written image, and a refusal must say what was wrong.

let work: string;
let home: string;
let canary: string;
let cases: HostileCase[];

/** Everything about a directory tree (names, types, modes, bytes, link targets), never following links. */
async function fingerprint(root: string): Promise<string> {
  const hash = createHash('sha256');
  const walk = async (path: string) => {
    const info = await lstat(path);
    hash.update(`${path.slice(root.length)} ${info.mode} ${info.uid} ${info.gid} ${info.nlink} ${info.size}\n`);
    if (info.isSymbolicLink()) hash.update(await readlink(path));
    else if (info.isFile()) hash.update(await readFile(path));
    else if (info.isDirectory()) for (const name of (await readdir(path)).sort()) await walk(join(path, name));
  };
  await walk(root);
  return hash.digest('hex');
}

async function assertStoreClean(): Promise<void> {
  const images = join(home, 'images');
  if (!existsSync(images)) return;
  for (const name of await readdir(images)) assert.ok(!name.startsWith('.'), `leftover ${name} in the store`);
}

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const extension = { none: '.tar', gzip: '.tar.gz', zstd: '.tar.zst' } as const;

async function fixtureImage(directory: string, hostile: HostileCase): Promise<FixtureImage> {
  await mkdir(directory, { recursive: true });
  const image: FixtureImage = { layers: [] };
  for (const [index, layer] of hostile.layers.entries()) {
    const path = join(directory, `layer-${index}${extension[layer.compression]}`);
    await writeFile(path, layer.bytes);
    image.layers.push({ path, compression: layer.compression, diffId: layer.diffId ?? sha256(layer.bytes) });
  }
  return image;
}

/** The forms an archive can be imported in: a plain rootfs tar only for one-layer cases. */
async function forms(hostile: HostileCase): Promise<Array<{ form: string; path: string }>> {
  const directory = join(work, 'cases', hostile.name);
  const image = await fixtureImage(join(directory, 'layers'), hostile);
  const result: Array<{ form: string; path: string }> = [];
  if (hostile.layers.length === 1) result.push({ form: 'rootfs tar', path: image.layers[0]!.path });
  await writeOciLayout(join(directory, 'oci'), [image]);
  result.push({ form: 'OCI layout', path: join(directory, 'oci') });
  await writeDockerArchive(join(directory, 'docker'), image);
  result.push({ form: 'docker save', path: await tarOf(join(directory, 'docker'), join(directory, 'docker-save.tar')) });
  return result;
}

before(async () => {
  ensureDebianPackages(['tar', 'debugfs', 'mkfs.ext4']);
  work = await mkdtemp(join(tmpdir(), 'torpor-hostile-'));
  home = join(work, 'home');
  canary = join(work, 'canary');
  process.env.TORPOR_HOME = home;
  await mkdir(canary);
  await writeFile(join(canary, 'precious'), 'the host file every attack aims at\n');
  await mkdir(join(canary, 'sub'));
  cases = hostileCorpus(canary);
});

after(async () => {
  await rm(work, { recursive: true, force: true });
  delete process.env.TORPOR_HOME;
});

describe('the hostile corpus through torpor image import', () => {
  test('every archive is refused with the reason, or imported inside the store; the canary never changes', async () => {
    const canaryBefore = await fingerprint(canary);
    const outcomes: string[] = [];
    for (const hostile of cases) {
      for (const { form, path } of await forms(hostile)) {
        const label = `${hostile.name} as ${form}`;
        const imagesBefore = (await listImages()).length;
        let error: unknown;
        let record;
        try {
          record = await importImage(path, { name: `hostile-${hostile.name}`, limits: hostile.limits });
        } catch (caught) {
          error = caught;
        }
        if (hostile.refused) {
          assert.ok(error instanceof TorporError, `${label}: expected a refusal, got ${error ?? 'an image'}`);
          assert.equal(error.code, hostile.refused.code, `${label}: ${error.message}`);
          assert.match(error.message, hostile.refused.message, label);
          assert.ok(error.hint, `${label}: the error must say what to do`);
          assert.equal((await listImages()).length, imagesBefore, `${label}: nothing stored`);
          outcomes.push(`${label}: refused (${error.code}) ${error.message}`);
        } else {
          assert.equal(error, undefined, `${label}: a legitimate archive must import (${(error as Error | undefined)?.message})`);
          hostile.check?.(await snapshotExt4(record!.diskPath));
          outcomes.push(`${label}: imported ${record!.digest}`);
        }
        await assertStoreClean();
        assert.equal(await fingerprint(canary), canaryBefore, `${label}: the canary directory changed`);
        assert.deepEqual((await readdir(work)).sort(), ['canary', 'cases', 'home'], `${label}: something appeared next to the store`);
      }
    }
    // The full list, for whoever reads the test log: what was refused and why.
    process.stdout.write(`# ${outcomes.join('\n# ')}\n`);
    assert.ok(outcomes.length >= cases.length * 2);
  });
});

describe('the same corpus on the extraction thread (large imports use it)', () => {
  test('every archive gets the same answer from the worker thread as inline', async () => {
    process.env.TORPOR_IMPORT_THREAD = '1';
    try {
      const canaryBefore = await fingerprint(canary);
      for (const hostile of cases) {
        const oci = (await forms(hostile)).find((form) => form.form === 'OCI layout')!;
        const outcome = await importImage(oci.path, { name: `thread-${hostile.name}`, limits: hostile.limits }).then(
          () => undefined,
          (error: unknown) => error,
        );
        if (hostile.refused) {
          assert.ok(outcome instanceof TorporError, `${hostile.name}: expected a refusal, got ${outcome}`);
          assert.equal(outcome.code, hostile.refused.code, `${hostile.name}: ${outcome.message}`);
          assert.match(outcome.message, hostile.refused.message, hostile.name);
        } else {
          assert.equal(outcome, undefined, `${hostile.name}: ${(outcome as Error | undefined)?.message}`);
        }
        await assertStoreClean();
        assert.equal(await fingerprint(canary), canaryBefore, `${hostile.name}: the canary directory changed`);
      }
    } finally {
      delete process.env.TORPOR_IMPORT_THREAD;
    }
  });
});

describe('hostile image archives (the tar around the layers)', () => {
  test('a docker-save archive cannot unpack through a symlink it planted', async () => {
    const path = join(work, 'cases', 'outer-symlink.tar');
    await writeFile(
      path,
      archive(
        member({ name: 'manifest.json', content: '[{"Config":"c.json","Layers":["blobs/layer.tar"]}]' }),
        member({ name: 'blobs', flag: '2', linkTarget: canary }),
        member({ name: 'blobs/layer.tar', content: 'overwrites the host' }),
      ),
    );
    const canaryBefore = await fingerprint(canary);
    await assert.rejects(importImage(path, { name: 'outer' }), (error: unknown) => {
      assert.ok(error instanceof TorporError);
      assert.equal(error.code, 'layer-unsafe-path');
      assert.match(error.message, /outer-symlink\.tar: member "blobs\/layer\.tar" would go through the symbolic link "blobs"/);
      return true;
    });
    assert.equal(await fingerprint(canary), canaryBefore);
    await assertStoreClean();
  });

  test('an OCI archive whose index.json is a link to a host file is refused', async () => {
    const path = join(work, 'cases', 'outer-index-link.tar');
    await writeFile(
      path,
      archive(
        member({ name: 'oci-layout', content: '{"imageLayoutVersion":"1.0.0"}' }),
        member({ name: 'index.json', flag: '2', linkTarget: join(canary, 'precious') }),
      ),
    );
    await assert.rejects(
      importImage(path, { name: 'outer' }),
      (error: unknown) =>
        error instanceof TorporError && error.code === 'image-invalid' && /index\.json is not a regular file inside the archive/.test(error.message),
    );
    await assertStoreClean();
  });

  test('a docker-save archive that links a repeated layer to its first copy imports', async () => {
    const layer = archive(member({ name: 'etc/', flag: '5' }), member({ name: 'etc/hostname', content: 'same layer twice\n' }));
    const config = JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [sha256(layer), sha256(layer)] } });
    const directory = join(work, 'cases', 'docker-repeated');
    await mkdir(join(directory, 'one'), { recursive: true });
    await mkdir(join(directory, 'two'), { recursive: true });
    await writeFile(join(directory, 'one/layer.tar'), layer);
    await symlink('../one/layer.tar', join(directory, 'two/layer.tar'));
    await writeFile(join(directory, 'config.json'), config);
    await writeFile(
      join(directory, 'manifest.json'),
      JSON.stringify([{ Config: 'config.json', RepoTags: ['repeated:1'], Layers: ['one/layer.tar', 'two/layer.tar'] }]),
    );
    const path = await tarOf(directory, join(work, 'cases', 'docker-repeated.tar'));
    const record = await importImage(path, { name: 'repeated' });
    const tree = await snapshotExt4(record.diskPath);
    assert.ok(tree['etc/hostname']);
  });

  test('the CLI prints the reason and a hint for a hostile archive', async () => {
    const hostile = cases.find((candidate) => candidate.name === 'symlink-then-file-lower-layer')!;
    const [, oci] = await forms({ ...hostile, name: `${hostile.name}-cli` });
    const runner = `
      import { Command } from 'commander';
      import { registerImageCommands } from ${JSON.stringify(new URL('../../cli/commands/image.ts', import.meta.url).pathname)};
      const program = new Command('torpor');
      registerImageCommands(program);
      try { await program.parseAsync(process.argv.slice(1), { from: 'user' }); }
      catch (error) { process.stderr.write(JSON.stringify({ code: error.code, message: error.message, hint: error.hint })); process.exitCode = 125; }
    `;
    const result = await runCommand(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', runner, '--', 'image', 'import', oci!.path, '--name', 'evil'],
      {
        allowFailure: true,
        cwd: new URL('../../..', import.meta.url).pathname,
        env: { ...process.env },
      },
    );
    assert.equal(result.code, 125);
    const printed = JSON.parse(result.stderr.slice(result.stderr.indexOf('{"code"'))) as { code: string; message: string; hint: string };
    assert.equal(printed.code, 'layer-unsafe-path');
    assert.match(printed.message, /layer 2\/2 .*"escape\/pwned" would go through the symbolic link "escape"/);
    assert.match(printed.hint, /malicious; nothing was imported/);
  });
});
