/**
 * Makes the image `coding-agent`: the `node` image's userland plus the bundled agent at /app/agent.mjs.
 *   node --import tsx examples/coding-agent/image.ts   (prints the image name)
 */
import { mkdtemp, rm, mkdir, copyFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildNodeRoot } from '../../src/image/builders/node-image.ts';
import { addImageFromDirectory } from '../../src/image/image-store.ts';
import type { ImageRecord } from '../../src/image/image-config.ts';
import { buildCodingAgent } from './build.ts';

export async function buildCodingAgentImage(name = 'coding-agent'): Promise<ImageRecord> {
  const workspace = await mkdtemp(join(tmpdir(), 'coding-agent-'));
  try {
    const bundle = await buildCodingAgent(join(workspace, 'agent.mjs'));
    const root = join(workspace, 'root');
    await mkdir(root);
    const config = await buildNodeRoot(root);
    await mkdir(join(root, 'app'));
    await copyFile(bundle, join(root, 'app', 'agent.mjs'));
    return await addImageFromDirectory(root, {
      name,
      config: { ...config, cmd: ['node', '/app/agent.mjs'], workingDir: '/root' },
      source: 'examples/coding-agent',
    });
  } finally {
    await rm(workspace, { recursive: true, force: true });
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const image = await buildCodingAgentImage(process.argv[2]);
  process.stdout.write(`${image.name} ${image.digest}\n`);
}
