import { rm } from 'node:fs/promises';
import { releaseName } from './machine-names.ts';
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
