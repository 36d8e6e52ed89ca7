import { TorporConnectionError, errorFromResponse } from './errors.ts';

export interface TorporOptions {
  /** The server, e.g. http://127.0.0.1:7070. Default: TORPOR_URL, else http://127.0.0.1:7070. */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer <token>`. Default: TORPOR_TOKEN. */
  token?: string;
  /** A fetch to use instead of the global one (tests, proxies, edge runtimes). */
  fetch?: typeof fetch;
  /** Headers sent with every request. */
  headers?: Record<string, string>;
}

/** Reads an environment variable where there is one (Node, Bun, Deno); browsers have none. */
function environment(name: string): string | undefined {
  const process = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  const value = process?.env?.[name];
  return value === '' ? undefined : value;
}

/** The HTTP layer every resource shares: base URL, bearer token, JSON, errors as typed classes. */
export class Transport {
  readonly baseUrl: string;
  private readonly token?: string;
  private readonly fetchFunction: typeof fetch;
  private readonly extraHeaders: Record<string, string>;

  constructor(options: TorporOptions = {}) {
    const baseUrl = options.baseUrl ?? environment('TORPOR_URL') ?? 'http://127.0.0.1:7070';
    try {
      new URL(baseUrl);
    } catch {
      throw new TypeError(`baseUrl must be an absolute http(s) URL such as http://127.0.0.1:7070, got ${JSON.stringify(baseUrl)}`);
    }
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = options.token ?? environment('TORPOR_TOKEN');
    this.fetchFunction = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.extraHeaders = options.headers ?? {};
  }

  url(path: string): string {
    return `${this.baseUrl}${path}`;
  }

  headers(extra: Record<string, string> = {}): Record<string, string> {
    return { ...this.extraHeaders, ...(this.token ? { authorization: `Bearer ${this.token}` } : {}), ...extra };
  }

  /** A raw request: errors from the network become TorporConnectionError, error statuses typed errors. */
  async fetch(path: string, init: RequestInit & { what: string; headers?: Record<string, string> }): Promise<Response> {
    let response: Response;
    try {
      response = await this.fetchFunction(this.url(path), { ...init, headers: this.headers(init.headers) });
    } catch (error) {
      if ((error as Error).name === 'AbortError') throw error;
      throw new TorporConnectionError('no-server', `cannot reach the torpor server at ${this.baseUrl}: ${(error as Error).message}`, {
        hint: 'is `torpor serve` running? set TORPOR_URL or pass { baseUrl }',
        cause: error,
      });
    }
    if (!response.ok) throw await errorFromResponse(response, init.what);
    return response;
  }

  /** A JSON request; 204 answers undefined. */
  async json<T>(method: string, path: string, body?: unknown, what = `${method} ${path}`): Promise<T> {
    const response = await this.fetch(path, {
      method,
      what,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 204) return undefined as T;
    return (await response.json()) as T;
  }
}

export const encode = encodeURIComponent;
