import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { endChildProcess } from '../../util/child-exit.ts';

/**
 * A throwaway PostgreSQL server for tests and benchmarks: installs the Debian package when no
 * server binaries exist, initdb's a cluster in a temporary directory, starts it on a free loopback
 * port and stops it by the PID it started. Root cannot run postgres, so as root the server runs as
 * the `postgres` user with the data directory owned by it.
 */
export interface PostgresServer {
  /** Connection URL for the `postgres` superuser (trust authentication, loopback only). */
  url: string;
  port: number;
  pid: number;
  dataDirectory: string;
  /** A URL for a fresh, empty database on this server. */
  createDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

export interface StartPostgresOptions {
  /** fsync on commit (true, the default, is what production does; false makes test suites faster). */
  durable?: boolean;
  /** Extra `-c name=value` server settings. */
  settings?: Record<string, string>;
  log?: (line: string) => void;
}

const run = promisify(execFile);

function findBinaryDirectory(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((name) => existsSync(join(root, name, 'bin', 'initdb')) && existsSync(join(root, name, 'bin', 'postgres')))
    .sort((left, right) => Number(right) - Number(left));
  return versions.length > 0 ? join(root, versions[0], 'bin') : undefined;
}

async function installPostgres(log: (line: string) => void): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('PostgreSQL is not installed and installing it needs root: run `apt-get install -y postgresql`.');
  const install = ['/tmp/torpor-apt.lock', 'apt-get', 'install', '-y', '--no-install-recommends', 'postgresql'];
  const environment = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  log('installing postgresql with apt-get');
  try {
    await run('flock', install, { env: environment, maxBuffer: 64 * 1024 * 1024 });
  } catch {
    // An empty or stale package list is the usual cause; refresh it only then.
    log('apt-get install failed; running apt-get update and retrying');
    await run('flock', ['/tmp/torpor-apt.lock', 'apt-get', 'update'], { env: environment, maxBuffer: 64 * 1024 * 1024 });
    await run('flock', install, { env: environment, maxBuffer: 64 * 1024 * 1024 });
  }
}

async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

async function postgresUser(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  const { stdout: uid } = await run('id', ['-u', 'postgres']);
  const { stdout: gid } = await run('id', ['-g', 'postgres']);
  return { uid: Number(uid.trim()), gid: Number(gid.trim()) };
}

export async function startPostgresServer(options: StartPostgresOptions = {}): Promise<PostgresServer> {
  const log = options.log ?? (() => {});
  let binaries = findBinaryDirectory();
  if (!binaries) {
    await installPostgres(log);
    binaries = findBinaryDirectory();
    if (!binaries) throw new Error('apt-get installed postgresql but no initdb was found under /usr/lib/postgresql/*/bin');
  }
  const user = await postgresUser();
  const dataDirectory = mkdtempSync(join(tmpdir(), 'torpor-postgres-'));
  if (user) chownSync(dataDirectory, user.uid, user.gid);
  const asUser = user ? { uid: user.uid, gid: user.gid } : {};
  const environment = { ...process.env, LC_ALL: 'C', LANG: 'C' };
  try {
    await run(join(binaries, 'initdb'), ['-D', dataDirectory, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--no-sync'], {
      ...asUser,
      env: environment,
      cwd: dataDirectory,
    });
  } catch (error) {
    rmSync(dataDirectory, { recursive: true, force: true });
    throw new Error(`initdb failed: ${(error as { stderr?: string }).stderr ?? error}`);
  }

  const port = await freeLoopbackPort();
  const settings: Record<string, string> = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: dataDirectory,
    fsync: options.durable === false ? 'off' : 'on',
    synchronous_commit: options.durable === false ? 'off' : 'on',
    max_connections: '100',
    ...options.settings,
  };
  const args = ['-D', dataDirectory, '-p', String(port), ...Object.entries(settings).flatMap(([name, value]) => ['-c', `${name}=${value}`])];
  const child = spawn(join(binaries, 'postgres'), args, { ...asUser, env: environment, cwd: dataDirectory, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-8192);
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not start postgres');
  // If the test process dies without calling stop, do not leave the server behind.
  const killOnExit = () => {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {}
  };
  process.once('exit', killOnExit);

  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  const stop = async () => {
    process.off('exit', killOnExit);
    // SIGINT is PostgreSQL's "fast shutdown": roll back clients, checkpoint, exit.
    await endChildProcess(child, { signal: 'SIGINT', graceMs: 10_000 });
    rmSync(dataDirectory, { recursive: true, force: true });
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`postgres exited during startup: ${stderr}`);
    }
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      break;
    } catch {
      await client.end().catch(() => {});
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`postgres did not accept connections within 30 s: ${stderr}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  log(`postgres ${pid} listening on 127.0.0.1:${port}`);

  return {
    url,
    port,
    pid,
    dataDirectory,
    async createDatabase(name: string) {
      if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`invalid database name ${name}`);
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await client.query(`CREATE DATABASE ${name}`);
      } finally {
        await client.end();
      }
      return `postgres://postgres@127.0.0.1:${port}/${name}`;
    },
    stop,
  };
}
