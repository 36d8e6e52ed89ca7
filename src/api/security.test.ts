// Attacks on the HTTP API of a real `torpor serve` process: authentication, token scopes, Host
// (DNS rebinding), cross-site requests, body types and sizes, resource limits, listen address.
// None of these needs a machine: every request here must be refused before one would start.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { runCli } from '../runtime/testing/cli-process.ts';
import { startJsonServer, type JsonServer } from './testing/json-server.ts';

let home = '';
let temporaryHome: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: JsonServer;
let port = 0;
let url = '';
let token = '';
let tokenFile = '';

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: { error?: { code: string; message: string; hint?: string } } & Record<string, unknown>;
}

/** One raw HTTP request, so a test controls every header (fetch would fix Host and Origin). */
function raw(
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string | Buffer | ((write: (chunk: Buffer) => boolean) => void),
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    // Node sends a DELETE body without framing unless told its length.
    const length = typeof body === 'string' || Buffer.isBuffer(body) ? { 'content-length': String(Buffer.byteLength(body)) } : {};
    const outgoing = httpRequest(
      { host: '127.0.0.1', port, method, path, headers: { host: `127.0.0.1:${port}`, ...length, ...headers }, setHost: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let json = {};
          try {
            json = JSON.parse(text);
          } catch {}
          resolve({ status: response.statusCode ?? 0, headers: response.headers, body: text, json });
        });
      },
    );
    // A refused upload may be cut by the server before it is all sent: that is a fine outcome.
    outgoing.on('error', (error: NodeJS.ErrnoException) => (error.code === 'EPIPE' || error.code === 'ECONNRESET' ? undefined : reject(error)));
    if (typeof body === 'function') {
      body((chunk) => outgoing.write(chunk));
      outgoing.end();
    } else outgoing.end(body);
  });
}

const bearer = (value = token) => ({ authorization: `Bearer ${value}` });
const json = { 'content-type': 'application/json' };

const torpor = (args: string[], environment: NodeJS.ProcessEnv = {}) =>
  runCli(args, { ...process.env, TORPOR_HOME: home, TORPOR_URL: '', TORPOR_TOKEN: '', ...environment });

before(async () => {
  // A temporary home whose cleanup also kills machines: none should start here, but if a guard
  // failed open one would, and it must not outlive the test.
  temporaryHome = await useTemporaryHome();
  home = temporaryHome.home;
  // Small, fixed limits so the limit tests do not depend on this host's size.
  server = await startJsonServer(['--max-cpus', '2', '--max-memory', '1g', '--max-disk', '8g', '--max-sessions', '1', '--max-body', '1m'], {
    ...process.env,
    TORPOR_HOME: home,
    TORPOR_MAX_BODY: '',
  });
  url = server.url;
  port = Number(new URL(url).port);
  tokenFile = server.tokenFile;
  token = (await torpor(['token', 'show'])).stdout.trim();
});

after(async () => {
  await server.stop();
  await temporaryHome.cleanup();
});

test('serve creates a random token, private to the user (file 0600, directory 0700)', () => {
  assert.match(token, /^torpor_[A-Za-z0-9_-]{43}$/);
  assert.equal(statSync(tokenFile).mode & 0o777, 0o600);
  assert.equal(statSync(join(home, 'api')).mode & 0o777, 0o700);
});

const routes: Array<[string, string]> = [
  ['GET', '/health'],
  ['GET', '/v1/logs'],
  ['GET', '/v1/logs/anything/entries'],
  ['POST', '/v1/logs/anything/entries'],
  ['POST', '/v1/logs/anything/fork'],
  ['GET', '/v1/sessions'],
  ['GET', '/sessions'],
  ['POST', '/v1/sessions'],
  ['GET', '/v1/sessions/s-000000000000'],
  ['DELETE', '/v1/sessions/s-000000000000'],
  ['POST', '/v1/sessions/s-000000000000/messages'],
  ['GET', '/no/such/route'],
];

test('every route refuses a request without a token, with a wrong one, or with another scheme', async () => {
  const wrong = `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`;
  for (const [method, path] of routes) {
    for (const headers of [
      {},
      bearer(wrong),
      bearer('torpor_guess'),
      { authorization: `Basic ${Buffer.from(`torpor:${token}`).toString('base64')}` },
      { authorization: token },
    ]) {
      const reply = await raw(method, path, { ...json, ...headers }, method === 'GET' ? undefined : '[]');
      assert.equal(reply.status, 401, `${method} ${path} with ${JSON.stringify(headers)}: ${reply.body}`);
      assert.equal(reply.json.error?.code, 'unauthorized');
      assert.match(String(reply.json.error?.hint), /Authorization: Bearer/);
      assert.equal(reply.headers['www-authenticate'], 'Bearer realm="torpor"');
    }
  }
  // The same requests with the token get past authentication.
  assert.equal((await raw('GET', '/v1/sessions', bearer())).status, 200);
  assert.equal((await raw('GET', '/health', bearer())).status, 200);
});

