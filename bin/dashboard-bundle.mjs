// Bundles the dashboard's browser code (src/dashboard/client: Preact, TSX, CSS) with esbuild.
// A checkout builds it in memory when the server first serves a page; a published package has no
// sources and no esbuild, so its build step writes the same files to build/dashboard/ with
// `node bin/dashboard-bundle.mjs build/dashboard`, and the server reads them from there.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
export const dashboardSources = join(root, 'src', 'dashboard', 'client');
export const dashboardBuild = join(root, 'build', 'dashboard');
export const dashboardAssetNames = ['app.js', 'login.js', 'app.css'];

/** The three files the dashboard serves, as text: { 'app.js', 'login.js', 'app.css' }. */
export async function bundleDashboard() {
  const { build } = await import('esbuild');
  const result = await build({
    entryPoints: { app: join(dashboardSources, 'main.tsx'), login: join(dashboardSources, 'login.ts') },
    bundle: true,
    write: false,
    outdir: '/',
    format: 'esm',
    platform: 'browser',
    target: ['chrome110', 'firefox110', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    minify: true,
    legalComments: 'none',
    logLevel: 'silent',
    // Resolve preact from this checkout, wherever the server process was started from.
    nodePaths: [join(root, 'node_modules')],
  });
  const output = (name) => {
    const file = result.outputFiles.find((each) => each.path === `/${name}`);
    if (!file) throw new Error(`the dashboard bundle has no ${name}`);
    return file.text;
  };
  return { 'app.js': output('app.js'), 'login.js': output('login.js'), 'app.css': readFileSync(join(dashboardSources, 'style.css'), 'utf8') };
}

/** Writes the bundle to `directory` (default build/dashboard), each file complete before it appears. */
export async function writeDashboard(directory = dashboardBuild) {
  const assets = await bundleDashboard();
  mkdirSync(directory, { recursive: true });
  for (const [name, text] of Object.entries(assets)) {
    const temporary = join(directory, `${name}.${process.pid}.tmp`);
    writeFileSync(temporary, text);
    renameSync(temporary, join(directory, name));
  }
  return directory;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.stderr.write(`wrote ${await writeDashboard(process.argv[2] ? resolve(process.argv[2]) : undefined)}\n`);
}
