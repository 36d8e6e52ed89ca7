import { networkOptionsFrom } from '../runtime/run-options.ts';
import type { NetworkPolicy } from '../network/policy.ts';
import type { SessionNetwork } from './session-store.ts';

/**
 * A session's `network` option as machine options: the same checks and meaning as `torpor run`'s
 * --network, --allow-host, --egress-allow and --egress-deny. Called when a session is created (to
 * refuse bad input early) and for each fresh machine; restores keep the policy saved in the snapshot.
 */
export function sessionNetworkOptions(network: SessionNetwork = {}): { network: boolean; networkPolicy?: NetworkPolicy } {
  return networkOptionsFrom({
    network: network.mode ?? 'user',
    allowHost: (network.allowHost ?? []).map(String),
    egressAllow: network.egressAllow ?? [],
    egressDeny: network.egressDeny ?? [],
  });
}