test('a token in the query string is refused, even the right one', async () => {
  for (const name of ['token', 'access_token', 'api_key']) {
    const reply = await raw('GET', `/v1/sessions?${name}=${token}`);
    assert.equal(reply.status, 400, reply.body);
    assert.equal(reply.json.error?.code, 'token-in-query');
    const alongside = await raw('GET', `/v1/sessions?${name}=${token}`, bearer());
    assert.equal(alongside.status, 400);
  }
});

test('a cross-site text/plain POST with a foreign Origin is refused, with or without the token', async () => {
  const attack = { 'content-type': 'text/plain', origin: 'http://evil.example' };
  const body = JSON.stringify({ image: 'base', command: ['sh'] });
  for (const headers of [
    attack,
    { ...attack, ...bearer() },
    { ...json, origin: 'http://evil.example', ...bearer() },
    { ...json, origin: 'null', ...bearer() },
  ]) {
    const reply = await raw('POST', '/v1/sessions', headers, body);
    assert.equal(reply.status, 403, reply.body);
    assert.equal(reply.json.error?.code, 'origin-not-allowed');
  }
  const fetchMetadata = await raw('DELETE', '/v1/sessions/s-000000000000', { ...bearer(), 'sec-fetch-site': 'cross-site' });
  assert.equal(fetchMetadata.status, 403);
  // The server's own origin is fine; text/plain is not, even from a program with the token.
  assert.equal(
    (
      await raw(
        'POST',
        '/v1/logs/origin-ok/entries',
        { ...json, ...bearer(), origin: `http://127.0.0.1:${port}` },
        JSON.stringify([{ kind: 'message', role: 'user', content: 'hi' }]),
      )
    ).status,
    200,
  );
  const plain = await raw(
    'POST',
    '/v1/logs/origin-ok/entries',
    { 'content-type': 'text/plain', ...bearer() },
    JSON.stringify([{ kind: 'message', role: 'user', content: 'hi' }]),
  );
  assert.equal(plain.status, 415);
  assert.equal(plain.json.error?.code, 'unsupported-media-type');
  for (const type of ['application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'text/json']) {
    assert.equal((await raw('POST', '/v1/sessions', { 'content-type': type, ...bearer() }, body)).status, 415, type);
  }
  assert.equal((await raw('POST', '/v1/sessions', bearer(), body)).status, 415, 'a body without Content-Type');
  // Nothing of all that reached the log or the sessions.
  const logs = JSON.parse((await raw('GET', '/v1/logs', bearer())).body) as { sessions: Array<{ id: string; nextOffset: number }> };
  assert.deepEqual(
    logs.sessions.map((session) => [session.id, session.nextOffset]),
    [['origin-ok', 1]],
  );
});

test('requests whose Host is not this server (DNS rebinding) are refused', async () => {
  for (const host of [
    'evil.example',
    `evil.example:${port}`,
    `127.0.0.1:${port + 1}`,
    `127.0.0.1.evil.example:${port}`,
    `localhost:${port}@evil.example`,
    '',
  ]) {
    const reply = await raw('GET', '/v1/sessions', { ...bearer(), host });
    // 421 from the guard; 400 when the value is not even a host (Node or the URL parser refuses it first).
    assert.ok([400, 421].includes(reply.status), `Host ${JSON.stringify(host)}: ${reply.status} ${reply.body}`);
    assert.doesNotMatch(reply.body, /"sessions"/);
  }
  for (const host of [`127.0.0.1:${port}`, `localhost:${port}`, `LOCALHOST:${port}`]) {
    assert.equal((await raw('GET', '/v1/sessions', { ...bearer(), host })).status, 200, host);
  }
});

test('oversized bodies are refused by declared length and by counting a chunked upload', async () => {
  const big = JSON.stringify({ image: 'base', command: ['sh', '-c', 'x'.repeat(2 * 1024 * 1024)] });
  const declared = await raw('POST', '/v1/sessions', { ...json, ...bearer() }, big);
  assert.equal(declared.status, 413, declared.body);
  assert.equal(declared.json.error?.code, 'body-too-large');
  // No Content-Length: the guard counts while reading and stops at the limit.
  const chunked = await raw('POST', '/v1/sessions', { ...json, ...bearer(), 'transfer-encoding': 'chunked' }, (write) => {
    for (let index = 0; index < 64; index++) write(Buffer.alloc(64 * 1024, 0x20));
  });
  assert.equal(chunked.status, 413, chunked.body);
  // The server is still there and answers, also on a kept-alive connection (an unread rest of a
  // refused body must not sit in front of the next request).
  assert.equal((await raw('GET', '/v1/sessions', bearer())).status, 200);
});

test('a session asking for more than the limits is refused with what to do, before any machine starts', async () => {
  const create = (resources: Record<string, unknown>) =>
    raw('POST', '/v1/sessions', { ...json, ...bearer() }, JSON.stringify({ image: 'base', command: ['sh'], resources }));
  const cpus = await create({ cpus: 64 });
  assert.equal(cpus.status, 400, cpus.body);
  assert.equal(cpus.json.error?.code, 'limit-cpus');
  assert.match(cpus.json.error!.message, /64 vCPUs asked for; this server allows at most 2/);
  assert.match(String(cpus.json.error?.hint), /--max-cpus/);
  const memory = await create({ memory: '256g' });
  assert.equal(memory.status, 400, memory.body);
  assert.equal(memory.json.error?.code, 'limit-memory');
  assert.match(String(memory.json.error?.hint), /--max-memory/);
  const disk = await create({ disk: '1t' });
  assert.equal(disk.status, 400, disk.body);
  assert.equal(disk.json.error?.code, 'limit-disk');
  assert.equal((await create({ cpus: 1000 })).status, 400);
  const listed = JSON.parse((await raw('GET', '/v1/sessions', bearer())).body) as { sessions: unknown[] };
  assert.equal(listed.sessions.length, 0, 'a refused session leaves no record');
});

test('scoped tokens: read-only refuses writes; one-session refuses other sessions, lists and forks; revoked refuses all', async () => {
  const readOnly = JSON.parse((await torpor(['token', 'create', '--read-only', '--json'])).stdout) as { token: string; id: string };
  assert.equal((await raw('GET', '/v1/logs', bearer(readOnly.token))).status, 200);
  const write = await raw('POST', '/v1/logs/scoped/entries', { ...json, ...bearer(readOnly.token) }, '[{"kind":"message","role":"user","content":"x"}]');
  assert.equal(write.status, 403, write.body);
  assert.equal(write.json.error?.code, 'token-scope');

  const one = JSON.parse((await torpor(['token', 'create', '--session', 'mine', '--json'])).stdout) as { token: string; id: string };
  const entry = '[{"kind":"message","role":"user","content":"x"}]';
  assert.equal((await raw('POST', '/v1/logs/mine/entries', { ...json, ...bearer(one.token) }, entry)).status, 200);
  assert.equal((await raw('GET', '/v1/logs/mine/entries', bearer(one.token))).status, 200);
  assert.equal((await raw('POST', '/v1/logs/other/entries', { ...json, ...bearer(one.token) }, entry)).status, 403);
  assert.equal((await raw('GET', '/v1/logs/other', bearer(one.token))).status, 403);
  assert.equal((await raw('GET', '/v1/logs/mine%2F..%2Fother', bearer(one.token))).status, 403);
  assert.equal((await raw('GET', '/v1/logs', bearer(one.token))).status, 403, 'listing every session');
  assert.equal((await raw('GET', '/v1/sessions', bearer(one.token))).status, 403);
  assert.equal((await raw('POST', '/v1/logs/mine/fork', { ...json, ...bearer(one.token) }, '{"offset":0}')).status, 403);

  const listed = JSON.parse((await torpor(['token', 'ls', '--json'])).stdout) as Array<{ id: string; digest?: string }>;
  assert.deepEqual(listed.map((record) => record.id).sort(), [readOnly.id, one.id].sort());
  assert.ok(
    listed.every((record) => record.digest === undefined),
    'ls shows no digests',
  );
  assert.equal((await torpor(['token', 'rm', one.id])).code, 0);
  // The server notices a revocation within a second.
  await new Promise((resolve) => setTimeout(resolve, 1100));
  assert.equal((await raw('GET', '/v1/logs/mine', bearer(one.token))).status, 401, 'a revoked token');
  assert.equal((await raw('GET', '/v1/logs', bearer(readOnly.token))).status, 200, 'the other token still works');
});

test('the CLI finds the token on its own (state directory), takes TORPOR_TOKEN and --token, and says what is wrong', async () => {
  const viaState = await torpor(['log', 'ls', '--json']);
  assert.equal(viaState.code, 0, viaState.stderr);
  assert.match(viaState.stdout, /"id":"origin-ok"/);
  const sessions = await torpor(['session', 'ls', '--json']);
  assert.equal(sessions.code, 0, sessions.stderr);
  const viaEnvironment = await torpor(['log', '--url', url, 'ls', '--json'], { TORPOR_HOME: join(home, 'elsewhere'), TORPOR_TOKEN: token });
  assert.equal(viaEnvironment.code, 0, viaEnvironment.stderr);
  const viaFlag = await torpor(['session', '--url', url, '--token', token, 'ls', '--json'], { TORPOR_HOME: join(home, 'elsewhere') });
  assert.equal(viaFlag.code, 0, viaFlag.stderr);
  const wrong = await torpor(['session', '--url', url, 'ls'], { TORPOR_HOME: join(home, 'elsewhere'), TORPOR_TOKEN: 'torpor_wrongwrongwrongwrongwrong' });
  assert.equal(wrong.code, 1);
  assert.match(wrong.stderr, /the token is not valid for this server\n\s+hint: send `Authorization: Bearer TOKEN`/);
  const wrongLog = await torpor(['log', '--url', url, 'ls'], { TORPOR_HOME: join(home, 'elsewhere') });
  assert.equal(wrongLog.code, 1);
  assert.match(wrongLog.stderr, /this API needs a token/);
});

test('serve refuses a non-loopback address unless told, and then only with an existing token', async () => {
  const fresh = await mkdtemp(join(tmpdir(), 'tp-sec-'));
  try {
    const refused = await torpor(['serve', '--host', '0.0.0.0', '--port', '0'], { TORPOR_HOME: fresh });
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /--host 0\.0\.0\.0 would open the API to the network\n\s+hint: .*--allow-remote.*TLS/);
    const noToken = await torpor(['serve', '--host', '0.0.0.0', '--port', '0', '--allow-remote'], { TORPOR_HOME: fresh });
    assert.equal(noToken.code, 1);
    assert.match(noToken.stderr, /needs the API token to exist.*\n\s+hint: run `torpor token show`/);
    const badLimit = await torpor(['serve', '--port', '0', '--max-cpus', 'lots'], { TORPOR_HOME: fresh });
    assert.equal(badLimit.code, 1);
    assert.match(badLimit.stderr, /--max-cpus must be a whole number/);
  } finally {
    await rm(fresh, { recursive: true, force: true });
  }
});

