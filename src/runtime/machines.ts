import { spawn } from 'node:child_process';
import { mkdir, readdir, readFile, writeFile, truncate, rm, statfs, open } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join, dirname } from 'node:path';
import { randomBytes } from 'node:crypto';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { projectRoot } from '../util/project-root.ts';
import { paths, memoryDirectory, stateHome } from '../state/paths.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import { runCommand } from '../util/command.ts';
import { processMatches, signalIfMatches } from '../util/process-identity.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { ensureGuestArtifacts } from '../host/guest-artifacts.ts';
import { bootTimingArguments } from '../host/boot-timing.ts';
import { chooseAccelerator, type AcceleratorChoice } from '../vm/accelerator-probe.ts';
import { resolveOrBuildImage } from '../image/builtin-images.ts';
import type { PortMapping } from '../vm/machine-spec.ts';
import { requireNetworkFilter } from '../network/firewall.ts';
import { prepareConfinement, releaseConfinement } from '../network/machine-confinement.ts';
import { defaultNetworkPolicy, type NetworkPolicy } from '../network/policy.ts';
import { AgentClient } from '../guest/agent-client.ts';
import { FrameType, decodeError } from '../guest/protocol.ts';
import {
  machineFiles,
  readMachineConfig,
  readMachineState,
  writeMachineState,
  type MachineConfig,
  type MachineState,
} from './machine-record.ts';
import { releaseMachine } from './machine-removal.ts';
import { SupervisorPool } from './supervisor-pool.ts';
import { ensureBootTemplate } from './boot-template.ts';
import { createMachineFromSnapshot, materializeForRestore } from './snapshots.ts';
import { validateMachineName, randomMachineName } from './run-options.ts';
import type { ControlRequest, ControlReply } from './control-protocol.ts';

export interface CreateMachineOptions {
  image: string;
  name?: string;
  command?: string[];
  entrypoint?: string;
  env?: string[];
  workingDir?: string;
  user?: string;
  hostname?: string;
  tty?: boolean;
  interactive?: boolean;
  cpus?: number;
  memoryMiB?: number;
  ports?: PortMapping[];
  network?: boolean;
  /** Default: the filter (public internet only); see src/network/policy.ts. */
  networkPolicy?: NetworkPolicy;
  autoRemove?: boolean;
  diskGiB?: number;
}

export interface MachineView {
  config: MachineConfig;
  state: MachineState;
}

const supervisorEntry = join(dirname(fileURLToPath(import.meta.url)), 'supervisor-main.ts');

/** The bundled supervisor starts in ~0.1 s; the sources through tsx take ~0.6 s (kept as a fallback). */
async function supervisorCommand(): Promise<string[]> {
  if (process.env.TORPOR_NO_BUNDLE !== '1') {
    try {
      const { ensureBundles } = (await import(pathToFileURL(join(projectRoot(), 'bin', 'bundles.mjs')).href)) as { ensureBundles: () => Promise<{ supervisor: string }> };
      return [(await ensureBundles()).supervisor];
    } catch {
      // no esbuild: run the sources
    }
  }
  return ['--import', import.meta.resolve('tsx'), supervisorEntry];
}

let hostPreparation: Promise<{ kernelPath: string; initramfsPath: string; key: string; accelerator: AcceleratorChoice }> | undefined;

/** Builds the guest artifacts (first time only) and decides KVM or TCG (probed once, cached). */
export function prepareHost(progress: Progress = silentProgress) {
  hostPreparation ??= (async () => {
    const artifacts = await ensureGuestArtifacts(progress);
    const accelerator = await chooseAccelerator({ kernelPath: artifacts.kernel.imagePath, initramfsPath: artifacts.initramfsPath, cacheDirectory: paths.artifacts() });
    return { kernelPath: artifacts.kernel.imagePath, initramfsPath: artifacts.initramfsPath, key: artifacts.key, accelerator };
  })();
  hostPreparation.catch(() => (hostPreparation = undefined));
  return hostPreparation;
}

