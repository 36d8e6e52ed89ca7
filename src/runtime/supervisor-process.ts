import { join, dirname } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { projectRoot } from '../util/project-root.ts';
import { environment } from '../config/environment.ts';
import { SupervisorPool, type SupervisorPoolLimits } from './supervisor-pool.ts';
import { stateHome } from '../state/paths.ts';

const supervisorEntry = join(dirname(fileURLToPath(import.meta.url)), 'supervisor-main.ts');

/**
 * The node arguments that start a supervisor. The bundled supervisor starts in ~0.1 s; the sources
 * through tsx take ~0.6 s (kept as a fallback).
 */
export async function supervisorCommand(): Promise<string[]> {
  if (!environment().TORPOR_NO_BUNDLE) {
    try {
      const { ensureBundles } = (await import(pathToFileURL(join(projectRoot(), 'bin', 'bundles.mjs')).href)) as {
        ensureBundles: () => Promise<{ supervisor: string }>;
      };
      return [(await ensureBundles()).supervisor];
    } catch {
      // no esbuild: run the sources
    }
  }
  return ['--import', import.meta.resolve('tsx'), supervisorEntry];
}

/**
 * A supervisor's environment: the caller's, with its state directory made explicit. Node reads and
 * parses every certificate NODE_EXTRA_CA_CERTS names when it starts (~90 ms of CPU here for
 * Debian's bundle); a supervisor and its QEMU open no TLS connection, so they do without it.
 */
export function supervisorEnvironment(): NodeJS.ProcessEnv {
  const { NODE_EXTRA_CA_CERTS: _notNeeded, ...rest } = process.env;
  return { ...rest, TORPOR_HOME: stateHome() };
}

/**
 * Warm spare supervisors for a long-running host, started with the same command as any other. One
 * per host (`torpor serve`): its spares and standby QEMUs are bounded by TORPOR_POOL_SPARES and
 * TORPOR_POOL_STANDBYS unless `limits` says otherwise.
 */
export function createSupervisorPool(limits?: number | SupervisorPoolLimits): SupervisorPool {
  const settings = environment();
  const pool = new SupervisorPool(
    supervisorCommand,
    supervisorEnvironment,
    limits ?? { spares: settings.TORPOR_POOL_SPARES, standbys: settings.TORPOR_POOL_STANDBYS },
  );
  pool.fill();
  return pool;
}
