import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { environment } from '../../config/environment.ts';
import { startRadosGateway } from './radosgw.ts';

// The S3-compatible server the tests run against, on 127.0.0.1, with its own random key pair and
// one bucket; its data is removed on stop. Two implementations (TORPOR_TEST_S3):
//  - `radosgw` (default): Ceph's RADOS Gateway on a one-OSD cluster (radosgw.ts), a production S3
//    implementation; ~30 s to start, ~150 MiB.
//  - `s3rver`: s3rver 3.7 (npm) in a child process, starts in ~1 s. It lacks conditional puts and
//    suffix ranges, and checks only that a key exists: the child puts a SigV4 check in front, so a
//    wrong secret is refused too (403 SignatureDoesNotMatch). See architecture/object-store.md.

export interface S3Server {
  /** http://127.0.0.1:PORT, for path-style requests */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  implementation: 'radosgw' | 's3rver';
  /** the directory holding the server's data */
  directory: string;
  stop(): Promise<void>;
}

const childScript = fileURLToPath(new URL('./s3-server-child.cjs', import.meta.url));

export async function startS3Server(options: { bucket?: string; implementation?: 'radosgw' | 's3rver' } = {}): Promise<S3Server> {
  const implementation = options.implementation ?? environment().TORPOR_TEST_S3;
  const bucket = options.bucket ?? 'torpor-test';
  if (implementation === 's3rver') return startS3rver(bucket);
  // One more try after a failed start: a one-node Ceph brought up in seconds has races of its own
  // (a daemon that exits at start), which are not what these tests are about.
  const gateway = await startRadosGateway().catch((error: unknown) => {
    process.stderr.write(`radosgw did not start (${(error as Error).message.split('\n')[0]}); trying once more\n`);
    return startRadosGateway();
  });
  const client = new S3Client({
    endpoint: gateway.endpoint,
    region: gateway.region,
    forcePathStyle: true,
    credentials: { accessKeyId: gateway.accessKeyId, secretAccessKey: gateway.secretAccessKey },
  });
  try {
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
  } catch (error) {
    await gateway.stop();
    throw error;
  } finally {
    client.destroy();
  }
  return { ...gateway, bucket, implementation: 'radosgw' };
}

async function startS3rver(bucket: string): Promise<S3Server> {
  const directory = await mkdtemp(join(tmpdir(), 'torpor-s3-'));
  const accessKeyId = `TORPOR${randomBytes(7).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(24).toString('base64url');
  const child = spawn(process.execPath, ['--openssl-legacy-provider', childScript, JSON.stringify({ directory, bucket, accessKeyId, secretAccessKey })], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let errorText = '';
  child.stderr.on('data', (data: Buffer) => (errorText = (errorText + data.toString()).slice(-4000)));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
    await rm(directory, { recursive: true, force: true });
  };
  const port = await new Promise<number>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.once('line', (line) => {
      try {
        resolve((JSON.parse(line) as { port: number }).port);
      } catch (error) {
        reject(error);
      }
    });
    child.once('exit', (code) => reject(new Error(`the S3 test server exited (${code}) before it listened: ${errorText}`)));
  }).catch(async (error: unknown) => {
    await stop();
    throw error;
  });
  let stopped: Promise<void> | undefined;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    region: 'us-east-1',
    accessKeyId,
    secretAccessKey,
    bucket,
    implementation: 's3rver',
    directory,
    stop: () => (stopped ??= stop()),
  };
}
