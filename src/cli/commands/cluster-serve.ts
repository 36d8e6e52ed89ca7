import { availableParallelism, hostname, totalmem } from 'node:os';
import { ClusterNode } from '../../cluster/cluster-node.ts';
import type { SnapshotReplicatorLike } from '../../cluster/snapshot-sharing.ts';
import type { ResourceLimits } from '../../runtime/limits.ts';
import { writeAdminToken } from '../../state/api-tokens.ts';
import { TorporError } from '../../util/errors.ts';
import { environment } from '../../config/environment.ts';

export interface ClusterFlags {
  cluster?: string;
  store?: string;
  nodeName?: string;
  advertiseUrl?: string;
  leaseSeconds?: string;
  postgres?: string;
}

/**
 * `torpor serve --cluster URL`: starts this process's cluster node (undefined without --cluster or
 * TORPOR_CLUSTER: the single-host server is unchanged). The node's API token becomes the cluster's.
 */
export async function startClusterFromFlags(
  flags: ClusterFlags,
  context: { environment: NodeJS.ProcessEnv; stateDirectory: string; limits: ResourceLimits; log: (line: string) => void },
): Promise<ClusterNode | undefined> {
  const settings = environment(context.environment);
  const postgresUrl = flags.cluster ?? settings.TORPOR_CLUSTER;
  const storeUrl = flags.store ?? settings.TORPOR_STORE;
  if (!postgresUrl) {
    for (const [flag, value] of [
      ['--store', flags.store],
      ['--node-name', flags.nodeName],
      ['--advertise-url', flags.advertiseUrl],
      ['--lease-seconds', flags.leaseSeconds],
    ] as const) {
      if (value !== undefined)
        throw new TorporError('cluster-flag-alone', `${flag} needs --cluster`, { hint: 'add --cluster postgres://... (or set TORPOR_CLUSTER)', exitCode: 1 });
    }
    return undefined;
  }
  if (!/^postgres(ql)?:\/\//.test(postgresUrl)) {
    throw new TorporError('cluster-url-invalid', `--cluster must be a PostgreSQL URL, got ${JSON.stringify(postgresUrl.replace(/:[^:@/]*@/, ':***@'))}`, {
      hint: 'e.g. --cluster postgres://torpor@db.internal/torpor',
      exitCode: 1,
    });
  }
  if (flags.postgres !== undefined) {
    throw new TorporError('cluster-and-postgres', '--postgres and --cluster both name where the log lives', {
      hint: "drop --postgres: a node keeps the log in the cluster's database",
      exitCode: 1,
    });
  }
  const leaseText = flags.leaseSeconds;
  if (leaseText !== undefined && !/^[1-9]\d{0,4}$/.test(leaseText)) {
    throw new TorporError('lease-seconds-invalid', `--lease-seconds must be a whole number of seconds, got ${JSON.stringify(leaseText)}`, { exitCode: 1 });
  }
  const leaseSeconds = leaseText !== undefined ? Number(leaseText) : (settings.TORPOR_LEASE_SECONDS ?? 10);
  const replicator = storeUrl ? await openReplicator(storeUrl) : undefined;
  if (!replicator)
    context.log('torpor: cluster without --store: a session that moves to another node is rebuilt from its context log (its memory stays behind)');
  const node = await ClusterNode.start({
    postgresUrl,
    name: flags.nodeName ?? settings.TORPOR_NODE_NAME ?? hostname(),
    capacity: { cpus: availableParallelism(), memoryMiB: Math.floor(totalmem() / 1024 / 1024), maxMachines: context.limits.maxMachines },
    replicator,
    leaseSeconds,
    heartbeatMs: Math.min(1000, (leaseSeconds * 1000) / 4),
    log: context.log,
  }).catch((error: Error) => {
    throw new TorporError('cluster-unreachable', `could not join the cluster: ${error.message}`, {
      hint: 'check the --cluster URL, that PostgreSQL accepts this host, and that the role may create tables on first start',
      exitCode: 1,
      cause: error,
    });
  });
  writeAdminToken(context.stateDirectory, node.token);
  return node;
}

/** Loaded only with --store: the AWS SDK is large, and a node without a store never needs it. */
async function openReplicator(storeUrl: string): Promise<SnapshotReplicatorLike> {
  const [{ createChunkCache }, { objectStoreOptionsFromEnvironment, openObjectStore }, { createSnapshotReplicator }] = await Promise.all([
    import('../../object-store/chunk-cache.ts'),
    import('../../object-store/object-store.ts'),
    import('../../object-store/snapshot-replicator.ts'),
  ]);
  const store = openObjectStore(storeUrl, objectStoreOptionsFromEnvironment());
  await store.ensureFormat();
  return createSnapshotReplicator(store, createChunkCache());
}
