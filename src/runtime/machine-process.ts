import { TorporError } from '../util/errors.ts';

/** What an image says its machines run when the user names nothing else (a subset of its OCI config). */
export interface ImageProcessDefaults {
  entrypoint?: string[];
  cmd?: string[];
  env: string[];
  workingDir?: string;
  user?: string;
}

/** What a user asked a machine to run: each field overrides the image's default. */
export interface ProcessRequest {
  image: string;
  command?: string[];
  entrypoint?: string;
  env?: string[];
  workingDir?: string;
  user?: string;
}

/**
 * A machine's main process from its image's defaults and the user's overrides, docker's way:
 * `--entrypoint` replaces the image's entrypoint and drops its cmd; a command replaces the cmd;
 * `-e` adds to or replaces the image's variables. Shared by a cold `create` and the claim of a
 * spare machine, so both start exactly the same process.
 */
export function mainProcessOf(defaults: ImageProcessDefaults, request: ProcessRequest): { command: string[]; env: string[]; workingDir: string; user: string } {
  const entrypoint = request.entrypoint !== undefined ? (request.entrypoint ? [request.entrypoint] : []) : (defaults.entrypoint ?? []);
  const cmd = request.command && request.command.length > 0 ? request.command : request.entrypoint !== undefined ? [] : (defaults.cmd ?? []);
  const command = [...entrypoint, ...cmd];
  if (command.length === 0) {
    throw new TorporError('no-command', `image ${request.image} has no default command and none was given`, { hint: `torpor run ${request.image} COMMAND...` });
  }
  const guestEnvironment = new Map<string, string>();
  for (const entry of [...defaults.env, ...(request.env ?? [])]) {
    const separator = entry.indexOf('=');
    guestEnvironment.set(entry.slice(0, separator), entry.slice(separator + 1));
  }
  return {
    command,
    env: [...guestEnvironment].map(([key, value]) => `${key}=${value}`),
    workingDir: request.workingDir ?? defaults.workingDir ?? '/',
    user: request.user ?? defaults.user ?? '',
  };
}
