import { setTimeout as sleep } from 'node:timers/promises';
import { TorporError } from '../util/errors.ts';
import type { Credentials } from './credentials.ts';
import { apiHost, isLoopbackRegistry } from './reference.ts';

export interface RetryPolicy {
  /** Tries per request (connection errors, 5xx and 429 are retried). */
  attempts: number;
  /** First backoff; doubles each time (with jitter). */
  delayMs: number;
}

export const defaultRetryPolicy: RetryPolicy = { attempts: 5, delayMs: 500 };

export interface RegistryClientOptions {
  /** Allow plain HTTP to a registry that is not on loopback (like docker's insecure-registries). */
  insecure?: boolean;
  credentials?: Credentials;
  retry?: RetryPolicy;
}

export interface SendOptions {
  scope: string;
  headers?: Record<string, string>;
  method?: string;
  /** Makes the request body; called again for each retry, since a body stream is read once. */
  body?: () => Buffer | AsyncIterable<Uint8Array>;
}

interface Challenge {
  scheme: string;
  parameters: Record<string, string>;
}

function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const match = /^(\w+)\s*(.*)$/s.exec(header.trim());
  if (!match) return undefined;
  const parameters: Record<string, string> = {};
  for (const parameter of match[2]!.matchAll(/(\w+)="([^"]*)"/g)) parameters[parameter[1]!.toLowerCase()] = parameter[2]!;
  return { scheme: match[1]!.toLowerCase(), parameters };
}

const networkErrorCode = (error: unknown): string | undefined => {
  const cause = (error as { cause?: { code?: string } })?.cause;
  return cause?.code ?? (error as NodeJS.ErrnoException)?.code;
};

const transientCodes = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);

/** Whether a failure might go away by asking again (connection trouble, timeouts), unlike a bad name or port. */
export function isTransientNetworkError(error: unknown): boolean {
  if (error instanceof TorporError) return false;
  const code = networkErrorCode(error);
  if (code) return transientCodes.has(code);
  // A body cut off mid-stream surfaces as undici's "terminated", sometimes without a code.
  return error instanceof Error && /terminated|other side closed|socket/i.test(`${error.message} ${(error as { cause?: Error }).cause?.message ?? ''}`);
}

export function backoff(policy: RetryPolicy, failure: number): Promise<void> {
  const base = policy.delayMs * 2 ** (failure - 1);
  return sleep(base / 2 + (Math.random() * base) / 2);
}

/** The error bodies registries send: {"errors":[{"code":"MANIFEST_UNKNOWN","message":"…"}]}. */
export async function registryErrorText(response: Response): Promise<string> {
  try {
    const text = await response.text();
    const body = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> };
    const errors = (body.errors ?? []).map((error) => [error.code, error.message].filter(Boolean).join(': '));
    return errors.join('; ') || `HTTP ${response.status}`;
  } catch {
    return `HTTP ${response.status}`;
  }
}

/**
 * One registry, spoken to through the OCI distribution API: picks https or (loopback/insecure) http,
 * answers auth challenges (anonymous or credentialed bearer tokens, or basic), and retries
 * transient failures with backoff before giving up with an error that says what to do.
 */
export class RegistryClient {
  readonly registry: string;
  private readonly options: RegistryClientOptions;
  private readonly retry: RetryPolicy;
  private baseUrl?: string;
  /** Authorization header per scope; basic auth applies to every scope. */
  private readonly authorizations = new Map<string, string>();
  private basicAuthorization?: string;

  constructor(registry: string, options: RegistryClientOptions = {}) {
    this.registry = registry;
    this.options = options;
    this.retry = options.retry ?? defaultRetryPolicy;
  }

  get retryPolicy(): RetryPolicy {
    return this.retry;
  }

  private async base(): Promise<string> {
    if (this.baseUrl) return this.baseUrl;
    const host = apiHost(this.registry);
    if (!isLoopbackRegistry(this.registry) && !this.options.insecure) return (this.baseUrl = `https://${host}/v2`);
    // As docker does for insecure registries: https when it answers, plain http otherwise.
    try {
      await fetch(`https://${host}/v2/`, { signal: AbortSignal.timeout(3000) }).then((response) => response.body?.cancel());
      this.baseUrl = `https://${host}/v2`;
    } catch {
      this.baseUrl = `http://${host}/v2`;
    }
    return this.baseUrl;
  }

  private unreachable(error: unknown, attempts: number): TorporError {
    const code = networkErrorCode(error);
    const reason =
      code === 'ECONNREFUSED'
        ? 'connection refused'
        : code === 'ENOTFOUND' || code === 'EAI_AGAIN'
          ? 'host not found'
          : String((error as { cause?: Error })?.cause?.message ?? (error as Error)?.message ?? error);
    return new TorporError('registry-unreachable', `cannot reach registry ${this.registry} (${reason})${attempts > 1 ? ` after ${attempts} attempts` : ''}`, {
      hint:
        isLoopbackRegistry(this.registry) || this.options.insecure
          ? 'check that the registry is running at that address'
          : 'check the registry name and your network; a registry that speaks plain HTTP needs --insecure',
      cause: error,
    });
  }

