import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { chmodSync, closeSync, fsyncSync, linkSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { stateHome } from '../state/paths.ts';
import { clientAssets, type ClientAssets } from './client-bundle.ts';
import { loginPage } from './pages.ts';

type Fetch = (request: Request, ...rest: never[]) => Response | Promise<Response>;

export interface DashboardLoginOptions {
  /**
   * The server's full-access API token, or a function returning it (called per request, so a
   * rotated token takes effect at once). Default: `api/token` in the state directory, the file
   * `torpor serve` keeps it in, created there (0600) when missing.
   */
  token?: string | (() => string);
}

/** The cookie that carries the token for the browser; HttpOnly, so page scripts never see it. */
export const cookieName = 'torpor_token';
const cookieMaxAgeSeconds = 7 * 24 * 3600;

/** Paths of the single-page app: a signed-out visit is sent to the login page instead of a 401. */
const pagePath = /^\/(?:|session\/[^/]+|machines|host)\/?$/;
const publicAssets: Record<string, keyof ClientAssets> = { '/ui/app.js': 'app.js', '/ui/login.js': 'login.js', '/ui/app.css': 'app.css' };

export const securityHeaders: Record<string, string> = {
  'content-security-policy':
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};

/** `torpor_` + 32 random bytes, the shape of the API's tokens. */
const tokenShape = /^torpor_[A-Za-z0-9_-]{20,200}$/;

/**
 * The state directory's API token (`api/token`), created if missing: random, 0600 in a 0700
 * directory, linked into place so two servers starting at once agree on one token.
 */
export function stateDirectoryToken(directory = stateHome()): string {
  const folder = join(directory, 'api');
  const path = join(folder, 'token');
  const read = () => {
    try {
      const text = readFileSync(path, 'utf8').trim();
      return tokenShape.test(text) ? text : undefined;
    } catch {
      return undefined;
    }
  };
  const existing = read();
  if (existing) return existing;
  mkdirSync(folder, { recursive: true, mode: 0o700 });
  chmodSync(folder, 0o700);
  const temporary = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const descriptor = openSync(temporary, 'wx', 0o600);
  try {
    writeSync(descriptor, `torpor_${randomBytes(32).toString('base64url')}\n`);
    fsyncSync(descriptor);
  } finally {
    closeSync(descriptor);
  }
  try {
    linkSync(temporary, path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  } finally {
    rmSync(temporary, { force: true });
  }
  const token = read();
  if (!token) throw new Error(`${path} does not hold a torpor token; delete it and restart torpor serve`);
  return token;
}

/** Constant-time comparison (of digests, so lengths leak nothing either). */
export function sameToken(presented: string, expected: string): boolean {
  const digest = (value: string) => createHash('sha256').update(value, 'utf8').digest();
  return timingSafeEqual(digest(presented), digest(expected));
}

export function readCookie(header: string | null, name: string): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const index = part.indexOf('=');
    if (index < 0) continue;
    if (part.slice(0, index).trim() === name) return part.slice(index + 1).trim();
  }
  return undefined;
}

function bearerOf(request: Request): string | undefined {
  const match = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(request.headers.get('authorization') ?? '');
  return match?.[1];
}

function json(status: number, code: string, message: string, hint?: string, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify({ error: { code, message, ...(hint ? { hint } : {}) } }), {
    status,
    headers: { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers },
  });
}

/** Over TLS directly, or behind a proxy that says the browser used https. */
function isSecure(request: Request, url: URL): boolean {
  return url.protocol === 'https:' || request.headers.get('x-forwarded-proto')?.split(',')[0]?.trim() === 'https';
}

function cookieHeader(value: string, maxAge: number, secure: boolean): string {
  return `${cookieName}=${value}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${maxAge}${secure ? '; Secure' : ''}`;
}

/**
 * A state change the browser says comes from another site, or from a page of another origin, is
 * refused: the login sets a credential, and a hostile page must not sign a visitor in or out.
 */
function sameOrigin(request: Request, url: URL): boolean {
  const site = request.headers.get('sec-fetch-site');
  if (site !== null && site !== 'same-origin' && site !== 'none') return false;
  const origin = request.headers.get('origin');
  return origin === null || origin === url.origin || origin === `${isSecure(request, url) ? 'https' : 'http'}://${request.headers.get('host') ?? ''}`;
}

