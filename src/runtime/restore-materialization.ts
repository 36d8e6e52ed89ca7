import { access } from 'node:fs/promises';
import { materializeSnapshot, readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { machineFiles, type MachineConfig } from './machine-record.ts';
import { bootTemplateName, findBootTemplate } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * Writes the snapshot's RAM (into tmpfs), disk layer and device state into a machine's own files.
 * Chunks the machine's boot template shares are copied from the template's RAM kept in tmpfs,
 * which is faster than decompressing them.
 */
export async function materializeForRestore(config: MachineConfig): Promise<void> {
  const manifest = await readSnapshot(config.restore!.snapshot);
  const templateName = bootTemplateName(config);
  const templateFile = templateMemoryFile(templateName);
  let base: { manifest: SnapshotManifest; memoryFile: string } | undefined;
  if (await exists(templateFile)) {
    const templateManifest = await findBootTemplate(templateName);
    if (templateManifest) base = { manifest: templateManifest, memoryFile: templateFile };
  }
  const files = machineFiles(config.id);
  await materializeSnapshot(manifest, { memoryFile: files.memoryFile, diskFile: files.layerDisk, deviceStateFile: files.deviceState, base });
}
