// Pull + unpack of a ~100 MiB multi-layer image from a loopback registry: torpor against
// `skopeo copy` + `umoci unpack` on the same image in the same run. Run by hand:
//   node --import tsx bench/pull.ts [runs]     (as root; installs docker-registry, skopeo, umoci if missing)
import { mkdtemp, mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { cpus, totalmem, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runCommand } from '../src/util/command.ts';
import { ensureDebianPackages } from '../src/registry/testing/ensure-debian-packages.ts';
import { startLocalRegistry, pushLayout } from '../src/registry/testing/local-registry.ts';
import { tarDirectory, writeOciLayout, type FixtureImage } from '../src/image/import/testing/image-fixtures.ts';
import { pullImage } from '../src/registry/pull.ts';

const runs = Number(process.argv[2] ?? 3);
const MiB = 1024 * 1024;

/** Text that compresses like source code and docs do (about 4:1 with gzip). */
function textLike(bytes: number): Buffer {
  const words = ['const', 'return', 'function', 'import', 'export', 'value', 'layer', 'image', 'torpor', 'agent', '{', '}', '(', ')', ';', '\n'];
  const parts: string[] = [];
  let length = 0;
  const seed = randomBytes(bytes);
  for (let index = 0; length < bytes; index++) {
    const word =
      words[seed[index % seed.length]! % words.length]! + (seed[(index * 7) % seed.length]! % 3 === 0 ? String(seed[index % seed.length]) : '') + ' ';
    parts.push(word);
    length += word.length;
  }
  return Buffer.from(parts.join('').slice(0, bytes));
}

async function writeTree(root: string, files: number, bytesPerFile: number, kind: 'random' | 'text'): Promise<void> {
  for (let index = 0; index < files; index++) {
    const directory = join(root, `usr/lib/bench/d${index % 50}`);
    await mkdir(directory, { recursive: true });
    await writeFile(join(directory, `f${index}`), kind === 'random' ? randomBytes(bytesPerFile) : textLike(bytesPerFile));
  }
}

async function timed<T>(work: () => Promise<T>): Promise<[T, number]> {
  const started = performance.now();
  const result = await work();
  return [result, (performance.now() - started) / 1000];
}

async function main(): Promise<void> {
  ensureDebianPackages(['tar', 'mkfs.ext4', 'docker-registry', 'skopeo', 'umoci']);
  const work = await mkdtemp(join(tmpdir(), 'torpor-bench-pull-'));
  const registry = await startLocalRegistry();
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(line + '\n');
  };
  try {
    const layerSpecs: Array<[number, number, 'random' | 'text']> = [
      [40, MiB, 'random'],
      [1000, 30 * 1024, 'text'],
      [2000, 10 * 1024, 'random'],
      [200, 50 * 1024, 'text'],
    ];
    const image: FixtureImage = { layers: [] };
    for (const [index, [files, size, kind]] of layerSpecs.entries()) {
      const tree = join(work, `tree-${index}`);
      await writeTree(tree, files, size, kind);
      image.layers.push({ ...(await tarDirectory(tree, join(work, `layer-${index}.tar.gz`), 'gzip')), compression: 'gzip' });
    }
    await writeOciLayout(join(work, 'layout'), [image]);
    const reference = `${registry.address}/bench/image:1`;
    await pushLayout(join(work, 'layout'), 'latest', reference);
    let compressed = 0;
    for (const layer of image.layers) compressed += (await readFile(layer.path)).length;
    const uncompressed = layerSpecs.reduce((sum, [files, size]) => sum + files * size, 0);

    say(`# torpor pull benchmark, ${new Date().toISOString().slice(0, 10)}`);
    say(
      `machine: ${cpus().length} cores (${cpus()[0]?.model.trim()}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}`,
    );
    say(
      `tools: ${(await runCommand('skopeo', ['--version'])).stdout.trim()}, ${(await runCommand('umoci', ['--version'])).stdout.trim()}, ${(await runCommand('tar', ['--version'])).stdout.split('\n')[0]}`,
    );
    say(
      `image: ${image.layers.length} gzip layers, ${(compressed / MiB).toFixed(1)} MiB compressed, ${(uncompressed / MiB).toFixed(1)} MiB of file data in ${layerSpecs.reduce((sum, [files]) => sum + files, 0)} files`,
    );
    say('registry: docker-registry (distribution 2.8) on 127.0.0.1, plain HTTP, filesystem storage');
    say(
      'torpor = manifest + verified blob download + layer application + ext4 image (mkfs.ext4 -d); skopeo+umoci = OCI layout + rootfs directory (no disk image)',
    );
    say('');
    say(
      'torpor-cold is split into: download (manifest, blobs, sha256) | layers (strict one-pass extractor, see bench/image-import.ts) | hash (tree digest) | ext4 (mkfs.ext4 -d)',
    );
    say('torpor-cached: same image again with its layers in the blob cache but the ext4 removed (no network)');
    say('');
    say('run  torpor-cold  download  layers   hash     ext4     torpor-cached  skopeo-copy  umoci-unpack  skopeo+umoci');
    for (let run = 1; run <= runs; run++) {
      const home = join(work, `home-${run}`);
      process.env.TORPOR_HOME = home;
      const marks = new Map<string, number>();
      const started = performance.now();
      const [, cold] = await timed(() =>
        pullImage(reference, {
          reporter: {
            step(message) {
              const key = message.startsWith('applying layer 1/')
                ? 'layers'
                : message.startsWith('hashing')
                  ? 'hash'
                  : message.startsWith('writing ext4')
                    ? 'ext4'
                    : undefined;
              if (key && !marks.has(key)) marks.set(key, (performance.now() - started) / 1000);
            },
            layer() {},
            endLayers() {},
          },
        }),
      );
      // Same layers already in the cache, image content already stored: what a re-pull costs.
      await runCommand('sh', ['-c', `rm -rf ${join(home, 'images/blobs')} ${join(home, 'images/refs')}`]);
      const [, cached] = await timed(() => pullImage(reference, {}));
      await rm(home, { recursive: true, force: true });

      const layout = join(work, `skopeo-${run}`);
      const [, skopeo] = await timed(() => runCommand('skopeo', ['copy', '--quiet', '--src-tls-verify=false', `docker://${reference}`, `oci:${layout}:1`]));
      const [, umoci] = await timed(() => runCommand('umoci', ['unpack', '--image', `${layout}:1`, join(work, `bundle-${run}`)]));
      await rm(layout, { recursive: true, force: true });
      await rm(join(work, `bundle-${run}`), { recursive: true, force: true });
      const f = (seconds: number) => `${seconds.toFixed(2)}s`;
      const [layers, hash, ext4] = [marks.get('layers')!, marks.get('hash')!, marks.get('ext4')!];
      say(
        `${String(run).padEnd(4)} ${f(cold).padEnd(12)} ${f(layers).padEnd(9)} ${f(hash - layers).padEnd(8)} ${f(ext4 - hash).padEnd(8)} ${f(cold - ext4).padEnd(8)} ${f(cached).padEnd(14)} ${f(skopeo).padEnd(12)} ${f(umoci).padEnd(13)} ${f(skopeo + umoci)}`,
      );
    }
  } finally {
    await registry.stop();
    await rm(work, { recursive: true, force: true });
    delete process.env.TORPOR_HOME;
  }
}

await main();
