import { chmodSync, closeSync, linkSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeSync, fsyncSync } from 'node:fs';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { join } from 'node:path';
import { TorporError } from '../util/errors.ts';

/**
 * The API's bearer tokens, kept in the state directory:
 *   api/        0700
 *   api/token   0600  the server's full-access token, in clear, so the local CLI can use it
 *   api/tokens.json 0600  scoped tokens (read-only, one session), stored only as SHA-256 digests
 * The full-access token is as sensitive as the state directory itself: whoever can read it can
 * already read every session's env from the session store, so storing it in clear adds nothing.
 * Scoped tokens are handed to less trusted clients, so the server keeps only their digests.
 */
export interface ApiTokenPaths {
  directory: string;
  adminToken: string;
  scopedTokens: string;
}

export function apiTokenPaths(stateDirectory: string): ApiTokenPaths {
  const directory = join(stateDirectory, 'api');
  return { directory, adminToken: join(directory, 'token'), scopedTokens: join(directory, 'tokens.json') };
}

/** What a presented token may do. */
export type TokenGrant = { kind: 'admin' } | { kind: 'scoped'; id: string; readOnly: boolean; session?: string };

export interface ScopedTokenRecord {
  id: string;
  /** Hex SHA-256 of the whole token string. */
  digest: string;
  readOnly: boolean;
  session?: string;
  createdAt: string;
}

const tokenShape = /^torpor_[A-Za-z0-9_-]{20,200}$/;

function newSecret(): string {
  return randomBytes(32).toString('base64url');
}

