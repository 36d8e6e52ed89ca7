import { chmod, chown, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { TorporError } from '../util/errors.ts';
import { findNft, installMachineRules, networkFilterAvailability, removeMachineRules, requireNetworkFilter } from './firewall.ts';
import type { NetworkPolicy } from './policy.ts';
import { environment } from '../config/environment.ts';
import { claimUid, releaseUid, uidsHeldBy, uidPreparedFor, runtimeRoot } from './uid-claims.ts';

export interface Confinement {
  /** The uid and gid QEMU switches to after opening its files (`-runas`); absent when torpor is not root. */
  runAs?: { uid: number; gid: number };
  /** Where QEMU can create and connect to unix sockets (migration) after dropping root. */
  socketDirectory: string;
  /**
   * Settles when the rules are in place. Installing them (one `nft` process, 15-200 ms on a busy
   * host) overlaps QEMU's start-up: the guest must not run before this resolves (restore: before
   * the device state is loaded; cold boot: before QEMU starts).
   */
  rulesReady: Promise<void>;
  /** Removes the rules and gives the uid back. Safe to call twice. */
  release(): Promise<void>;
}

interface ConfinementOptions {
  network: boolean;
  policy: NetworkPolicy;
}

/** What a machine's confinement needs here: nothing (not root, or the old design kept for benchmarks), or a uid, and rules too. */
function plan(options: ConfinementOptions): { ownUid: boolean; rules: boolean } {
  const filtered = options.network && options.policy.mode === 'filtered';
  if (filtered) requireNetworkFilter();
  // The design before the filter, kept to measure against (bench/network.ts): QEMU stays root, no rules.
  const legacy = environment().TORPOR_QEMU_AS_ROOT;
  if (legacy && filtered) {
    throw new TorporError('network-filter-unavailable', "TORPOR_QEMU_AS_ROOT=1 cannot be combined with the network filter, which matches QEMU's own uid", {
      status: 503,
      hint: 'unset TORPOR_QEMU_AS_ROOT, or run with --network unrestricted or none',
    });
  }
  if (process.getuid?.() !== 0 || legacy) return { ownUid: false, rules: false };
  // Without a network there is nothing to allow: a socket of this uid meets the shared `refuse` rule.
  // An unrestricted machine gets an explicit accept, so that the table (if other machines made it) lets it out.
  return { ownUid: true, rules: filtered || (options.network && networkFilterAvailability().available) };
}

/** Claims a uid for the machine and makes its QEMU socket directory; undoes both if that fails. */
async function claim(machineId: string, supervisorPid: number): Promise<{ uid: number; socketDirectory: string }> {
  const uid = claimUid(machineId, supervisorPid);
  // The state directory may be private to root (0700): QEMU's sockets live under /run instead,
  // in a directory of QEMU's own uid that nobody else can enter.
  const socketDirectory = machineSocketDirectory(machineId);
  try {
    // QEMU's uid may pass through these two directories (0711) but list neither.
    await mkdir(join(runtimeRoot(), 'qemu'), { recursive: true, mode: 0o711 });
    for (const directory of [runtimeRoot(), join(runtimeRoot(), 'qemu')]) await chmod(directory, 0o711);
    await mkdir(socketDirectory, { recursive: true, mode: 0o700 });
    await chown(socketDirectory, uid, uid);
  } catch (error) {
    await rm(socketDirectory, { recursive: true, force: true });
    releaseUid(uid, machineId);
    throw error;
  }
  return { uid, socketDirectory };
}

/**
 * Does a machine's confinement work ahead of its supervisor, on its behalf: `startMachine` calls it
 * while the snapshot is being materialized, so the nft transaction (15-200 ms) costs a start nothing.
 * The supervisor finds the claim by its own pid and adopts it (`confineMachine`).
 */
export async function prepareConfinement(
  machineId: string,
  options: ConfinementOptions,
  supervisorPid: number,
  /** called once the uid is claimed (with it; without one when QEMU keeps torpor's uid), before the rules are installed: QEMU may start (paused) from then on */
  onClaimed?: (uid?: number) => void,
): Promise<void> {
  const { ownUid, rules } = plan(options);
  if (!ownUid) {
    onClaimed?.();
    return;
  }
  const { uid, socketDirectory } = await claim(machineId, supervisorPid);
  onClaimed?.(uid);
  try {
    if (rules) await installMachineRules(uid, options.policy);
  } catch (error) {
    await rm(socketDirectory, { recursive: true, force: true });
    releaseUid(uid, machineId);
    throw error;
  }
}

/**
 * Sets up what confines one machine's QEMU before it starts: its own uid and, with a network, the
 * nftables rules for that uid (or adopts what `prepareConfinement` set up for this supervisor). A
 * machine the policy says to filter does not start unfiltered: if the filter cannot be set up this
 * throws, with a hint.
 */
export async function confineMachine(
  machineId: string,
  options: ConfinementOptions & {
    /** Used for QEMU's sockets when QEMU keeps our uid (torpor not running as root). */
    ownSocketDirectory: string;
    /** the uid `prepareConfinement` claimed for this supervisor, as its starter said (verified against the claim) */
    preparedUid?: number;
  },
): Promise<Confinement> {
  const { ownUid, rules } = plan(options);
  if (!ownUid) {
    await mkdir(options.ownSocketDirectory, { recursive: true, mode: 0o700 });
    return { socketDirectory: options.ownSocketDirectory, rulesReady: Promise.resolve(), release: async () => {} };
  }
  const prepared = uidPreparedFor(machineId, process.pid, options.preparedUid);
  const { uid, socketDirectory } =
    prepared !== undefined ? { uid: prepared, socketDirectory: machineSocketDirectory(machineId) } : await claim(machineId, process.pid);
  let rulesReady: Promise<void> = Promise.resolve();
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    // A removal must not overtake the installation it undoes.
    await rulesReady.catch(() => {});
    if (findNft()) await removeMachineRules(uid).catch(() => {});
    await rm(socketDirectory, { recursive: true, force: true });
    releaseUid(uid, machineId);
  };
  if (rules && prepared === undefined) rulesReady = installMachineRules(uid, options.policy);
  rulesReady.catch(() => {}); // awaited by the supervisor; this keeps an early failure from being "unhandled"
  return { runAs: { uid, gid: uid }, socketDirectory, rulesReady, release };
}

/**
 * For `torpor rm -f`/kill paths, once QEMU is dead: a supervisor killed with -9 left its uid claimed
 * and its rules in place. Found by the claims (not the machine's state), so a supervisor killed
 * before it recorded its uid leaves nothing behind either.
 */
export async function releaseConfinement(machineId: string): Promise<void> {
  for (const uid of uidsHeldBy(machineId)) {
    if (findNft() && process.getuid?.() === 0) await removeMachineRules(uid).catch(() => {});
    releaseUid(uid, machineId);
  }
  await rm(machineSocketDirectory(machineId), { recursive: true, force: true });
}

const machineSocketDirectory = (machineId: string) => join(runtimeRoot(), 'qemu', machineId);
