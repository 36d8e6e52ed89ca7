import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { projectRoot } from '../util/project-root.ts';

export interface ClientAsset {
  body: string;
  contentType: string;
  /** Content hash, for ETag: the browser revalidates cheaply and never runs a stale bundle. */
  etag: string;
}

export type ClientAssets = Record<'app.js' | 'login.js' | 'app.css', ClientAsset>;

let building: Promise<ClientAssets> | undefined;

/**
 * The browser code, bundled from src/dashboard/client by esbuild the first time a page asks for it
 * (about a quarter of a second) and then kept in memory. Nothing generated is committed, so a fresh
 * clone serves the dashboard without a build step, and a changed source is picked up by the next
 * server start. Preact is bundled in: the page loads nothing from anywhere but this server.
 */
export function clientAssets(): Promise<ClientAssets> {
  building ??= buildClientAssets();
  building.catch(() => (building = undefined));
  return building;
}

async function buildClientAssets(): Promise<ClientAssets> {
  const { build } = await import('esbuild');
  const directory = join(projectRoot(), 'src', 'dashboard', 'client');
  const result = await build({
    entryPoints: { app: join(directory, 'main.tsx'), login: join(directory, 'login.ts') },
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
    nodePaths: [join(projectRoot(), 'node_modules')],
  });
  const asset = (body: string, contentType: string): ClientAsset => ({
    body,
    contentType,
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  });
  const output = (name: string) => {
    const file = result.outputFiles.find((each) => each.path === `/${name}`);
    if (!file) throw new Error(`the dashboard bundle has no ${name}`);
    return file.text;
  };
  const { readFile } = await import('node:fs/promises');
  return {
    'app.js': asset(output('app.js'), 'text/javascript; charset=utf-8'),
    'login.js': asset(output('login.js'), 'text/javascript; charset=utf-8'),
    'app.css': asset(await readFile(join(directory, 'style.css'), 'utf8'), 'text/css; charset=utf-8'),
  };
}
