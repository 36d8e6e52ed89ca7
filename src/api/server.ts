import type { AddressInfo } from 'node:net';
import { serve, type ServerType } from '@hono/node-server';
import type { Hono } from 'hono';
import { openContextLog, type ContextLog, type ContextLogOptions } from '../context/index.ts';
import { randomBytes } from 'node:crypto';
import { SessionManager, type SessionManagerOptions } from '../session/session-manager.ts';
import { createSupervisorPool } from '../runtime/machines.ts';
import { TokenVerifier, ensureAdminToken } from '../state/api-tokens.ts';
import { createApp, type ApiOptions } from './app.ts';
import { mountDurableStreams } from './durable-streams-routes.ts';
import { allowedHostsFor, defaultMaxBodyBytes, guardRequests } from './request-guards.ts';
import { withDashboardLogin } from '../dashboard/dashboard-login.ts';
import type { ClusterNode } from '../cluster/cluster-node.ts';
import { routeSessionRequests } from '../cluster/session-routing.ts';

export interface StartApiServerOptions extends Omit<ApiOptions, 'log' | 'sessions'>, ContextLogOptions {
  /** Adds routes after the API's own (for embedding and tests); errors still go through the one handler. */
  configure?: (app: Hono, log: ContextLog) => void;
  /** Port to listen on; 0 picks a free one. Default 7070. */
  port?: number;
  /** Default 127.0.0.1; serve.ts refuses other addresses unless told explicitly. */
  host?: string;
  /**
   * The full-access bearer token. Default: the state directory's (created on first start), or,
   * for a server given only an open log, a random one for this process (see ApiServer.token).
   */
  token?: string;
  /** Extra names the Host header may carry (a reverse proxy's public name). */
  serverNames?: string[];
  /** Largest body of requests other than log appends. Default 1 MiB. */
  maxRequestBodyBytes?: number;
  /** Session name or id -> id, so a token limited to one session accepts either in paths. */
  resolveSession?: (idOrName: string) => string | undefined;
  /** An already open log; otherwise one is opened from stateDirectory / postgresUrl and closed with the server. */
  log?: ContextLog;
  stateDirectory?: string;
  postgresUrl?: string;
  /** Serve agent sessions too (`torpor serve` does): a session manager over the same log, closed with the server. */
  sessions?: boolean | Omit<SessionManagerOptions, 'log'>;
  /**
   * Serve as a node of this cluster: the log, the session store and the token are the cluster's,
   * requests about sessions other nodes hold are forwarded to them, and the node is closed with the server.
   */
  cluster?: ClusterNode;
  /** The URL other nodes reach this one at (`--advertise-url`); default the URL it listens on. */
  advertiseUrl?: string;
}

export interface ApiServer {
  url: string;
  port: number;
  host: string;
  /** The full-access token requests must carry. */
  token: string;
  app: Hono;
  log: ContextLog;
  /** The session manager, when the server serves sessions. */
  sessions?: SessionManager;
  close(): Promise<void>;
}

export async function startApiServer(options: StartApiServerOptions = {}): Promise<ApiServer> {
  const cluster = options.cluster;
  const ownsLog = options.log === undefined;
  const log = options.log ?? (cluster ? await cluster.openLog() : await openContextLog(options));
  const clusterParts = cluster ? { store: cluster.store, ...(cluster.replication ? { replication: cluster.replication } : {}) } : {};
  const sessionOptions = options.sessions && options.sessions !== true ? options.sessions : {};
  const sessions =
    options.sessions || cluster
      ? new SessionManager({
          ...sessionOptions,
          // One pool for the host: session wakes and the machine API's restores and forks share its spares.
          pool: sessionOptions.pool ?? createSupervisorPool(),
          ...clusterParts,
          log,
        })
      : undefined;
  const app = createApp({ ...options, log, sessions });
  // Durable Streams keep their own SQLite file in the state directory: only a server that has one serves them.
  const streams = options.stateDirectory ? mountDurableStreams(app, { log, sessions, stateDirectory: options.stateDirectory }) : undefined;
  options.configure?.(app, log);
  const host = options.host ?? '127.0.0.1';
  const token =
    options.token ??
    cluster?.token ??
    (options.stateDirectory ? ensureAdminToken(options.stateDirectory).token : `torpor_${randomBytes(32).toString('base64url')}`);
  // Filled in once the port is known (port 0 picks one): until then no request can arrive anyway.
  const policy = {
    verifier: new TokenVerifier(token, options.stateDirectory),
    resolveSession: options.resolveSession ?? (sessions ? (idOrName: string) => sessions.store.get(idOrName)?.id : undefined),
    allowedHosts: new Set<string>(),
    allowedOrigins: new Set<string>(),
    maxLogAppendBytes: options.maxBodyBytes ?? 128 * 1024 * 1024,
    maxBodyBytes: options.maxRequestBodyBytes ?? defaultMaxBodyBytes,
  };
  let server: ServerType;
  let address: AddressInfo;
  try {
    ({ server, address } = await new Promise<{ server: ServerType; address: AddressInfo }>((resolve, reject) => {
      const routed = cluster ? routeSessionRequests(app.fetch, cluster) : app.fetch;
      const created = serve({ fetch: withDashboardLogin(guardRequests(routed, policy), { token }), port: options.port ?? 7070, hostname: host }, (info) =>
        resolve({ server: created, address: info }),
      );
      created.once('error', reject);
    }));
  } catch (error) {
    await sessions?.close();
    streams?.close();
    if (ownsLog) await log.close();
    await cluster?.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new Error(`port ${options.port} on ${host} is already in use; stop the other server or pass another --port`);
    throw error;
  }
  const allowed = allowedHostsFor(host, address.port, options.serverNames);
  for (const each of allowed.hosts) policy.allowedHosts.add(each);
  for (const each of allowed.origins) policy.allowedOrigins.add(each);
  // Idle keep-alive connections stay open 65 s (Node's default is 5 s): longer than the idle timeouts
  // of common proxies and load balancers, and than a client that is busy between two requests, so
  // neither side reuses a socket the other is closing.
  Object.assign(server, { keepAliveTimeout: 65_000, headersTimeout: 66_000 });
  const urlHost = host.includes(':') ? `[${host}]` : host;
  const url = `http://${urlHost}:${address.port}`;
  if (cluster && sessions) await cluster.attach(sessions, options.advertiseUrl ?? url);
  let closing: Promise<void> | undefined;
  return {
    url,
    port: address.port,
    host,
    token,
    app,
    log,
    sessions,
    close() {
      closing ??= (async () => {
        await sessions?.close();
        streams?.close();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          // Live tails hold connections open; cut them so close does not wait for clients.
          (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        });
        if (ownsLog) await log.close();
        await cluster?.close();
      })();
      return closing;
    },
  };
}
