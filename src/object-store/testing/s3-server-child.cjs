'use strict';
// The s3rver process behind startS3Server() (s3-server.ts). A child process because s3rver 3.7 makes
// its ListObjectsV2 continuation tokens with DES, which OpenSSL 3 only has in its legacy provider
// (node --openssl-legacy-provider, a per-process switch the tests' own process should not take).
// Exits when its stdin closes, so it never outlives the test that started it (even after kill -9).
const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account.js');

const { directory, bucket, accessKeyId, secretAccessKey } = JSON.parse(process.argv[2]);
new AWSAccount(123456789012, 'torpor-test').createKeyPair(accessKeyId, secretAccessKey);
// Only the key pair above may sign requests: s3rver's built-in S3RVER/S3RVER pair is removed.
AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, vhostBuckets: false, configureBuckets: [{ name: bucket }] });
server.run().then(
  (address) => process.stdout.write(JSON.stringify({ port: address.port }) + '\n'),
  (error) => {
    process.stderr.write(String(error && error.stack) + '\n');
    process.exit(1);
  },
);
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
