import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { memoryDirectory, stateHome } from '../state/paths.ts';
import { isNodeError } from '../util/errors.ts';
import { environment } from '../config/environment.ts';
import { homePrefix } from './template-memory.ts';
import { automaticWarmMemoryMiB, hostMemoryShortfallBytes } from '../host/host-memory.ts';

// The warm tier: a machine stopped right after its snapshot (a hibernation) leaves its RAM file in
// tmpfs and its disk layer on disk, named by the snapshot's manifest id, while a budget allows
// (TORPOR_WARM_MEMORY=<MiB>|auto, `torpor serve --warm-memory`, on by default under serve). A restore of
// that very snapshot takes them over instead of reading the store: its wake is QEMU plus the device
// state. The oldest entries go first when the budget or the tmpfs runs short, or when the host's
// available memory falls below TORPOR_WARM_RESERVE; the snapshot itself is durable anyway.
//
// A warm RAM file is exactly the snapshot's RAM: it was captured with the guest paused and QEMU
// was killed without resuming. A lazily restored machine's file holds only the chunks it loaded;
// its `.loaded` flags say which, and the next restore serves the others from its page map.

/** Bytes of tmpfs the warm tier may hold; 0 turns it off (the default, except under `torpor serve`: `auto`). */
export function warmBudgetBytes(): number {
  const setting = environment().TORPOR_WARM_MEMORY ?? 0;
  const mebibytes = setting === 'auto' ? automaticWarmMemoryMiB() : setting;
  return Number.isFinite(mebibytes) && mebibytes > 0 ? mebibytes * 1024 ** 2 : 0;
}

const warmRam = (manifestId: string) => join(memoryDirectory(), `${homePrefix()}warm-${manifestId}.ram`);
const warmLoaded = (manifestId: string) => `${warmRam(manifestId)}.loaded`;
const warmLayer = (manifestId: string) => join(stateHome(), 'warm', `${manifestId}.layer`);

interface WarmEntry {
  manifestId: string;
  bytes: number;
  keptAt: number;
}

async function entries(): Promise<WarmEntry[]> {
  const prefix = `${homePrefix()}warm-`;
  const names = await readdir(memoryDirectory()).catch(() => [] as string[]);
  const found: WarmEntry[] = [];
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith('.ram')) continue;
    const manifestId = name.slice(prefix.length, -'.ram'.length);
    try {
      const status = await stat(join(memoryDirectory(), name));
      found.push({ manifestId, bytes: status.blocks * 512, keptAt: status.mtimeMs });
    } catch {
      // taken meanwhile
    }
  }
  return found.sort((a, b) => a.keptAt - b.keptAt);
}

async function drop(manifestId: string): Promise<void> {
  await Promise.all([rm(warmRam(manifestId), { force: true }), rm(warmLoaded(manifestId), { force: true }), rm(warmLayer(manifestId), { force: true })]);
}

/** Disk layers left without their RAM file (a keep or take killed halfway) and older than a minute. */
async function dropOrphanLayers(kept: WarmEntry[]): Promise<void> {
  const directory = join(stateHome(), 'warm');
  const names = await readdir(directory).catch(() => [] as string[]);
  const live = new Set(kept.map((entry) => `${entry.manifestId}.layer`));
  for (const name of names) {
    if (live.has(name)) continue;
    const status = await stat(join(directory, name)).catch(() => undefined);
    if (status && Date.now() - status.mtimeMs > 60_000) await rm(join(directory, name), { force: true });
  }
}

/** What the warm tier holds now (`torpor system df`): its RAM files and their allocated bytes. */
export async function warmMemoryUsage(): Promise<{ count: number; bytes: number }> {
  const all = await entries();
  return { count: all.length, bytes: all.reduce((sum, entry) => sum + entry.bytes, 0) };
}

/** Drops the oldest entries until the tier holds at most `limitBytes`. */
export async function trimWarmMemory(limitBytes = warmBudgetBytes()): Promise<void> {
  const all = await entries();
  await dropOrphanLayers(all);
  let total = all.reduce((sum, entry) => sum + entry.bytes, 0);
  for (const entry of all) {
    if (total <= limitBytes) break;
    await drop(entry.manifestId);
    total -= entry.bytes;
  }
}

/** Frees at least `bytes` of tmpfs from the warm tier (a machine start needs the room). */
export async function releaseWarmMemory(bytes: number): Promise<number> {
  let freed = 0;
  for (const entry of await entries()) {
    if (freed >= bytes) break;
    await drop(entry.manifestId);
    freed += entry.bytes;
  }
  return freed;
}

/**
 * Keeps a stopped machine's RAM file and disk layer for the next restore of `manifestId`. Call only
 * after QEMU exited and the snapshot is durable. `loaded`: for a lazily restored machine, which
 * chunks its RAM file holds. Returns false (and leaves the files) when the tier is off or full.
 */
export async function keepWarm(manifestId: string, memoryFile: string, layerDisk: string, loaded?: Uint8Array): Promise<boolean> {
  const budget = warmBudgetBytes();
  if (budget === 0) return false;
  // A host short of memory gets this machine's RAM back now (the snapshot is durable), and the oldest entries too.
  const shortfall = hostMemoryShortfallBytes();
  if (shortfall > 0) {
    await releaseWarmMemory(shortfall);
    return false;
  }
  const bytes = (await stat(memoryFile)).blocks * 512;
  if (bytes > budget) return false;
  await trimWarmMemory(budget - bytes);
  await mkdir(join(stateHome(), 'warm'), { recursive: true });
  await rename(layerDisk, warmLayer(manifestId));
  if (loaded) await writeFile(warmLoaded(manifestId), loaded, { mode: 0o600 });
  // The RAM file last: its presence says the entry is complete.
  await rename(memoryFile, warmRam(manifestId));
  return true;
}

/**
 * Moves a warm entry of `manifestId` into a new machine's files (rename: of two restores racing for
 * it, one gets it). Returns undefined when there is none; `loaded` is undefined for a complete RAM file.
 */
export async function takeWarm(manifestId: string, memoryFile: string, layerDisk: string): Promise<{ loaded?: Uint8Array } | undefined> {
  try {
    await rename(warmRam(manifestId), memoryFile);
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return undefined;
    throw error;
  }
  try {
    await rename(warmLayer(manifestId), layerDisk);
  } catch (error) {
    await rm(memoryFile, { force: true });
    await drop(manifestId);
    if (isNodeError(error, 'ENOENT')) return undefined;
    throw error;
  }
  const loaded = await readFile(warmLoaded(manifestId)).catch(() => undefined);
  await rm(warmLoaded(manifestId), { force: true });
  return { loaded: loaded ? new Uint8Array(loaded) : undefined };
}