function digestOf(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

function ensurePrivateDirectory(directory: string): void {
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  // mkdir's mode does not change a directory that already exists (or one made under a loose umask).
  chmodSync(directory, 0o700);
}

/** Writes `text` to a new file with mode 0600 and moves it into place; with `exclusive`, never replaces. */
function writePrivateFile(path: string, text: string, exclusive: boolean): boolean {
  const temporary = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  const descriptor = openSync(temporary, 'wx', 0o600);
  try {
    writeSync(descriptor, text);
    fsyncSync(descriptor);
  } finally {
    closeSync(descriptor);
  }
  try {
    if (!exclusive) {
      renameSync(temporary, path);
      return true;
    }
    // link() fails if the target exists: of two servers starting at once, exactly one token wins.
    try {
      linkSync(temporary, path);
      return true;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw error;
    }
  } finally {
    rmSync(temporary, { force: true });
  }
}

function readTokenFile(path: string): string | undefined {
  let text: string;
  try {
    const mode = statSync(path).mode & 0o777;
    // A token others can read is no secret: tighten it rather than keep serving with it exposed.
    if (mode & 0o077) chmodSync(path, 0o600);
    text = readFileSync(path, 'utf8').trim();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  if (!tokenShape.test(text)) {
    throw new TorporError('token-corrupt', `the API token file ${path} does not hold a torpor token`, {
      hint: `delete it and restart \`torpor serve\` to create a new one (clients then need the new token)`,
    });
  }
  return text;
}

/** The full-access token of the state directory's server, if one was created. */
export function readAdminToken(stateDirectory: string): string | undefined {
  return readTokenFile(apiTokenPaths(stateDirectory).adminToken);
}

/** The full-access token; created (random, 0600, in a 0700 directory) on first use. */
export function ensureAdminToken(stateDirectory: string): { token: string; created: boolean; path: string } {
  const paths = apiTokenPaths(stateDirectory);
  ensurePrivateDirectory(paths.directory);
  const existing = readTokenFile(paths.adminToken);
  if (existing) return { token: existing, created: false, path: paths.adminToken };
  const created = writePrivateFile(paths.adminToken, `torpor_${newSecret()}\n`, true);
  return { token: readTokenFile(paths.adminToken)!, created, path: paths.adminToken };
}

/**
 * Makes `token` the state directory's full-access token: a cluster node serves with the cluster's
 * shared token, and the CLI on that node finds it where it always looks.
 */
export function writeAdminToken(stateDirectory: string, token: string): void {
  const paths = apiTokenPaths(stateDirectory);
  ensurePrivateDirectory(paths.directory);
  if (readTokenFile(paths.adminToken) === token) return;
  writePrivateFile(paths.adminToken, `${token}\n`, false);
}

function readScopedTokens(path: string): ScopedTokenRecord[] {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  try {
    const parsed = JSON.parse(text) as { tokens?: ScopedTokenRecord[] };
    return Array.isArray(parsed.tokens) ? parsed.tokens.filter((record) => typeof record.digest === 'string' && /^[0-9a-f]{64}$/.test(record.digest)) : [];
  } catch {
    throw new TorporError('token-corrupt', `the scoped token file ${path} is not valid JSON`, {
      hint: 'delete it (every scoped token is then revoked) and create new ones with `torpor token create`',
    });
  }
}

export function listScopedTokens(stateDirectory: string): ScopedTokenRecord[] {
  return readScopedTokens(apiTokenPaths(stateDirectory).scopedTokens);
}

/** A new scoped token. The clear token is returned once and never stored. */
export function createScopedToken(stateDirectory: string, scope: { readOnly: boolean; session?: string }): { token: string; record: ScopedTokenRecord } {
  if (!scope.readOnly && scope.session === undefined) {
    throw new TorporError('token-scope-missing', 'a scoped token needs --read-only, --session ID, or both', {
      hint: 'the full-access token is in the state directory (api/token); share it only with clients you trust fully',
    });
  }
  const paths = apiTokenPaths(stateDirectory);
  ensurePrivateDirectory(paths.directory);
  const id = randomBytes(6).toString('hex');
  const token = `torpor_${newSecret()}`;
  const record: ScopedTokenRecord = {
    id,
    digest: digestOf(token).toString('hex'),
    readOnly: scope.readOnly,
    ...(scope.session ? { session: scope.session } : {}),
    createdAt: new Date().toISOString(),
  };
  const tokens = [...readScopedTokens(paths.scopedTokens), record];
  writePrivateFile(paths.scopedTokens, `${JSON.stringify({ version: 1, tokens }, null, 2)}\n`, false);
  return { token, record };
}

export function revokeScopedToken(stateDirectory: string, id: string): boolean {
  const paths = apiTokenPaths(stateDirectory);
  const tokens = readScopedTokens(paths.scopedTokens);
  const kept = tokens.filter((record) => record.id !== id);
  if (kept.length === tokens.length) return false;
  writePrivateFile(paths.scopedTokens, `${JSON.stringify({ version: 1, tokens: kept }, null, 2)}\n`, false);
  return true;
}

/**
 * Checks presented tokens for the server. Comparisons are between SHA-256 digests with
 * timingSafeEqual, and every stored token is compared (no early exit), so response time says
 * nothing about how much of a guess was right or which token it was close to.
 * Scoped tokens are re-read when their file changes (checked at most once a second), so
 * `torpor token create/rm` needs no restart.
 */
export class TokenVerifier {
  private readonly adminDigest: Buffer;
  private scoped: Array<ScopedTokenRecord & { digestBytes: Buffer }> = [];
  private scopedFileStamp = '';

  constructor(
    adminToken: string,
    private readonly stateDirectory?: string,
  ) {
    this.adminDigest = digestOf(adminToken);
  }

  private lastRefresh = 0;

  /** Re-reads the scoped tokens if their file changed; returns whether it looked. */
  private refreshScoped(force: boolean): boolean {
    if (!this.stateDirectory) return false;
    // At most one stat a second on the way in, so a revocation takes effect within a second;
    // an unknown token looks at once, so a token just created works on its first request.
    const now = Date.now();
    if (!force && now - this.lastRefresh < 1000) return false;
    this.lastRefresh = now;
    const path = apiTokenPaths(this.stateDirectory).scopedTokens;
    let stamp = 'absent';
    try {
      const stats = statSync(path);
      stamp = `${stats.mtimeMs}:${stats.size}:${stats.ino}`;
    } catch {}
    if (stamp === this.scopedFileStamp) return true;
    this.scopedFileStamp = stamp;
    try {
      this.scoped = readScopedTokens(path).map((record) => ({ ...record, digestBytes: Buffer.from(record.digest, 'hex') }));
    } catch {
      // A broken file revokes every scoped token rather than guessing; the full token still works.
      this.scoped = [];
    }
    return true;
  }

  private match(digest: Buffer): TokenGrant | undefined {
    let grant: TokenGrant | undefined;
    if (timingSafeEqual(digest, this.adminDigest)) grant = { kind: 'admin' };
    for (const record of this.scoped) {
      if (timingSafeEqual(digest, record.digestBytes) && !grant) grant = { kind: 'scoped', id: record.id, readOnly: record.readOnly, session: record.session };
    }
    return grant;
  }

  verify(presented: string): TokenGrant | undefined {
    const digest = digestOf(presented);
    const looked = this.refreshScoped(false);
    const grant = this.match(digest);
    if (grant || looked) return grant;
    return this.refreshScoped(true) ? this.match(digest) : undefined;
  }
}

function isLoopbackUrl(url: string): boolean {
  try {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
  } catch {
    return false;
  }
}

/**
 * The token a client sends to `url`: --token, else TORPOR_TOKEN, else the full-access token of
 * the local state directory. The last one only goes to loopback URLs: a server elsewhere is not
 * the one that created it, and must not be handed the local server's key.
 */
export function clientToken(options: { explicit?: string; environment: NodeJS.ProcessEnv; url: string; stateDirectory: string }): string | undefined {
  if (options.explicit) return options.explicit.trim();
  if (options.environment.TORPOR_TOKEN) return options.environment.TORPOR_TOKEN.trim();
  if (!isLoopbackUrl(options.url)) return undefined;
  try {
    return readAdminToken(options.stateDirectory);
  } catch {
    return undefined;
  }
}
