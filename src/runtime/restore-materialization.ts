import { access, copyFile, rename, stat } from 'node:fs/promises';
import { materializeSnapshot, readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { runCommand } from '../util/command.ts';
import { machineFiles } from './machine-files.ts';
import type { MachineConfig } from './machine-record.ts';
import { bootTemplateName, findBootTemplate } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/**
 * A boot template's disk layer and device state, kept beside its RAM in tmpfs once a start from it
 * has materialized them (the layer holds a few MiB of an empty ext4; the device state ~70 KB).
 */
const templateFiles = (templateName: string) => {
  const memory = templateMemoryFile(templateName);
  return { memory, layer: memory.replace(/\.ram$/, '.layer'), deviceState: memory.replace(/\.ram$/, '.device-state') };
};

/** Copies a file keeping it sparse: runs of zeros become holes (kernel copy, no hashing in node). */
const copySparse = (from: string, to: string) => runCommand('cp', ['--sparse=always', '--', from, to]);

/**
 * The start of a machine from its own boot template, the `run` case: the template's RAM file in
 * tmpfs is that snapshot's memory exactly (the template's QEMU wrote it, then stopped, and nothing
 * writes it after), so a sparse copy of it, of the template's layer and of its device state is the
 * whole restore: ~0.1 s of kernel copying instead of reading, hashing and writing ~100 MiB of
 * chunks. Caches older than the template's RAM file (a template made again) are not used.
 */
async function copyFromTemplateCache(config: MachineConfig, templateName: string): Promise<boolean> {
  const cache = templateFiles(templateName);
  const mtime = (path: string) => stat(path).then((status) => status.mtimeMs, () => undefined);
  const memory = await mtime(cache.memory);
  const layer = await mtime(cache.layer);
  const deviceState = await mtime(cache.deviceState);
  if (memory === undefined || layer === undefined || deviceState === undefined || layer < memory || deviceState < memory) return false;
  const files = machineFiles(config.id);
  await Promise.all([copySparse(cache.memory, files.memoryFile), copySparse(cache.layer, files.layerDisk), copyFile(cache.deviceState, files.deviceState)]);
  return true;
}

/**
 * Writes the snapshot's RAM (into tmpfs), disk layer and device state into a machine's own files.
 * Chunks the machine's boot template shares are copied from the template's RAM kept in tmpfs,
 * which is faster than decompressing them; a start from the template itself copies whole files.
 */
export async function materializeForRestore(config: MachineConfig): Promise<void> {
  const templateName = bootTemplateName(config);
  const fromOwnTemplate = config.restore!.snapshot === templateName;
  if (fromOwnTemplate && (await copyFromTemplateCache(config, templateName))) return;
  const manifest = await readSnapshot(config.restore!.snapshot);
  const templateFile = templateMemoryFile(templateName);
  let base: { manifest: SnapshotManifest; memoryFile: string } | undefined;
  if (await exists(templateFile)) {
    const templateManifest = await findBootTemplate(templateName);
    if (templateManifest) base = { manifest: templateManifest, memoryFile: templateFile };
  }
  const files = machineFiles(config.id);
  await materializeSnapshot(manifest, { memoryFile: files.memoryFile, diskFile: files.layerDisk, deviceStateFile: files.deviceState, base });
  if (fromOwnTemplate && base) {
    // Once per template: keep the verified layer and device state for the next starts (before
    // the guest runs on this machine's copies).
    const cache = templateFiles(templateName);
    await copySparse(files.layerDisk, `${cache.layer}.${config.id}.tmp`);
    await copyFile(files.deviceState, `${cache.deviceState}.${config.id}.tmp`);
    await rename(`${cache.layer}.${config.id}.tmp`, cache.layer);
    await rename(`${cache.deviceState}.${config.id}.tmp`, cache.deviceState);
  }
}