export async function claimName(name: string, id: string): Promise<void> {
  await mkdir(paths.names(), { recursive: true });
  try {
    // O_EXCL makes the claim atomic across concurrent CLIs without a global lock.
    await writeFile(join(paths.names(), name), id, { flag: 'wx' });
  } catch (error) {
    if (!isNodeError(error, 'EEXIST')) throw error;
    const owner = (await readFile(join(paths.names(), name), 'utf8').catch(() => '')).trim();
    throw new TorporError('name-in-use', `the name ${JSON.stringify(name)} is already used by machine ${owner.slice(0, 12)}`, {
      hint: `choose another --name, or remove it first: torpor rm -f ${name}`,
    });
  }
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

const bootTemplatesEnabled = () => process.env.TORPOR_BOOT_TEMPLATES !== '0';

export async function createMachine(options: CreateMachineOptions, progress: Progress = silentProgress): Promise<MachineConfig> {
  const name = options.name ?? randomMachineName();
  validateMachineName(name);
  const host = await prepareHost(progress);
  const image = await resolveOrBuildImage(options.image, progress);
  if (!image) {
    throw new TorporError('image-unknown', `no such image: ${options.image}`, {
      hint: 'see `torpor images`; built-in images are base and node; import one with `torpor image import PATH --name NAME`',
    });
  }
  const entrypoint = options.entrypoint !== undefined ? (options.entrypoint ? [options.entrypoint] : []) : (image.config.entrypoint ?? []);
  const cmd = options.command && options.command.length > 0 ? options.command : options.entrypoint !== undefined ? [] : (image.config.cmd ?? []);
  const command = [...entrypoint, ...cmd];
  if (command.length === 0) {
    throw new TorporError('no-command', `image ${options.image} has no default command and none was given`, { hint: `torpor run ${options.image} COMMAND...` });
  }
  const environment = new Map<string, string>();
  for (const entry of [...image.config.env, ...(options.env ?? [])]) {
    const separator = entry.indexOf('=');
    environment.set(entry.slice(0, separator), entry.slice(separator + 1));
  }
  const id = randomBytes(6).toString('hex');
  const config: MachineConfig = {
    id,
    name,
    createdAt: new Date().toISOString(),
    image: { reference: options.image, digest: image.digest, diskPath: image.diskPath },
    command,
    env: [...environment].map(([key, value]) => `${key}=${value}`),
    workingDir: options.workingDir ?? image.config.workingDir ?? '/',
    user: options.user ?? image.config.user ?? '',
    hostname: options.hostname ?? name.replace(/[^a-zA-Z0-9-]/g, '-').slice(0, 63),
    tty: options.tty ?? false,
    interactive: options.interactive ?? false,
    cpus: options.cpus ?? 1,
    memoryMiB: options.memoryMiB ?? 512,
    ports: options.ports ?? [],
    network: options.network ?? true,
    ...(options.networkPolicy ? { networkPolicy: options.networkPolicy } : {}),
    autoRemove: options.autoRemove ?? false,
    accelerator: host.accelerator.accelerator,
    kernelPath: host.kernelPath,
    initramfsPath: host.initramfsPath,
    kernelArguments: host.accelerator.accelerator === 'tcg' ? bootTimingArguments() : [],
    bootTimeoutMs: Number(process.env.TORPOR_BOOT_TIMEOUT_MS ?? 60_000),
  };
  const diskGiB = options.diskGiB ?? 4;
  if (bootTemplatesEnabled() && diskGiB === 4) {
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
      name,
      ports: config.ports,
      autoRemove: config.autoRemove,
      startMain: true,
      configure: (restored) => ({ ...config, id: restored.id, name: restored.name, restore: restored.restore }),
    });
  }
  await claimName(name, id);
  try {
    await writeNewMachine(config, diskGiB);
    return config;
  } catch (error) {
    await releaseMachine({ id, name });
    throw error;
  }
}

async function ensureMemoryRoom(memoryMiB: number): Promise<void> {
  await mkdir(memoryDirectory(), { recursive: true });
  const info = await statfs(memoryDirectory());
  const freeMiB = Math.floor((info.bavail * info.bsize) / 1024 ** 2);
  if (freeMiB < memoryMiB) {
    throw new TorporError('tmpfs-full', `not enough space in ${memoryDirectory()} for the guest's RAM: need ${memoryMiB} MiB, ${freeMiB} MiB free`, {
      hint: 'stop other machines, use a smaller --memory, or enlarge the tmpfs (mount -o remount,size=8G /dev/shm); TORPOR_MEMORY_DIR picks another tmpfs',
    });
  }
}

async function ensurePortsFree(ports: PortMapping[]): Promise<void> {
  for (const port of ports.filter((mapping) => mapping.protocol === 'tcp')) {
    await new Promise<void>((resolve, reject) => {
      const server = createServer();
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(
          new TorporError('port-in-use', `host port ${port.hostPort} is not available (${error.code})`, {
            hint: 'pick another host port with -p HOST:GUEST, or stop what uses it',
          }),
        ),
      );
      server.listen({ port: port.hostPort, host: port.hostAddress || undefined, exclusive: true }, () => server.close(() => resolve()));
    });
  }
}

// Supervisors are recognised by pid plus this word in their command line (spares learn their
// machine's id only later, so the id is not in it).
const supervisorMarker = 'supervisor';

function supervisorAlive(_config: MachineConfig, state: MachineState): boolean {
  return processMatches(state.supervisorPid, supervisorMarker);
}

