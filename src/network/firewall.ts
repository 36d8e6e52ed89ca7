import { accessSync, constants, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { runCommand } from '../util/command.ts';
import { TorporError } from '../util/errors.ts';
import { parseCidr } from './cidr.ts';
import { baseRules, machineRules, removalRules } from './nft-ruleset.ts';
import type { NetworkPolicy } from './policy.ts';
import { uidRange } from './uid-claims.ts';

/** Where `nft` is, found without starting a process (checked on every machine start). */
export function findNft(): string | undefined {
  const directories = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin'];
  for (const directory of directories) {
    if (!directory) continue;
    try {
      accessSync(join(directory, 'nft'), constants.X_OK);
      return join(directory, 'nft');
    } catch {
      // not here
    }
  }
  return undefined;
}

export interface FilterAvailability {
  available: boolean;
  reason?: string;
}

/** Whether this process can filter a guest's traffic: root (to set rules and run QEMU as another uid) and nftables. */
export function networkFilterAvailability(): FilterAvailability {
  if (process.getuid?.() !== 0)
    return { available: false, reason: 'torpor is not running as root, which the network filter needs (nftables rules, a separate uid per QEMU)' };
  if (!findNft()) return { available: false, reason: 'nft (nftables) is not installed' };
  return { available: true };
}

/** Refuses to start a filtered machine the filter cannot protect: never run unfiltered silently. */
export function requireNetworkFilter(): void {
  const { available, reason } = networkFilterAvailability();
  if (available) return;
  throw new TorporError('network-filter-unavailable', `cannot confine the machine's network: ${reason}`, {
    status: 503,
    hint:
      'run torpor as root with nftables installed (scripts/setup.sh installs it); or choose --network none (no network), ' +
      "or --network unrestricted (the guest then reaches the host's loopback services and private networks)",
  });
}

/** The host's DNS servers as slirp uses them; names it cannot parse are skipped (slirp skips them too). */
export function hostResolvers(path = '/etc/resolv.conf'): string[] {
  let text = '';
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return [];
  }
  const resolvers: string[] = [];
  for (const line of text.split('\n')) {
    const match = /^\s*nameserver\s+(\S+)/.exec(line);
    if (!match) continue;
    const address = match[1]!.replace(/%.*$/, '');
    try {
      parseCidr(address, 'nameserver');
      resolvers.push(address);
    } catch {
      // a scoped or malformed entry
    }
  }
  return [...new Set(resolvers)];
}

async function applyBatch(lines: string[]): Promise<void> {
  const nft = findNft();
  if (!nft)
    throw new TorporError('network-filter-unavailable', 'nft (nftables) is not installed', {
      status: 503,
      hint: 'apt-get install -y nftables (scripts/setup.sh does it)',
    });
  try {
    // One `nft -f` run is one netlink transaction: the rules change all at once or not at all.
    await runCommand(nft, ['-f', '-'], { input: lines.join('\n') + '\n' });
  } catch (error) {
    throw new TorporError('network-filter-failed', `could not set the machine's network rules: ${(error as Error).message}`, {
      hint: 'check that nftables works here (`nft list ruleset` as root); `torpor doctor` reports it',
    });
  }
}

/** Installs (or replaces) the rules for the QEMU that runs as `uid`, in this process's network namespace. */
export async function installMachineRules(uid: number, policy: NetworkPolicy): Promise<void> {
  await applyBatch([...baseRules(uidRange), ...machineRules({ uid, policy, resolvers: hostResolvers() })]);
}

export async function removeMachineRules(uid: number): Promise<void> {
  await applyBatch(removalRules(uid));
}
