import { mkdir, writeFile, truncate } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { TorporError } from '../util/errors.ts';
import { environment } from '../config/environment.ts';
import { machineDefaults } from '../config/machine-defaults.ts';
import { runCommand } from '../util/command.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { bootTimingArguments } from '../host/boot-timing.ts';
import { resolveOrBuildImage } from './image-resolution.ts';
import type { PortMapping } from '../vm/machine-spec.ts';
import type { NetworkPolicy } from '../network/policy.ts';
import type { SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { machineConfigSchema, type MachineConfig } from './machine-record.ts';
import { machineFiles, writeMachineState } from './machine-files.ts';
import { releaseMachine } from './machine-removal.ts';
import { ensureBootTemplate } from './boot-template.ts';
import { freeOrphanedTemplateMemory } from './template-memory.ts';
import { claimName } from './machine-names.ts';
import { prepareHost } from './host-preparation.ts';
import { checkSnapshotRuns } from './snapshot-compatibility.ts';
import { hostCpu } from '../host/cpu-description.ts';
import { startMachine } from './machine-start.ts';
import { validateMachineName, randomMachineName } from './run-options.ts';
import { pathExists } from '../util/path-exists.ts';
import { mainProcessOf } from './machine-process.ts';
import { spareName, type SpareRequest } from './spare-pool.ts';
import { checkImageMemory } from '../vm/image-memory.ts';
import { qemuBinary } from '../vm/qemu-command.ts';
import { probeQemuVersion, qemuVersionText } from '../vm/qemu-version.ts';

/** What a machine is made of: the same fields a `run` asks a spare for (spare-pool.ts), and more. */
export interface CreateMachineOptions extends SpareRequest {
  /** Make a spare machine of this pool (spare-pool.ts): no name, no process until a `run` claims it. */
  spare?: string;
}

export interface RestoreOptions {
  name?: string;
  ports?: PortMapping[];
  autoRemove?: boolean;
  /** Replaces the snapshot machine's network policy (the network device itself is part of the snapshot). */
  networkPolicy?: NetworkPolicy;
  /** Boot templates carry no main process; the restored machine starts this one. */
  startMain?: boolean;
  /** Overrides for a boot-template start: the new machine's own command, env, name... */
  configure?: (config: MachineConfig) => MachineConfig;
  /** Claim no name (a spare machine: it gets its user's name when it is claimed). */
  unnamed?: boolean;
}

/**
 * The image as shared DAX memory (vm/image-memory.ts) when it is on (TORPOR_IMAGE_DAX), the guest
 * kernel has the drivers, and the image's ext4 allows it; otherwise the block device, as before.
 */
async function imageMemoryFor(diskPath: string, kernelTakesIt: boolean): Promise<{ imageMemoryBytes?: number }> {
  if (!environment().TORPOR_IMAGE_DAX || !kernelTakesIt) return {};
  const check = await checkImageMemory(diskPath);
  return check.usable ? { imageMemoryBytes: check.sizeBytes } : {};
}

/** The QEMU release that will run a new machine; left out when the binary cannot tell (its start then fails with why). */
function qemuVersionField(): { qemuVersion?: string } {
  const version = probeQemuVersion(qemuBinary());
  return version ? { qemuVersion: qemuVersionText(version) } : {};
}

/** Writes a new machine's directory: its config, a fresh sparse writable layer, state "created". */
async function writeNewMachine(config: MachineConfig, diskGiB: number): Promise<void> {
  const files = machineFiles(config.id);
  await mkdir(files.directory, { recursive: true });
  // The writable layer: a sparse ext4 the guest lays over the read-only image with overlayfs.
  await writeFile(files.layerDisk, '');
  await truncate(files.layerDisk, diskGiB * 1024 ** 3);
  await runCommand('mkfs.ext4', ['-q', '-F', '-m', '0', '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', '-L', 'torpor-layer', files.layerDisk]);
  await writeJsonAtomic(files.config, config);
  await writeMachineState(config.id, { status: 'created' });
}

/**
 * Creates a machine (state "created", not started) from an image: resolves or pulls the image,
 * claims the name, and, with boot templates on, makes the machine a restore of the image's boot
 * template (cold-booting that template once if it does not exist yet).
 */
export async function createMachine(options: CreateMachineOptions, progress: Progress = silentProgress): Promise<MachineConfig> {
  const name = options.spare ? undefined : (options.name ?? randomMachineName());
  if (name !== undefined) validateMachineName(name);
  const host = await prepareHost(progress);
  const image = await resolveOrBuildImage(options.image, progress);
  if (!image) {
    throw new TorporError('image-unknown', `no such image: ${options.image}`, {
      hint: 'see `torpor images`; built-in images are base and node; import one with `torpor image import PATH --name NAME`',
      status: 404,
    });
  }
  const mainProcess = mainProcessOf(image.config, options);
  const id = randomBytes(6).toString('hex');
  const imageMemory = await imageMemoryFor(image.diskPath, host.imageMemory);
  const config: MachineConfig = {
    id,
    name: name ?? spareName(id),
    createdAt: new Date().toISOString(),
    image: { reference: options.image, digest: image.digest, diskPath: image.diskPath },
    ...imageMemory,
    ...mainProcess,
    hostname: options.hostname ?? (name ?? 'torpor').replace(/[^a-zA-Z0-9-]/g, '-').slice(0, 63),
    tty: options.tty ?? false,
    interactive: options.interactive ?? false,
    cpus: options.cpus ?? machineDefaults.cpus,
    memoryMiB: options.memoryMiB ?? machineDefaults.memoryMiB,
    ports: options.ports ?? [],
    network: options.network ?? true,
    ...(options.networkPolicy ? { networkPolicy: options.networkPolicy } : {}),
    autoRemove: options.autoRemove ?? false,
    accelerator: host.accelerator.accelerator,
    // Under TCG the CPU model is the guest's, kept by its snapshots. `max` is left out: machines made
    // before the field existed have none, and their boot templates keep their names.
    ...(host.accelerator.accelerator === 'tcg' && environment().TORPOR_TCG_CPU !== 'max' ? { cpuModel: environment().TORPOR_TCG_CPU } : {}),
    // Its snapshots are bound to this QEMU release (snapshot-compatibility.ts).
    ...qemuVersionField(),
    // A snapshot of it is bound to this CPU's features (snapshot-compatibility.ts).
    ...(host.accelerator.accelerator === 'kvm' ? { hostCpu: await hostCpu() } : {}),
    kernelPath: host.kernelPath,
    initramfsPath: host.initramfsPath,
    // init_on_free=1: the guest zeroes pages it frees, and all-zero chunks are neither stored nor
    // read back, so a snapshot carries what the guest uses, not what it once used (issue 11). Part
    // of the boot template's name, so machines booted before keep their own template.
    kernelArguments: [
      ...(host.accelerator.accelerator === 'tcg' ? bootTimingArguments() : []),
      ...(environment().TORPOR_ZERO_FREED_MEMORY ? ['init_on_free=1'] : []),
      // A machine with image memory is a q35 whose memory-device window lies above 4 GiB: the kernel
      // then reserves a 64 MiB bounce buffer (MemTotal 414 instead of 480 MiB of 512) that its virtio
      // devices, which reach all of guest memory, never use.
      ...(imageMemory.imageMemoryBytes !== undefined ? ['swiotlb=noforce'] : []),
    ],
    bootTimeoutMs: environment().TORPOR_BOOT_TIMEOUT_MS,
    // A spare keeps its image's defaults: the claim applies the user's overrides to them.
    ...(options.spare ? { spare: { key: options.spare, defaults: { ...image.config, env: image.config.env } }, autoRemove: true } : {}),
  };
  const diskGiB = options.diskGiB ?? machineDefaults.diskGiB;
  if (options.spare && (!environment().TORPOR_BOOT_TEMPLATES || diskGiB !== machineDefaults.diskGiB))
    throw new TorporError('spare-unsupported', 'spare machines start from boot templates only', { hint: 'unset TORPOR_BOOT_TEMPLATES=0' });
  if (environment().TORPOR_BOOT_TEMPLATES && diskGiB === machineDefaults.diskGiB) {
    // Template RAM of deleted state directories would otherwise hold tmpfs until the next reboot.
    await freeOrphanedTemplateMemory();
    const templateId = randomBytes(6).toString('hex');
    const template = await ensureBootTemplate(
      { ...config, id: templateId, name: `template-${templateId}`, hostname: 'torpor', command: ['true'], ports: [], autoRemove: false },
      async (templateConfig) => {
        await writeNewMachine(templateConfig, diskGiB);
        await startMachine(templateConfig.id);
      },
      progress,
    );
    // The user's machine is the template's guest, with the user's process, names and ports.
    return createMachineFromSnapshot(template, {
      name: config.name,
      unnamed: Boolean(options.spare),
      ports: config.ports,
      autoRemove: config.autoRemove,
      startMain: true,
      configure: (restored) => ({ ...config, id: restored.id, name: options.spare ? spareName(restored.id) : restored.name, restore: restored.restore }),
    });
  }
  await claimName(config.name, id);
  try {
    await writeNewMachine(config, diskGiB);
    return config;
  } catch (error) {
    await releaseMachine({ id, name: config.name });
    throw error;
  }
}

/**
 * Creates a machine from a snapshot: materializes its RAM into tmpfs and its disk layer, then lets
 * a supervisor load the device state and continue the guest where it was.
 */
export async function createMachineFromSnapshot(manifest: SnapshotManifest, options: RestoreOptions = {}): Promise<MachineConfig> {
  const parsed = machineConfigSchema.safeParse((manifest.metadata as { machine?: unknown }).machine);
  if (!parsed.success)
    throw new TorporError('snapshot-invalid', `snapshot ${manifest.name} has no machine description`, { hint: 'it was not made by `torpor snapshot`' });
  const original = parsed.data;
  const dependencies = [
    ['image', original.image.diskPath, `import or pull image ${original.image.reference} again (digest ${original.image.digest})`],
    ['guest kernel', original.kernelPath, 'apt-get install -y linux-image-cloud-amd64 (the snapshot needs the same kernel)'],
    ['initramfs', original.initramfsPath, 'the guest agent changed since the snapshot; snapshots restore only with the agent they were taken with'],
  ] as const;
  // Looked at together (each is a wait on the filesystem, and a wake waits for all of them).
  const [, ...present] = await Promise.all([checkSnapshotRuns(manifest.name, original), ...dependencies.map(([, path]) => pathExists(path))]);
  const missing = dependencies.find((_, index) => !present[index]);
  if (missing) {
    const [what, path, hint] = missing;
    throw new TorporError('snapshot-dependency-missing', `cannot restore ${manifest.name}: its ${what} is gone (${path})`, { hint });
  }
  if (options.networkPolicy && !original.network) {
    throw new TorporError('invalid-network', `snapshot ${manifest.name} was taken with --network none: it has no network device to give a policy to`, {
      status: 400,
      hint: 'restore it without network flags; a machine gets its network device when it is created',
    });
  }
  const name = options.name ?? randomMachineName();
  validateMachineName(name);
  const id = randomBytes(6).toString('hex');
  const files = machineFiles(id);
  // The directory beside the name claim (a failed claim leaves an empty directory: removed below, with the claim's release).
  const directoryMade = mkdir(files.directory, { recursive: true });
  directoryMade.catch(() => {});
  try {
    if (!options.unnamed) await claimName(name, id);
    const mainStream = (manifest.metadata as { mainStream?: number }).mainStream;
    let config: MachineConfig = {
      ...original,
      id,
      name,
      hostname: options.name ? name : original.hostname,
      createdAt: new Date().toISOString(),
      ports: options.ports ?? original.ports,
      ...(options.networkPolicy ? { networkPolicy: options.networkPolicy } : {}),
      autoRemove: options.autoRemove ?? false,
      restore: { snapshot: manifest.name, mainStream, startMain: options.startMain ?? mainStream === undefined },
    };
    if (options.configure) config = options.configure(config);
    await directoryMade;
    // Memory and disk are materialized when the machine starts (`materializeForRestore`).
    await writeJsonAtomic(files.config, config);
    await writeMachineState(id, { status: 'created' });
    return config;
  } catch (error) {
    await directoryMade.catch(() => {});
    await releaseMachine({ id, name });
    throw error;
  }
}
