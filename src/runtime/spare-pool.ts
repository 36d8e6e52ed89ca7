import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';
import { environment } from '../config/environment.ts';
import { machineDefaults } from '../config/machine-defaults.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import { TorporError } from '../util/errors.ts';
import { projectRoot } from '../util/project-root.ts';
import { currentImageDigest } from '../image/image-refs.ts';
import type { AgentClient } from '../guest/agent-client.ts';
import type { NetworkPolicy } from '../network/policy.ts';
import type { PortMapping } from '../vm/machine-spec.ts';
import { qemuBinary } from '../vm/qemu-command.ts';
import { qemuReleaseOf } from '../vm/qemu-version.ts';
import type { MachineConfig } from './machine-record.ts';
import { machineFiles, readMachineConfig } from './machine-files.ts';
import { claimName, releaseName } from './machine-names.ts';
import { mainProcessOf } from './machine-process.ts';
import { randomMachineName, validateMachineName } from './run-options.ts';
import { connectToSupervisor, sendControl } from './supervisor-client.ts';

// Spare machines: restored from the boot template, agent answering, no process, waiting for a `run`
// with the same settings to claim one. The pool lives in the state directory, no daemon keeps it:
//
//   spares/<key>.<id>      spare <id> of pool <key> is ready; renaming it away is the claim (rename
//                          is atomic: of two CLIs that try, one gets ENOENT and tries the next)
//   spares/<id>.claimed    taken by a CLI that has not yet told the supervisor; a supervisor whose
//                          entry stays gone without a claim discards itself (the CLI was killed)
//   spares/<key>.lock      held (O_EXCL, with its pid) by the one `system pool fill` of that pool
//
// A spare is a machine like any other (machines/<id>/, config.json with a `spare` field), so `ps`,
// `system df`, `prune` and every crash path see it; `ps` hides it unless asked (`--spares`, `-a`).

export const sparesDirectory = () => join(stateHome(), 'spares');
export const spareName = (id: string) => `spare-${id}`;
const readyEntry = (key: string, id: string) => join(sparesDirectory(), `${key}.${id}`);
const claimedEntry = (id: string) => join(sparesDirectory(), `${id}.claimed`);
const lockFile = (key: string) => join(sparesDirectory(), `${key}.lock`);
const machineId = /^[0-9a-f]{12}$/;

/** The settings that must match for a spare to serve a `run`: everything fixed while the guest boots. */
export interface SpareSettings {
  image: string;
  cpus: number;
  memoryMiB: number;
  network: boolean;
  networkPolicy?: NetworkPolicy;
}

