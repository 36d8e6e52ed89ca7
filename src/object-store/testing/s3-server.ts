import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// The S3-compatible server the tests run against: s3rver (npm, in this process, on 127.0.0.1).
// Debian 12's Ceph is Pacific (16.2), whose radosgw has no dbstore backend: it needs a RADOS cluster
// (mon + osd), too heavy to start per test on 2 cores. See architecture/object-store.md.
//
// Each server gets its own access key and secret (registered with s3rver's account registry), so a
// test of wrong credentials means something. s3rver also always accepts its built-in S3RVER/S3RVER
// key pair; nothing here uses it.

export interface S3Server {
  /** http://127.0.0.1:PORT, for path-style requests */
  endpoint: string;
  region: string;
  accessKeyId: string;
  secretAccessKey: string;
  bucket: string;
  /** the directory holding the objects (to corrupt one on purpose in tests) */
  directory: string;
  stop(): Promise<void>;
}

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
}

const require = createRequire(import.meta.url);

export async function startS3Server(options: { bucket?: string } = {}): Promise<S3Server> {
  const S3rver = require('s3rver') as new (options: Record<string, unknown>) => S3rverInstance;
  const AWSAccount = require('s3rver/lib/models/account.js') as new (id: number, name: string) => {
    createKeyPair(id: string, secret: string): void;
    revokeAccessKey(id: string): void;
  };
  const directory = await mkdtemp(join(tmpdir(), 'torpor-s3-'));
  const bucket = options.bucket ?? 'torpor-test';
  const accessKeyId = `TORPOR${randomBytes(7).toString('hex').toUpperCase()}`;
  const secretAccessKey = randomBytes(24).toString('base64url');
  const account = new AWSAccount(Number.parseInt(randomBytes(5).toString('hex'), 16), 'torpor-test');
  account.createKeyPair(accessKeyId, secretAccessKey);
  const server = new S3rver({
    address: '127.0.0.1',
    port: 0,
    silent: true,
    directory,
    // Bucket names in the Host header would need DNS names for 127.0.0.1; clients use path style.
    vhostBuckets: false,
    configureBuckets: [{ name: bucket }],
  });
  let address: AddressInfo;
  try {
    address = await server.run();
  } catch (error) {
    account.revokeAccessKey(accessKeyId);
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
  let stopped = false;
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    region: 'us-east-1',
    accessKeyId,
    secretAccessKey,
    bucket,
    directory,
    async stop() {
      if (stopped) return;
      stopped = true;
      account.revokeAccessKey(accessKeyId);
      await server.close().catch(() => undefined);
      await rm(directory, { recursive: true, force: true });
    },
  };
}