  private async authenticate(challenge: Challenge | undefined, scope: string): Promise<void> {
    const credentials = this.options.credentials;
    if (challenge?.scheme === 'basic') {
      if (!credentials) throw this.unauthorized(false);
      this.basicAuthorization = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
      return;
    }
    if (challenge?.scheme !== 'bearer' || !challenge.parameters.realm) {
      throw new TorporError('registry-unauthorized', `registry ${this.registry} asks for an authentication torpor does not speak`, {
        hint: 'only basic and bearer-token registries are supported',
      });
    }
    const url = new URL(challenge.parameters.realm);
    if (challenge.parameters.service) url.searchParams.set('service', challenge.parameters.service);
    const wantedScope = scope || challenge.parameters.scope;
    if (wantedScope) url.searchParams.set('scope', wantedScope);
    const headers: Record<string, string> = {};
    if (credentials) headers.authorization = `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
    let response: Response | undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        response = await fetch(url, { headers });
        if (response.status < 500 || attempt >= this.retry.attempts) break;
        await response.body?.cancel();
      } catch (error) {
        if (attempt >= this.retry.attempts || !isTransientNetworkError(error)) throw this.unreachable(error, attempt);
      }
      await backoff(this.retry, attempt);
    }
    if (response.status === 401 || response.status === 403) throw this.unauthorized(!!credentials);
    if (!response.ok) {
      throw new TorporError('registry-error', `the token service of ${this.registry} answered ${await registryErrorText(response)}`, {
        hint: 'try again later',
      });
    }
    const body = (await response.json()) as { token?: string; access_token?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new TorporError('registry-error', `the token service of ${this.registry} sent no token`, { hint: 'try again later' });
    this.authorizations.set(scope, `Bearer ${token}`);
  }

  unauthorized(hadCredentials: boolean): TorporError {
    return new TorporError(
      'registry-unauthorized',
      hadCredentials ? `registry ${this.registry} refused the credentials` : `registry ${this.registry} requires authentication`,
      {
        hint: `run \`torpor login ${this.registry} -u USER --password-stdin\``,
      },
    );
  }

  /**
   * Sends one request, authenticating on a 401 and retrying connection errors, 5xx and 429.
   * Returns any other response as is (404s are for the caller to explain); the caller reads the body.
   */
  async send(path: string, options: SendOptions): Promise<Response> {
    return this.sendTo(`${await this.base()}${path}`, options);
  }

  /** The API root (https://host/v2 or http://host/v2), for resolving upload locations. */
  async apiRoot(): Promise<string> {
    return this.base();
  }

  /** Like send(), to an absolute URL the registry handed out (an upload location). */
  async sendTo(url: string, options: SendOptions): Promise<Response> {
    let authenticated = false;
    for (let attempt = 1; ; attempt++) {
      const headers: Record<string, string> = { ...options.headers };
      const authorization = this.authorizations.get(options.scope) ?? this.basicAuthorization;
      if (authorization) headers.authorization = authorization;
      let response: Response;
      try {
        const body = options.body?.();
        response = await fetch(url, { method: options.method ?? 'GET', headers, redirect: 'follow', body, ...(body ? { duplex: 'half' } : {}) } as RequestInit);
      } catch (error) {
        if (attempt >= this.retry.attempts || !isTransientNetworkError(error)) throw this.unreachable(error, attempt);
        await backoff(this.retry, attempt);
        continue;
      }
      if (response.status === 401) {
        await response.body?.cancel();
        if (authenticated) throw this.unauthorized(!!this.options.credentials);
        authenticated = true;
        await this.authenticate(parseChallenge(response.headers.get('www-authenticate')), options.scope);
        attempt--; // answering a challenge is not a failure
        continue;
      }
      if ((response.status >= 500 || response.status === 429) && attempt < this.retry.attempts) {
        await response.body?.cancel();
        await backoff(this.retry, attempt);
        continue;
      }
      if (response.status >= 500 || response.status === 429) {
        throw new TorporError('registry-error', `registry ${this.registry} keeps failing: ${await registryErrorText(response)} (after ${attempt} attempts)`, {
          hint: 'the registry is having trouble; try again later',
        });
      }
      if (response.status === 403) {
        await response.body?.cancel();
        throw this.unauthorized(!!this.options.credentials);
      }
      return response;
    }
  }

  /** Checks that the registry answers and the credentials (if any) are accepted: what `login` does. */
  async checkAccess(): Promise<void> {
    const response = await this.send('/', { scope: '' });
    await response.body?.cancel();
    if (!response.ok)
      throw new TorporError('registry-error', `${this.registry} does not look like a registry (GET /v2/ answered ${response.status})`, {
        hint: 'check the registry address',
      });
  }
}
