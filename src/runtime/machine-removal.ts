import { rm, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../state/paths.ts';
import { machineFiles } from './machine-files.ts';
import type { MachineConfig } from './machine-record.ts';
import { releaseLazyMemory } from './lazy-restore.ts';

/** Deletes everything a machine owns on disk: its directory, its RAM file and its name. */
export async function releaseMachine(config: Pick<MachineConfig, 'id' | 'name'>): Promise<void> {
  await rm(machineFiles(config.id).memoryFile, { force: true });
  await releaseLazyMemory(config.id, machineFiles(config.id).memoryFile);
  await releaseName(config);
  await rm(machineFiles(config.id).directory, { recursive: true, force: true });
}

/** Frees a machine's name claim, only if it is still this machine's (the name may belong to a newer one). */
export async function releaseName(config: Pick<MachineConfig, 'id' | 'name'>): Promise<void> {
  const namePath = join(paths.names(), config.name);
  try {
    if ((await readFile(namePath, 'utf8')).trim() === config.id) await rm(namePath, { force: true });
  } catch {
    // no claim left
  }
}