/** Warm spare supervisors for a long-running host, started with the same command as any other. */
export function createSupervisorPool(size = 1): SupervisorPool {
  const pool = new SupervisorPool(supervisorCommand, size);
  pool.fill();
  return pool;
}

/** The state on disk, corrected for processes that died without saying so (kill -9, reboot). */
export async function effectiveState(config: MachineConfig): Promise<MachineState> {
  const state = await readMachineState(config.id);
  if (!['starting', 'running', 'stopping'].includes(state.status)) return state;
  if (supervisorAlive(config, state)) return state;
  if (processMatches(state.qemuPid, `torpor-${config.id}`)) {
    return { ...state, error: 'its supervisor process died; `torpor stop` or `torpor rm -f` ends the machine' };
  }
  return { ...state, status: 'exited', exitCode: state.exitCode ?? 137, error: state.error ?? 'the machine stopped without a trace (its processes were killed)' };
}

export async function startMachine(
  id: string,
  options: { waitForAttach?: boolean; pool?: SupervisorPool; /** the snapshot's files are already in place (fork) */ materialized?: boolean } = {},
): Promise<MachineState> {
  const config = await readMachineConfig(id);
  const current = await effectiveState(config);
  if (['starting', 'running', 'stopping'].includes(current.status)) {
    throw new TorporError('already-running', `machine ${config.name} is already ${current.status}`, { hint: `torpor stop ${config.name}` });
  }
  await ensureMemoryRoom(config.memoryMiB);
  // Said here, before a supervisor starts, so the user sees the reason and the way out.
  if (config.network && (config.networkPolicy?.mode ?? 'filtered') === 'filtered') requireNetworkFilter();
  if (config.network) await ensurePortsFree(config.ports);
  const files = machineFiles(id);
  // `restored` survives: a machine made from a snapshot restores once, then boots cold on its own disk.
  await writeMachineState(id, { status: 'starting', waitForAttach: options.waitForAttach, restored: current.restored });
  const restoring = config.restore !== undefined && !current.restored;
  let child = options.pool?.take();
  if (!child) {
    const log = await open(files.supervisorLog, 'a');
    child = spawn(process.execPath, [...(await supervisorCommand()), '--standby'], {
      detached: true,
      stdio: ['pipe', log.fd, log.fd],
      env: { ...process.env, TORPOR_HOME: stateHome() },
    });
    await log.close();
    child.unref();
  }
  const supervisorPid = child.pid;
  // The supervisor starts up while the snapshot is materialized and its network rules are set up
  // on its behalf; then it is told which machine is its.
  try {
    await Promise.all([
      restoring && !options.materialized ? materializeForRestore(config) : undefined,
      prepareConfinement(id, { network: config.network, policy: config.networkPolicy ?? defaultNetworkPolicy() }, child.pid!),
    ]);
  } catch (error) {
    child.kill('SIGKILL');
    await releaseConfinement(id);
    await writeMachineState(id, { status: 'failed', error: (error as Error).message, restored: restoring || current.restored });
    throw error;
  } finally {
    child.stdin?.end(`${id}\n`);
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  // Wait for the supervisor to report the guest ready (or failed).
  for (;;) {
    const state = await readMachineState(id);
    if (state.status === 'running' || state.status === 'exited' || state.status === 'failed') {
      if (state.status === 'failed') {
        throw new TorporError('start-failed', `machine ${config.name} failed to start: ${state.error}`, { hint: `supervisor log: ${files.supervisorLog}` });
      }
      return state;
    }
    if (!processMatches(supervisorPid, supervisorMarker)) {
      const after = await readMachineState(id);
      if (after.status === 'running' || after.status === 'exited') return after;
      const log = await readFile(files.supervisorLog, 'utf8').catch(() => '');
      await writeMachineState(id, { ...after, status: 'failed', error: 'supervisor died during start' });
      throw new TorporError('start-failed', `machine ${config.name} failed to start: its supervisor exited\n${log.trim().split('\n').slice(-8).join('\n')}`, {
        hint: `supervisor log: ${files.supervisorLog}`,
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 15));
  }
}

export async function listMachines(): Promise<MachineView[]> {
  let ids: string[] = [];
  try {
    ids = await readdir(paths.machines());
  } catch (error) {
    if (!isNodeError(error, 'ENOENT')) throw error;
  }
  const views: MachineView[] = [];
  for (const id of ids) {
    try {
      const config = await readMachineConfig(id);
      views.push({ config, state: await effectiveState(config) });
    } catch {
      // a machine being created or removed right now
    }
  }
  return views.sort((a, b) => b.config.createdAt.localeCompare(a.config.createdAt));
}

/** By name, full id or unique id prefix, like docker. */
export async function findMachine(reference: string): Promise<MachineConfig> {
  try {
    const id = (await readFile(join(paths.names(), reference), 'utf8')).trim();
    return await readMachineConfig(id);
  } catch {
    // not a name
  }
  const ids = await readdir(paths.machines()).catch(() => [] as string[]);
  const matches = ids.filter((id) => id.startsWith(reference));
  if (matches.length === 1 && reference.length >= 3) return readMachineConfig(matches[0]!);
  if (matches.length > 1) throw new TorporError('ambiguous-machine', `${reference} matches ${matches.length} machines`, { hint: 'give more of the id, or the name' });
  throw new TorporError('machine-unknown', `no such machine: ${reference}`, { hint: 'see `torpor ps -a`' });
}

export async function connectToMachine(config: MachineConfig): Promise<AgentClient> {
  const state = await effectiveState(config);
  if (state.status !== 'running') {
    throw new TorporError('not-running', `machine ${config.name} is not running (${state.status}${state.error ? `: ${state.error}` : ''})`, {
      hint: `torpor start ${config.name}`,
    });
  }
  try {
    return await AgentClient.connect(machineFiles(config.id).controlSocket, { timeoutMs: 2000 });
  } catch (error) {
    throw new TorporError('not-running', `cannot reach machine ${config.name}'s supervisor: ${(error as Error).message}`, { hint: `torpor rm -f ${config.name}` });
  }
}

export function sendControl(client: AgentClient, request: ControlRequest, stream?: number): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const id = stream ?? client.allocateStream();
    client.route(id, (frame) => {
      if (frame.type === FrameType.controlReply) resolve(JSON.parse(frame.payload.toString()) as ControlReply);
      else if (frame.type === FrameType.error) reject(new Error(decodeError(frame.payload).message));
      else return false;
      return true;
    });
    client.send(FrameType.control, id, Buffer.from(JSON.stringify(request)));
  });
}

