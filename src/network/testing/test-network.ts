import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';

/**
 * A closed little internet for network tests, made of two network namespaces and a veth pair, so
 * that no probe of a test can reach a real address even if the policy under test fails:
 *
 *   "host" namespace (torpor and QEMU run here)        "hosts" namespace (other machines)
 *     lo 127.0.0.1, ::1, and 198.51.100.1/32 (a public-  veth 10.255.0.2/24, fd00:255::2/64  (a private machine)
 *        looking address of the host itself)             lo   203.0.113.10/32, 2001:db8:113::10/128 (a "public" server)
 *     veth 10.255.0.1/24, fd00:255::1/64,                lo   169.254.7.7/32     (link-local, like cloud metadata)
 *        default routes -> the other side
 *
 * Servers answer HTTP with a word saying who they are: on the host's loopback (one port the guest
 * is allowed, one it is not), on the host's own addresses, and on every address of the other side.
 */
export interface TestNetwork {
  hostNamespace: string;
  /** A loopback service the guest must not reach (10.0.2.2:secretPort). */
  secretPort: number;
  /** A loopback service the guest is allowed (--allow-host). */
  allowedPort: number;
  /** Listens on every address of the host namespace (198.51.100.1, 10.255.0.1). */
  hostAddressPort: number;
  /** Listens on every address of the other namespace. */
  remotePort: number;
  /** Runs a program inside the host namespace. */
  exec(program: string, args: string[], options?: { env?: NodeJS.ProcessEnv; input?: string }): Promise<{ code: number; stdout: string; stderr: string }>;
  cleanup(): Promise<void>;
}

function ip(args: string[]): void {
  const result = spawnSync('ip', args, { encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`ip ${args.join(' ')} failed: ${result.stderr.trim()}`);
}

// A server per port, each answering "<name>" to any HTTP request; prints READY once listening.
const serverSource = `
const http = require('node:http');
const specs = JSON.parse(process.argv[1]);
let ready = 0;
for (const { name, host, port } of specs) {
  http.createServer((request, response) => { response.end(name + '\\n'); }).listen(port, host, () => { if (++ready === specs.length) console.log('READY'); });
}
`;

function startServers(namespace: string, specs: { name: string; host: string; port: number }[]): Promise<ChildProcess> {
  const child = spawn('ip', ['netns', 'exec', namespace, process.execPath, '-e', serverSource, JSON.stringify(specs)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('READY')) resolve(child);
    });
    child.once('exit', (code) => reject(new Error(`test servers in ${namespace} exited (${code})`)));
  });
}

export async function createTestNetwork(): Promise<TestNetwork> {
  const suffix = randomBytes(3).toString('hex');
  const hostNamespace = `tp-host-${suffix}`;
  const otherNamespace = `tp-other-${suffix}`;
  const servers: ChildProcess[] = [];
  const cleanup = async () => {
    for (const server of servers) {
      server.kill('SIGKILL');
    }
    // Deleting the namespaces removes the veth pair and every rule inside them.
    spawnSync('ip', ['netns', 'del', hostNamespace]);
    spawnSync('ip', ['netns', 'del', otherNamespace]);
  };
  try {
    ip(['netns', 'add', hostNamespace]);
    ip(['netns', 'add', otherNamespace]);
    ip(['-n', hostNamespace, 'link', 'set', 'lo', 'up']);
    ip(['-n', otherNamespace, 'link', 'set', 'lo', 'up']);
    ip(['link', 'add', 'name', `tph${suffix}`, 'netns', hostNamespace, 'type', 'veth', 'peer', 'name', `tpo${suffix}`, 'netns', otherNamespace]);
    ip(['-n', hostNamespace, 'addr', 'add', '10.255.0.1/24', 'dev', `tph${suffix}`]);
    ip(['-n', hostNamespace, 'addr', 'add', '198.51.100.1/32', 'dev', 'lo']);
    ip(['-n', hostNamespace, 'link', 'set', `tph${suffix}`, 'up']);
    ip(['-n', hostNamespace, 'route', 'add', 'default', 'via', '10.255.0.2']);
    ip(['-n', otherNamespace, 'addr', 'add', '10.255.0.2/24', 'dev', `tpo${suffix}`]);
    ip(['-n', otherNamespace, 'addr', 'add', '203.0.113.10/32', 'dev', 'lo']);
    ip(['-n', otherNamespace, 'addr', 'add', '169.254.7.7/32', 'dev', 'lo']);
    ip(['-n', otherNamespace, 'link', 'set', `tpo${suffix}`, 'up']);
    ip(['-n', otherNamespace, 'route', 'add', 'default', 'via', '10.255.0.1']);
    // IPv6 too: nodad makes the addresses usable at once.
    ip(['-n', hostNamespace, 'addr', 'add', 'fd00:255::1/64', 'dev', `tph${suffix}`, 'nodad']);
    ip(['-n', otherNamespace, 'addr', 'add', 'fd00:255::2/64', 'dev', `tpo${suffix}`, 'nodad']);
    ip(['-n', otherNamespace, 'addr', 'add', '2001:db8:113::10/128', 'dev', 'lo']);
    ip(['-n', hostNamespace, '-6', 'route', 'add', 'default', 'via', 'fd00:255::2']);
    ip(['-n', otherNamespace, '-6', 'route', 'add', 'default', 'via', 'fd00:255::1']);
    const ports = { secretPort: 7070, allowedPort: 11434, hostAddressPort: 8081, remotePort: 8080 };
    servers.push(
      await startServers(hostNamespace, [
        { name: 'host-secret', host: '127.0.0.1', port: ports.secretPort },
        { name: 'host-secret', host: '::1', port: ports.secretPort },
        { name: 'host-allowed', host: '127.0.0.1', port: ports.allowedPort },
        { name: 'host-allowed', host: '::1', port: ports.allowedPort },
        { name: 'host-address', host: '::', port: ports.hostAddressPort },
      ]),
    );
    servers.push(await startServers(otherNamespace, [{ name: 'remote', host: '::', port: ports.remotePort }]));
    return {
      hostNamespace,
      ...ports,
      exec: (program, args, options = {}) =>
        new Promise((resolve) => {
          const child = spawn('ip', ['netns', 'exec', hostNamespace, program, ...args], { env: options.env ?? process.env });
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (chunk) => (stdout += chunk));
          child.stderr.on('data', (chunk) => (stderr += chunk));
          child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
          child.stdin.end(options.input ?? '');
        }),
      cleanup,
    };
  } catch (error) {
    await cleanup();
    throw error;
  }
}