export interface SpareRequest {
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

/** How many spares each pool keeps (TORPOR_SPARE_MACHINES; 0: none, and `run` never looks). */
export const spareCount = () => environment().TORPOR_SPARE_MACHINES;

/**
 * The pool a machine could come from, or undefined when it needs a machine of its own: published
 * ports (host sockets bound at start), another disk size, or no boot templates.
 */
export function spareSettingsOf(request: SpareRequest): SpareSettings | undefined {
  if (!environment().TORPOR_BOOT_TEMPLATES) return undefined;
  if ((request.ports?.length ?? 0) > 0) return undefined;
  if (request.diskGiB !== undefined && request.diskGiB !== machineDefaults.diskGiB) return undefined;
  return {
    image: request.image,
    cpus: request.cpus ?? machineDefaults.cpus,
    memoryMiB: request.memoryMiB ?? machineDefaults.memoryMiB,
    network: request.network ?? true,
    ...(request.networkPolicy ? { networkPolicy: request.networkPolicy } : {}),
  };
}

export function spareKey(settings: SpareSettings): string {
  // The QEMU release too (TORPOR_QEMU's): a spare is a restored guest in a running QEMU, and a run
  // under one release must not be handed a machine of another. Left out for 7.2, the release every
  // pool was made with before, so those pools keep their keys (and their spares stay claimable).
  const release = qemuReleaseOf(qemuBinary());
  const identity = [
    settings.image,
    settings.cpus,
    settings.memoryMiB,
    settings.network,
    settings.networkPolicy ?? null,
    ...(release !== undefined && release !== '7.2' ? [`qemu:${release}`] : []),
    // The TCG CPU model (TORPOR_TCG_CPU) likewise: a spare's guest booted on one model keeps it.
    // Left out for the default, so existing pools keep their keys.
    ...(environment().TORPOR_TCG_CPU !== 'max-without-erms' ? [`cpu:${environment().TORPOR_TCG_CPU}`] : []),
  ];
  return createHash('sha256').update(JSON.stringify(identity)).digest('hex').slice(0, 16);
}

export interface TakenSpare {
  /** the machine's config as its user asked for it (written to its config.json) */
  config: MachineConfig;
  /** connected to the spare's supervisor; `activateSpare` sends the claim on it */
  client: AgentClient;
}

/**
 * Takes a ready spare of the request's pool for the caller, or undefined (none ready, or none
 * usable: the caller starts a machine the cold way). Writes the user's config into the machine's
 * directory; nothing runs until `activateSpare`.
 */
export async function takeSpare(request: SpareRequest): Promise<TakenSpare | undefined> {
  if (spareCount() === 0) return undefined;
  const settings = spareSettingsOf(request);
  if (!settings) return undefined;
  const name = request.name ?? randomMachineName();
  validateMachineName(name);
  const key = spareKey(settings);
  const entries = await readdir(sparesDirectory()).catch(() => [] as string[]);
  for (const entry of entries) {
    if (!entry.startsWith(`${key}.`)) continue;
    const id = entry.slice(key.length + 1);
    if (!machineId.test(id)) continue;
    try {
      await rename(join(sparesDirectory(), entry), claimedEntry(id));
    } catch {
      continue; // another CLI took it first
    }
    const taken = await useSpare(id, key, name, request);
    if (taken) return taken;
  }
  return undefined;
}

async function useSpare(id: string, key: string, name: string, request: SpareRequest): Promise<TakenSpare | undefined> {
  let spare: MachineConfig;
  try {
    spare = await readMachineConfig(id);
  } catch {
    await rm(claimedEntry(id), { force: true });
    return undefined;
  }
  // An entry naming a machine that is no spare of this pool (planted, or left from a crash): dropped.
  if (spare.spare?.key !== key) {
    await rm(claimedEntry(id), { force: true });
    return undefined;
  }
  // The image was imported or pulled again since the spare was made: the spare is of the old one.
  if ((await currentImageDigest(request.image)) !== spare.image.digest) {
    await discardSpare(spare);
    return undefined;
  }
  let client: AgentClient;
  try {
    client = await connectToSupervisor(id);
  } catch {
    // Its supervisor died (kill -9, OOM): QEMU went with it; what is left goes now.
    await discardSpare(spare);
    return undefined;
  }
  try {
    const mainProcess = mainProcessOf(spare.spare.defaults, request);
    await claimName(name, id);
    // Still marked a spare (hidden from `ps`, never shown as the user's running machine) until its
    // supervisor accepts the claim and removes the mark.
    const config: MachineConfig = {
      ...spare,
      name,
      createdAt: new Date().toISOString(),
      ...mainProcess,
      hostname: request.hostname ?? name.replace(/[^a-zA-Z0-9-]/g, '-').slice(0, 63),
      tty: request.tty ?? false,
      interactive: request.interactive ?? false,
      autoRemove: request.autoRemove ?? false,
    };
    await writeJsonAtomic(machineFiles(id).config, config);
    return { config, client };
  } catch (error) {
    // The request itself is wrong (no command, the name is taken): the spare is spent, say why.
    await sendControl(client, { op: 'discard' }).catch(() => {});
    client.close();
    throw error;
  }
}

/**
 * Tells a taken spare's supervisor that it is claimed: it gives the guest its new name, clock and
 * RNG seed and starts the user's process (attach first for a foreground run: it sees every byte).
 * False when the spare went away meanwhile (the caller starts a machine the cold way).
 */
export async function activateSpare(taken: TakenSpare): Promise<boolean> {
  try {
    await sendControl(taken.client, { op: 'claim' });
    return true;
  } catch {
    taken.client.close();
    // The name was claimed for this machine; its supervisor removes the rest as it discards itself.
    await releaseName(taken.config);
    return false;
  }
}

/** Ends a spare nobody can use (dead supervisor, old image) and frees what it holds. */
export async function discardSpare(spare: MachineConfig): Promise<void> {
  // Loaded only here: stopping a machine brings the network confinement code, which a claim does not need.
  const { removeMachine } = await import('./machine-stop.ts');
  await removeMachine(spare, { force: true }).catch(() => {});
  await rm(claimedEntry(spare.id), { force: true });
  if (spare.spare) await rm(readyEntry(spare.spare.key, spare.id), { force: true });
}

/** Called by a spare's supervisor once its guest is ready and warm: from now on a `run` may claim it. */
export async function publishSpare(key: string, id: string): Promise<void> {
  await mkdir(sparesDirectory(), { recursive: true });
  await (await open(readyEntry(key, id), 'w')).close();
}

/** Whether a spare is still claimable (its entry is in place); a supervisor polls this. */
export async function spareEntryPresent(key: string, id: string): Promise<boolean> {
  return readdir(sparesDirectory()).then(
    (entries) => entries.includes(`${key}.${id}`),
    () => false,
  );
}

/**
 * A spare takes its own ready entry away, so no CLI can claim it any more (it has waited too long):
 * the same atomic rename a claim is, so exactly one of the two wins. False when a CLI took it first.
 */
export async function retireSpare(key: string, id: string): Promise<boolean> {
  const retired = join(sparesDirectory(), `${id}.retired`);
  try {
    await rename(readyEntry(key, id), retired);
  } catch {
    return false;
  }
  await rm(retired, { force: true });
  return true;
}

/** Removes a spare's pool entries (its supervisor, as it finishes). */
export async function forgetSpare(key: string, id: string): Promise<void> {
  await rm(readyEntry(key, id), { force: true });
  await rm(claimedEntry(id), { force: true });
}

/**
 * Ids of a pool's entries that can stand for a spare: a plain file (as a supervisor publishes it)
 * naming a machine that exists. A planted name, a symlink or an entry left by a machine removed
 * since is not counted, so it cannot keep the pool from refilling (a stale entry once did).
 */
async function claimableEntries(key: string): Promise<string[]> {
  const ids: string[] = [];
  for (const entry of await readdir(sparesDirectory()).catch(() => [] as string[])) {
    const id = entry.slice(key.length + 1);
    if (!entry.startsWith(`${key}.`) || !machineId.test(id)) continue;
    const published = await lstat(join(sparesDirectory(), entry)).catch(() => undefined);
    const machine = await stat(machineFiles(id).config).catch(() => undefined);
    if (published?.isFile() && machine?.isFile()) ids.push(id);
  }
  return ids;
}

/**
 * Starts `torpor system pool fill` for these settings, detached: the pool refills in the
 * background after a claim (or a miss), and the CLI that asked exits at once. Its output goes to
 * spares/fill.log. One fill per pool runs at a time (its lock), so many CLIs asking is harmless.
 */
export async function refillInBackground(settings: SpareSettings): Promise<void> {
  if (spareCount() === 0) return;
  await mkdir(sparesDirectory(), { recursive: true });
  // Full already (a cheap look, so most runs start no process): nothing to do.
  const key = spareKey(settings);
  if ((await claimableEntries(key)).length >= spareCount()) return;
  const log = await open(join(sparesDirectory(), 'fill.log'), 'w');
  try {
    const child = spawn(process.execPath, [join(projectRoot(), 'bin', 'torpor.js'), 'system', 'pool', 'fill', '--settings', JSON.stringify(settings)], {
      detached: true,
      stdio: ['ignore', log.fd, log.fd],
      env: { ...process.env, TORPOR_HOME: stateHome() },
    });
    child.unref();
  } finally {
    await log.close();
  }
}

/** Holds a pool's fill lock while `work` runs; false (and nothing done) when another live fill holds it. */
export async function withFillLock(key: string, work: () => Promise<void>, isAlive: (pid: number) => boolean): Promise<boolean> {
  await mkdir(sparesDirectory(), { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(lockFile(key), 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
    } catch (error) {
      const holder = Number((await readFile(lockFile(key), 'utf8').catch(() => '')).trim());
      if (holder && isAlive(holder)) return false;
      // A fill killed with -9 left its lock: take it over.
      await rm(lockFile(key), { force: true });
      if (attempt === 1) throw error;
      continue;
    }
    try {
      await work();
    } finally {
      await rm(lockFile(key), { force: true });
    }
    return true;
  }
  return false;
}

export function parseSpareSettings(text: string): SpareSettings {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    value = undefined;
  }
  const settings = value as Partial<SpareSettings> | undefined;
  if (
    !settings ||
    typeof settings.image !== 'string' ||
    typeof settings.cpus !== 'number' ||
    typeof settings.memoryMiB !== 'number' ||
    typeof settings.network !== 'boolean'
  ) {
    throw new TorporError('invalid-settings', `not spare settings: ${text.slice(0, 200)}`, {
      hint: 'give an image and flags instead: torpor system pool fill IMAGE',
    });
  }
  return settings as SpareSettings;
}