async function waitForStatus(id: string, done: (state: MachineState) => boolean, timeoutMs: number): Promise<MachineState | undefined> {
  const config = await readMachineConfig(id);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const state = await effectiveState(config);
    if (done(state)) return state;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  return undefined;
}

export async function stopMachine(config: MachineConfig, options: { timeoutSeconds?: number } = {}): Promise<MachineState> {
  const state = await effectiveState(config);
  if (!['starting', 'running', 'stopping'].includes(state.status)) return state;
  const timeoutSeconds = options.timeoutSeconds ?? 10;
  if (supervisorAlive(config, state) && state.status === 'running') {
    try {
      const client = await AgentClient.connect(machineFiles(config.id).controlSocket, { timeoutMs: 2000 });
      await sendControl(client, { op: 'stop', timeoutSeconds }).catch(() => undefined);
      client.close();
    } catch {
      // fall through to signals
    }
    const stopped = await waitForStatus(config.id, (current) => current.status === 'exited' || current.status === 'failed', (timeoutSeconds + 10) * 1000);
    if (stopped) return stopped;
  }
  return killMachine(config);
}

/** Ends a machine by its recorded pids (never by name) and records it as exited. */
export async function killMachine(config: MachineConfig): Promise<MachineState> {
  const state = await readMachineState(config.id);
  signalIfMatches(state.supervisorPid, supervisorMarker, 'SIGKILL');
  signalIfMatches(state.qemuPid, `torpor-${config.id}`, 'SIGKILL');
  for (let attempt = 0; attempt < 100 && processMatches(state.qemuPid, `torpor-${config.id}`); attempt++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const files = machineFiles(config.id);
  await rm(join(memoryDirectory(), `${config.id}.ram`), { force: true });
  // A supervisor killed with -9 left its QEMU uid claimed and its rules in place.
  await releaseConfinement(config.id);
  for (const socket of [files.controlSocket, files.agentSocket, files.qmpSocket]) await rm(socket, { force: true });
  const final: MachineState = {
    ...state,
    status: 'exited',
    exitCode: state.status === 'exited' ? state.exitCode : 137,
    finishedAt: state.finishedAt ?? new Date().toISOString(),
    error: state.status === 'exited' ? state.error : 'killed',
    networkUid: undefined,
  };
  await writeMachineState(config.id, final);
  return final;
}

export async function removeMachine(config: MachineConfig, options: { force?: boolean } = {}): Promise<void> {
  const state = await effectiveState(config);
  if (['starting', 'running', 'stopping'].includes(state.status)) {
    if (!options.force) {
      throw new TorporError('machine-running', `machine ${config.name} is ${state.status}`, { hint: `stop it first, or use torpor rm -f ${config.name}` });
    }
    await killMachine(config);
  } else {
    // Its processes are gone, but one killed mid-start may have left a uid claim and rules behind.
    await releaseConfinement(config.id);
  }
  await releaseMachine(config);
}
