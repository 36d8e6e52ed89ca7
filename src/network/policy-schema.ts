import { z } from 'zod';
import type { HostPort, NetworkPolicy } from './policy.ts';

/** A machine's network policy as stored in its config (and inside every snapshot of it): see policy.ts. */
export const hostPortSchema: z.ZodType<HostPort> = z.object({ port: z.number().int().min(1).max(65535), protocol: z.enum(['tcp', 'udp']) });

export const networkPolicySchema: z.ZodType<NetworkPolicy> = z.object({
  mode: z.enum(['filtered', 'unrestricted']),
  allowHost: z.array(hostPortSchema),
  egressAllow: z.array(z.string()),
  egressDeny: z.array(z.string()),
});
