import { runCommand } from '../util/command.ts';
import { findNft, networkFilterAvailability } from './firewall.ts';
import { tableName } from './nft-ruleset.ts';
import { staleClaims } from './uid-claims.ts';

/** `torpor doctor`'s line about the guest network filter (same shape as the host checks). */
export async function networkFilterCheck(): Promise<{ name: string; ok: boolean; detail: string; fix?: string }> {
  const name = 'guest network filter';
  const availability = networkFilterAvailability();
  if (!availability.available) {
    return {
      name,
      ok: false,
      detail: `${availability.reason}: machines with the default network refuse to start`,
      fix: 'apt-get install -y nftables and run torpor as root; or run machines with --network none (or --network unrestricted, unfiltered)',
    };
  }
  // Listing proves the kernel side works (nf_tables present, CAP_NET_ADMIN in this namespace).
  const listed = await runCommand(findNft()!, ['list', 'tables'], { allowFailure: true });
  if (listed.code !== 0) {
    return {
      name,
      ok: false,
      detail: `nft does not work here: ${listed.stderr.trim()}`,
      fix: 'a kernel with nf_tables (modprobe nf_tables), and CAP_NET_ADMIN',
    };
  }
  const stale = staleClaims().length;
  const table = listed.stdout.includes(`inet ${tableName}`) ? `table inet ${tableName} present` : `table inet ${tableName} made at the first machine start`;
  return {
    name,
    ok: true,
    detail: `nftables works; ${table}${stale > 0 ? `; ${stale} uid claims left by killed machines (reused when met; torpor system prune removes them)` : ''}`,
  };
}
