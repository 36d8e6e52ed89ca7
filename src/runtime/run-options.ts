import { TorporError } from '../util/errors.ts';
import type { PortMapping } from '../vm/machine-spec.ts';
import { buildNetworkPolicy, type NetworkPolicy } from '../network/policy.ts';

/** Parses docker-style sizes: 512m, 1g, 1.5G, 1048576 (bytes). Returns MiB. */
export function parseMemory(text: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?$/i.exec(text.trim());
  if (!match) {
    throw new TorporError('invalid-memory', `invalid --memory value ${JSON.stringify(text)}`, { hint: 'use a size like 512m or 2g', status: 400 });
  }
  const value = Number(match[1]);
  const unit = (match[2] || 'b').toLowerCase();
  const bytes = value * { b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }[unit]!;
  const mebibytes = Math.floor(bytes / 1024 ** 2);
  if (mebibytes < 128) {
    throw new TorporError('invalid-memory', `--memory ${text} is too small: a machine needs at least 128m`, {
      hint: 'use --memory 512m (the default) or more',
      status: 400,
    });
  }
  if (mebibytes > 256 * 1024) throw new TorporError('invalid-memory', `--memory ${text} is larger than torpor supports (256g)`, { status: 400 });
  return mebibytes;
}

/** `--cpus N`: a whole number from 1 to 64, else `invalid-cpus` with the range. */
export function parseCpus(text: string): number {
  const cpus = Number(text);
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > 64) {
    throw new TorporError('invalid-cpus', `invalid --cpus value ${JSON.stringify(text)}`, { hint: 'use a whole number from 1 to 64', status: 400 });
  }
  return cpus;
}

/** -p [HOST_ADDRESS:]HOST_PORT:GUEST_PORT[/tcp|/udp], as docker. */
export function parsePort(text: string): PortMapping {
  const match = /^(?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-f:]+\]|localhost):)?(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/i.exec(text.trim());
  const bad = () =>
    new TorporError('invalid-port', `invalid -p value ${JSON.stringify(text)}`, {
      status: 400,
      hint: 'use HOST_PORT:GUEST_PORT, e.g. -p 8080:80, or 127.0.0.1:8080:80, or 5353:53/udp',
    });
  if (!match) throw bad();
  const hostPort = Number(match[2]);
  const guestPort = Number(match[3]);
  if (hostPort < 1 || hostPort > 65535 || guestPort < 1 || guestPort > 65535) throw bad();
  const address = match[1] === 'localhost' ? '127.0.0.1' : (match[1] ?? '');
  return { hostAddress: address.replace(/^\[|\]$/g, ''), hostPort, guestPort, protocol: (match[4]?.toLowerCase() as 'tcp' | 'udp') ?? 'tcp' };
}

/** `-e NAME=value` entries as given, and `-e NAME` filled in from the host environment. */
export function parseEnvironment(entries: string[]): string[] {
  return entries.map((entry) => {
    if (entry.includes('=')) return entry;
    // `-e NAME` passes the host's value through, as docker does.
    const value = process.env[entry];
    if (value === undefined)
      throw new TorporError('invalid-env', `-e ${entry}: no such variable in this environment`, { hint: 'use -e NAME=value', status: 400 });
    return `${entry}=${value}`;
  });
}

/** Throws `invalid-name` unless the name is safe as a file name and a hostname (1-63 of [a-zA-Z0-9_.-]). */
export function validateMachineName(name: string): void {
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(name)) {
    throw new TorporError('invalid-name', `invalid machine name ${JSON.stringify(name)}`, {
      status: 400,
      hint: 'use letters, digits, _ . - (up to 63), starting with a letter or digit',
    });
  }
}

const adjectives = [
  'brave',
  'calm',
  'eager',
  'fond',
  'gentle',
  'happy',
  'jolly',
  'keen',
  'lucid',
  'merry',
  'nimble',
  'quiet',
  'sleepy',
  'snug',
  'still',
  'wise',
];
const nouns = ['badger', 'bat', 'bear', 'dormouse', 'hedgehog', 'lemur', 'marmot', 'possum', 'squirrel', 'tortoise', 'chipmunk', 'hamster', 'koala', 'sloth'];

/** A name like docker's (`sleepy_dormouse_42`) for machines the user did not name. */
export function randomMachineName(): string {
  const pick = (words: string[]) => words[Math.floor(Math.random() * words.length)]!;
  return `${pick(adjectives)}_${pick(nouns)}_${Math.floor(Math.random() * 1000)}`;
}

/**
 * `--network user|none|unrestricted` with `--allow-host`, `--egress-allow`, `--egress-deny`.
 * Rules that could not take effect are refused rather than ignored.
 */
export function networkOptionsFrom(flags: { network: string; allowHost: string[]; egressAllow: string[]; egressDeny: string[] }): {
  network: boolean;
  networkPolicy?: NetworkPolicy;
} {
  const rules = [
    ...flags.allowHost.map(() => '--allow-host'),
    ...flags.egressAllow.map(() => '--egress-allow'),
    ...flags.egressDeny.map(() => '--egress-deny'),
  ];
  if (flags.network === 'none' || flags.network === 'unrestricted') {
    if (rules.length > 0) {
      throw new TorporError('invalid-network', `${rules[0]} has no effect with --network ${flags.network}`, {
        status: 400,
        hint: 'use the default --network user with --allow-host / --egress-allow / --egress-deny',
      });
    }
    return flags.network === 'none' ? { network: false } : { network: true, networkPolicy: buildNetworkPolicy({ mode: 'unrestricted' }) };
  }
  if (flags.network !== 'user') {
    throw new TorporError('invalid-network', `unknown --network ${flags.network}`, {
      status: 400,
      hint: 'use --network user (the default), none or unrestricted',
    });
  }
  return { network: true, networkPolicy: buildNetworkPolicy({ allowHost: flags.allowHost, egressAllow: flags.egressAllow, egressDeny: flags.egressDeny }) };
}
