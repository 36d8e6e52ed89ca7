import { availableParallelism, totalmem } from 'node:os';
import { TorporError } from '../util/errors.ts';
import { parseMemory } from './run-options.ts';

/**
 * What one `torpor serve` lets its clients consume. A request over a per-machine maximum is
 * refused outright (400); a request over a count is refused until something is freed (429).
 * Defaults follow the host: no machine gets more vCPUs than the host has cores or more than half
 * its RAM, and no more machines run at once than three quarters of the RAM holds at 512 MiB each.
 */
export interface ResourceLimits {
  /** vCPUs of one machine. */
  maxCpus: number;
  /** Guest RAM of one machine, MiB. */
  maxMemoryMiB: number;
  /** Writable layer of one machine, GiB (a sparse file the guest can fill). */
  maxDiskGiB: number;
  /** Machines running at once (hibernated sessions hold none). */
  maxMachines: number;
  /** Sessions that exist (hibernated ones included; deleted ones not). */
  maxSessions: number;
}

/** Environment variables that set the limits (flags of `torpor serve` win over them). */
export const limitEnvironmentVariables = {
  maxCpus: 'TORPOR_MAX_CPUS',
  maxMemoryMiB: 'TORPOR_MAX_MEMORY',
  maxDiskGiB: 'TORPOR_MAX_DISK',
  maxMachines: 'TORPOR_MAX_MACHINES',
  maxSessions: 'TORPOR_MAX_SESSIONS',
} as const satisfies Record<keyof ResourceLimits, string>;

export const defaultDiskGiB = 4;

export function hostDefaultLimits(): ResourceLimits {
  const hostMiB = Math.floor(totalmem() / 1024 ** 2);
  return {
    maxCpus: Math.max(1, availableParallelism()),
    maxMemoryMiB: Math.max(128, Math.floor(hostMiB / 2)),
    maxDiskGiB: 16,
    maxMachines: Math.max(1, Math.floor((hostMiB * 0.75) / 512)),
    maxSessions: 1000,
  };
}

function invalid(source: string, value: string, what: string): TorporError {
  return new TorporError('invalid-limit', `${source} must be ${what}, got ${JSON.stringify(value)}`, {
    status: 400,
    hint: `e.g. ${source.startsWith('--') ? `${source} ` : `${source}=`}${what.includes('size') ? '8g' : '4'}`,
  });
}

function parseCount(source: string, value: string): number {
  if (!/^\d+$/.test(value.trim()) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) throw invalid(source, value, 'a whole number of at least 1');
  return Number(value);
}

/** A size like 64k, 1m, 1048576 -> bytes (at least 1 KiB). */
export function parseByteSize(text: string, source: string): number {
  const match = /^(\d+(?:\.\d+)?)\s*([bkmg]?)i?b?$/i.exec(text.trim());
  const bytes = match
    ? Math.floor(Number(match[1]) * { b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, '': 1 }[match[2]!.toLowerCase() as 'b' | 'k' | 'm' | 'g' | '']!)
    : NaN;
  if (!(bytes >= 1024)) throw invalid(source, text, 'a size of at least 1k, like 1m');
  return bytes;
}

/** A size like 8g or 512m -> GiB, at least 1 (the writable layer's ext4 needs room for its journal). */
export function parseDiskSize(text: string, source = '--disk'): number {
  const match = /^(\d+(?:\.\d+)?)\s*([mgt]?)i?b?$/i.exec(text.trim());
  if (!match) throw invalid(source, text, 'a size like 4g');
  const gibibytes = Number(match[1]) * { m: 1 / 1024, g: 1, t: 1024, '': 1 }[match[2]!.toLowerCase() as 'm' | 'g' | 't' | '']!;
  if (!(gibibytes >= 1))
    throw new TorporError('invalid-disk', `${source} ${text} is too small: a writable layer needs at least 1g`, {
      status: 400,
      hint: 'use 4g (the default) or more',
    });
  return Math.ceil(gibibytes);
}

function parseLimit(key: keyof ResourceLimits, source: string, value: string): number {
  if (key === 'maxMemoryMiB') {
    try {
      return parseMemory(value);
    } catch {
      throw invalid(source, value, 'a memory size like 8g');
    }
  }
  if (key === 'maxDiskGiB') return parseDiskSize(value, source);
  return parseCount(source, value);
}

/** Host defaults, overridden by the environment, overridden by flags (raw strings as typed). */
export function resolveLimits(environment: NodeJS.ProcessEnv, flags: Partial<Record<keyof ResourceLimits, string>> = {}): ResourceLimits {
  const limits = hostDefaultLimits();
  for (const key of Object.keys(limitEnvironmentVariables) as Array<keyof ResourceLimits>) {
    const variable = limitEnvironmentVariables[key];
    const fromEnvironment = environment[variable];
    if (fromEnvironment !== undefined && fromEnvironment !== '') limits[key] = parseLimit(key, variable, fromEnvironment);
    const fromFlag = flags[key];
    if (fromFlag !== undefined)
      limits[key] = parseLimit(
        key,
        `--${key
          .replace(/^max/, 'max-')
          .replace(/MiB|GiB/, '')
          .toLowerCase()}`,
        fromFlag,
      );
  }
  return limits;
}

/** One machine's size against the per-machine maximums. */
export function checkMachineSize(limits: ResourceLimits, request: { cpus: number; memoryMiB: number; diskGiB?: number }): void {
  if (request.cpus > limits.maxCpus) {
    throw new TorporError('limit-cpus', `${request.cpus} vCPUs asked for; this server allows at most ${limits.maxCpus} per machine`, {
      status: 400,
      hint: `ask for ${limits.maxCpus} or fewer, or start the server with --max-cpus N (TORPOR_MAX_CPUS)`,
      exitCode: 1,
    });
  }
  if (request.memoryMiB > limits.maxMemoryMiB) {
    throw new TorporError('limit-memory', `${request.memoryMiB} MiB of memory asked for; this server allows at most ${limits.maxMemoryMiB} MiB per machine`, {
      status: 400,
      hint: `ask for ${limits.maxMemoryMiB}m or less, or start the server with --max-memory SIZE (TORPOR_MAX_MEMORY)`,
      exitCode: 1,
    });
  }
  const disk = request.diskGiB ?? defaultDiskGiB;
  if (disk > limits.maxDiskGiB) {
    throw new TorporError('limit-disk', `a ${disk} GiB writable disk asked for; this server allows at most ${limits.maxDiskGiB} GiB per machine`, {
      status: 400,
      hint: `ask for ${limits.maxDiskGiB}g or less, or start the server with --max-disk SIZE (TORPOR_MAX_DISK)`,
      exitCode: 1,
    });
  }
}

export function checkSessionCount(limits: ResourceLimits, existing: number): void {
  if (existing >= limits.maxSessions) {
    throw new TorporError('limit-sessions', `this server already holds ${existing} sessions, its maximum`, {
      status: 429,
      hint: 'delete sessions you no longer need (`torpor session rm ID`), or start the server with --max-sessions N (TORPOR_MAX_SESSIONS)',
      exitCode: 1,
    });
  }
}

export function checkMachineCount(limits: ResourceLimits, running: number): void {
  if (running >= limits.maxMachines) {
    throw new TorporError('limit-machines', `${running} machines are running, this server's maximum`, {
      status: 429,
      hint: 'try again when a session hibernates (shorter --idle helps), delete sessions, or start the server with --max-machines N (TORPOR_MAX_MACHINES)',
      exitCode: 1,
    });
  }
}
