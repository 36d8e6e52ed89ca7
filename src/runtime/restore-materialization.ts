import { copyFile, rename, stat } from 'node:fs/promises';
import { materializeSnapshot, readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { runCommand } from '../util/command.ts';
import { machineFiles } from './machine-files.ts';
import type { MachineConfig } from './machine-record.ts';
import { bootTemplateName, findBootTemplate } from './boot-template.ts';
import { templateMemoryFile } from './template-memory.ts';
import { prepareLazyRestore, releaseLazyMemory } from './lazy-restore.ts';
import { takeWarm } from './warm-memory.ts';
import type { StartTimeline } from './start-timeline.ts';

/**
 * A boot template's disk layer and device state, kept beside its RAM in tmpfs once a start from it
 * has materialized them (the layer holds a few MiB of an empty ext4; the device state ~70 KB).
 */
const templateFiles = (templateName: string) => {
  const memory = templateMemoryFile(templateName);
  return { memory, layer: memory.replace(/\.ram$/, '.layer'), deviceState: memory.replace(/\.ram$/, '.device-state') };
};

/**
 * Whether the template's RAM file is there, and which of the files kept beside it are at least as
 * new as it: files older than the RAM (a template made again) belong to the old template.
 */
async function keptTemplateFiles(templateName: string): Promise<{ memory: boolean; layer: boolean; deviceState: boolean }> {
  const cache = templateFiles(templateName);
  const mtime = (path: string) =>
    stat(path).then(
      (status) => status.mtimeMs,
      () => undefined,
    );
  const [memory, layer, deviceState] = await Promise.all([mtime(cache.memory), mtime(cache.layer), mtime(cache.deviceState)]);
  if (memory === undefined) return { memory: false, layer: false, deviceState: false };
  return { memory: true, layer: layer !== undefined && layer >= memory, deviceState: deviceState !== undefined && deviceState >= memory };
}

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
  const kept = await keptTemplateFiles(templateName);
  if (!kept.layer || !kept.deviceState) return false;
  const files = machineFiles(config.id);
  // Lazily where the host can: the pager serves each page from the template's RAM file as the
  // guest first touches it, so a start neither copies ~100 MiB (~0.15-0.3 s of CPU) nor keeps a
  // private copy of pages the guest only reads.
  const manifest = await findBootTemplate(templateName);
  const lazy = manifest !== undefined && (await prepareLazyRestore(manifest, config.id, files.memoryFile, { manifest, memoryFile: cache.memory }));
  try {
    await Promise.all([
      lazy ? undefined : copySparse(cache.memory, files.memoryFile),
      copySparse(cache.layer, files.layerDisk),
      copyFile(cache.deviceState, files.deviceState),
    ]);
  } catch (error) {
    if (lazy) await releaseLazyMemory(config.id, files.memoryFile);
    throw error;
  }
  return true;
}

/** The snapshot a machine restores from, and its boot template's RAM in tmpfs when that is there. */
export async function restoreSources(
  config: MachineConfig,
  known?: SnapshotManifest,
): Promise<{ manifest: SnapshotManifest; base?: { manifest: SnapshotManifest; memoryFile: string; layerFile?: string } }> {
  // (a manifest the caller read already, e.g. `restoreMachine`: not read and parsed again)
  const manifest = known?.name === config.restore!.snapshot ? known : await readSnapshot(config.restore!.snapshot);
  const templateName = bootTemplateName(config);
  const cache = templateFiles(templateName);
  let base: { manifest: SnapshotManifest; memoryFile: string; layerFile?: string } | undefined;
  const kept = await keptTemplateFiles(templateName);
  if (kept.memory) {
    const templateManifest = await findBootTemplate(templateName);
    // The template's disk layer, kept beside its RAM once a start from it wrote it: a session's layer
    // differs from it in a chunk or two (measured: 1 of 20 non-zero chunks after three turns), so the
    // others are copied from it (checked against their ids) instead of read and decompressed.
    if (templateManifest) base = { manifest: templateManifest, memoryFile: cache.memory, ...(kept.layer ? { layerFile: cache.layer } : {}) };
  }
  return { manifest, base };
}

/**
 * Writes the snapshot's disk layer and device state into a machine's own files, and its RAM: lazily
 * where the host can (an empty RAM file and a page map; QEMU's preloaded pager fills it as the guest
 * touches it), else materialized into tmpfs. Chunks the machine's boot template shares are copied
 * from the template's RAM kept in tmpfs, which is faster than decompressing them.
 *
 * `onLaunchable` is called as soon as QEMU may start on the files (RAM file or page map in place,
 * disk layer at its full size), possibly before the disk layer's contents and the device state are
 * written: the supervisor starts QEMU meanwhile, and lets the guest run only after this resolves.
 * `onDeviceState` is called (after `onLaunchable`) once the device state file is complete, possibly
 * before the disk layer's contents: QEMU loads it meanwhile (a paused guest reads no disk).
 */
export async function materializeForRestore(
  config: MachineConfig,
  timeline?: StartTimeline,
  onLaunchable?: () => void,
  options: { manifest?: SnapshotManifest; onDeviceState?: () => void } = {},
): Promise<void> {
  const templateName = bootTemplateName(config);
  const fromOwnTemplate = config.restore!.snapshot === templateName;
  // The `run` case: whole-file sparse copies of the template's cached RAM, layer and device state.
  if (fromOwnTemplate && (await copyFromTemplateCache(config, templateName))) return;
  const { manifest, base } = await restoreSources(config, options.manifest);
  timeline?.mark('materialize: sources read');
  const files = machineFiles(config.id);
  const memoryFile = files.memoryFile;
  // A hibernation kept warm: its RAM file and disk layer are this snapshot's; only the device state is read.
  const warm = await takeWarm(manifest.id, memoryFile, files.layerDisk);
  timeline?.mark('materialize: warm tier asked');
  if (warm && (!warm.loaded || (await prepareLazyRestore(manifest, config.id, memoryFile, base, warm.loaded)))) {
    onLaunchable?.();
    try {
      await materializeSnapshot(manifest, { deviceStateFile: files.deviceState });
    } catch (error) {
      await releaseLazyMemory(config.id, memoryFile);
      throw error;
    }
    return;
  }
  const lazy = await prepareLazyRestore(manifest, config.id, memoryFile, base);
  timeline?.mark('materialize: lazy memory prepared');
  try {
    // Lazily, the RAM is in place already: with the disk layer at its size QEMU can start while
    // the layer's contents and the device state are written (the guest stays paused until then).
    const early = lazy && manifest.disk !== undefined && onLaunchable !== undefined;
    await materializeSnapshot(manifest, {
      memoryFile: lazy ? undefined : memoryFile,
      diskFile: files.layerDisk,
      deviceStateFile: files.deviceState,
      // The device state first (~70 KB, one chunk), the layer at its full size beside it: QEMU starts
      // and loads the device state while the layer's contents are written (~20-70 ms on 2 busy cores).
      onDeviceStateWritten: early
        ? () => {
            onLaunchable!();
            options.onDeviceState?.();
            timeline?.mark('materialize: device state written');
          }
        : undefined,
      base,
    });
    timeline?.mark('materialize: disk layer and device state written');
  } catch (error) {
    if (lazy) await releaseLazyMemory(config.id, memoryFile);
    throw error;
  }
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
