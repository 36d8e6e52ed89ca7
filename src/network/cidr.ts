import { isIPv4, isIPv6 } from 'node:net';
import { TorporError } from '../util/errors.ts';

export interface Cidr {
  family: 4 | 6;
  /** The network address, as written in nft rules. */
  address: string;
  prefixLength: number;
}

function ipv4Bytes(address: string): number[] {
  return address.split('.').map(Number);
}

/** The 16 bytes of an IPv6 address (an embedded IPv4 tail included). */
function ipv6Bytes(address: string): number[] {
  let text = address;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.slice(lastColon + 1).includes('.')) {
    tail.push(...ipv4Bytes(text.slice(lastColon + 1)));
    text = text.slice(0, lastColon + 1) + '0:0';
  }
  const [head, rest] = text.split('::') as [string, string | undefined];
  const headGroups = head ? head.split(':') : [];
  const restGroups = rest ? rest.split(':') : [];
  const missing = 8 - headGroups.length - restGroups.length;
  const groups = [...headGroups, ...Array<string>(rest === undefined ? 0 : missing).fill('0'), ...restGroups].map((group) => parseInt(group || '0', 16));
  const bytes = groups.flatMap((group) => [group >> 8, group & 0xff]);
  if (tail.length === 4) bytes.splice(12, 4, ...tail);
  return bytes;
}

function hostBitsSet(bytes: number[], prefixLength: number): boolean {
  return bytes.some((byte, index) => {
    const bitsInByte = Math.max(0, Math.min(8, prefixLength - index * 8));
    const mask = bitsInByte === 0 ? 0 : (0xff << (8 - bitsInByte)) & 0xff;
    return (byte & ~mask & 0xff) !== 0;
  });
}

/**
 * Parses `ADDRESS[/PREFIX]` strictly: the text becomes part of an nft rule, so anything that is
 * not exactly an address and a prefix is refused (no names, no host bits below the prefix).
 */
export function parseCidr(text: string, flag = '--egress-allow'): Cidr {
  const bad = (why: string) =>
    new TorporError('invalid-cidr', `invalid ${flag} value ${JSON.stringify(text)}: ${why}`, {
      status: 400,
      hint: `give an address range like 203.0.113.0/24, 198.51.100.7 or 2001:db8::/32`,
    });
  const match = /^([0-9a-fA-F:.]+)(?:\/(\d{1,3}))?$/.exec(text.trim());
  if (!match) throw bad('not an address or address/prefix');
  const address = match[1]!.toLowerCase();
  const family = isIPv4(address) ? 4 : isIPv6(address) ? 6 : undefined;
  if (!family) throw bad('not an IPv4 or IPv6 address');
  const maximum = family === 4 ? 32 : 128;
  const prefixLength = match[2] === undefined ? maximum : Number(match[2]);
  if (prefixLength > maximum) throw bad(`the prefix must be 0 to ${maximum}`);
  const bytes = family === 4 ? ipv4Bytes(address) : ipv6Bytes(address);
  if (hostBitsSet(bytes, prefixLength)) throw bad(`bits are set below the /${prefixLength} prefix; write the range's first address`);
  return { family, address, prefixLength };
}

export function formatCidr(cidr: Cidr): string {
  return `${cidr.address}/${cidr.prefixLength}`;
}
