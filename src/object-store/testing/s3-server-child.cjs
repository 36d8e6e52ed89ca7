'use strict';
// The s3rver process behind startS3Server() (s3-server.ts). A child process because s3rver 3.7 makes
// its ListObjectsV2 continuation tokens with DES, which OpenSSL 3 only has in its legacy provider
// (node --openssl-legacy-provider, a per-process switch the tests' own process should not take).
// Exits when its stdin closes, so it never outlives the test that started it (even after kill -9).
const crypto = require('node:crypto');
const http = require('node:http');
const S3rver = require('s3rver');
const AWSAccount = require('s3rver/lib/models/account.js');

const { directory, bucket, accessKeyId, secretAccessKey } = JSON.parse(process.argv[2]);
new AWSAccount(123456789012, 'torpor-test').createKeyPair(accessKeyId, secretAccessKey);
// Only the key pair above may sign requests: s3rver's built-in S3RVER/S3RVER pair is removed.
AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, vhostBuckets: false, configureBuckets: [{ name: bucket }] });

// s3rver checks that the access key exists but not SigV4 signatures; this front checks them, so a
// wrong secret is refused as AWS S3 refuses it (403 SignatureDoesNotMatch). Header-signed requests
// only (what the SDK sends); presigned URLs are not used by torpor.
const encode = (text) => encodeURIComponent(text).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const hmac = (key, text) => crypto.createHmac('sha256', key).update(text).digest();
function signatureValid(request) {
  const match = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/s3\/aws4_request, ?SignedHeaders=([a-z0-9;-]+), ?Signature=([0-9a-f]{64})$/.exec(request.headers.authorization || '');
  if (!match) return true; // anonymous or another scheme: s3rver decides
  const [, keyId, day, region, signedHeaders, signature] = match;
  if (keyId !== accessKeyId) return true; // unknown keys: s3rver answers InvalidAccessKeyId
  const [path, query = ''] = request.url.split(/\?(.*)/s);
  const canonicalQuery = query
    .split('&')
    .filter(Boolean)
    .map((pair) => pair.split(/=(.*)/s).map((part) => encode(decodeURIComponent((part || '').replace(/\+/g, ' ')))))
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : 1))
    .map(([key, value]) => `${key}=${value || ''}`)
    .join('&');
  const names = signedHeaders.split(';');
  const canonicalHeaders = names.map((name) => `${name}:${String(request.headers[name] ?? '').trim().replace(/\s+/g, ' ')}\n`).join('');
  const payloadHash = request.headers['x-amz-content-sha256'] || 'UNSIGNED-PAYLOAD';
  const canonicalRequest = [request.method, path, canonicalQuery, canonicalHeaders, signedHeaders, payloadHash].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', request.headers['x-amz-date'], scope, crypto.createHash('sha256').update(canonicalRequest).digest('hex')].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${secretAccessKey}`, day), region), 's3'), 'aws4_request');
  return crypto.timingSafeEqual(Buffer.from(hmac(key, stringToSign).toString('hex')), Buffer.from(signature));
}

const handle = server.callback();
const front = http.createServer((request, response) => {
  if (signatureValid(request)) return handle(request, response);
  request.resume();
  response.writeHead(403, { 'content-type': 'application/xml' });
  response.end('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we calculated does not match the signature you provided.</Message></Error>');
});
server
  .configureBuckets()
  .then(() => new Promise((resolve, reject) => front.listen(0, '127.0.0.1', (error) => (error ? reject(error) : resolve()))))
  .then(
    () => process.stdout.write(JSON.stringify({ port: front.address().port }) + '\n'),
    (error) => {
      process.stderr.write(String(error && error.stack) + '\n');
      process.exit(1);
    },
  );
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
