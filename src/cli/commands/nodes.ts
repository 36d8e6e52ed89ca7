import type { Command } from 'commander';
import pg from 'pg';
import { environment } from '../../config/environment.ts';
import { listNodes } from '../../cluster/node-registry.ts';
import { TorporError } from '../../util/errors.ts';
import { printJson, printTable } from '../output.ts';

/** Registers `torpor nodes ls`: the nodes of a cluster, read from its PostgreSQL control plane. */
export function registerNodesCommands(program: Command): void {
  const nodes = program.command('nodes').description('nodes of a torpor cluster (`torpor serve --cluster`): liveness, capacity, sessions');
  nodes
    .command('ls')
    .description('list the nodes with their last heartbeat; a node silent for longer than the lease is dead and its sessions move')
    .option('--cluster <postgres-url>', "the cluster's PostgreSQL URL (default TORPOR_CLUSTER)")
    .option('--lease-seconds <n>', 'heartbeat age past which a node counts as dead (default TORPOR_LEASE_SECONDS or 10)')
    .option('--json', 'machine-readable output')
    .action(async (flags: { cluster?: string; leaseSeconds?: string; json?: boolean }) => {
      const settings = environment();
      const url = flags.cluster ?? settings.TORPOR_CLUSTER;
      if (!url) throw new TorporError('cluster-missing', 'no cluster named', { hint: 'pass --cluster postgres://... or set TORPOR_CLUSTER', exitCode: 1 });
      if (flags.leaseSeconds !== undefined && !/^[1-9]\d{0,4}$/.test(flags.leaseSeconds)) {
        throw new TorporError('lease-seconds-invalid', `--lease-seconds must be a whole number of seconds, got ${JSON.stringify(flags.leaseSeconds)}`, {
          exitCode: 1,
        });
      }
      const lease = flags.leaseSeconds !== undefined ? Number(flags.leaseSeconds) : (settings.TORPOR_LEASE_SECONDS ?? 10);
      const pool = new pg.Pool({ connectionString: url, max: 1, connectionTimeoutMillis: 10_000 });
      pool.on('error', () => {});
      try {
        const list = await listNodes(pool, lease).catch((error: Error & { code?: string }) => {
          if (error.code === '42P01')
            throw new TorporError('cluster-empty', 'no node has joined this cluster yet', { hint: 'start one with `torpor serve --cluster URL`', exitCode: 1 });
          throw new TorporError('cluster-unreachable', `could not read the cluster: ${error.message}`, { hint: 'check the --cluster URL', exitCode: 1 });
        });
        if (flags.json) return printJson(list);
        printTable(
          ['NAME', 'STATUS', 'HEARTBEAT', 'MACHINES', 'SESSIONS', 'CPUS', 'MEMORY', 'URL'],
          list.map((node) => [
            node.name,
            node.alive ? 'alive' : 'dead',
            `${node.heartbeatAgeSeconds.toFixed(1)}s ago`,
            `${node.runningMachines}/${node.maxMachines}`,
            `${node.awakeSessions} awake, ${node.heldSessions} held`,
            String(node.cpus),
            `${Math.round(node.memoryMiB / 1024)}g`,
            node.url,
          ]),
        );
      } finally {
        await pool.end();
      }
    });
}
