// Layer application and `torpor image import` of a docker-save archive: the one-pass strict
// extractor against the old path (listing pass + GNU tar) and against skopeo + umoci, on the same
// image in the same run. Run by hand, as root:
//   node --import tsx bench/image-import.ts [runs]     (installs skopeo and umoci if missing)
import { mkdir, mkdtemp, readFile, rm, symlink, link, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { runCommand } from '../src/util/command.ts';
import { ensureDebianPackages } from '../src/registry/testing/ensure-debian-packages.ts';
import { tarDirectory, tarOf, writeDockerArchive, writeOciLayout, type FixtureImage } from '../src/image/import/testing/image-fixtures.ts';
import { applyLayer } from '../src/image/import/apply-layer.ts';
import { ExtractThread } from '../src/image/import/extract-thread.ts';
import { fileLayer } from '../src/image/import/image-layout.ts';
import { importImage } from '../src/image/import/import-image.ts';
import { applyLayer as legacyApplyLayer } from './legacy/gnu-tar-apply-layer.ts';
import { MiB, sorted } from './support.ts';

const runs = Number(process.argv[2] ?? 5);

/** Text that compresses like source code and docs do (about 4:1 with gzip). */
function textLike(bytes: number): Buffer {
  const words = ['const', 'return', 'function', 'import', 'export', 'value', 'layer', 'image', 'torpor', 'agent', '{', '}', '(', ')', ';', '\n'];
  const seed = randomBytes(Math.max(bytes, 64));
  const parts: string[] = [];
  let length = 0;
  for (let index = 0; length < bytes; index++) {
    const word = words[seed[index % seed.length]! % words.length]! + ' ';
    parts.push(word);
    length += word.length;
  }
  return Buffer.from(parts.join('').slice(0, bytes));
}

async function writeTree(root: string, files: number, bytesPerFile: number, kind: 'random' | 'text', extras = false): Promise<void> {
  for (let index = 0; index < files; index++) {
    const directory = join(root, `usr/lib/bench/d${index % 50}`);
    await mkdir(directory, { recursive: true });
    const path = join(directory, `f${index}`);
    await writeFile(path, kind === 'random' ? randomBytes(bytesPerFile) : textLike(bytesPerFile));
    // Like a distribution's base layer: symlinks and hard links among many small files.
    if (extras && index % 10 === 0) await symlink(`f${index}`, join(directory, `l${index}`));
    if (extras && index % 50 === 0) await link(path, join(directory, `h${index}`));
  }
}

/** CPU seconds used so far by this process (all its threads) and by the children it has waited for (tar, umoci, skopeo). */
function cpuSeconds(): number {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1]!.split(' ');
  // utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat, in clock ticks (100 per second).
  return fields.slice(11, 15).reduce((sum, value) => sum + Number(value), 0) / 100;
}

/** Wall-clock seconds; CPU seconds go to `cpu` (the machine is shared: wall time depends on the others' load, CPU time much less). */
const cpu: Record<string, number> = {};
async function timed(work: () => Promise<unknown>, name?: string): Promise<number> {
  const started = performance.now();
  const cpuStarted = cpuSeconds();
  await work();
  if (name) cpu[name] = cpuSeconds() - cpuStarted;
  return (performance.now() - started) / 1000;
}

const median = (values: number[]) => sorted(values)[Math.floor(values.length / 2)]!;

