import { connect } from 'node:net';
import { link, mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { TorporError } from '../util/errors.ts';
import { environment } from '../config/environment.ts';
import { memoryDirectory, stateHome } from '../state/paths.ts';
import { qemuDriver } from '../vm/qemu-driver.ts';
import { machineShape } from '../vm/qemu-command.ts';
import { tcgCpuModels, type MachineSpec, type TcgCpuModel } from '../vm/machine-spec.ts';
import type { RunningVm } from '../vm/driver.ts';
import { prepareDeviceStateLoad, type DeviceStateLoad } from '../vm/migration.ts';
import { lazyMemoryFiles, lazyMemorySupport, parentDeathEnvironment } from '../snapshot/lazy-memory.ts';
import { openDiskCaptureTarget, type DiskCaptureTarget } from './disk-capture-job.ts';
import { processMatches } from '../util/process-identity.ts';
import { supervisorMarker } from './process-liveness.ts';
import type { MachineConfig } from './machine-record.ts';

// A standby QEMU: a spare supervisor (supervisor-pool.ts) starts QEMU for a machine *shape* before
// any wake asks for it, paused with `-incoming defer` on an empty RAM file, with the pager preloaded
// in map-later mode (native/lazy-memory.c). A restore of a machine of that shape adopts it: the RAM
// file, sockets and console log are renamed into the machine's paths, the pager is told the page map
// (it opens the store as root, moves QEMU's layer disk descriptors to the machine's layer file, then
// QEMU drops to the machine's uid), and only the device state and `cont` remain. architecture/runtime.md.

/** What a spare needs to start a QEMU of one shape: the machine's settings without anything per machine. */
export interface StandbyRequest {
  cpus: number;
  memoryMiB: number;
  accelerator: 'kvm' | 'tcg';
  /** the TCG CPU model (part of the shape: a guest resumes only on the model it was made with) */
  cpuModel?: TcgCpuModel;
  kernelPath: string;
  initramfsPath: string;
  kernelArguments: string[];
  imageDisk: string;
  imageMemoryBytes?: number;
  network: boolean;
  /** the layer disk's size: fixed when QEMU opens the file */
  layerBytes: number;
}

/** The standby a machine like this one (restored, no published ports) could adopt; undefined for others. */
export function standbyRequestOf(config: MachineConfig, layerBytes: number): StandbyRequest | undefined {
  if (config.ports.length > 0 || layerBytes <= 0) return undefined;
  return {
    cpus: config.cpus,
    memoryMiB: config.memoryMiB,
    accelerator: config.accelerator,
    ...(config.cpuModel !== undefined ? { cpuModel: config.cpuModel } : {}),
    kernelPath: config.kernelPath,
    initramfsPath: config.initramfsPath,
    kernelArguments: config.kernelArguments,
    imageDisk: config.image.diskPath,
    ...(config.imageMemoryBytes !== undefined ? { imageMemoryBytes: config.imageMemoryBytes } : {}),
    network: config.network,
    layerBytes,
  };
}

/** The request line's JSON (from the pool of the same host, still checked field by field: it becomes a command line). */
export function parseStandbyRequest(text: string): StandbyRequest {
  const value = JSON.parse(text) as Record<string, unknown>;
  const whole = (key: string) => {
    const entry = value[key];
    if (typeof entry !== 'number' || !Number.isSafeInteger(entry) || entry <= 0) throw new Error(`standby request: ${key} is not a positive integer`);
    return entry;
  };
  const path = (key: string) => {
    const entry = value[key];
    if (typeof entry !== 'string' || !entry.startsWith('/') || /[,\n\0]/.test(entry)) throw new Error(`standby request: ${key} is not an absolute path`);
    return entry;
  };
  const argumentsList = value.kernelArguments;
  if (!Array.isArray(argumentsList) || !argumentsList.every((entry) => typeof entry === 'string' && !/[\n\0]/.test(entry)))
    throw new Error('standby request: kernelArguments is not a list of strings');
  if (value.accelerator !== 'kvm' && value.accelerator !== 'tcg') throw new Error('standby request: unknown accelerator');
  if (typeof value.network !== 'boolean') throw new Error('standby request: network is not a boolean');
  if (value.cpuModel !== undefined && !tcgCpuModels.includes(value.cpuModel as TcgCpuModel)) throw new Error('standby request: unknown CPU model');
  return {
    cpus: whole('cpus'),
    memoryMiB: whole('memoryMiB'),
    accelerator: value.accelerator,
    ...(value.cpuModel !== undefined ? { cpuModel: value.cpuModel as TcgCpuModel } : {}),
    kernelPath: path('kernelPath'),
    initramfsPath: path('initramfsPath'),
    kernelArguments: argumentsList as string[],
    imageDisk: path('imageDisk'),
    ...(value.imageMemoryBytes !== undefined ? { imageMemoryBytes: whole('imageMemoryBytes') } : {}),
    network: value.network,
    layerBytes: whole('layerBytes'),
  };
}

/** The files of the standby of the spare supervisor `pid`: RAM in tmpfs, the rest in the state directory. */
export function standbySlot(pid: number) {
  const directory = join(stateHome(), 'standby', String(pid));
  const memoryFile = join(memoryDirectory(), `standby-${pid}.ram`);
  return {
    directory,
    memoryFile,
    pagerSocket: `${memoryFile}.pager.sock`,
    layerDisk: join(directory, 'layer'),
    consoleLog: join(directory, 'console.log'),
    qemuLog: join(directory, 'qemu.log'),
    agentSocket: join(directory, 'agent.sock'),
    qmpSocket: join(directory, 'qmp.sock'),
    migrationSocket: join(directory, 'migration.sock'),
  };
}

/** Removes what a standby of spare `pid` may have left (its QEMU is gone: it dies with its supervisor). */
export async function removeStandbySlot(pid: number): Promise<void> {
  const slot = standbySlot(pid);
  await Promise.all([rm(slot.memoryFile, { force: true }), rm(slot.pagerSocket, { force: true }), rm(slot.directory, { recursive: true, force: true })]);
}

/** Slots whose supervisor died (kill -9): their QEMU died with it, their files are removed here. */
export async function sweepStandbySlots(): Promise<void> {
  const pids = new Set<number>();
  for (const name of await readdir(join(stateHome(), 'standby')).catch(() => [] as string[])) if (/^\d+$/.test(name)) pids.add(Number(name));
  for (const name of await readdir(memoryDirectory()).catch(() => [] as string[])) {
    const match = /^standby-(\d+)\.ram(?:\.pager\.sock)?$/.exec(name);
    if (match) pids.add(Number(match[1]));
  }
  for (const pid of pids) if (pid !== process.pid && !processMatches(pid, supervisorMarker)) await removeStandbySlot(pid);
}

export interface StandbyQemu {
  vm: RunningVm;
  shape: string;
  /** its `-name` (torpor-standby-<pid>): the machine's state records it, `ps` and `kill` find QEMU by it */
  name: string;
  slot: ReturnType<typeof standbySlot>;
  diskCaptureTarget?: DiskCaptureTarget;
  /** QEMU listening for the device state already (`migrate-incoming`): a restore only streams it */
  deviceStateLoad: DeviceStateLoad;
  /** false once its QEMU exited */
  alive: () => boolean;
  /** Ends QEMU and removes the slot's files (not those already renamed into a machine's). */
  discard: () => Promise<void>;
}

/** A uid QEMU is told on its command line but never switches to: the pager holds the switch back until the machine's own uid is known. */
const heldBackUid = 65534;

/** Whether QEMU will drop root (the machine's confinement decides the same way: network/machine-confinement.ts). */
const dropsRoot = () => process.getuid?.() === 0 && !environment().TORPOR_QEMU_AS_ROOT;

/**
 * Starts a paused QEMU for `request`'s shape (undefined when this host cannot: no lazy memory, or
 * TORPOR_STANDBY_QEMU=0). Failures leave nothing behind; a start then just launches its own QEMU.
 */
export async function startStandbyQemu(request: StandbyRequest): Promise<StandbyQemu | undefined> {
  if (!environment().TORPOR_STANDBY_QEMU) return undefined;
  const support = await lazyMemorySupport();
  if (!support.available || !support.library) return undefined;
  const slot = standbySlot(process.pid);
  let diskCaptureTarget: DiskCaptureTarget | undefined;
  let vm: RunningVm | undefined;
  try {
    // Not recursive: a state directory removed meanwhile (a test's, a host's being torn down) is not made again.
    await mkdir(dirname(slot.directory), { mode: 0o700 }).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
    await mkdir(slot.directory, { mode: 0o700 });
    await mkdir(memoryDirectory(), { recursive: true });
    for (const [path, size] of [
      [slot.memoryFile, request.memoryMiB * 1024 * 1024],
      [slot.layerDisk, request.layerBytes],
    ] as const) {
      const handle = await open(path, 'w', 0o600);
      await handle.truncate(size).finally(() => handle.close());
    }
    diskCaptureTarget = await openDiskCaptureTarget(slot.layerDisk).catch(() => undefined);
    const runAs = dropsRoot() ? { uid: heldBackUid, gid: heldBackUid } : undefined;
    const spec: MachineSpec = {
      id: `standby-${process.pid}`,
      cpus: request.cpus,
      memoryMiB: request.memoryMiB,
      accelerator: request.accelerator,
      cpuModel: request.cpuModel,
      kernelPath: request.kernelPath,
      initramfsPath: request.initramfsPath,
      kernelArguments: request.kernelArguments,
      imageDisk: request.imageDisk,
      imageMemoryBytes: request.imageMemoryBytes,
      layerDisk: slot.layerDisk,
      diskCaptureDescriptor: diskCaptureTarget?.handle.fd,
      memoryFile: slot.memoryFile,
      agentSocket: slot.agentSocket,
      qmpSocket: slot.qmpSocket,
      consoleLog: slot.consoleLog,
      network: request.network,
      ports: [],
      runAs,
      incoming: true,
      environment: {
        ...(runAs ? await parentDeathEnvironment() : {}),
        LD_PRELOAD: support.library,
        TORPOR_LAZY_MEMORY_LATER: slot.memoryFile,
        TORPOR_STANDBY_LAYER: slot.layerDisk,
      },
    };
    const launched = (vm = await qemuDriver.launch(spec, { logPath: slot.qemuLog }));
    // The QMP half of the device-state load (two round trips) now, not on the wake's path: QEMU
    // listens in the slot's root-only directory; nothing reaches it before the adoption's uid switch.
    const deviceStateLoad = await prepareDeviceStateLoad(launched.qmp, slot.migrationSocket);
    let running = true;
    void launched.exited.then(() => (running = false));
    let discarded: Promise<void> | undefined;
    return {
      vm,
      shape: machineShape(spec, request.layerBytes),
      name: `torpor-${spec.id}`,
      slot,
      diskCaptureTarget,
      deviceStateLoad,
      alive: () => running,
      discard: () =>
        (discarded ??= (async () => {
          launched.kill('SIGKILL');
          await launched.exited;
          launched.qmp.close();
          await diskCaptureTarget?.handle.close().catch(() => {});
          await removeStandbySlot(process.pid);
        })()),
    };
  } catch (error) {
    if (vm) {
      vm.kill('SIGKILL');
      await vm.exited;
      vm.qmp.close();
    }
    await diskCaptureTarget?.handle.close().catch(() => {});
    await removeStandbySlot(process.pid);
    process.stderr.write(`torpor: note: no standby QEMU (${(error as Error).message.split('\n')[0]})\n`);
    return undefined;
  }
}

/** The machine side of an adoption: its spec as a launch would use it, and its files. */
export interface AdoptingMachine {
  spec: MachineSpec;
  layerDisk: string;
  consoleLog: string;
  supervisorLog: string;
}

/**
 * Why `standby` cannot take this machine's restore, or undefined when it can: same shape (the
 * layer's size included), a lazily prepared RAM file that is still empty, a QEMU still running.
 */
export async function standbyMismatch(standby: StandbyQemu, machine: AdoptingMachine): Promise<string | undefined> {
  if (!standby.alive()) return 'its QEMU exited';
  const layerBytes = await stat(machine.layerDisk).then(
    (status) => status.size,
    () => -1,
  );
  if (machineShape(machine.spec, layerBytes) !== standby.shape) return 'another machine shape';
  const files = lazyMemoryFiles(machine.spec.memoryFile);
  const memory = await stat(files.memoryFile).catch(() => undefined);
  if (!memory || !(await stat(files.mapFile).catch(() => undefined))) return 'the restore was not prepared lazily';
  if (memory.size !== machine.spec.memoryMiB * 1024 * 1024 || memory.blocks > 0) return 'the RAM file holds memory already (warm)';
  return undefined;
}

/**
 * Gives the standby's QEMU this machine's RAM, page map, layer disk, uid and names. From here it is
 * the machine's QEMU: a failure ends it (the caller fails the start). The layer file must be the
 * machine's final one, at its full size (its contents may still be being written: the guest does
 * not run before `go`), as for any QEMU started at `launch`.
 */
export async function adoptStandby(standby: StandbyQemu, machine: AdoptingMachine, mark: (step: string) => void = () => {}): Promise<void> {
  const { spec } = machine;
  const files = lazyMemoryFiles(spec.memoryFile);
  const layer = spec.layerDisk ?? '';
  if (/[\t\n]/.test(files.mapFile + layer)) throw new TorporError('standby-failed', 'a path of this machine holds a tab or a newline');
  // Same inode, new name: QEMU's mapping is the file the machine's lazy-memory files describe.
  await rename(standby.slot.memoryFile, spec.memoryFile);
  mark('standbyRenamed');
  // The slot's other names become the machine's while the pager loads the map (they hand QEMU
  // nothing; after the map they were 2-8 ms more on the way to the device state). If the map is
  // refused, QEMU ends and the machine's start fails: its files are cleaned up as the machine's.
  const renamed = Promise.all([
    rename(standby.slot.agentSocket, spec.agentSocket),
    rename(standby.slot.qmpSocket, spec.qmpSocket),
    rename(standby.slot.consoleLog, spec.consoleLog),
    // QEMU's own messages: the machine's supervisor log names them too (the slot's name goes with the slot).
    link(standby.slot.qemuLog, machine.supervisorLog).catch(() => {}),
  ]);
  renamed.catch(() => {});
  const reply = await askPager(standby.slot.pagerSocket, `map ${spec.runAs ? spec.runAs.uid : '-'}\t${files.mapFile}\t${layer}\n`, standby.vm);
  mark('standbyMapped');
  if (reply !== 'ok')
    throw new TorporError('standby-failed', `the standby QEMU's pager refused the page map (${reply || 'no answer'})`, {
      hint: 'wake again; TORPOR_STANDBY_QEMU=0 turns standby QEMUs off',
    });
  // Both read from the kernel before anything of the snapshot reaches QEMU (its device state is the guest's data).
  if (spec.runAs) confirmUid(standby.vm.pid, spec.runAs.uid);
  if (spec.layerDisk) confirmLayerMoved(standby.vm.pid, standby.slot.layerDisk, spec.layerDisk);
  await renamed;
  mark('standbyConfirmed');
}

/** One request on the pager's socket, its one-line answer ('' when it closed without one). */
function askPager(socketPath: string, request: string, vm: RunningVm): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new TorporError('standby-failed', 'the standby QEMU did not answer for the page map within 10 s'));
    }, 10_000);
    const done = (value: string) => {
      clearTimeout(timer);
      resolve(value);
    };
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
    socket.on('close', () => done(text.trim()));
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(new TorporError('standby-failed', `the standby QEMU's pager socket: ${error.message}`));
    });
    void vm.exited.then(() => done(text.trim()));
  });
}

