import { rmSync, writeFileSync, renameSync } from 'node:fs';
import type { Command } from 'commander';
import { startApiServer } from '../../api/server.ts';
import { contextLogPaths, ensureDirectory, stateDirectory } from '../../context/state-directory.ts';
import { processInputOutput, type CommandInputOutput, type ServerInfo } from './log.ts';
import { TorporError } from '../../util/errors.ts';
import { apiTokenPaths, ensureAdminToken, readAdminToken } from '../../state/api-tokens.ts';
import { isLoopbackAddress } from '../../api/request-guards.ts';
import { installProcessGuards } from '../../api/process-guards.ts';
import { parseByteSize, resolveLimits, type ResourceLimits } from '../../runtime/limits.ts';
import { warmBudgetBytes } from '../../runtime/warm-memory.ts';
import { collect } from '../output.ts';
import { startClusterFromFlags, type ClusterFlags } from './cluster-serve.ts';
import type { ClusterNode } from '../../cluster/cluster-node.ts';

interface ServeFlags extends ClusterFlags {
  port: string;
  host: string;
  postgres?: string;
  allowRemote?: boolean;
  serverName?: string[];
  maxCpus?: string;
  maxMemory?: string;
  maxDisk?: string;
  maxMachines?: string;
  maxSessions?: string;
  maxBody?: string;
  warmMemory?: string;
  json?: boolean;
}

const tlsAdvice =
  'the API speaks plain HTTP: put a TLS-terminating proxy in front (e.g. `caddy reverse-proxy --from torpor.example.com --to 127.0.0.1:7070`, ' +
  'with this server on loopback and --server-name torpor.example.com), or reach it through an SSH tunnel (`ssh -L 7070:127.0.0.1:7070 host`)';

/** Refuses a listening address beyond this machine unless the user asked for it and a token already exists. */
function checkListenAddress(flags: ServeFlags, directory: string): string | undefined {
  if (isLoopbackAddress(flags.host)) return undefined;
  if (!flags.allowRemote) {
    throw new TorporError('remote-listen-refused', `--host ${flags.host} would open the API to the network`, {
      hint: `keep the default 127.0.0.1, or add --allow-remote once clients have the token (torpor token show). ${tlsAdvice}`,
    });
  }
  if (!readAdminToken(directory)) {
    throw new TorporError('token-missing', `--host ${flags.host} needs the API token to exist before the server opens to the network`, {
      hint: 'run `torpor token show` (it creates the token), give it to your clients, then start the server again',
    });
  }
  return `torpor: warning: listening on ${flags.host}: ${tlsAdvice}\n`;
}

function maxBodyBytes(flags: ServeFlags, environment: NodeJS.ProcessEnv): number | undefined {
  const text = flags.maxBody ?? environment.TORPOR_MAX_BODY;
  if (text === undefined || text === '') return undefined;
  return parseByteSize(text, flags.maxBody !== undefined ? '--max-body' : 'TORPOR_MAX_BODY');
}

