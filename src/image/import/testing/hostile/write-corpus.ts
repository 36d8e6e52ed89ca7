// Writes the hostile corpus to a directory, to try it on other tools (GNU tar, umoci, skopeo...):
//   node --import tsx src/image/import/testing/hostile/write-corpus.ts OUTPUT_DIRECTORY [CANARY_DIRECTORY]
// Each case becomes OUTPUT/<name>/layer-<n>.tar[.gz|.zst], an OCI layout in OUTPUT/<name>/oci, and
// OUTPUT/<name>/expected.txt (what torpor answers). The attacks aim at CANARY (default OUTPUT/canary).
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { writeOciLayout, type FixtureImage } from '../image-fixtures.ts';
import { hostileCorpus } from './corpus.ts';

const output = process.argv[2];
if (!output) {
  process.stderr.write('usage: write-corpus.ts OUTPUT_DIRECTORY [CANARY_DIRECTORY]\n');
  process.exit(2);
}
const canary = resolve(process.argv[3] ?? join(output, 'canary'));
await mkdir(canary, { recursive: true });
await writeFile(join(canary, 'precious'), 'the host file every attack aims at\n');
for (const hostile of hostileCorpus(canary)) {
  const directory = join(output, hostile.name);
  await mkdir(directory, { recursive: true });
  const image: FixtureImage = { layers: [] };
  for (const [index, layer] of hostile.layers.entries()) {
    const path = join(directory, `layer-${index}.tar${layer.compression === 'gzip' ? '.gz' : layer.compression === 'zstd' ? '.zst' : ''}`);
    await writeFile(path, layer.bytes);
    image.layers.push({ path, compression: layer.compression, diffId: layer.diffId ?? `sha256:${createHash('sha256').update(layer.bytes).digest('hex')}` });
  }
  await writeOciLayout(join(directory, 'oci'), [image]);
  const expected = hostile.refused ? `refused: ${hostile.refused.code} ${hostile.refused.message}` : 'imported inside the image root';
  await writeFile(join(directory, 'expected.txt'), `${expected}${hostile.limits ? `\nwith limits ${JSON.stringify(hostile.limits)}` : ''}\n`);
}
process.stdout.write(`wrote ${hostileCorpus(canary).length} cases to ${output}\n`);
