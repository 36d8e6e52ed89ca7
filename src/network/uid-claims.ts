import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { processExists, processMatches } from '../util/process-identity.ts';
import { environment } from '../config/environment.ts';
import { TorporError, isNodeError } from '../util/errors.ts';

/**
 * Each QEMU runs as its own uid so that nftables can tell its sockets from everyone else's. The
 * range sits above the ranges Linux distributions hand out to users (< 60000) and to containers by
 * systemd-nspawn (524288-1879048191), and below the 2^31 boundary that some tools treat as negative.
 */
export const uidRange = { first: 1_900_000_000, last: 1_900_000_000 + 65_535 };

/**
 * Claims are host-wide, not per state directory: two installations (or two test runs) on one host
 * must never give two QEMUs the same uid. /run is a tmpfs, emptied at boot like the rules are.
 */
export const claimDirectory = () => join(runtimeRoot(), 'network-uids');

/**
 * Host-wide runtime state of root-run torpor (uid claims, QEMU socket directories). TORPOR_RUNTIME_DIR
 * overrides it; every torpor whose machines share a network namespace must use the same one.
 */
export const runtimeRoot = () => environment().TORPOR_RUNTIME_DIR;

interface Claim {
  machineId: string;
  supervisorPid: number;
}

/** True when some process runs as this uid (a QEMU whose supervisor was killed keeps its uid busy). */
function uidInUse(uid: number): boolean {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      const uids = /^Uid:\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(status);
      if (uids && uids.slice(1).some((value) => Number(value) === uid)) return true;
    } catch {
      // the process ended while we looked
    }
  }
  return false;
}

function readClaim(path: string): Claim | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Claim;
  } catch {
    return undefined;
  }
}

/** A claim is stale when neither its supervisor nor any process with its uid is alive (kill -9, reboot). */
function claimIsStale(uid: number, claim: Claim | undefined): boolean {
  if (claim && processMatches(claim.supervisorPid, 'supervisor')) return false;
  // A prune holds the claim only while it removes the uid's rules; it is not a supervisor.
  if (claim?.machineId === pruneHolder && processExists(claim.supervisorPid)) return false;
  return !uidInUse(uid);
}

/**
 * Picks a free uid for a machine's QEMU and records who holds it (O_EXCL: atomic between concurrent
 * supervisors). A stale claim is taken over; the caller replaces whatever rules it left.
 */
export function claimUid(machineId: string, supervisorPid = process.pid): number {
  const directory = claimDirectory();
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  const size = uidRange.last - uidRange.first;
  const content = JSON.stringify({ machineId, supervisorPid } satisfies Claim);
  for (let attempt = 0; attempt < 64; attempt++) {
    // uid `first` itself is never handed out: it is kept as a marker of the range in the rules.
    const uid = uidRange.first + 1 + Math.floor(Math.random() * size);
    const path = join(directory, String(uid));
    try {
      writeFileSync(path, content, { flag: 'wx', mode: 0o600 });
      return uid;
    } catch (error) {
      if (!isNodeError(error, 'EEXIST')) throw error;
    }
    if (claimIsStale(uid, readClaim(path))) {
      rmSync(path, { force: true });
      try {
        writeFileSync(path, content, { flag: 'wx', mode: 0o600 });
        return uid;
      } catch (error) {
        if (!isNodeError(error, 'EEXIST')) throw error;
      }
    }
  }
  throw new TorporError('network-uids-exhausted', "no free uid for the machine's QEMU process", {
    hint: `too many machines, or stale claims in ${claimDirectory()}: remove the files whose uid runs no process`,
  });
}

/** The uids this machine holds (one while it runs; more only if a supervisor was killed mid-start and another started it again). */
export function uidsHeldBy(machineId: string): number[] {
  let entries: string[] = [];
  try {
    entries = readdirSync(claimDirectory());
  } catch {
    return [];
  }
  return entries.filter((entry) => /^\d+$/.test(entry) && readClaim(join(claimDirectory(), entry))?.machineId === machineId).map(Number);
}

/** A uid claimed for this machine on behalf of the supervisor `supervisorPid` before it started (see `prepareConfinement`). */
export function uidPreparedFor(machineId: string, supervisorPid: number, hint?: number): number | undefined {
  // The starter names the uid it claimed: one claim read instead of all of the host's (checked, never trusted).
  if (hint !== undefined && Number.isInteger(hint)) {
    const claim = readClaim(join(claimDirectory(), String(hint)));
    if (claim?.machineId === machineId && claim.supervisorPid === supervisorPid) return hint;
  }
  return uidsHeldBy(machineId).find((uid) => readClaim(join(claimDirectory(), String(uid)))?.supervisorPid === supervisorPid);
}

/** Gives the uid back, only if this machine still holds it. */
export function releaseUid(uid: number, machineId: string): void {
  const path = join(claimDirectory(), String(uid));
  if (readClaim(path)?.machineId === machineId) rmSync(path, { force: true });
}

/** Removes claims no live process holds; returns their uids so their leftover rules can go too. */
export function staleClaims(): number[] {
  let entries: string[] = [];
  try {
    entries = readdirSync(claimDirectory());
  } catch {
    return [];
  }
  return entries
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((uid) => claimIsStale(uid, readClaim(join(claimDirectory(), String(uid)))));
}

/** The `machineId` of a claim a prune holds while it removes a stale uid's rules. */
const pruneHolder = 'prune';

/**
 * Frees the claims of killed machines and their leftover rules (`torpor system prune`). Each stale
 * claim is taken over first, so a supervisor that picks the same uid meanwhile finds it held and
 * draws another, and the rules removed are never a live machine's. Returns the uids freed.
 */
export async function pruneStaleClaims(removeRules: (uid: number) => Promise<void>): Promise<number[]> {
  const freed: number[] = [];
  const content = JSON.stringify({ machineId: pruneHolder, supervisorPid: process.pid } satisfies Claim);
  for (const uid of staleClaims()) {
    const path = join(claimDirectory(), String(uid));
    const claim = readClaim(path);
    if (!claimIsStale(uid, claim)) continue;
    rmSync(path, { force: true });
    try {
      writeFileSync(path, content, { flag: 'wx', mode: 0o600 });
    } catch (error) {
      if (isNodeError(error, 'EEXIST')) continue; // a supervisor took it over first: it replaces the rules
      throw error;
    }
    try {
      await removeRules(uid);
      freed.push(uid);
    } finally {
      releaseUid(uid, pruneHolder);
    }
  }
  return freed;
}
