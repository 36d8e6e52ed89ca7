import { join } from 'node:path';
import { memoryDirectory } from '../state/paths.ts';

/** Where a boot template's RAM stays materialized in tmpfs, as the base for restores built on it. */
export function templateMemoryFile(templateName: string): string {
  return join(memoryDirectory(), `${templateName}.ram`);
}