test("behind a proxy: --server-name adds the proxy's Host and https origin, nothing else", async () => {
  const { startApiServer } = await import('./server.ts');
  const { temporaryLog } = await import('../context/testing/temporary-log.ts');
  const temporary = temporaryLog();
  const proxied = await startApiServer({ port: 0, log: temporary.log, serverNames: ['torpor.example'] });
  try {
    const request = (headers: Record<string, string>, method = 'GET', body?: string) =>
      new Promise<number>((resolve, reject) => {
        const outgoing = httpRequest(
          {
            host: '127.0.0.1',
            port: proxied.port,
            method,
            path: '/v1/logs/proxied/entries',
            headers: { authorization: `Bearer ${proxied.token}`, ...headers },
            setHost: false,
          },
          (response) => {
            response.resume();
            response.on('end', () => resolve(response.statusCode ?? 0));
          },
        );
        outgoing.on('error', reject);
        outgoing.end(body);
      });
    const entry = '[{"kind":"message","role":"user","content":"via proxy"}]';
    const post = { 'content-type': 'application/json', 'content-length': String(entry.length) };
    assert.equal(await request({ host: 'torpor.example', ...post, origin: 'https://torpor.example' }, 'POST', entry), 200);
    assert.equal(await request({ host: `torpor.example:${proxied.port}`, ...post }, 'POST', entry), 200);
    assert.equal(await request({ host: 'torpor.example', ...post, origin: 'https://evil.example' }, 'POST', entry), 403);
    assert.equal(await request({ host: 'other.example' }), 421);
    assert.equal(await request({ host: `127.0.0.1:${proxied.port}` }), 200);
    // A server given only a log (no state directory) still has a token: a random one of its own.
    assert.match(proxied.token, /^torpor_/);
    assert.equal(await request({ host: `127.0.0.1:${proxied.port}`, authorization: `Bearer ${token}` }), 401);
  } finally {
    await proxied.close();
    await temporary.cleanup();
  }
});
