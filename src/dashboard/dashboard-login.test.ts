// The sign-in wrapper on its own, attacked from outside: no server, no browser, no VM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stateDirectoryToken, withDashboardLogin } from './dashboard-login.ts';

const token = `torpor_${randomBytes(32).toString('base64url')}`;
const origin = 'http://127.0.0.1:7070';

/** What reaches the server behind the wrapper: the path and the Authorization it carries. */
const inner = async (request: Request) =>
  Response.json({ path: new URL(request.url).pathname, authorization: request.headers.get('authorization'), body: request.body ? await request.text() : null });
const front = withDashboardLogin(inner, { token: () => token });
const call = (path: string, init: RequestInit = {}) =>
  front(new Request(origin + path, { ...init, headers: { host: '127.0.0.1:7070', ...(init.headers ?? {}) } }));

async function signIn(presented: string, headers: Record<string, string> = {}): Promise<Response> {
  return call('/ui/login', { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ token: presented }) });
}

test('the right token sets an HttpOnly, SameSite=Strict cookie for the whole site; Secure over TLS', async () => {
  const response = await signIn(token, { origin, 'sec-fetch-site': 'same-origin' });
  assert.equal(response.status, 204);
  const cookie = response.headers.get('set-cookie') ?? '';
  assert.match(cookie, new RegExp(`^torpor_token=${token}; `));
  for (const attribute of ['HttpOnly', 'SameSite=Strict', 'Path=/']) assert.ok(cookie.includes(attribute), cookie);
  assert.ok(!cookie.includes('Secure'), 'plain http must not mark the cookie Secure (the browser would drop it)');
  const behindTls = await signIn(token, { 'x-forwarded-proto': 'https' });
  assert.match(behindTls.headers.get('set-cookie') ?? '', /; Secure$/);
});

test('wrong, empty, oversized or non-JSON tokens are refused, and no cookie is set', async () => {
  for (const presented of ['', 'torpor_wrong', token.slice(0, -1), `${token}x`, 'x'.repeat(10_000)]) {
    const response = await signIn(presented);
    assert.equal(response.status, 401, presented.slice(0, 20));
    assert.equal(response.headers.get('set-cookie'), null);
  }
  const form = await call('/ui/login', { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: `token=${token}` });
  assert.equal(form.status, 401, 'a cross-site form post must not sign anyone in');
  assert.equal((await call('/ui/login')).status, 405);
});

test('sign-in from another site or origin is refused even with the right token (login CSRF)', async () => {
  const attempts: Array<Record<string, string>> = [
    { origin: 'http://evil.example' },
    { 'sec-fetch-site': 'cross-site' },
    { 'sec-fetch-site': 'same-site' },
    { origin: 'http://127.0.0.1:7071' },
  ];
  for (const headers of attempts) {
    const response = await signIn(token, headers);
    assert.equal(response.status, 403, JSON.stringify(headers));
    assert.equal(response.headers.get('set-cookie'), null);
  }
});

test('pages redirect to the login page; data routes answer 401; the login page and bundle are public', async () => {
  for (const path of ['/', '/session/s-1', '/machines', '/host']) {
    const response = await call(path, { headers: { accept: 'text/html' } });
    assert.equal(response.status, 303, path);
    assert.equal(response.headers.get('location'), '/login');
  }
  for (const path of ['/ui/api/sessions', '/ui/api/events', '/ui/api/anything']) assert.equal((await call(path)).status, 401, path);
  const forged = await call('/ui/api/sessions', { headers: { cookie: `torpor_token=torpor_${randomBytes(32).toString('base64url')}` } });
  assert.equal(forged.status, 401);
  const wrongBearer = await call('/ui/api/sessions', { headers: { authorization: 'Bearer torpor_wrong', cookie: `torpor_token=${token}` } });
  assert.equal(wrongBearer.status, 401, 'a wrong bearer token is not rescued by a cookie');
  const login = await call('/login');
  assert.equal(login.status, 200);
  assert.match(login.headers.get('content-security-policy') ?? '', /script-src 'self'/);
  assert.equal(login.headers.get('x-frame-options'), 'DENY');
});

test('a valid cookie reaches the server as a bearer token; requests without one pass through untouched', async () => {
  const withCookie = (await (await call('/v1/sessions', { headers: { cookie: `other=1; torpor_token=${token}` } })).json()) as { authorization: string };
  assert.equal(withCookie.authorization, `Bearer ${token}`);
  const posted = (await (
    await call('/v1/sessions/s-1/messages', {
      method: 'POST',
      headers: { cookie: `torpor_token=${token}`, 'content-type': 'application/json' },
      body: '{"content":"hi"}',
    })
  ).json()) as {
    authorization: string;
    body: string;
  };
  assert.deepEqual([posted.authorization, posted.body], [`Bearer ${token}`, '{"content":"hi"}']);
  // A client's own bearer header is left as it is, and so is a request with a forged cookie.
  const own = (await (await call('/v1/logs', { headers: { authorization: 'Bearer torpor_client', cookie: `torpor_token=${token}` } })).json()) as {
    authorization: string;
  };
  assert.equal(own.authorization, 'Bearer torpor_client');
  const forged = (await (await call('/v1/logs', { headers: { cookie: 'torpor_token=torpor_forged_forged_forged_forged' } })).json()) as {
    authorization: string | null;
  };
  assert.equal(forged.authorization, null);
  assert.equal((await call('/', { headers: { cookie: `torpor_token=${token}`, accept: 'text/html' } })).status, 200);
});

test('a rotated token signs out every browser at once', async () => {
  let current = token;
  const rotating = withDashboardLogin(inner, { token: () => current });
  const request = () => rotating(new Request(`${origin}/ui/api/sessions`, { headers: { cookie: `torpor_token=${token}` } }));
  assert.equal((await request()).status, 200);
  current = `torpor_${randomBytes(32).toString('base64url')}`;
  assert.equal((await request()).status, 401);
});

test('the state directory token is created once, private, and then kept', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'tp-token-'));
  try {
    const first = stateDirectoryToken(directory);
    assert.match(first, /^torpor_[A-Za-z0-9_-]{43}$/);
    assert.equal(stateDirectoryToken(directory), first);
    assert.equal((await stat(join(directory, 'api', 'token'))).mode & 0o777, 0o600);
    assert.equal((await stat(join(directory, 'api'))).mode & 0o777, 0o700);
  } finally {
    await rm(directory, { recursive: true, force: true });
  }
});
