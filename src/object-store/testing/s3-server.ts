import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

// The S3-compatible server the tests run against: s3rver 3.7 (npm), in a child process on 127.0.0.1.
// Debian 12's Ceph is Pacific (16.2), whose radosgw has no dbstore backend: it needs a RADOS cluster
// (mon + osd), too heavy to start per test on 2 cores. See architecture/object-store.md for what
// s3rver does not do (SigV4 signature checks, conditional puts).
//
// Each server gets its own access key and secret, and s3rver's built-in key pair is revoked, so an
// unknown access key is refused. s3rver does not verify SigV4 signatures: a wrong *secret* is only
// refused by a real S3 implementation.

export interface S3Server {
  /** http://127.0.0.1:PORT, for path-style requests */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** the directory holding the objects (to damage one on purpose in tests) */
  directory: string;
  pid: number;
  stop(): Promise<void>;
}

const childScript = fileURLToPath(new URL('./s3-server-child.cjs', import.meta.url));

export async function startS3Server(options: { bucket?: string } = {}): Promise<S3Server> {
  const directory = await mkdtemp(join(tmpdir(), 'torpor-s3-'));
  const bucket = options.bucket ?? 'torpor-test';
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
    directory,
    pid: child.pid!,
    stop: () => (stopped ??= stop()),
  };
}
