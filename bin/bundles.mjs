// Bundles the TypeScript sources into build/ with esbuild, so that the CLI and each machine's
// supervisor start from plain JavaScript instead of going through tsx (~0.6 s). Rebuilt whenever a
// source file changes (a stamp of every file's size and mtime); npm packages stay external.
//
// Code splitting (esbuild): each entry holds what it always needs, and code loaded on demand
// (a CLI command's module, the snapshot store a supervisor loads at its first snapshot) is a chunk
// of its own, so `torpor ps` does not load what `torpor run` needs and an idle supervisor does not
// carry zstd. A build lives in its own directory; one that a running supervisor was started from is
// kept, since that supervisor may still load a chunk of it.
//
// An installed package has no src/: it ships the build that `npm pack` made (scripts/build.mjs calls
// ensureBundles({ force: true }), which builds into build/package) and uses it as it is.
import { existsSync, readdirSync, statSync, readFileSync, writeFileSync, renameSync, mkdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const buildDirectory = join(root, 'build');
const currentFile = join(buildDirectory, 'current.json');
export const entries = {
  cli: join(root, 'src', 'cli', 'main.ts'),
  supervisor: join(root, 'src', 'runtime', 'supervisor-main.ts'),
  'chunk-worker': join(root, 'src', 'snapshot', 'chunk-worker.ts'),
};
/**
 * Pure-JavaScript packages every command loads, bundled in: node resolves each file of an external
 * package (a realpath, a package.json lookup) at every start, ~25 ms of a `torpor ps`. The others
 * stay external: native addons (better-sqlite3, zstd-napi, xxhash), pg (an optional native
 * require), and what only tests, the dashboard or the dev LLM use.
 */
const bundledPackages = new Set(['commander', 'zod', 'hono', '@hono/node-server']);
const packageName = (specifier) =>
  specifier
    .split('/')
    .slice(0, specifier.startsWith('@') ? 2 : 1)
    .join('/');
const externalPackages = {
  name: 'external-packages',
  setup(build) {
    build.onResolve({ filter: /^[^./]/ }, (args) => (bundledPackages.has(packageName(args.path)) ? undefined : { path: args.path, external: true }));
  },
};
/** Builds older than this are deleted by the next build; a long-running `torpor serve` may still load chunks of its own. */
const keepOldBuildsMs = 24 * 3600 * 1000;

function sourceStamp() {
  const parts = [];
  const walk = (directory) => {
    for (const entry of readdirSync(directory, { withFileTypes: true })) {
      // Not path.join: its normalization, cold at every CLI start, was most of this walk.
      const path = `${directory}/${entry.name}`;
      if (entry.isDirectory()) walk(path);
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) {
        const info = statSync(path);
        parts.push(`${path}:${info.size}:${info.mtimeMs}`);
      }
    }
  };
  walk(join(root, 'src'));
  // This file too: a change of the build's own settings needs a new build.
  const self = statSync(fileURLToPath(import.meta.url));
  parts.push(`bundles.mjs:${self.size}:${self.mtimeMs}`);
  return parts.sort().join('\n');
}

const pathsIn = (directory) => ({
  cli: join(directory, 'cli.mjs'),
  supervisor: join(directory, 'supervisor.mjs'),
  chunkWorker: join(directory, 'chunk-worker.mjs'),
});

/** The build current.json names, whatever sources it was made from (an installed package's). */
export function currentBuild() {
  const current = JSON.parse(readFileSync(currentFile, 'utf8'));
  return pathsIn(join(buildDirectory, current.directory));
}

/** The current build when it was made from these sources. */
function freshBuild(stamp) {
  try {
    const current = JSON.parse(readFileSync(currentFile, 'utf8'));
    return current.stamp === stamp ? pathsIn(join(buildDirectory, current.directory)) : undefined;
  } catch {
    return undefined;
  }
}

/** Command lines of running processes: a supervisor's names the build it runs from. */
function runningCommandLines() {
  const lines = [];
  for (const pid of readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
    try {
      lines.push(readFileSync(`/proc/${pid}/cmdline`, 'utf8'));
    } catch {
      // gone
    }
  }
  return lines.join('\n');
}

function removeOldBuilds(keep) {
  let inUse;
  for (const entry of readdirSync(buildDirectory, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name === keep) continue;
    inUse ??= runningCommandLines();
    if (inUse.includes(join(buildDirectory, entry.name) + '/')) continue;
    const path = join(buildDirectory, entry.name);
    try {
      if (Date.now() - statSync(path).mtimeMs > keepOldBuildsMs) rmSync(path, { recursive: true, force: true });
    } catch {
      // another process removed it
    }
  }
}

/**
 * The last answer, reused for a few seconds: a `run` asks when the CLI starts and again to start
 * its supervisor, and each answer walks and stats every source file (10-20 ms of CPU here). Not
 * for longer, so a long-running `torpor serve` still starts supervisors from edited sources.
 */
let recent;
const recentForMs = 5000;

/** Returns the bundle paths, building them first when a source changed. */
export async function ensureBundles({ force = false } = {}) {
  if (!existsSync(join(root, 'src'))) return currentBuild(); // an installed package: no sources, no esbuild
  if (!force && recent && performance.now() - recent.at < recentForMs) return recent.paths;
  const stamp = sourceStamp();
  const fresh = force ? undefined : freshBuild(stamp);
  if (fresh) {
    recent = { at: performance.now(), paths: fresh };
    return fresh;
  }
  const { build } = await import('esbuild');
  const { createHash } = await import('node:crypto');
  // Each build goes to its own directory, published by replacing current.json: a process starting
  // right now reads a complete build, old or new, never half of one.
  // The package's build has a fixed name, so package.json's `files` can list it.
  const name = force ? 'package' : `${createHash('sha256').update(stamp).digest('hex').slice(0, 12)}-${process.pid}`;
  const directory = join(buildDirectory, name);
  if (force) rmSync(directory, { recursive: true, force: true });
  mkdirSync(directory, { recursive: true });
  const common = {
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    logLevel: 'silent',
    plugins: [externalPackages],
    // `require` for the CommonJS packages bundled in (commander requires node's own modules).
    banner: {
      js: "// Generated by bin/bundles.mjs from src/: do not edit.\nimport { createRequire as __torporCreateRequire } from 'node:module';\nconst require = __torporCreateRequire(import.meta.url);",
    },
  };
  await build({
    ...common,
    entryPoints: entries,
    splitting: true,
    outdir: directory,
    entryNames: '[name]',
    chunkNames: 'chunks/[name]-[hash]',
    outExtension: { '.js': '.mjs' },
  });
  const temporary = join(buildDirectory, `current.${process.pid}.tmp`);
  writeFileSync(temporary, JSON.stringify({ stamp, directory: name }));
  renameSync(temporary, currentFile);
  removeOldBuilds(name);
  return pathsIn(directory);
}