/** QEMU's descriptors of the standby's layer now all name the machine's layer (read from the kernel, as the uid is). */
function confirmLayerMoved(pid: number, standbyLayer: string, machineLayer: string): void {
  // Synchronous on purpose: a readdir and ~60 readlinks of /proc take well under a millisecond as
  // system calls, and 30 ms on a wake's path as as many trips through libuv's 4-thread pool
  // (where the adoption's renames then queued behind them: measured).
  const targets = readdirSync(`/proc/${pid}/fd`).map((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      return '';
    }
  });
  if (targets.some((target) => target === standbyLayer || target === `${standbyLayer} (deleted)`) || !targets.includes(machineLayer))
    throw new TorporError('standby-failed', "the standby QEMU's layer disk descriptors were not moved to the machine's layer");
}

/** The switch to the machine's uid happened in QEMU's every id (real, effective, saved, filesystem): read from the kernel, not taken on trust. */
function confirmUid(pid: number, uid: number): void {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  for (const field of ['Uid', 'Gid']) {
    const ids = new RegExp(`^${field}:\\s+(.*)$`, 'm').exec(status)?.[1]?.split(/\s+/).map(Number) ?? [];
    if (ids.length !== 4 || ids.some((id) => id !== uid))
      throw new TorporError('standby-failed', `the standby QEMU did not switch to the machine's ${field.toLowerCase()} ${uid} (${ids.join(' ')})`);
  }
}