async function readLoginBody(request: Request): Promise<string | undefined> {
  if (!(request.headers.get('content-type') ?? '').toLowerCase().startsWith('application/json')) return undefined;
  const text = await request.text();
  if (text.length > 4096) return undefined;
  try {
    const body = JSON.parse(text) as { token?: unknown };
    return typeof body?.token === 'string' ? body.token.trim() : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The dashboard's sign-in, as a wrapper around the server's fetch function (outside the API's
 * own request checks, which it feeds): the login page and the bundle are public; `POST /ui/login`
 * checks a token and keeps it in an HttpOnly, SameSite=Strict cookie; afterwards each request
 * that has the cookie and no Authorization header gets `Authorization: Bearer <token>` added, so
 * whatever checks bearer tokens behind this wrapper accepts the browser like any client. Pages
 * without a valid credential redirect to /login; the dashboard's data routes answer 401.
 */
export function withDashboardLogin<F extends Fetch>(next: F, options: DashboardLoginOptions = {}): F {
  const expected =
    typeof options.token === 'function' ? options.token : options.token !== undefined ? () => options.token as string : () => stateDirectoryToken();
  const valid = (presented: string | undefined) => presented !== undefined && presented !== '' && sameToken(presented, expected());

  const wrapped = async (request: Request, ...rest: never[]): Promise<Response> => {
    const url = new URL(request.url);
    const path = url.pathname;
    const method = request.method;
    const reading = method === 'GET' || method === 'HEAD';

    if (reading && publicAssets[path]) {
      const asset = (await clientAssets())[publicAssets[path]];
      if (request.headers.get('if-none-match') === asset.etag) return new Response(null, { status: 304, headers: { etag: asset.etag } });
      return new Response(method === 'HEAD' ? null : asset.body, {
        headers: { 'content-type': asset.contentType, etag: asset.etag, 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' },
      });
    }
    const cookie = readCookie(request.headers.get('cookie'), cookieName);
    const cookieValid = valid(cookie);
    if (reading && path === '/login') {
      if (cookieValid) return new Response(null, { status: 303, headers: { location: '/' } });
      return new Response(method === 'HEAD' ? null : loginPage, {
        headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', ...securityHeaders },
      });
    }
    if (path === '/ui/login' || path === '/ui/logout') {
      if (method !== 'POST') return json(405, 'method-not-allowed', `${path} takes POST`, undefined, { allow: 'POST' });
      if (!sameOrigin(request, url))
        return json(
          403,
          'origin-not-allowed',
          'sign-in and sign-out are accepted only from this server’s own pages',
          'open the dashboard at this server’s address',
        );
      const secure = isSecure(request, url);
      if (path === '/ui/logout')
        return new Response(null, { status: 204, headers: { 'set-cookie': cookieHeader('', 0, secure), 'cache-control': 'no-store' } });
      const presented = await readLoginBody(request);
      if (!valid(presented)) {
        return json(
          401,
          'unauthorized',
          'that is not this server’s token',
          'paste the full-access token from api/token in the server’s state directory (it starts with torpor_)',
        );
      }
      return new Response(null, { status: 204, headers: { 'set-cookie': cookieHeader(presented!, cookieMaxAgeSeconds, secure), 'cache-control': 'no-store' } });
    }

    const bearer = bearerOf(request);
    const page = reading && pagePath.test(path);
    if (page || path.startsWith('/ui/')) {
      const authenticated = bearer !== undefined ? valid(bearer) : cookieValid;
      if (page && !authenticated && (request.headers.get('accept') ?? '').includes('text/html')) {
        return new Response(null, { status: 303, headers: { location: '/login', 'cache-control': 'no-store' } });
      }
      if (!authenticated) {
        return json(401, 'unauthorized', 'sign in first', 'open /login in a browser, or send `Authorization: Bearer TOKEN`', {
          'www-authenticate': 'Bearer realm="torpor"',
        });
      }
    }
    if (bearer === undefined && cookieValid) {
      const headers = new Headers(request.headers);
      headers.set('authorization', `Bearer ${cookie}`);
      const body = reading ? undefined : request.body;
      const forwarded = new Request(request.url, { method, headers, body, signal: request.signal, ...(body ? { duplex: 'half' } : {}) } as RequestInit);
      return next(forwarded, ...rest);
    }
    return next(request, ...rest);
  };
  return wrapped as F;
}
