import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { TorporError, isNodeError } from '../util/errors.ts';
import { environment } from '../config/environment.ts';

// Captures and materializations (activities) must never run while garbage collection deletes
// chunks: a capture that finds a chunk already stored reuses it, and gc must not delete it between
// that check and the manifest. Each side publishes its flag file first and then looks for the
// other's (the two-flag handshake): at least one of them sees the other and backs off, so gc and
// an activity never both proceed. Many activities run at once; only gc is exclusive.

export interface Holder {
  pid: number;
  /** /proc/PID/stat start time: a reused pid has a different one, so a dead holder is never trusted */
  startTime: string;
}

function startTimeOf(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

const self: Holder = { pid: process.pid, startTime: startTimeOf(process.pid) ?? '' };

/** A process as a holder of something in the store: pid plus start time, so a reused pid never counts. */
export function holderOf(pid: number): Holder {
  return { pid, startTime: startTimeOf(pid) ?? '' };
}

export function isAlive(holder: Holder): boolean {
  return startTimeOf(holder.pid) === holder.startTime;
}

async function readHolder(path: string): Promise<Holder | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Holder;
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return undefined;
    // Torn (written by a process that died mid-write): nobody holds it.
    return { pid: 0, startTime: '' };
  }
}

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));
const waitLimitMs = () => environment().TORPOR_SNAPSHOT_LOCK_WAIT_MS;

function activityDirectory(root: string): string {
  return join(root, 'activity');
}
function gcLockPath(root: string): string {
  return join(root, 'gc.lock');
}

async function gcRunning(root: string): Promise<boolean> {
  const holder = await readHolder(gcLockPath(root));
  if (!holder) return false;
  if (isAlive(holder)) return true;
  await rm(gcLockPath(root), { force: true });
  return false;
}

/** Registers a capture or materialization; returns the function that ends it. */
export async function beginActivity(root: string, kind: string): Promise<() => Promise<void>> {
  const directory = activityDirectory(root);
  await mkdir(directory, { recursive: true });
  const marker = join(directory, `${process.pid}-${randomBytes(6).toString('hex')}.json`);
  const deadline = Date.now() + waitLimitMs();
  for (;;) {
    await writeFile(marker, JSON.stringify({ ...self, kind }));
    if (!(await gcRunning(root))) return () => rm(marker, { force: true });
    await rm(marker, { force: true });
    if (Date.now() > deadline) {
      throw new TorporError('snapshot-store-busy', 'the snapshot store is being garbage-collected', {
        hint: 'try again when `torpor snapshots gc` has finished',
      });
    }
    await sleep(20 + Math.random() * 30);
  }
}

async function liveActivities(root: string): Promise<number> {
  let count = 0;
  let names: string[];
  try {
    names = await readdir(activityDirectory(root));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return 0;
    throw error;
  }
  for (const name of names) {
    const path = join(activityDirectory(root), name);
    const holder = await readHolder(path);
    if (!holder) continue;
    if (isAlive(holder)) count++;
    else await rm(path, { force: true }); // a capture that crashed: its marker must not block gc forever
  }
  return count;
}

/** Runs `work` with the store to itself: no capture or materialization runs meanwhile. */
export async function withExclusiveStore<T>(root: string, work: () => Promise<T>): Promise<T> {
  await mkdir(root, { recursive: true });
  const lock = gcLockPath(root);
  const deadline = Date.now() + waitLimitMs();
  for (;;) {
    try {
      await writeFile(lock, JSON.stringify(self), { flag: 'wx' });
    } catch (error) {
      if (!isNodeError(error, 'EEXIST')) throw error;
      if (await gcRunning(root)) {
        throw new TorporError('snapshot-store-busy', 'another garbage collection of the snapshot store is running', { hint: 'wait for it to finish' });
      }
      continue;
    }
    if ((await liveActivities(root)) === 0) break;
    await rm(lock, { force: true });
    if (Date.now() > deadline) {
      throw new TorporError('snapshot-store-busy', 'snapshots are being captured or restored', { hint: 'run `torpor snapshots gc` again when they are done' });
    }
    await sleep(20 + Math.random() * 30);
  }
  try {
    return await work();
  } finally {
    await rm(lock, { force: true });
  }
}
