import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { runCommand } from '../../util/command.ts';

export interface LocalRegistry {
  /** host:port, e.g. 127.0.0.1:39123 */
  address: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolve(port));
    });
  });
}

/**
 * Debian's docker-registry (distribution 2.8) on a loopback port with storage in a temp dir,
 * optionally behind htpasswd basic auth. Stopped by the PID this started, nothing else.
 */
export async function startLocalRegistry(options: { user?: string; password?: string } = {}): Promise<LocalRegistry> {
  const directory = await mkdtemp(join(tmpdir(), 'torpor-registry-'));
  const port = await freePort();
  let auth = '';
  if (options.user) {
    const { stdout } = await runCommand('htpasswd', ['-Bbn', options.user, options.password ?? '']);
    await writeFile(join(directory, 'htpasswd'), stdout);
    auth = `auth:\n  htpasswd:\n    realm: torpor-test\n    path: ${join(directory, 'htpasswd')}\n`;
  }
  await writeFile(
    join(directory, 'config.yml'),
    [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${join(directory, 'storage')}`,
      '  delete:',
      '    enabled: true',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      auth,
    ].join('\n'),
  );
  const child: ChildProcess = spawn('/usr/bin/docker-registry', ['serve', join(directory, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  let running = true;
  const exited = new Promise<void>((resolve) =>
    child.on('exit', () => {
      running = false;
      resolve();
    }),
  );
  const address = `127.0.0.1:${port}`;
  for (let attempt = 0; ; attempt++) {
    try {
      const response = await fetch(`http://${address}/v2/`);
      await response.body?.cancel();
      break;
    } catch {
      if (attempt > 100 || !running) {
        child.kill();
        throw new Error(`docker-registry did not start: ${stderr}`);
      }
      await sleep(50);
    }
  }
  return {
    address,
    async stop() {
      if (running) {
        process.kill(child.pid!, 'SIGTERM');
        await Promise.race([exited, sleep(5000)]);
        if (running) process.kill(child.pid!, 'SIGKILL');
      }
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** Pushes an OCI layout to the registry with skopeo (--all keeps a multi-arch index whole). */
export async function pushLayout(layout: string, tag: string, destination: string, credentials?: string): Promise<void> {
  await runCommand('skopeo', [
    'copy',
    '--quiet',
    '--all',
    '--dest-tls-verify=false',
    ...(credentials ? ['--dest-creds', credentials] : []),
    `oci:${layout}:${tag}`,
    `docker://${destination}`,
  ]);
}
