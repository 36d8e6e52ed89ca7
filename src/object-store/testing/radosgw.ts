import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDebianPackages } from '../../registry/testing/ensure-debian-packages.ts';
import { endChildProcess } from '../../util/child-exit.ts';

// Ceph's RADOS Gateway (Debian 12: Ceph 16.2 Pacific) as the tests' S3 server: a production S3
// implementation. Pacific's radosgw has no dbstore backend, so this brings up the smallest real
// cluster: one monitor, one OSD on memstore (RAM, no disk), one radosgw, all on 127.0.0.1 with
// auth between daemons off, in a temporary directory. ~30 s to a bucket on 2 busy cores, ~150 MiB
// RSS. Daemons run under `setpriv --pdeathsig KILL`: they die with the test process, even on kill -9.

export interface RadosGateway {
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  directory: string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

export async function startRadosGateway(options: { timeoutMs?: number } = {}): Promise<RadosGateway> {
  ensureDebianPackages(['ceph-mon', 'ceph-osd', 'radosgw']);
  const deadline = Date.now() + (options.timeoutMs ?? 240_000);
  const directory = await mkdtemp(join(tmpdir(), 'torpor-rgw-'));
  const [monitorPort, gatewayPort] = [await freePort(), await freePort()];
  // OSD messengers bind from a range: a random one per cluster, so parallel test files do not collide.
  const osdPortBase = 20_000 + Math.floor(Math.random() * 400) * 100;
  const config = join(directory, 'ceph.conf');
  await mkdir(join(directory, 'log'));
  await mkdir(join(directory, 'run'));
  await mkdir(join(directory, 'mon'));
  await mkdir(join(directory, 'osd'));
  await writeFile(
    config,
    [
      '[global]',
      `fsid = ${randomUUID()}`,
      `mon host = [v1:127.0.0.1:${monitorPort}]`,
      'auth cluster required = none',
      'auth service required = none',
      'auth client required = none',
      'ms bind msgr2 = false',
      'ms bind ipv6 = false',
      `ms bind port min = ${osdPortBase}`,
      `ms bind port max = ${osdPortBase + 99}`,
      'public network = 127.0.0.0/8',
      'public addr = 127.0.0.1',
      'cluster addr = 127.0.0.1',
      'osd pool default size = 1',
      'osd pool default min size = 1',
      'mon allow pool size one = true',
      'mon warn on pool no redundancy = false',
      'osd pool default pg autoscale mode = off',
      'osd pool default pg num = 8',
      'osd pool default pgp num = 8',
      'mon max pg per osd = 1000',
      'osd crush chooseleaf type = 0',
      // The harness adds the OSD to the CRUSH map itself. Left on, the OSD's own update at start
      // raced its first monitor map now and then ("wrong fsid": the OSD exited, seen in a full run).
      'osd crush update on start = false',
      'osd class update on start = false',
      'osd objectstore = memstore',
      'memstore device bytes = 4294967296',
      `run dir = ${directory}/run`,
      `admin socket = ${directory}/run/$name.asok`,
      `log file = ${directory}/log/$name.log`,
      `pid file = ${directory}/run/$name.pid`,
      `mon data = ${directory}/mon/$name`,
      `osd data = ${directory}/osd/$name`,
      '[client.rgw]',
      `rgw frontends = beast endpoint=127.0.0.1:${gatewayPort}`,
      `rgw data = ${directory}/rgw`,
      '',
    ].join('\n'),
  );
  const daemons: ChildProcess[] = [];
  const stop = async () => {
    for (const daemon of daemons.reverse()) await endChildProcess(daemon, { graceMs: 3000 });
    await rm(directory, { recursive: true, force: true });
  };
  const run = (command: string, args: string[], timeoutSeconds = 30) => {
    const result = spawnSync('timeout', [String(timeoutSeconds), command, ...args], { cwd: directory, encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.status}): ${result.stderr.slice(-2000)}`);
    return result.stdout;
  };
  const daemon = (command: string, args: string[]) => {
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', command, ...args, '-c', config, '-f'], { cwd: directory, stdio: ['ignore', 'ignore', 'ignore'] });
    daemons.push(child);
    return child;
  };
  const logs = async () => {
    const parts: string[] = [];
    for (const name of ['mon.a', 'osd.0', 'client.rgw']) {
      const text = await readFile(join(directory, 'log', `${name}.log`), 'utf8').catch(() => '');
      parts.push(`--- ${name}\n${text.split('\n').slice(-15).join('\n')}`);
    }
    return parts.join('\n');
  };
  try {
    run('monmaptool', [
      '--create',
      '--addv',
      'a',
      `[v1:127.0.0.1:${monitorPort}]`,
      '--fsid',
      /fsid = (.*)/.exec(await readFile(config, 'utf8'))![1]!,
      join(directory, 'monmap'),
    ]);
    run('ceph-mon', ['--mkfs', '-i', 'a', '--monmap', join(directory, 'monmap'), '-c', config]);
    daemon('ceph-mon', ['-i', 'a']);
    const osd = run('ceph', ['-c', config, 'osd', 'create'], 60).trim();
    await mkdir(join(directory, 'osd', `osd.${osd}`), { recursive: true });
    run('ceph-osd', ['-i', osd, '--mkfs', '-c', config], 60);
    daemon('ceph-osd', ['-i', osd]);
    run('ceph', ['-c', config, 'osd', 'crush', 'add', `osd.${osd}`, '1.0', 'host=localhost', 'root=default'], 60);
    daemon('radosgw', ['-n', 'client.rgw']);
    const endpoint = `http://127.0.0.1:${gatewayPort}`;
    for (;;) {
      const answer = await fetch(endpoint).catch(() => undefined);
      if (answer?.ok) break;
      for (const child of daemons) if (child.exitCode !== null) throw new Error(`a Ceph daemon (${child.spawnargs.slice(3, 4).join('')}) exited`);
      if (Date.now() > deadline) throw new Error('radosgw did not answer in time');
      await sleep(300);
    }
    const accessKeyId = `TORPOR${randomBytes(7).toString('hex').toUpperCase()}`;
    const secretAccessKey = randomBytes(24).toString('base64url');
    run(
      'radosgw-admin',
      [
        '-c',
        config,
        '-n',
        'client.rgw',
        'user',
        'create',
        '--uid',
        'torpor',
        '--display-name',
        'torpor',
        '--access-key',
        accessKeyId,
        '--secret-key',
        secretAccessKey,
      ],
      60,
    );
    return { endpoint, region: 'us-east-1', accessKeyId, secretAccessKey, directory, stop };
  } catch (error) {
    const detail = await logs();
    await stop();
    throw new Error(`could not start Ceph radosgw for the tests: ${(error as Error).message}\n${detail}`, { cause: error });
  }
}
