import { TorporError } from '../util/errors.ts';
import { parseCidr } from './cidr.ts';

// No zod here: `torpor exec` and every idle supervisor load this file, and must stay light. The
// schema that validates policies read back from snapshots is in policy-schema.ts.

export interface HostPort {
  port: number;
  protocol: 'tcp' | 'udp';
}

/**
 * What a machine's guest may reach through its user network. `filtered` (the default) lets it reach
 * the public internet and nothing of the host or its networks, except what is allowed here;
 * `unrestricted` is today's plain QEMU user network, for hosts where the filter cannot be set up.
 * (`--network none`, no network device at all, is the machine's `network: false`.)
 */
export interface NetworkPolicy {
  mode: 'filtered' | 'unrestricted';
  /** Ports of the host's loopback the guest may reach at 10.0.2.2 (and fec0::2). */
  allowHost: HostPort[];
  /** Address ranges the guest may reach even if private; the most specific rule wins, a tie denies. */
  egressAllow: string[];
  egressDeny: string[];
}

export const defaultNetworkPolicy = (): NetworkPolicy => ({ mode: 'filtered', allowHost: [], egressAllow: [], egressDeny: [] });

/** `--allow-host PORT[/tcp|/udp]`, or a number from a session's `network.allowHost`. */
export function parseHostPort(value: string | number): HostPort {
  const match = /^(\d{1,5})(?:\/(tcp|udp))?$/i.exec(String(value).trim());
  const port = match ? Number(match[1]) : NaN;
  if (!match || port < 1 || port > 65535) {
    throw new TorporError('invalid-allow-host', `invalid --allow-host value ${JSON.stringify(value)}`, {
      status: 400,
      hint: 'give a port of the host, like --allow-host 11434 (the guest reaches it at 10.0.2.2:11434), or 5353/udp',
    });
  }
  return { port, protocol: (match[2]?.toLowerCase() as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

export interface NetworkPolicyInput {
  /** `unrestricted` opts out of the filter (documented, never implicit). */
  mode?: 'filtered' | 'unrestricted';
  allowHost?: (string | number)[];
  egressAllow?: string[];
  egressDeny?: string[];
}

/** Checks and normalizes what a user asked for; every range is parsed here so that no bad text reaches nft later. */
export function buildNetworkPolicy(input: NetworkPolicyInput = {}): NetworkPolicy {
  const unique = <T>(values: T[], key: (value: T) => string) => [...new Map(values.map((value) => [key(value), value])).values()];
  return {
    mode: input.mode ?? 'filtered',
    allowHost: unique((input.allowHost ?? []).map(parseHostPort), (port) => `${port.port}/${port.protocol}`),
    egressAllow: unique(
      (input.egressAllow ?? []).map((text) => parseCidr(text, '--egress-allow')),
      (cidr) => `${cidr.address}/${cidr.prefixLength}`,
    ).map((cidr) => `${cidr.address}/${cidr.prefixLength}`),
    egressDeny: unique(
      (input.egressDeny ?? []).map((text) => parseCidr(text, '--egress-deny')),
      (cidr) => `${cidr.address}/${cidr.prefixLength}`,
    ).map((cidr) => `${cidr.address}/${cidr.prefixLength}`),
  };
}
