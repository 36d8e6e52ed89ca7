import type { AppendOptions, AppendResult, ContextLogClient, ReadOptions, ReadResult, SessionInfo, TailOptions } from './context-log.ts';
import type { StoredEntry } from './entry.ts';
import { ContextLogError, StorageUnavailableError } from './errors.ts';
import type { ModelMessage, ToModelMessagesOptions } from './model-messages.ts';
import { clientToken } from '../state/api-tokens.ts';
import { stateDirectory } from './state-directory.ts';

export interface RemoteContextLogOptions {
  /** Bearer token; default TORPOR_TOKEN, else (for a loopback URL) the local state directory's server token. */
  token?: string;
  environment?: NodeJS.ProcessEnv;
}

/**
 * The context log of a running `torpor serve`, over its HTTP API. Same operations as the embedded
 * log, so the CLI works the same against either; errors keep their code, status and message.
 */
export class RemoteContextLog implements ContextLogClient {
  readonly baseUrl: string;
  private readonly token: string | undefined;

  constructor(baseUrl: string, options: RemoteContextLogOptions = {}) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    const environment = options.environment ?? process.env;
    this.token = clientToken({ explicit: options.token, environment, url: this.baseUrl, stateDirectory: stateDirectory(environment) });
  }

  private async request(path: string, init: RequestInit = {}): Promise<Response> {
    let response: Response;
    try {
      const headers = new Headers(init.headers);
      if (this.token) headers.set('authorization', `Bearer ${this.token}`);
      response = await fetch(`${this.baseUrl}${path}`, { ...init, headers });
    } catch (error) {
      if ((error as Error).name === 'AbortError') throw error;
      throw new StorageUnavailableError(`cannot reach the torpor server at ${this.baseUrl}: ${(error as Error).message}`, { cause: error });
    }
    if (response.ok) return response;
    let body: { error?: { code?: string; message?: string } & Record<string, unknown> } = {};
    try {
      body = (await response.json()) as typeof body;
    } catch {}
    const { code, message, hint, ...details } = body.error ?? {};
    throw new ContextLogError(code ?? 'http-error', response.status, message ?? `HTTP ${response.status} from ${this.baseUrl}${path}`, details, {
      hint: typeof hint === 'string' ? hint : undefined,
    });
  }

  private static session(sessionId: string): string {
    return encodeURIComponent(sessionId);
  }

  async append(sessionId: string, entries: readonly unknown[], options: AppendOptions = {}): Promise<AppendResult> {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (options.expectedOffset !== undefined) headers['Expected-Offset'] = String(options.expectedOffset);
    if (options.producer) {
      headers['Producer-Id'] = options.producer.id;
      headers['Producer-Epoch'] = String(options.producer.epoch);
      headers['Producer-Seq'] = String(options.producer.sequence);
    }
    const response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}/entries`, { method: 'POST', headers, body: JSON.stringify(entries) });
    return (await response.json()) as AppendResult;
  }

  async read(sessionId: string, options: ReadOptions = {}): Promise<ReadResult> {
    const entries: StoredEntry[] = [];
    let from = options.from ?? 0;
    // The server caps a page; keep paging until the caller's range or limit is satisfied.
    for (;;) {
      const query = new URLSearchParams({ from: String(from) });
      if (options.to !== undefined) query.set('to', String(options.to));
      const remaining = options.limit === undefined ? 10_000 : Math.min(options.limit - entries.length, 10_000);
      query.set('limit', String(remaining));
      const response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}/entries?${query}`);
      const page = (await response.json()) as ReadResult;
      entries.push(...page.entries);
      from = page.nextOffset;
      const done = page.entries.length === 0 || page.entries.length < remaining || (options.limit !== undefined && entries.length >= options.limit);
      if (done) return { entries, nextOffset: from, endOffset: page.endOffset };
    }
  }

  async *tail(sessionId: string, options: TailOptions = {}): AsyncGenerator<StoredEntry> {
    let from = options.from ?? 0;
    const signal = options.signal;
    while (!signal?.aborted) {
      const query = new URLSearchParams({ from: String(from), live: 'long-poll', timeout: '30000' });
      let response: Response;
      try {
        response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}/entries?${query}`, { signal });
      } catch (error) {
        if (signal?.aborted) return;
        throw error;
      }
      if (response.status === 204) continue;
      const page = (await response.json()) as ReadResult;
      for (const stored of page.entries) {
        if (signal?.aborted) return;
        yield stored;
      }
      from = page.nextOffset;
    }
  }

  async fork(sessionId: string, atOffset: number, options: { name?: string } = {}): Promise<SessionInfo> {
    const response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}/fork`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ offset: atOffset, name: options.name }),
    });
    return (await response.json()) as SessionInfo;
  }

  async sessions(): Promise<SessionInfo[]> {
    const response = await this.request('/v1/logs');
    return ((await response.json()) as { sessions: SessionInfo[] }).sessions;
  }

  async describe(sessionId: string): Promise<SessionInfo> {
    const response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}`);
    return (await response.json()) as SessionInfo;
  }

  async toModelMessages(sessionId: string, options: ToModelMessagesOptions = {}): Promise<ModelMessage[]> {
    void options;
    const response = await this.request(`/v1/logs/${RemoteContextLog.session(sessionId)}/messages?format=ai`);
    return ((await response.json()) as { messages: ModelMessage[] }).messages;
  }

  async close(): Promise<void> {}
}
