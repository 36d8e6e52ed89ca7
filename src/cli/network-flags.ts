import type { Command } from 'commander';
import { collect } from './output.ts';

/**
 * The network policy flags of every command that makes a machine (run, session create, system pool
 * fill): one definition, so their names and meaning cannot drift apart. `subject` is who is confined
 * ("guest" or "agent"); `host` whose loopback 10.0.2.2 reaches.
 */
export function addNetworkPolicyFlags(command: Command, subject: 'guest' | 'agent', host = "the host's"): Command {
  return command
    .option('--allow-host <port[/proto]>', `let the ${subject} reach this port of ${host} loopback at 10.0.2.2 (repeatable)`, collect)
    .option('--egress-allow <cidr>', `let the ${subject} reach this address range even if private (repeatable; the most specific rule wins)`, collect)
    .option('--egress-deny <cidr>', `keep the ${subject} from this address range (repeatable)`, collect);
}
