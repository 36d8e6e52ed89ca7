import { networkInterfaces } from 'node:os';
import { TorporError } from '../util/errors.ts';
import { authenticate, type AuthenticationPolicy } from './authentication.ts';

/**
 * Checks every request gets before any route sees it. They wrap the app's fetch function rather
 * than the app, so they hold for every route, mounted now or later, and cannot be skipped by a
 * route that forgets a middleware.
 *
 *  1. Host must name this server (DNS rebinding: a page on evil.example whose name resolves to
 *     127.0.0.1 reaches the loopback server with `Host: evil.example`).
 *  2. No credentials in the query string (they end up in logs, history and Referer headers).
 *  3. Cross-site state changes are refused: a foreign `Origin` or `Sec-Fetch-Site: cross-site`
 *     on anything but GET/HEAD/OPTIONS.
 *  4. A valid bearer token, and a scope that allows the request (authentication.ts).
 *  5. Bodies are JSON (415 otherwise: a browser's cross-site "simple" request can only send
 *     text/plain, form or multipart bodies, so requiring JSON closes that door too). Two kinds of
 *     routes carry bytes by design: Durable Streams (`/v1/stream/`, any content type, by the
 *     protocol) and machine file writes (`PUT /v1/machines/:machine/files`). They are safe from
 *     cross-site posts all the same: guard 4 needs an Authorization header, which a cross-site
 *     simple request cannot carry.
 *  6. Bodies are at most a route's limit (413): by Content-Length, which Node's parser holds the
 *     client to, or counted while reading a chunked body.
 */
export interface RequestGuardPolicy extends AuthenticationPolicy {
  /** Lower-case `host[:port]` values accepted in the Host header. */
  allowedHosts: Set<string>;
  /** Lower-case origins (scheme://host[:port]) accepted on state-changing requests. */
  allowedOrigins: Set<string>;
  /** Largest body of a log append (entries may carry inline blobs). */
  maxLogAppendBytes: number;
  /** Largest body of any other request. */
  maxBodyBytes: number;
}

export const defaultMaxBodyBytes = 1024 * 1024;

type Fetch = (request: Request, ...rest: never[]) => Response | Promise<Response>;

const statusByCode: Record<string, number> = {
  'host-not-allowed': 421,
  'token-in-query': 400,
  'origin-not-allowed': 403,
  unauthorized: 401,
  'token-scope': 403,
  'unsupported-media-type': 415,
  'body-too-large': 413,
};

/**
 * `closeConnection`: the request may have a body we did not read. Left on a kept-alive socket, its
 * unread rest would sit in front of the client's next request, which then never gets an answer.
 */
export function guardResponse(error: TorporError, closeConnection = false): Response {
  const status = statusByCode[error.code] ?? 400;
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(closeConnection ? { connection: 'close' } : {}) };
  if (status === 401) headers['www-authenticate'] = 'Bearer realm="torpor"';
  return new Response(JSON.stringify({ error: { code: error.code, message: error.message, hint: error.hint } }), { status, headers });
}

const safeMethods = new Set(['GET', 'HEAD', 'OPTIONS']);
const credentialParameters = ['token', 'access_token', 'api_key', 'apikey', 'auth', 'authorization', 'bearer'];

/** Routes whose bodies are bytes of any type (see guard 5). */
function carriesBytes(method: string, path: string): boolean {
  return path.startsWith('/v1/stream/') || (method === 'PUT' && /^\/v1\/machines\/[^/]+\/files\/?$/.test(path));
}

function isLogAppend(method: string, path: string): boolean {
  return method === 'POST' && /^\/v1\/logs\/[^/]+\/entries\/?$/.test(path);
}

function isJsonType(type: string, logAppend: boolean): boolean {
  const essence = type.split(';')[0]!.trim().toLowerCase();
  if (essence === 'application/json' || /^application\/[a-z0-9.+-]+\+json$/.test(essence)) return true;
  return logAppend && ['application/x-ndjson', 'application/ndjson', 'application/jsonl', 'application/x-jsonlines', 'application/jsonlines'].includes(essence);
}

function checkHost(request: Request, policy: RequestGuardPolicy): void {
  const host = request.headers.get('host')?.trim().toLowerCase();
  if (!host || !policy.allowedHosts.has(host)) {
    throw new TorporError('host-not-allowed', `this server does not answer to Host ${JSON.stringify(host ?? '')}`, {
      hint: 'use the address the server listens on (e.g. http://127.0.0.1:7070); behind a proxy, start the server with --server-name NAME',
    });
  }
}

function checkQuery(url: URL): void {
  for (const name of url.searchParams.keys()) {
    if (credentialParameters.includes(name.toLowerCase())) {
      throw new TorporError('token-in-query', `credentials in the query string (${name}=...) are refused`, {
        hint: 'send the token in the header `Authorization: Bearer TOKEN`; query strings end up in logs and browser history. Revoke a token that was sent this way.',
      });
    }
  }
}

