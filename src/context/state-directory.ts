import { mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

/**
 * The state directory: `$TORPOR_HOME`, else `~/.local/share/torpor` (XDG data home when set).
 * Everything torpor keeps on disk lives under it, so one variable moves or isolates an install.
 */
export function stateDirectory(environment: NodeJS.ProcessEnv = process.env): string {
  if (environment.TORPOR_HOME) return resolve(environment.TORPOR_HOME);
  const dataHome = environment.XDG_DATA_HOME ? resolve(environment.XDG_DATA_HOME) : join(homedir(), ".local", "share");
  return join(dataHome, "torpor");
}

export interface ContextLogPaths {
  directory: string;
  database: string;
  blobs: string;
  /** Written by `torpor serve` so that the CLI talks to a running server instead of the file. */
  serverInfo: string;
}

export function contextLogPaths(directory: string = stateDirectory()): ContextLogPaths {
  const contextDirectory = join(directory, "context");
  return {
    directory: contextDirectory,
    database: join(contextDirectory, "log.sqlite"),
    blobs: join(contextDirectory, "blobs"),
    serverInfo: join(directory, "server.json"),
  };
}

export function ensureDirectory(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
}
