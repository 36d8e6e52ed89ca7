// Builds what the published package runs, with no TypeScript loader at run time:
//   dist/   ESM JavaScript + .d.ts for the exports (torpor, torpor/agent, torpor/context), by tsc;
//   build/  the esbuild bundles of the CLI, the machine supervisor and the snapshot chunk worker,
//           and the dashboard's browser code (build/dashboard/).
// `npm pack` runs it (prepack); `npm run build` runs it by hand.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);

rmSync(join(root, 'dist'), { recursive: true, force: true });
const typescript = join(dirname(require.resolve('typescript/package.json')), 'bin', 'tsc');
execFileSync(process.execPath, [typescript, '-p', join(root, 'tsconfig.build.json')], { cwd: root, stdio: 'inherit' });

const { ensureBundles } = await import('../bin/bundles.mjs');
const bundles = await ensureBundles({ force: true });
// The dashboard's browser code, prebuilt: an installed package has no sources to bundle on demand.
await (await import('../bin/dashboard-bundle.mjs')).writeDashboard();
process.stderr.write(
  `built dist/ and ${Object.values(bundles)
    .map((path) => path.slice(root.length + 1))
    .join(', ')}\n`,
);
