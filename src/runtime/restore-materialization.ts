import { access } from 'node:fs/promises';
import { materializeSnapshot, readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { machineFiles, type MachineConfig } from './machine-record.ts';
import { bootTemplateName, findBootTemplate } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';
import { prepareLazyRestore, releaseLazyMemory } from './lazy-restore.ts';
import { takeWarm } from './warm-memory.ts';

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** The snapshot a machine restores from, and its boot template's RAM in tmpfs when that is there. */
export async function restoreSources(config: MachineConfig): Promise<{ manifest: SnapshotManifest; base?: { manifest: SnapshotManifest; memoryFile: string } }> {
  const manifest = await readSnapshot(config.restore!.snapshot);
  const templateName = bootTemplateName(config);
  const templateFile = templateMemoryFile(templateName);
  let base: { manifest: SnapshotManifest; memoryFile: string } | undefined;
  if (await exists(templateFile)) {
    const templateManifest = await findBootTemplate(templateName);
    if (templateManifest) base = { manifest: templateManifest, memoryFile: templateFile };
  }
  return { manifest, base };
}

/**
 * Writes the snapshot's disk layer and device state into a machine's own files, and its RAM: lazily
 * where the host can (an empty RAM file and a page map; QEMU's preloaded pager fills it as the guest
 * touches it), else materialized into tmpfs. Chunks the machine's boot template shares are copied
 * from the template's RAM kept in tmpfs, which is faster than decompressing them.
 */
export async function materializeForRestore(config: MachineConfig): Promise<void> {
  const { manifest, base } = await restoreSources(config);
  const files = machineFiles(config.id);
  const memoryFile = files.memoryFile;
  // A hibernation kept warm: its RAM file and disk layer are this snapshot's; only the device state is read.
  const warm = await takeWarm(manifest.id, memoryFile, files.layerDisk);
  if (warm && (!warm.loaded || (await prepareLazyRestore(manifest, config.id, memoryFile, base, warm.loaded)))) {
    try {
      await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
    } catch (error) {
      await releaseLazyMemory(config.id, memoryFile);
      throw error;
    }
    return;
  }
  const lazy = await prepareLazyRestore(manifest, config.id, memoryFile, base);
  try {
    await materializeSnapshot(manifest, { memoryFile: lazy ? undefined : memoryFile, diskFile: files.layerDisk, deviceStateFile: files.deviceState, base });
  } catch (error) {
    if (lazy) await releaseLazyMemory(config.id, memoryFile);
    throw error;
  }
}
