import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import type { Hono } from "hono";
import { openContextLog, type ContextLog, type ContextLogOptions } from "../context/index.ts";
import { SessionManager, type SessionManagerOptions } from "../session/session-manager.ts";
import { createApp, type ApiOptions } from "./app.ts";
import { withDashboardLogin } from "../dashboard/dashboard-login.ts";

export interface StartApiServerOptions extends Omit<ApiOptions, "log" | "sessions">, ContextLogOptions {
  /** Port to listen on; 0 picks a free one. Default 7070. */
  port?: number;
  /** Default 127.0.0.1: the API has no authentication, so it listens on loopback unless told otherwise. */
  host?: string;
  /** An already open log; otherwise one is opened from stateDirectory / postgresUrl and closed with the server. */
  log?: ContextLog;
  stateDirectory?: string;
  postgresUrl?: string;
  /** Serve agent sessions too (`torpor serve` does): a session manager over the same log, closed with the server. */
  sessions?: boolean | Omit<SessionManagerOptions, "log">;
}

export interface ApiServer {
  url: string;
  port: number;
  host: string;
  app: Hono;
  log: ContextLog;
  /** The session manager, when the server serves sessions. */
  sessions?: SessionManager;
  close(): Promise<void>;
}

export async function startApiServer(options: StartApiServerOptions = {}): Promise<ApiServer> {
  const ownsLog = options.log === undefined;
  const log = options.log ?? (await openContextLog(options));
  const sessions = options.sessions ? new SessionManager({ ...(options.sessions === true ? {} : options.sessions), log }) : undefined;
  const app = createApp({ ...options, log, sessions });
  const host = options.host ?? "127.0.0.1";
  let server: ServerType;
  let address: AddressInfo;
  try {
    ({ server, address } = await new Promise<{ server: ServerType; address: AddressInfo }>((resolve, reject) => {
      const created = serve({ fetch: withDashboardLogin(app.fetch), port: options.port ?? 7070, hostname: host }, (info) => resolve({ server: created, address: info }));
      created.once("error", reject);
    }));
  } catch (error) {
    await sessions?.close();
    if (ownsLog) await log.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new Error(`port ${options.port} on ${host} is already in use; stop the other server or pass another --port`);
    throw error;
  }
  const urlHost = host.includes(":") ? `[${host}]` : host;
  const url = `http://${urlHost}:${address.port}`;
  let closing: Promise<void> | undefined;
  return {
    url,
    port: address.port,
    host,
    app,
    log,
    sessions,
    close() {
      closing ??= (async () => {
        await sessions?.close();
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          // Live tails hold connections open; cut them so close does not wait for clients.
          (server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.();
        });
        if (ownsLog) await log.close();
      })();
      return closing;
    },
  };
}
