import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TorporError } from '../util/errors.ts';
import { projectRoot } from '../util/project-root.ts';

export interface ClientAsset {
  body: string;
  contentType: string;
  /** Content hash, for ETag: the browser revalidates cheaply and never runs a stale bundle. */
  etag: string;
}

export type ClientAssets = Record<'app.js' | 'login.js' | 'app.css', ClientAsset>;

let building: Promise<ClientAssets> | undefined;

interface DashboardBundler {
  dashboardSources: string;
  dashboardBuild: string;
  bundleDashboard(): Promise<Record<keyof ClientAssets, string>>;
}

/**
 * The browser code. In a checkout it is bundled from src/dashboard/client by esbuild
 * (bin/dashboard-bundle.mjs) the first time a page asks for it (~0.4 s), then kept in memory:
 * nothing generated is committed, a fresh clone needs no build step, and a changed source is
 * picked up by the next server start. A published package has neither the sources nor esbuild:
 * its build step wrote the same files to build/dashboard/, read from there. Preact is bundled in:
 * the page loads nothing from anywhere but this server.
 */
export function clientAssets(): Promise<ClientAssets> {
  building ??= loadClientAssets();
  building.catch(() => (building = undefined));
  return building;
}

async function loadClientAssets(): Promise<ClientAssets> {
  // Loaded by path (like bin/bundles.mjs), so the bundled CLI finds it too.
  const bundler = (await import(pathToFileURL(join(projectRoot(), 'bin', 'dashboard-bundle.mjs')).href)) as DashboardBundler;
  const texts = existsSync(join(bundler.dashboardSources, 'main.tsx')) ? await bundler.bundleDashboard() : await readBuilt(bundler.dashboardBuild);
  const asset = (body: string, contentType: string): ClientAsset => ({
    body,
    contentType,
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  });
  return {
    'app.js': asset(texts['app.js'], 'text/javascript; charset=utf-8'),
    'login.js': asset(texts['login.js'], 'text/javascript; charset=utf-8'),
    'app.css': asset(texts['app.css'], 'text/css; charset=utf-8'),
  };
}

async function readBuilt(directory: string): Promise<Record<keyof ClientAssets, string>> {
  const read = (name: string) =>
    readFile(join(directory, name), 'utf8').catch(() => {
      throw new TorporError('dashboard-missing', `the dashboard's browser code is not in ${directory}`, {
        hint: 'in a checkout, run `npm install` (the sources are bundled on demand); a package build writes it with `node bin/dashboard-bundle.mjs`',
      });
    });
  return { 'app.js': await read('app.js'), 'login.js': await read('login.js'), 'app.css': await read('app.css') };
}
