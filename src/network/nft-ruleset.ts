import { parseCidr, formatCidr, type Cidr } from './cidr.ts';
import type { NetworkPolicy } from './policy.ts';

/**
 * nftables scripts that confine what QEMU's user network (slirp) may connect to on a guest's
 * behalf. slirp turns every guest connection into an ordinary socket of the QEMU process, and each
 * QEMU runs as its own uid (`-runas`), so rules matched on the socket's owner (`meta skuid`) in the
 * output hook see exactly one machine's traffic, loopback included (10.0.2.2 is the host's 127.0.0.1).
 */

export const tableName = 'torpor';

/** Destinations no guest reaches unless a rule of its own allows them (the host itself is matched by `fib`). */
export const blockedIPv4 = [
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // RFC 1918
  '100.64.0.0/10', // carrier-grade NAT
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local, cloud metadata (169.254.169.254)
  '172.16.0.0/12', // RFC 1918
  '192.0.0.0/24', // IETF protocol assignments
  '192.168.0.0/16', // RFC 1918
  '198.18.0.0/15', // benchmarking, often used inside labs
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, and the limited broadcast address
];

export const blockedIPv6 = [
  '::/127', // unspecified and loopback
  '::ffff:0:0/96', // IPv4-mapped: the IPv4 rules must not be bypassed through an IPv6 socket
  '64:ff9b:1::/48', // local-use NAT64, which leads into private IPv4 networks
  '100::/64', // discard
  'fc00::/7', // unique local
  'fe80::/10', // link-local
  'fec0::/10', // site-local (deprecated, still routed by some)
  'ff00::/8', // multicast
];

export interface MachineRulesInput {
  uid: number;
  policy: NetworkPolicy;
  /** The host's DNS servers (slirp forwards the guest's 10.0.2.3 to them). */
  resolvers: string[];
}

/** The chains every machine shares; flushing and refilling them in one batch makes this idempotent and atomic. */
export function baseRules(uidRange: { first: number; last: number }): string[] {
  return [
    `add table inet ${tableName}`,
    `add map inet ${tableName} machines { type uid : verdict ; }`,
    // Every chain exists before a rule names it.
    `add chain inet ${tableName} output { type filter hook output priority filter ; policy accept ; }`,
    `add chain inet ${tableName} guests`,
    `add chain inet ${tableName} refuse`,
    `flush chain inet ${tableName} output`,
    `flush chain inet ${tableName} guests`,
    `flush chain inet ${tableName} refuse`,
    // Packets without a socket (kernel resets, ICMP errors) fail the skuid match and are not ours.
    `add rule inet ${tableName} output meta skuid ${uidRange.first}-${uidRange.last} jump guests`,
    `add rule inet ${tableName} guests ct state established,related accept`,
    `add rule inet ${tableName} guests meta skuid vmap @machines`,
    // A QEMU of our range with no rules of its own (its supervisor died and the rules went) gets nothing.
    `add rule inet ${tableName} guests jump refuse`,
    // A reset or an ICMP error makes the guest's connect fail at once instead of timing out.
    `add rule inet ${tableName} refuse meta l4proto tcp reject with tcp reset`,
    `add rule inet ${tableName} refuse reject with icmpx admin-prohibited`,
  ];
}

const chainName = (uid: number) => `machine-${uid}`;
const addressSet = (cidrs: string[]) => `{ ${cidrs.join(', ')} }`;

/** The user's allow and deny ranges, most specific first; at equal specificity a deny comes first. */
function orderedUserRules(policy: NetworkPolicy): { cidr: Cidr; verdict: 'accept' | 'goto refuse' }[] {
  const rules = [
    ...policy.egressDeny.map((text) => ({ cidr: parseCidr(text, '--egress-deny'), verdict: 'goto refuse' as const })),
    ...policy.egressAllow.map((text) => ({ cidr: parseCidr(text, '--egress-allow'), verdict: 'accept' as const })),
  ];
  // Array.prototype.sort is stable: denies stay before allows of the same prefix length.
  return rules.sort((a, b) => b.cidr.prefixLength - a.cidr.prefixLength);
}

/** One machine's chain and its entry in the uid map, replacing whatever a previous owner of the uid left. */
export function machineRules({ uid, policy, resolvers }: MachineRulesInput): string[] {
  const chain = chainName(uid);
  const lines = [`add chain inet ${tableName} ${chain}`, `flush chain inet ${tableName} ${chain}`];
  const add = (rule: string) => lines.push(`add rule inet ${tableName} ${chain} ${rule}`);
  if (policy.mode === 'unrestricted') {
    add('accept');
  } else {
    const resolvers4 = resolvers.filter((address) => parseCidr(address, 'nameserver').family === 4);
    const resolvers6 = resolvers.filter((address) => parseCidr(address, 'nameserver').family === 6);
    for (const [family, list] of [
      ['ip', resolvers4],
      ['ip6', resolvers6],
    ] as const) {
      if (list.length === 0) continue;
      add(`${family} daddr ${addressSet(list)} udp dport 53 accept`);
      add(`${family} daddr ${addressSet(list)} tcp dport 53 accept`);
    }
    for (const protocol of ['tcp', 'udp'] as const) {
      const ports = policy.allowHost.filter((port) => port.protocol === protocol).map((port) => String(port.port));
      if (ports.length === 0) continue;
      add(`ip daddr 127.0.0.1 ${protocol} dport ${addressSet(ports)} accept`);
      add(`ip6 daddr ::1 ${protocol} dport ${addressSet(ports)} accept`);
    }
    for (const rule of orderedUserRules(policy)) add(`${rule.cidr.family === 4 ? 'ip' : 'ip6'} daddr ${formatCidr(rule.cidr)} ${rule.verdict}`);
    // Every address of this host (in the namespace QEMU runs in), whatever its range.
    add('fib daddr type { local, broadcast, multicast, anycast } goto refuse');
    add(`ip daddr ${addressSet(blockedIPv4)} goto refuse`);
    add(`ip6 daddr ${addressSet(blockedIPv6)} goto refuse`);
    add('accept');
  }
  lines.push(`add element inet ${tableName} machines { ${uid} : jump ${chain} }`);
  return lines;
}

/** Removes one machine's rules; adding the element first makes the delete succeed when it is already gone. */
export function removalRules(uid: number): string[] {
  const chain = chainName(uid);
  return [
    // Creates nothing that filters: a namespace without the table gets only an empty table and map.
    `add table inet ${tableName}`,
    `add map inet ${tableName} machines { type uid : verdict ; }`,
    `add chain inet ${tableName} ${chain}`,
    `add element inet ${tableName} machines { ${uid} : jump ${chain} }`,
    `delete element inet ${tableName} machines { ${uid} }`,
    `delete chain inet ${tableName} ${chain}`,
  ];
}
