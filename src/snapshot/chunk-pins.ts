import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { replaceFile } from '../util/atomic-file.ts';
import { isNodeError } from '../util/errors.ts';
import { holderOf, isAlive, type Holder } from './store-activity.ts';

// A lazily restored machine reads chunks long after its restore began: its snapshot may be removed
// and garbage-collected meanwhile. A pin keeps the chunks a running machine may still fault in, for
// as long as one of its holders (the process that prepared the restore, then the machine's
// supervisor) is alive. gc honours live pins and deletes dead ones. Pins are replaced atomically but
// not synced (two per restore, on its path): a host crash, the only way to lose one, ends its holders.

interface Pin {
  holders: Holder[];
  chunks: string[];
}

const pinsDirectory = (root: string) => join(root, 'pins');
const pinPath = (root: string, key: string) => join(pinsDirectory(root), `${key}.json`);

/** Call inside a store activity (beginActivity), so that gc cannot run between reading a manifest and pinning its chunks. */
export async function pinChunks(root: string, key: string, chunks: string[], holderPid = process.pid): Promise<void> {
  await mkdir(pinsDirectory(root), { recursive: true });
  await replaceFile(pinPath(root, key), JSON.stringify({ holders: [holderOf(holderPid)], chunks: [...new Set(chunks)] } satisfies Pin));
}

/** Adds a holder (the machine's supervisor takes over from the CLI that prepared the restore). */
export async function addPinHolder(root: string, key: string, holderPid: number): Promise<void> {
  const pin = await readPin(pinPath(root, key));
  if (!pin) return;
  pin.holders = [...pin.holders.filter(isAlive), holderOf(holderPid)];
  await replaceFile(pinPath(root, key), JSON.stringify(pin));
}

export async function unpinChunks(root: string, key: string): Promise<void> {
  await rm(pinPath(root, key), { force: true });
}

async function readPin(path: string): Promise<Pin | undefined> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as Pin;
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return undefined;
    // Written atomically, so unreadable means damaged: keep nothing for it.
    return { holders: [], chunks: [] };
  }
}

/** Chunks held by live pins; pins whose holders all died are removed. For gc (holds the store exclusively). */
export async function pinnedChunks(root: string): Promise<Set<string>> {
  const pinned = new Set<string>();
  let names: string[];
  try {
    names = await readdir(pinsDirectory(root));
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return pinned;
    throw error;
  }
  for (const name of names) {
    if (!name.endsWith('.json') || name.startsWith('.')) continue;
    const path = join(pinsDirectory(root), name);
    const pin = await readPin(path);
    if (!pin) continue;
    if (pin.holders.some(isAlive)) for (const id of pin.chunks) pinned.add(id);
    else await rm(path, { force: true });
  }
  return pinned;
}
