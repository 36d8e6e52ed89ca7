import type { AddressInfo } from "node:net";
import { serve, type ServerType } from "@hono/node-server";
import type { Hono } from "hono";
import { openContextLog, type ContextLog, type ContextLogOptions } from "../context/index.ts";
import { createApiApp, type ApiOptions } from "./app.ts";

export interface StartApiServerOptions extends Omit<ApiOptions, "log">, ContextLogOptions {
  /** Port to listen on; 0 picks a free one. Default 7070. */
  port?: number;
  /** Default 127.0.0.1: the API has no authentication, so it listens on loopback unless told otherwise. */
  host?: string;
  /** An already open log; otherwise one is opened from stateDirectory / postgresUrl and closed with the server. */
  log?: ContextLog;
  stateDirectory?: string;
  postgresUrl?: string;
  /** Mount more routes (e.g. agent sessions) on the same app before it starts serving. */
  configure?: (app: Hono, log: ContextLog) => void;
}

export interface ApiServer {
  url: string;
  port: number;
  host: string;
  app: Hono;
  log: ContextLog;
  close(): Promise<void>;
}

export async function startApiServer(options: StartApiServerOptions = {}): Promise<ApiServer> {
  const ownsLog = options.log === undefined;
  const log = options.log ?? (await openContextLog(options));
  const app = createApiApp({ ...options, log });
  options.configure?.(app, log);
  const host = options.host ?? "127.0.0.1";
  let server: ServerType;
  let address: AddressInfo;
  try {
    ({ server, address } = await new Promise<{ server: ServerType; address: AddressInfo }>((resolve, reject) => {
      const created = serve({ fetch: app.fetch, port: options.port ?? 7070, hostname: host }, (info) => resolve({ server: created, address: info }));
      created.once("error", reject);
    }));
  } catch (error) {
    if (ownsLog) await log.close();
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "EADDRINUSE") throw new Error(`port ${options.port} on ${host} is already in use; stop the other server or pass another --port`);
    throw error;
  }
  // Idle keep-alive connections stay open 65 s (Node's default is 5 s): longer than the idle timeouts
  // of common proxies and load balancers, and than a client that is busy between two requests, so
  // neither side reuses a socket the other is closing.
  Object.assign(server, { keepAliveTimeout: 65_000, headersTimeout: 66_000 });
  const urlHost = host.includes(":") ? `[${host}]` : host;
  const url = `http://${urlHost}:${address.port}`;
  let closing: Promise<void> | undefined;
  return {
    url,
    port: address.port,
    host,
    app,
    log,
    close() {
      closing ??= (async () => {
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
