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
  const namePath = join(paths.names(), config.name);
  try {
    // Only our own claim: the name may already belong to a newer machine.
    if ((await readFile(namePath, 'utf8')).trim() === config.id) await rm(namePath, { force: true });
  } catch {
    // no claim left
  }
  await rm(machineFiles(config.id).directory, { recursive: true, force: true });
}
