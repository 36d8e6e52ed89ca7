/**
 * Bundles the coding agent into one ES module with every npm dependency inlined, so it runs in the
 * `node` image (busybox + Node 20, no node_modules): `node --import tsx examples/coding-agent/build.ts`.
 */
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(new URL('.', import.meta.url));

export async function buildCodingAgent(outfile = `${here}dist/agent.mjs`): Promise<string> {
  await build({
    entryPoints: [`${here}agent.ts`],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    minify: false,
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
    // `torpor/agent` from the sources of this checkout (package.json exports), not from dist/.
    conditions: ['torpor-source'],
    // CommonJS dependencies inside an ES module bundle still call require() for Node built-ins.
    banner: { js: 'import { createRequire as torporCreateRequire } from "node:module"; const require = torporCreateRequire(import.meta.url);' },
  });
  return outfile;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const outfile = await buildCodingAgent();
  process.stdout.write(`${outfile}\n`);
}
