import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';

/**
 * The state directory: `$TORPOR_HOME`, else `~/.local/share/torpor` (XDG data home when set).
 * The same resolver as the runtime's (`stateHome`), with the environment passed in for the CLI's tests.
 */
export function stateDirectory(environment: NodeJS.ProcessEnv = process.env): string {
  return stateHome(environment);
}

export interface ContextLogPaths {
  directory: string;
  database: string;
  blobs: string;
  /** Written by `torpor serve` so that the CLI talks to a running server instead of the file. */
  serverInfo: string;
}

export function contextLogPaths(directory: string = stateDirectory()): ContextLogPaths {
  const contextDirectory = join(directory, 'context');
  return {
    directory: contextDirectory,
    database: join(contextDirectory, 'log.sqlite'),
    blobs: join(contextDirectory, 'blobs'),
    serverInfo: join(directory, 'server.json'),
  };
}

export function ensureDirectory(path: string): void {
  mkdirSync(path, { recursive: true, mode: 0o700 });
}