async function main(): Promise<void> {
  ensureDebianPackages(['tar', 'mkfs.ext4', 'skopeo', 'umoci']);
  const work = await mkdtemp(join(tmpdir(), 'torpor-bench-import-'));
  const lines: string[] = [];
  const say = (line: string) => {
    lines.push(line);
    process.stdout.write(line + '\n');
  };
  try {
    // The bench/pull.ts image, plus a base-like layer of 10,000 small files with links.
    const layerSpecs: Array<[number, number, 'random' | 'text', boolean]> = [
      [40, MiB, 'random', false],
      [1000, 30 * 1024, 'text', false],
      [2000, 10 * 1024, 'random', false],
      [200, 50 * 1024, 'text', false],
      [10_000, 2 * 1024, 'text', true],
    ];
    const image: FixtureImage = { layers: [] };
    for (const [index, [files, size, kind, extras]] of layerSpecs.entries()) {
      const tree = join(work, `tree-${index}`);
      await writeTree(tree, files, size, kind, extras);
      image.layers.push({ ...(await tarDirectory(tree, join(work, `layer-${index}.tar.gz`), 'gzip')), compression: 'gzip' });
      await rm(tree, { recursive: true, force: true });
    }
    await writeOciLayout(join(work, 'layout'), [image]);
    // docker save stores layers uncompressed.
    const plain: FixtureImage = { layers: [] };
    for (const [index, layer] of image.layers.entries()) {
      const path = join(work, `layer-${index}.tar`);
      await runCommand('sh', ['-c', `gzip -dc ${layer.path} > ${path}`]);
      plain.layers.push({ path, diffId: layer.diffId, compression: 'none' });
    }
    await writeDockerArchive(join(work, 'docker'), plain, 'bench:1');
    const dockerSave = await tarOf(join(work, 'docker'), join(work, 'docker-save.tar'));
    let compressed = 0;
    for (const layer of image.layers) compressed += (await readFile(layer.path)).length;
    const uncompressed = layerSpecs.reduce((sum, [files, size]) => sum + files * size, 0);

    say(`# torpor image import benchmark, ${new Date().toISOString().slice(0, 10)}`);
    say(
      `machine: ${cpus().length} cores (${cpus()[0]?.model.trim()}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}; no VM involved (TCG/KVM irrelevant)`,
    );
    say(
      `tools: ${(await runCommand('skopeo', ['--version'])).stdout.trim()}, ${(await runCommand('umoci', ['--version'])).stdout.trim()}, ${(await runCommand('tar', ['--version'])).stdout.split('\n')[0]}`,
    );
    say(
      `image: ${image.layers.length} layers, ${(compressed / MiB).toFixed(1)} MiB gzip, ${(uncompressed / MiB).toFixed(1)} MiB of file data in ${layerSpecs.reduce((sum, [files]) => sum + files, 0)} files (+1000 symlinks, +200 hard links in the last layer)`,
    );
    say('');
    say('layers only (gzip layers of the OCI layout -> a rootfs directory, as root; the three take turns going first, sync before each):');
    say('  thread   = this branch, TORPOR_IMPORT_THREAD=1: one pass, strict reader + openat-style writer on a worker thread');
    say('  inline   = this branch, default: the same code on the main thread');
    say('  legacy   = until today: listing pass with a header reader, then GNU tar --extract (bench/legacy/)');
    say('  umoci    = umoci unpack of the same OCI layout (peer)');
    say('whole import of a docker-save tar (uncompressed layers):');
    say('  torpor   = torpor image import: unpack the archive, apply layers, tree digest, mkfs.ext4 -d');
    say('  skopeo+umoci = skopeo copy docker-archive: -> oci: then umoci unpack (no disk image)');
    say('');
    say('each cell: wall seconds / CPU seconds (user+system, all threads and waited-for children)');
    say('run  thread        inline        legacy        umoci         | torpor-import  skopeo+umoci');
    const columns: number[][] = [[], [], [], [], [], [], [], []];
    const cpuColumns: number[][] = [[], [], [], [], [], []];
    for (let run = 1; run <= runs; run++) {
      // The three extractors take turns going first: under a shared disk, whoever follows a
      // large deletion pays for its writeback.
      const layers = (index: number) => fileLayer(image.layers[index]!.path, `layer ${index + 1}`, image.layers[index]!.diffId);
      const variants: Record<'strict' | 'inline' | 'legacy', (root: string) => Promise<void>> = {
        strict: async (root) => {
          const thread = new ExtractThread();
          for (let index = 0; index < image.layers.length; index++) await applyLayer(root, layers(index), { thread });
          await thread.close();
        },
        inline: async (root) => {
          for (let index = 0; index < image.layers.length; index++) await applyLayer(root, layers(index));
        },
        legacy: async (root) => {
          for (let index = 0; index < image.layers.length; index++) await legacyApplyLayer(root, layers(index));
        },
      };
      const order = (['strict', 'inline', 'legacy'] as const).map((_, index, all) => all[(index + run - 1) % all.length]!);
      const seconds: Record<string, number> = {};
      const listings: Record<string, string> = {};
      // Same tree either way (names, types, sizes, modes, link counts): the comparison is of equal work.
      const listing = async (root: string) =>
        (await runCommand('sh', ['-c', `cd ${root} && find . -printf '%p %y %s %m %n %U %G\\n' | sort | sha256sum`])).stdout;
      for (const name of order) {
        const root = join(work, `${name}-${run}`);
        await mkdir(root);
        await runCommand('sync', []);
        seconds[name] = await timed(() => variants[name](root), name);
        listings[name] = await listing(root);
        await rm(root, { recursive: true, force: true });
        await runCommand('sync', []);
      }
      if (new Set(Object.values(listings)).size !== 1) throw new Error('the strict, inline and legacy extractors produced different trees');
      const [strict, inline, legacy] = [seconds.strict!, seconds.inline!, seconds.legacy!];
      await runCommand('sync', []);
      const umoci = await timed(() => runCommand('umoci', ['unpack', '--image', `${join(work, 'layout')}:latest`, join(work, `bundle-${run}`)]), 'umoci');
      await rm(join(work, `bundle-${run}`), { recursive: true, force: true });

      process.env.TORPOR_HOME = join(work, `home-${run}`);
      await runCommand('sync', []);
      const torporImport = await timed(() => importImage(dockerSave, { name: 'bench:1' }), 'torporImport');
      await rm(join(work, `home-${run}`), { recursive: true, force: true });
      const layout = join(work, `skopeo-${run}`);
      await runCommand('sync', []);
      const skopeo = await timed(() => runCommand('skopeo', ['copy', '--quiet', `docker-archive:${dockerSave}`, `oci:${layout}:1`]), 'skopeo');
      const unpack = await timed(() => runCommand('umoci', ['unpack', '--image', `${layout}:1`, join(work, `bundle-s-${run}`)]), 'unpack');
      await rm(layout, { recursive: true, force: true });
      await rm(join(work, `bundle-s-${run}`), { recursive: true, force: true });
      const row = [strict, legacy, umoci, torporImport, skopeo, unpack, skopeo + unpack, inline];
      row.forEach((value, index) => columns[index]!.push(value));
      const cpuRow = [cpu.strict!, cpu.inline!, cpu.legacy!, cpu.umoci!, cpu.torporImport!, cpu.skopeo! + cpu.unpack!];
      cpuRow.forEach((value, index) => cpuColumns[index]!.push(value));
      const cell = (wall: number, used: number) => `${wall.toFixed(2)}/${used.toFixed(2)}s`.padEnd(13);
      say(
        `${String(run).padEnd(4)} ${cell(strict, cpu.strict!)} ${cell(inline, cpu.inline!)} ${cell(legacy, cpu.legacy!)} ${cell(umoci, cpu.umoci!)} | ${cell(torporImport, cpu.torporImport!)}  ${cell(skopeo + unpack, cpu.skopeo! + cpu.unpack!)}`,
      );
    }
    const m = columns.map(median);
    say('');
    const c = cpuColumns.map(median);
    say(
      `medians, wall: inline (default) ${m[7]!.toFixed(2)}s, thread ${m[0]!.toFixed(2)}s, legacy ${m[1]!.toFixed(2)}s (inline/legacy = ${(m[7]! / m[1]!).toFixed(2)}), umoci ${m[2]!.toFixed(2)}s; torpor image import ${m[3]!.toFixed(2)}s vs skopeo+umoci ${m[6]!.toFixed(2)}s`,
    );
    say(
      `medians, CPU: inline (default) ${c[1]!.toFixed(2)}s, thread ${c[0]!.toFixed(2)}s, legacy ${c[2]!.toFixed(2)}s (inline/legacy = ${(c[1]! / c[2]!).toFixed(2)}), umoci ${c[3]!.toFixed(2)}s; torpor image import ${c[4]!.toFixed(2)}s vs skopeo+umoci ${c[5]!.toFixed(2)}s`,
    );
    say(
      `load average at the end (2 cores shared with other engineers): ${loadavg()
        .map((value) => value.toFixed(2))
        .join(' ')}`,
    );
    const resultFile = join(new URL('.', import.meta.url).pathname, 'results', `image-import-${new Date().toISOString().slice(0, 10)}-tcg.txt`);
    await writeFile(resultFile, lines.join('\n') + '\n');
    process.stdout.write(`written to ${resultFile}\n`);
  } finally {
    await rm(work, { recursive: true, force: true });
    delete process.env.TORPOR_HOME;
  }
}

await main();
