import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { paths } from '../state/paths.ts';
import { TorporError, isNodeError } from '../util/errors.ts';
import { readMachineConfig } from './machine-files.ts';
import type { MachineConfig } from './machine-record.ts';

/** Reserves a machine name for `id`; fails with `name-in-use` if another machine holds it. */
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

/** Frees a machine's name claim, only if it is still this machine's (the name may belong to a newer one). */
export async function releaseName(config: Pick<MachineConfig, 'id' | 'name'>): Promise<void> {
  const namePath = join(paths.names(), config.name);
  try {
    if ((await readFile(namePath, 'utf8')).trim() === config.id) await rm(namePath, { force: true });
  } catch {
    // no claim left
  }
}

/** A machine by name, full id or unique id prefix, like docker. */
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
  if (matches.length > 1)
    throw new TorporError('ambiguous-machine', `${reference} matches ${matches.length} machines`, { hint: 'give more of the id, or the name' });
  throw new TorporError('machine-unknown', `no such machine: ${reference}`, { hint: 'see `torpor ps -a`' });
}
