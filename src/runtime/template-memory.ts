import { createHash } from 'node:crypto';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { memoryDirectory, stateHome } from '../state/paths.ts';

/** Template RAM files of one state directory share this prefix (several installs share one tmpfs). */
export function homePrefix(): string {
  return `${createHash('sha256').update(stateHome()).digest('hex').slice(0, 8)}-`;
}

/** Where a boot template's RAM stays materialized in tmpfs, as the base for restores built on it. */
export function templateMemoryFile(templateName: string): string {
  return join(memoryDirectory(), `${homePrefix()}${templateName}.ram`);
}

/** Frees the tmpfs held by this state directory's template RAM files (they are only a cache). */
export async function dropTemplateMemory(): Promise<void> {
  const names = await readdir(memoryDirectory()).catch(() => [] as string[]);
  await Promise.all(names.filter((name) => name.startsWith(homePrefix())).map((name) => rm(join(memoryDirectory(), name), { force: true })));
}
