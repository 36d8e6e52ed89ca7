import { chown, mkdir } from 'node:fs/promises';
import { findNft, installMachineRules, networkFilterAvailability, removeMachineRules, requireNetworkFilter } from './firewall.ts';
import type { NetworkPolicy } from './policy.ts';
import { claimUid, releaseUid, uidHolder } from './uid-claims.ts';

export interface Confinement {
  /** The uid and gid QEMU switches to after opening its files (`-runas`); absent when torpor is not root. */
  runAs?: { uid: number; gid: number };
  /** Removes the rules and gives the uid back. Safe to call twice. */
  release(): Promise<void>;
}

/**
 * Sets up what confines one machine's QEMU before it starts: its own uid and, with a network, the
 * nftables rules for that uid. A machine the policy says to filter does not start unfiltered: if the
 * filter cannot be set up this throws, with a hint.
 */
export async function confineMachine(
  machineId: string,
  options: {
    network: boolean;
    policy: NetworkPolicy;
    /** A directory QEMU must be able to create sockets in (its incoming migration socket). */
    qemuDirectory: string;
    /**
     * Files QEMU opens again after it dropped root: a restored machine's writable disk is reopened
     * read-write when the incoming migration completes (`cont`), so it must belong to QEMU's uid.
     */
    reopenedFiles: string[];
  },
): Promise<Confinement> {
  const filtered = options.network && options.policy.mode === 'filtered';
  if (filtered) requireNetworkFilter();
  await mkdir(options.qemuDirectory, { recursive: true, mode: 0o700 });
  if (process.getuid?.() !== 0) return { release: async () => {} };
  const uid = claimUid(machineId);
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    if (findNft()) await removeMachineRules(uid).catch(() => {});
    releaseUid(uid, machineId);
  };
  try {
    for (const path of [options.qemuDirectory, ...options.reopenedFiles]) await chown(path, uid, uid);
    // Without a network there is nothing to allow: a socket of this uid meets the shared `refuse` rule.
    // An unrestricted machine gets an explicit accept, so that the table (if other machines made it) lets it out.
    if (filtered || (options.network && networkFilterAvailability().available)) await installMachineRules(uid, options.policy);
  } catch (error) {
    await release();
    throw error;
  }
  return { runAs: { uid, gid: uid }, release };
}

/** For `torpor rm -f`/kill paths: the supervisor is gone, so its rules and uid claim go here. */
export async function releaseConfinement(uid: number, machineId: string): Promise<void> {
  const holder = uidHolder(uid);
  // The uid may belong to another machine by now: its rules are not ours to remove.
  if (holder !== undefined && holder !== machineId) return;
  if (findNft() && process.getuid?.() === 0) await removeMachineRules(uid).catch(() => {});
  releaseUid(uid, machineId);
}
