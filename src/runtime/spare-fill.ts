import { readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { processMatches } from '../util/process-identity.ts';
import { networkPolicySchema } from '../network/policy-schema.ts';
import { TorporError } from '../util/errors.ts';
import { pathExists } from '../util/path-exists.ts';
import { paths, memoryDirectory, stateHome } from '../state/paths.ts';
import { createMachine } from './machine-creation.ts';
import { startMachine } from './machine-start.ts';
import { removeMachine } from './machine-stop.ts';
import { listMachines, type MachineView } from './machine-status.ts';
import { isLive, machineFiles } from './machine-files.ts';
import { allocatedBytes } from './template-memory.ts';
import { forgetSpare, spareCount, spareKey, sparesDirectory, withFillLock, type SpareSettings } from './spare-pool.ts';

// The side of the spare pool that makes and ends spare machines (`torpor system pool ...` and the
// background fill a `run` starts); claiming one is spare-pool.ts, which loads none of this.

/** The marker a fill's command line carries (its lock holder is recognised by pid plus this). */
const fillMarker = 'pool';

/** Spare machines of this state directory (every pool, or one), with their effective state. */
export async function listSpares(key?: string): Promise<MachineView[]> {
  return (await listMachines()).filter(({ config }) => config.spare && (key === undefined || config.spare.key === key));
}

/**
 * Brings one pool up to TORPOR_SPARE_MACHINES live spares: removes its dead ones, then creates and
 * starts spares one at a time (each start waits for a ready guest). Does nothing while another
 * fill of this pool runs. Returns the ids it started.
 */
export async function fillPool(settings: SpareSettings, size = spareCount()): Promise<string[]> {
  if (settings.networkPolicy && !networkPolicySchema.safeParse(settings.networkPolicy).success) {
    throw new TorporError('invalid-settings', 'the spare settings carry an invalid network policy', { hint: 'torpor system pool fill IMAGE [--network ...]' });
  }
  const key = spareKey(settings);
  const started: string[] = [];
  // A fill started just before its state directory was deleted (a test's home) makes nothing, and
  // does not make the directory again either.
  if (!(await pathExists(stateHome()))) return started;
  await mkdir(paths.machines(), { recursive: true });
  await withFillLock(
    key,
    async () => {
      for (;;) {
        // The state directory was deleted under this fill (a test's home): make nothing there again.
        if (!(await pathExists(paths.machines()))) return;
        const spares = await listSpares(key);
        for (const { config, state } of spares) {
          if (isLive(state.status)) continue;
          await removeMachine(config, { force: true }).catch(() => {});
          await forgetSpare(key, config.id);
        }
        // Ready entries of this pool that name no live spare of it (planted, or left by a machine
        // removed since) go too: the pool directory says what can really be claimed.
        const liveIds = new Set(spares.filter(({ state }) => isLive(state.status)).map(({ config }) => config.id));
        for (const entry of await readdir(sparesDirectory()).catch(() => [] as string[])) {
          if (entry.startsWith(`${key}.`) && !entry.endsWith('.lock') && !liveIds.has(entry.slice(key.length + 1))) {
            await rm(join(sparesDirectory(), entry), { force: true });
          }
        }
        if (liveIds.size >= size) return;
        // A spare is a convenience: it never takes the RAM tmpfs's last room. Unless the tmpfs can
        // hold it, one more machine of its size and the boot template the first spare of a size
        // makes, no spare is made (found in a 2 GiB nested machine, where a spare left a user's
        // restore no room).
        if (!(await roomForSpare(settings.memoryMiB))) return;
        // Spares that die as fast as they are made (a broken image, no memory) are not made forever.
        if (started.length >= size * 2)
          throw new TorporError('pool-fill-failed', `started ${started.length} spares and the pool is still short: they do not stay up`, {
            hint: "see `torpor ps --spares` and the machines' supervisor logs",
          });
        const config = await createMachine({ ...settings, command: ['true'], spare: key });
        started.push(config.id);
        try {
          await startMachine(config.id);
        } catch (error) {
          await removeMachine(config, { force: true }).catch(() => {});
          throw error;
        }
      }
    },
    (pid) => processMatches(pid, fillMarker),
  );
  return started;
}

async function roomForSpare(memoryMiB: number): Promise<boolean> {
  await mkdir(memoryDirectory(), { recursive: true });
  const info = await statfs(memoryDirectory());
  return info.bavail * info.bsize >= 3 * memoryMiB * 1024 ** 2;
}

/** Ends every spare (all pools, or one) and clears the pool entries; returns their names. */
export async function clearSpares(key?: string): Promise<string[]> {
  const removed: string[] = [];
  for (const { config } of await listSpares(key)) {
    await removeMachine(config, { force: true }).catch(() => {});
    await forgetSpare(config.spare!.key, config.id);
    removed.push(config.name);
  }
  // Entries whose machine directory is gone already (a crash between the two removals).
  for (const entry of await readdir(sparesDirectory()).catch(() => [] as string[])) {
    if (entry === 'fill.log' || entry.endsWith('.lock')) continue;
    const id = entry.endsWith('.claimed') ? entry.slice(0, -'.claimed'.length) : entry.slice(entry.indexOf('.') + 1);
    if (key && !entry.startsWith(`${key}.`) && !entry.endsWith('.claimed')) continue;
    const exists = await readFile(machineFiles(id).config).then(
      () => true,
      () => false,
    );
    if (!exists) await rm(join(sparesDirectory(), entry), { force: true });
  }
  return removed;
}

/** What one spare holds on the host: QEMU's memory (guest RAM it touched included), its RAM file, its supervisor. */
export interface SpareMemory {
  qemuRssBytes: number;
  /** of QEMU's RSS: its mapping of the guest RAM file (shared tmpfs pages) */
  qemuGuestRamBytes: number;
  ramFileBytes: number;
  supervisorRssBytes: number;
  /** what the spare costs the host: QEMU's RSS (guest pages included) plus its supervisor's */
  totalBytes: number;
}

/** Resident memory of a process from /proc (synchronous: /proc reads do not block); zeros when it is gone. */
function residentOf(pid: number | undefined): { rss: number; shmem: number } {
  if (!pid) return { rss: 0, shmem: 0 };
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
    return { rss: field('VmRSS'), shmem: field('RssShmem') };
  } catch {
    return { rss: 0, shmem: 0 };
  }
}

export async function spareMemory(view: MachineView): Promise<SpareMemory> {
  const live = isLive(view.state.status);
  const qemu = live ? residentOf(view.state.qemuPid) : { rss: 0, shmem: 0 };
  const supervisor = live ? residentOf(view.state.supervisorPid) : { rss: 0, shmem: 0 };
  return {
    qemuRssBytes: qemu.rss,
    qemuGuestRamBytes: qemu.shmem,
    ramFileBytes: await allocatedBytes(machineFiles(view.config.id).memoryFile),
    supervisorRssBytes: supervisor.rss,
    totalBytes: qemu.rss + supervisor.rss,
  };
}
