import { createHash } from 'node:crypto';
import { readSnapshot, type SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { TorporError } from '../util/errors.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import type { MachineConfig } from './machine-record.ts';
import { readMachineState } from './machine-files.ts';
import { releaseMachine } from './machine-removal.ts';

/** Everything that must match for a guest's memory to be reusable: image, agent, kernel, devices, size. */
export function bootTemplateName(config: MachineConfig): string {
  const key = createHash('sha256')
    .update(
      JSON.stringify([
        config.image.digest,
        config.kernelPath,
        config.initramfsPath,
        config.kernelArguments,
        config.accelerator,
        config.cpus,
        config.memoryMiB,
        config.network,
        // Only when set, so that the names of templates made before it existed stay the same.
        ...(config.imageMemoryBytes !== undefined ? [config.imageMemoryBytes] : []),
        // The same rule: a template of `max` made before the field existed keeps its name.
        ...(config.cpuModel !== undefined ? [`cpu:${config.cpuModel}`] : []),
        // And again: a template restores only under the QEMU release (major.minor) that made it.
        ...(config.qemuVersion !== undefined ? [`qemu:${config.qemuVersion.split('.').slice(0, 2).join('.')}`] : []),
      ]),
    )
    .digest('hex')
    .slice(0, 16);
  return `template-${key}`;
}

/** The boot template snapshot of this name, or undefined if it was never made (or was removed). */
export async function findBootTemplate(name: string): Promise<SnapshotManifest | undefined> {
  try {
    return await readSnapshot(name);
  } catch (error) {
    if (error instanceof TorporError && error.code === 'snapshot-unknown') return undefined;
    throw error;
  }
}

/**
 * A boot template is a snapshot of a guest taken once, right after its agent first answered, before
 * any user process. Starting a machine from it costs a restore (~0.2 s) instead of a cold boot
 * (~3 s under TCG). `bootMachine` cold-boots a machine whose supervisor saves itself and stops.
 */
export async function ensureBootTemplate(
  template: MachineConfig,
  bootMachine: (config: MachineConfig) => Promise<void>,
  progress: Progress = silentProgress,
): Promise<SnapshotManifest> {
  const name = bootTemplateName(template);
  const existing = await findBootTemplate(name);
  if (existing) return existing;
  // Machines started at once in one process (a server creating sessions in parallel) share one
  // template boot: two would race to save the same snapshot name, and the loser would fail.
  const inFlight = templatesInFlight.get(name);
  if (inFlight) return inFlight;
  const making = makeBootTemplate(name, template, bootMachine, progress).finally(() => templatesInFlight.delete(name));
  templatesInFlight.set(name, making);
  return making;
}

const templatesInFlight = new Map<string, Promise<SnapshotManifest>>();

async function makeBootTemplate(
  name: string,
  template: MachineConfig,
  bootMachine: (config: MachineConfig) => Promise<void>,
  progress: Progress,
): Promise<SnapshotManifest> {
  progress(
    `making a boot template for ${template.image.reference} (${template.memoryMiB} MiB, ${template.cpus} cpu): one cold boot, then every start is a restore`,
  );
  try {
    await bootMachine({ ...template, captureTemplate: name, autoRemove: false });
    // The capture after the boot compresses the whole guest: on a busy host it took longer than the
    // 15 s this loop used to allow, and the template was then reported as not saved. Allow as long
    // as a boot may take.
    for (let attempt = 0; attempt < Math.max(600, template.bootTimeoutMs / 25); attempt++) {
      const state = await readMachineState(template.id);
      if (state.status === 'exited' || state.status === 'failed') {
        if (state.status === 'failed') throw new TorporError('template-failed', `could not make a boot template: ${state.error}`);
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  } finally {
    await releaseMachine(template);
  }
  const made = await findBootTemplate(name);
  if (!made) throw new TorporError('template-failed', 'the boot template was not saved', { hint: 'see `torpor doctor`; TORPOR_BOOT_TEMPLATES=0 boots cold' });
  progress('boot template ready');
  return made;
}