function checkOrigin(request: Request, policy: RequestGuardPolicy): void {
  if (safeMethods.has(request.method)) return;
  const fetchSite = request.headers.get('sec-fetch-site')?.toLowerCase();
  if (fetchSite === 'cross-site' || fetchSite === 'same-site') {
    throw new TorporError('origin-not-allowed', `cross-site ${request.method} requests are refused`, {
      hint: 'call the API from a program, not from a web page',
    });
  }
  const origin = request.headers.get('origin');
  if (origin !== null && !policy.allowedOrigins.has(origin.trim().toLowerCase())) {
    throw new TorporError('origin-not-allowed', `requests from origin ${JSON.stringify(origin)} are refused`, {
      hint: 'call the API from a program, not from a web page',
    });
  }
}

/** Reads the body up to `limit` bytes; throws body-too-large as soon as it goes over. */
async function readBody(request: Request, limit: number): Promise<Uint8Array> {
  const declared = request.headers.get('content-length');
  const tooLarge = () =>
    new TorporError('body-too-large', `the request body is larger than ${limit} bytes`, {
      hint: 'send less per request (split a log append into batches; store large data as blobs by reference)',
    });
  if (declared !== null && /^\d+$/.test(declared) && Number(declared) > limit) throw tooLarge();
  if (!request.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => {});
      throw tooLarge();
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let at = 0;
  for (const chunk of chunks) {
    body.set(chunk, at);
    at += chunk.byteLength;
  }
  return body;
}

function checkContentType(request: Request, logAppend: boolean, bodyLength: number): void {
  const type = request.headers.get('content-type');
  if (type === null ? bodyLength === 0 : isJsonType(type, logAppend)) return;
  throw new TorporError(
    'unsupported-media-type',
    `request bodies must be JSON${logAppend ? ' (or NDJSON)' : ''}, got ${type === null ? 'no Content-Type' : JSON.stringify(type)}`,
    {
      hint: `send \`Content-Type: application/json\`${logAppend ? ' or application/x-ndjson' : ''}`,
    },
  );
}

/** Wraps an app's fetch with every guard above. */
export function guardRequests<F extends Fetch>(fetch: F, policy: RequestGuardPolicy): F {
  const guarded = async (request: Request, ...rest: never[]): Promise<Response> => {
    try {
      checkHost(request, policy);
      const url = new URL(request.url);
      checkQuery(url);
      checkOrigin(request, policy);
      authenticate(request, url.pathname, policy);
      if (safeMethods.has(request.method) && request.method !== 'OPTIONS') return await fetch(request, ...rest);
      const logAppend = isLogAppend(request.method, url.pathname);
      const bytes = carriesBytes(request.method, url.pathname);
      const limit = logAppend || bytes ? policy.maxLogAppendBytes : policy.maxBodyBytes;
      const declared = request.headers.get('content-length');
      if (declared !== null && /^\d+$/.test(declared) && request.headers.get('transfer-encoding') === null) {
        // Node's parser delivers exactly Content-Length bytes, never more: checking the number is
        // enough, and the route reads the body straight from the socket (no copy, no re-wrapping).
        if (Number(declared) > limit) await readBody(request, limit);
        if (!bytes) checkContentType(request, logAppend, Number(declared));
        return await fetch(request, ...rest);
      }
      const body = await readBody(request, limit);
      if (!bytes) checkContentType(request, logAppend, body.byteLength);
      const buffered = new Request(request.url, {
        method: request.method,
        headers: request.headers,
        body: body.byteLength > 0 ? body : undefined,
        signal: request.signal,
      });
      return await fetch(buffered, ...rest);
    } catch (error) {
      if (error instanceof TorporError && error.code in statusByCode) return guardResponse(error, !safeMethods.has(request.method) || request.body !== null);
      throw error;
    }
  };
  return guarded as F;
}

function hostForms(address: string, port: number): string[] {
  const bare = address.toLowerCase().replace(/^\[|\]$/g, '');
  const host = bare.includes(':') ? `[${bare}]` : bare;
  return port === 80 ? [host, `${host}:80`] : [`${host}:${port}`];
}

const loopbackNames = ['localhost', '127.0.0.1', '::1'];

export function isLoopbackAddress(address: string): boolean {
  const bare = address.toLowerCase().replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(bare);
}

/**
 * The Host values a server bound to `address:port` answers to: that address, the loopback names
 * when it is on loopback, every interface address when bound to a wildcard, and the names given
 * with --server-name (bare, for a proxy on its default port, and with the port).
 */
export function allowedHostsFor(address: string, port: number, serverNames: readonly string[] = []): { hosts: Set<string>; origins: Set<string> } {
  const hosts = new Set<string>();
  const origins = new Set<string>();
  const addresses = new Set<string>([address]);
  if (isLoopbackAddress(address)) for (const name of loopbackNames) addresses.add(name);
  if (address === '0.0.0.0' || address === '::') {
    for (const name of loopbackNames) addresses.add(name);
    for (const entries of Object.values(networkInterfaces())) for (const entry of entries ?? []) addresses.add(entry.address.split('%')[0]!);
  }
  for (const each of addresses) {
    for (const form of hostForms(each, port)) {
      hosts.add(form);
      origins.add(`http://${form}`);
    }
  }
  for (const name of serverNames) {
    const lower = name.trim().toLowerCase();
    if (!lower) continue;
    hosts.add(lower);
    origins.add(`https://${lower}`);
    origins.add(`http://${lower}`);
    if (!/:\d+$/.test(lower)) {
      hosts.add(`${lower}:${port}`);
      origins.add(`http://${lower}:${port}`);
    }
  }
  return { hosts, origins };
}
