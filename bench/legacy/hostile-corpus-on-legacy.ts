// Runs the hostile corpus through the legacy layer applier (listing pass + GNU tar) to show what
// the corpus catches: the old path lets "size-trailing-garbage" write into the canary directory.
// By hand, as root:  node --import tsx bench/legacy/hostile-corpus-on-legacy.ts
import { mkdtemp, mkdir, writeFile, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { DecompressStream } from 'zstd-napi';
import { hostileCorpus } from '../../src/image/import/testing/hostile/corpus.ts';
import { applyLayer as legacyApplyLayer } from './gnu-tar-apply-layer.ts';

const work = await mkdtemp(join(tmpdir(), 'torpor-legacy-corpus-'));
const canary = join(work, 'canary');
let accepted = 0;
let escaped = 0;
try {
  for (const hostile of hostileCorpus(canary)) {
    // Bombs take minutes without limits; the long path only trips the legacy cleanup.
    if (hostile.name.includes('bomb') || hostile.name === 'long-path-past-the-store') continue;
    await rm(canary, { recursive: true, force: true });
    await mkdir(canary);
    await writeFile(join(canary, 'precious'), 'keep');
    const root = join(work, `root-${hostile.name}`);
    await mkdir(root);
    let outcome = 'accepted';
    try {
      for (const [index, layer] of hostile.layers.entries()) {
        await legacyApplyLayer(root, {
          description: `layer ${index + 1}`,
          open: async () => {
            const bytes = Readable.from([layer.bytes]);
            return layer.compression === 'gzip' ? bytes.pipe(createGunzip()) : layer.compression === 'zstd' ? bytes.pipe(new DecompressStream()) : bytes;
          },
        });
      }
      accepted++;
    } catch (error) {
      outcome = `refused (${(error as Error).message.slice(0, 80)})`;
    }
    const state = `${(await readdir(canary)).sort().join(',')}:${await readFile(join(canary, 'precious'), 'utf8').catch(() => 'gone')}`;
    const changed = state !== 'precious:keep';
    if (changed) escaped++;
    process.stdout.write(
      `${hostile.name.padEnd(42)} legacy ${outcome}${changed ? `, CANARY CHANGED (${state})` : ''}; torpor ${hostile.refused ? 'refuses' : 'imports'}\n`,
    );
  }
  process.stdout.write(`legacy applier: ${accepted} archives accepted, canary changed by ${escaped}\n`);
} finally {
  await rm(work, { recursive: true, force: true });
}
