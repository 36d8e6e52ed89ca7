import { rmSync, writeFileSync, renameSync } from "node:fs";
import type { Command } from "commander";
import { startApiServer } from "../../api/server.ts";
import { createSessionRoutes } from "../../api/session-routes.ts";
import { SessionManager } from "../../session/session-manager.ts";
import { contextLogPaths, ensureDirectory, stateDirectory } from "../../context/state-directory.ts";
import { processInputOutput, type CommandInputOutput, type ServerInfo } from "./log.ts";

/** Registers `torpor serve`: the HTTP API over the context log, until interrupted. */
export function registerServeCommand(program: Command, io: CommandInputOutput = processInputOutput): Command {
  return program
    .command("serve")
    .description("serve the HTTP API until interrupted: agent sessions under /v1/sessions, the context log under /v1/logs")
    .option("--port <port>", "port to listen on", "7070")
    .option("--host <host>", "address to listen on (no authentication: keep it on loopback unless behind a proxy)", "127.0.0.1")
    .option("--postgres <url>", "store the log in PostgreSQL instead of the SQLite file in the state directory")
    .option("--warm-memory <MiB>", "keep the RAM of recently hibernated sessions in tmpfs up to this many MiB, so their wake skips the store (default: TORPOR_WARM_MEMORY or 0)")
    .action(async (options: { port: string; host: string; postgres?: string; warmMemory?: string }) => {
      if (!/^\d+$/.test(options.port) || Number(options.port) > 65535) {
        io.stderr.write(`torpor: --port must be a number from 0 to 65535, got ${JSON.stringify(options.port)}\n`);
        io.setExitCode(1);
        return;
      }
      if (options.warmMemory !== undefined) {
        if (!/^\d+$/.test(options.warmMemory)) {
          io.stderr.write(`torpor: --warm-memory must be a number of MiB (0 turns it off), got ${JSON.stringify(options.warmMemory)}\n`);
          io.setExitCode(1);
          return;
        }
        // Machine supervisors inherit it: they keep a hibernated machine's RAM when it stops.
        process.env.TORPOR_WARM_MEMORY = options.warmMemory;
      }
      const directory = stateDirectory(io.environment);
      const paths = contextLogPaths(directory);
      let server;
      let sessions: SessionManager | undefined;
      try {
        server = await startApiServer({
          port: Number(options.port),
          host: options.host,
          stateDirectory: directory,
          postgresUrl: options.postgres,
          configure: (app, log) => {
            sessions = new SessionManager({ log });
            const routes = createSessionRoutes(sessions);
            app.route("/v1/sessions", routes);
            app.route("/sessions", routes);
          },
        });
      } catch (error) {
        io.stderr.write(`torpor: ${(error as Error).message}\n`);
        io.setExitCode(1);
        return;
      }
      // Tell CLI invocations where the server is, so they read and write through it.
      ensureDirectory(directory);
      const info: ServerInfo = { url: server.url, pid: process.pid, storage: options.postgres ? "postgres" : paths.database };
      const temporary = `${paths.serverInfo}.${process.pid}.tmp`;
      writeFileSync(temporary, `${JSON.stringify(info)}\n`, { mode: 0o600 });
      renameSync(temporary, paths.serverInfo);
      const storage = options.postgres ? "PostgreSQL" : `SQLite ${paths.database}`;
      io.stdout.write(`torpor API listening on ${server.url} (context log in ${storage})\n`);
      // Sessions whose machines survived keep running; the others come back from snapshot or log.
      void sessions?.recoverAll().catch((error: Error) => io.stderr.write(`torpor: session recovery: ${error.message}\n`));
      const stop = async () => {
        rmSync(paths.serverInfo, { force: true });
        await sessions?.close();
        await server.close();
      };
      await Promise.race([io.interrupted(), new Promise<void>((resolve) => process.once("SIGTERM", () => resolve()))]);
      await stop();
    });
}
