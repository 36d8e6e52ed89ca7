import { TorporError } from '../util/errors.ts';
import type { TokenGrant, TokenVerifier } from '../state/api-tokens.ts';

export interface AuthenticationPolicy {
  verifier: TokenVerifier;
  /** Maps a session name or id in a path to the session's id, so a one-session token matches either. */
  resolveSession?: (idOrName: string) => string | undefined;
}

const readMethods = new Set(['GET', 'HEAD']);

/** The session a path is about, and whether it is that session's own route (not a fork, not a listing). */
function sessionOfPath(path: string): { session: string; fork: boolean } | undefined {
  const match = /^\/(?:v1\/)?(?:sessions|logs)\/([^/]+)(\/[^/]*)?\/?$/.exec(path);
  if (!match) return undefined;
  let session: string;
  try {
    session = decodeURIComponent(match[1]!);
  } catch {
    return undefined;
  }
  return { session, fork: match[2] === '/fork' };
}

function scopeAllows(grant: TokenGrant, method: string, path: string, policy: AuthenticationPolicy): string | undefined {
  if (grant.kind === 'admin') return undefined;
  if (path === '/health') return undefined;
  if (grant.readOnly && !readMethods.has(method)) return `this token is read-only; ${method} is not allowed`;
  if (grant.session !== undefined) {
    const target = sessionOfPath(path);
    if (!target) return `this token is limited to session ${grant.session}; ${path} is not one of its routes`;
    // A fork creates a session the token could not reach afterwards: creating sessions takes a full token.
    if (target.fork && method !== 'GET') return `this token is limited to session ${grant.session} and cannot fork it`;
    const resolve = (value: string) => policy.resolveSession?.(value) ?? value;
    if (resolve(target.session) !== resolve(grant.session)) return `this token is limited to session ${grant.session}`;
  }
  return undefined;
}

/** Throws unless the request carries a valid bearer token whose scope allows it. */
export function authenticate(request: Request, path: string, policy: AuthenticationPolicy): TokenGrant {
  const header = request.headers.get('authorization');
  const match = header ? /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(header) : null;
  const hint =
    'send `Authorization: Bearer TOKEN`; `torpor serve` keeps its token in the state directory (api/token), and the torpor CLI finds it there, in TORPOR_TOKEN or in --token';
  if (!match) throw new TorporError('unauthorized', header ? 'the Authorization header is not a bearer token' : 'this API needs a token', { hint });
  const grant = policy.verifier.verify(match[1]!);
  if (!grant) throw new TorporError('unauthorized', 'the token is not valid for this server', { hint });
  const refusal = scopeAllows(grant, request.method, path, policy);
  if (refusal)
    throw new TorporError('token-scope', refusal, { hint: 'use a token whose scope covers this request (`torpor token create`), or the full-access token' });
  return grant;
}
