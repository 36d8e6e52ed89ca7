import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { environment as torporEnvironment } from '../../config/environment.ts';
import { startPostgresServer, type PostgresServer } from '../../context/testing/postgres-server.ts';
import { startS3Server, type S3Server } from '../../object-store/testing/s3-server.ts';
import { endChildProcess } from '../../util/child-exit.ts';

/**
 * Several `torpor serve --cluster` nodes on one machine, as separate processes with their own state
 * directories, memory directories and ports, over a real PostgreSQL and an S3 server the harness
 * starts. For the cluster test and bench/cluster.ts. Everything it starts is stopped by PID.
 */
const cli = fileURLToPath(new URL('../../../bin/torpor.js', import.meta.url));

export interface TestNode {
  name: string;
  url: string;
  home: string;
  memoryDirectory: string;
  process: ChildProcess;
  alive: boolean;
  /** The node's machines (id, session it runs, supervisor pid) and whether each still runs. */
  machines(): Array<{ id: string; name: string; supervisorPid?: number; running: boolean }>;
  /** A host crash: SIGKILL to the server and to every machine supervisor of the node (QEMU dies with its supervisor). */
  crash(): void;
}

export interface TestCluster {
  postgres: PostgresServer;
  s3?: S3Server;
  databaseUrl: string;
  storeUrl?: string;
  pool: pg.Pool;
  token: string;
  nodes: TestNode[];
  startNode(name: string): Promise<TestNode>;
  /** A JSON request to a node, with the cluster token. */
  request(node: TestNode, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }>;
  stop(): Promise<void>;
}

function processAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    // This sandbox's PID 1 does not reap orphans: a zombie still answers kill -0.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

function readMachines(home: string): Array<{ id: string; name: string; supervisorPid?: number; running: boolean }> {
  const directory = join(home, 'machines');
  let ids: string[] = [];
  try {
    ids = readdirSync(directory);
  } catch {
    return [];
  }
  return ids.flatMap((id) => {
    try {
      const config = JSON.parse(readFileSync(join(directory, id, 'config.json'), 'utf8')) as { name: string };
      let state: { status?: string; supervisorPid?: number } = {};
      try {
        state = JSON.parse(readFileSync(join(directory, id, 'state.json'), 'utf8')) as typeof state;
      } catch {}
      return [{ id, name: config.name, supervisorPid: state.supervisorPid, running: state.status === 'running' && processAlive(state.supervisorPid) }];
    } catch {
      return [];
    }
  });
}

export async function startTestCluster(options: {
  nodes: number;
  leaseSeconds?: number;
  store?: boolean;
  maxMachines?: number;
  /** Copies the nodes' stderr to this process's. */ verbose?: boolean;
}): Promise<TestCluster> {
  const postgres = await startPostgresServer({ durable: false, settings: { max_connections: '200' } });
  const databaseUrl = await postgres.createDatabase('cluster');
  // A PostgreSQL left running keeps the test process alive forever (the whole suite then hangs).
  const s3 =
    options.store === false
      ? undefined
      : await startS3Server({ bucket: 'torpor-cluster' }).catch(async (error: unknown) => {
          await postgres.stop();
          throw error;
        });
  const storeUrl = s3 ? `s3://${s3.bucket}/nodes` : undefined;
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 4 });
  pool.on('error', () => {});
  const tag = randomBytes(3).toString('hex');
  const nodes: TestNode[] = [];
  const removeFiles = (node: TestNode) => {
    rmSync(node.home, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
    rmSync(node.memoryDirectory, { recursive: true, force: true, maxRetries: 10, retryDelay: 200 });
  };
  const stopServices = async () => {
    await pool.end().catch(() => {});
    await s3?.stop();
    await postgres.stop();
  };

  const startNode = async (name: string): Promise<TestNode> => {
    const home = mkdtempSync(join(tmpdir(), `tp-${name}-`));
    const memoryDirectory = `/dev/shm/tp-cl-${tag}-${name}`;
    const environment: NodeJS.ProcessEnv = {
      ...process.env,
      TORPOR_HOME: home,
      TORPOR_MEMORY_DIR: memoryDirectory,
      // Each node cold-boots its boot template once; on a loaded shared host that can pass 60 s.
      TORPOR_BOOT_TIMEOUT_MS: String(Math.max(torporEnvironment().TORPOR_BOOT_TIMEOUT_MS, 180_000)),
      ...(s3
        ? {
            TORPOR_S3_ENDPOINT: s3.endpoint,
            TORPOR_S3_REGION: s3.region,
            TORPOR_S3_ACCESS_KEY_ID: s3.accessKeyId,
            TORPOR_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
            TORPOR_S3_FORCE_PATH_STYLE: '1',
          }
        : {}),
    };
    const args = ['serve', '--port', '0', '--json', '--cluster', databaseUrl, '--node-name', name, '--lease-seconds', String(options.leaseSeconds ?? 3)];
    if (storeUrl) args.push('--store', storeUrl);
    if (options.maxMachines) args.push('--max-machines', String(options.maxMachines));
    const child = spawn(process.execPath, [cli, ...args], { env: environment, stdio: ['ignore', 'pipe', 'pipe'] });
    let errors = '';
    child.stderr!.on('data', (chunk: Buffer) => {
      errors = (errors + chunk.toString()).slice(-8000);
      if (options.verbose) process.stderr.write(`[${name}] ${chunk}`);
    });
    const url = await new Promise<string>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! });
      lines.on('line', (line) => {
        try {
          resolve((JSON.parse(line) as { url: string }).url);
        } catch {}
      });
      child.once('exit', (code) => reject(new Error(`node ${name} exited (${code}) before it listened: ${errors}`)));
    });
    const node: TestNode = {
      name,
      url,
      home,
      memoryDirectory,
      process: child,
      alive: true,
      machines: () => readMachines(home),
      crash() {
        node.alive = false;
        child.kill('SIGKILL');
        for (const machine of readMachines(home)) {
          if (machine.supervisorPid && processAlive(machine.supervisorPid)) process.kill(machine.supervisorPid, 'SIGKILL');
        }
      },
    };
    nodes.push(node);
    return node;
  };

  let cluster: TestCluster | undefined;
  try {
    for (let index = 1; index <= options.nodes; index++) await startNode(`n${index}`);
    const token = (await pool.query<{ value: string }>("SELECT value FROM torpor_cluster WHERE key = 'token'")).rows[0]!.value;
    cluster = {
      postgres,
      s3,
      databaseUrl,
      storeUrl,
      pool,
      token,
      nodes,
      startNode,
      async request(node, method, path, body) {
        const response = await fetch(`${node.url}${path}`, {
          method,
          headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await response.text();
        let parsed: unknown = text;
        try {
          parsed = text ? JSON.parse(text) : undefined;
        } catch {}
        return { status: response.status, body: parsed };
      },
      async stop() {
        for (const node of nodes) {
          await endChildProcess(node.process, { graceMs: 10_000 });
          // Machines outlive a stopped server (a restarted one reattaches): end them too.
          node.crash();
          removeFiles(node);
        }
        await stopServices();
      },
    };
    return cluster;
  } catch (error) {
    for (const node of nodes) node.crash();
    for (const node of nodes) removeFiles(node);
    await stopServices();
    throw error;
  }
}