/** Registers `torpor serve`: the HTTP API over the context log, until interrupted. */
export function registerServeCommand(program: Command, io: CommandInputOutput = processInputOutput): Command {
  return program
    .command('serve')
    .description('serve the HTTP API until interrupted: agent sessions under /v1/sessions, the context log under /v1/logs')
    .option('--port <port>', 'port to listen on', '7070')
    .option('--host <host>', 'address to listen on; other than loopback needs --allow-remote (and TLS in front)', '127.0.0.1')
    .option('--allow-remote', 'allow --host to be a non-loopback address (the API token must exist: torpor token show)')
    .option('--server-name <name>', "another name clients use in the Host header, e.g. a proxy's public name (repeatable; TORPOR_SERVER_NAMES)", collect)
    .option('--postgres <url>', 'store the log in PostgreSQL instead of the SQLite file in the state directory')
    .option('--max-cpus <n>', "most vCPUs one session's machine may have (default: host cores; TORPOR_MAX_CPUS)")
    .option('--max-memory <size>', "most memory one session's machine may have (default: half the host's RAM; TORPOR_MAX_MEMORY)")
    .option('--max-disk <size>', 'largest writable disk of one machine (default 16g; TORPOR_MAX_DISK)')
    .option('--max-machines <n>', 'most machines running at once (default: 3/4 of host RAM at 512m each; TORPOR_MAX_MACHINES)')
    .option('--max-sessions <n>', 'most sessions that may exist (default 1000; TORPOR_MAX_SESSIONS)')
    .option('--max-body <size>', 'largest request body except log appends (default 1m; TORPOR_MAX_BODY)')
    .option(
      '--warm-memory <MiB|auto>',
      "keep recently hibernated sessions in host memory up to this many MiB: their QEMU paused (wake = resume; TORPOR_PAUSED_MACHINES=0: not), else their RAM in tmpfs, so their wake skips the store; given back, oldest first, when the host's available memory falls below TORPOR_WARM_RESERVE; 0 turns it off (default: TORPOR_WARM_MEMORY, else auto = 1/8 of the host's RAM)",
    )
    .option('--cluster <postgres-url>', 'run as a node of the cluster whose control plane is this PostgreSQL database (TORPOR_CLUSTER)')
    .option('--store <s3-url>', 'with --cluster: share snapshots through this object store, s3://BUCKET/PREFIX (TORPOR_STORE, TORPOR_S3_*)')
    .option('--node-name <name>', "with --cluster: this node's name, unique in the cluster (default the host name; TORPOR_NODE_NAME)")
    .option('--advertise-url <url>', 'with --cluster: where other nodes reach this one (default the address it listens on; TORPOR_ADVERTISE_URL)')
    .option('--lease-seconds <n>', "with --cluster: seconds without a node's heartbeat before its sessions are taken over (default 10; TORPOR_LEASE_SECONDS)")
    .option('--json', 'print where the server listens, its token file and limits as one JSON line')
    .action(async (options: ServeFlags) => {
      if (!/^\d+$/.test(options.port) || Number(options.port) > 65535) {
        io.stderr.write(`torpor: --port must be a number from 0 to 65535, got ${JSON.stringify(options.port)}\n`);
        io.setExitCode(1);
        return;
      }
      if (options.warmMemory !== undefined && !/^(\d+|auto)$/.test(options.warmMemory)) {
        io.stderr.write(`torpor: --warm-memory must be a number of MiB or auto (0 turns it off), got ${JSON.stringify(options.warmMemory)}\n`);
        io.setExitCode(1);
        return;
      }
      // A server keeps recently hibernated sessions in memory by default (their wake is a resume):
      // the flag, else the variable, else auto. Machine supervisors inherit it: they keep a
      // hibernated machine's RAM when it stops.
      process.env.TORPOR_WARM_MEMORY = options.warmMemory ?? (io.environment.TORPOR_WARM_MEMORY || 'auto');
      const directory = stateDirectory(io.environment);
      const paths = contextLogPaths(directory);
      let server;
      let limits: ResourceLimits;
      let uninstallGuards: (() => void) | undefined;
      let cluster: ClusterNode | undefined;
      try {
        limits = resolveLimits(io.environment, {
          maxCpus: options.maxCpus,
          maxMemoryMiB: options.maxMemory,
          maxDiskGiB: options.maxDisk,
          maxMachines: options.maxMachines,
          maxSessions: options.maxSessions,
        });
        const serverNames = [...(options.serverName ?? []), ...(io.environment.TORPOR_SERVER_NAMES ?? '').split(',')]
          .map((name) => name.trim())
          .filter(Boolean);
        // Memory files, machine configs (env) and the token: private to this user, whatever the umask was.
        process.umask(0o077);
        ensureDirectory(directory);
        // A node serves with the cluster's token (written to the state directory), so it exists before the remote check.
        cluster = await startClusterFromFlags(options, {
          environment: io.environment,
          stateDirectory: directory,
          limits,
          log: (line) => io.stderr.write(`${line}\n`),
        });
        const warning = checkListenAddress(options, directory);
        if (warning) io.stderr.write(warning);
        const { created } = cluster ? { created: false } : ensureAdminToken(directory);
        if (created && !options.json)
          io.stdout.write(
            `torpor: created the API token ${apiTokenPaths(directory).adminToken} (the torpor CLI on this machine finds it; other clients: torpor token show)\n`,
          );
        server = await startApiServer({
          port: Number(options.port),
          host: options.host,
          stateDirectory: directory,
          postgresUrl: options.postgres,
          serverNames,
          maxRequestBodyBytes: maxBodyBytes(options, io.environment),
          sessions: { limits },
          ...(cluster ? { cluster, advertiseUrl: options.advertiseUrl ?? io.environment.TORPOR_ADVERTISE_URL } : {}),
        });
      } catch (error) {
        await cluster?.close().catch(() => {});
        io.stderr.write(`torpor: ${(error as Error).message}\n${error instanceof TorporError && error.hint ? `  hint: ${error.hint}\n` : ''}`);
        io.setExitCode(1);
        return;
      }
      uninstallGuards = installProcessGuards((text) => io.stderr.write(text));
      // Tell CLI invocations where the server is, so they read and write through it.
      ensureDirectory(directory);
      const info: ServerInfo = { url: server.url, pid: process.pid, storage: options.postgres || cluster ? 'postgres' : paths.database };
      const temporary = `${paths.serverInfo}.${process.pid}.tmp`;
      writeFileSync(temporary, `${JSON.stringify(info)}\n`, { mode: 0o600 });
      renameSync(temporary, paths.serverInfo);
      const warmMemoryMiB = Math.floor(warmBudgetBytes() / 1024 ** 2);
      const storage = cluster ? `the cluster's PostgreSQL, as node ${cluster.name}` : options.postgres ? 'PostgreSQL' : `SQLite ${paths.database}`;
      if (options.json)
        io.stdout.write(
          `${JSON.stringify({ url: server.url, tokenFile: apiTokenPaths(directory).adminToken, storage: info.storage, limits, warmMemoryMiB, ...(cluster ? { node: cluster.name } : {}) })}\n`,
        );
      else
        io.stdout.write(
          `torpor API listening on ${server.url} (context log in ${storage}; requests need the token in ${apiTokenPaths(directory).adminToken}; hibernated sessions kept in memory: ${warmMemoryMiB > 0 ? `up to ${warmMemoryMiB} MiB, --warm-memory` : 'none'})\n`,
        );
      // Sessions whose machines survived keep running; the others come back from snapshot or log.
      void server.sessions?.recoverAll().catch((error: Error) => io.stderr.write(`torpor: session recovery: ${error.message}\n`));
      const stop = async () => {
        rmSync(paths.serverInfo, { force: true });
        await server.close();
        uninstallGuards?.();
      };
      await Promise.race([io.interrupted(), new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()))]);
      await stop();
    });
}
