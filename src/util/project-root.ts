import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

/**
 * The checkout's root (where package.json names torpor). Code that reads files shipped beside the
 * sources (guest/agent.c, native/, workers) resolves them from here, so it works the same from the
 * TypeScript sources and from the bundles in build/.
 */
export function projectRoot(): string {
  if (cached) return cached;
  let directory = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(directory, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: string }).name === 'torpor') return (cached = directory);
    const parent = dirname(directory);
    if (parent === directory) throw new Error('cannot find the torpor checkout (package.json) above ' + fileURLToPath(import.meta.url));
    directory = parent;
  }
}
