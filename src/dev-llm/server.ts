import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { conversationKey, countTokens, decideAnswer, promptTokens, type Answer, type ChatRequest } from './script.ts';

export const devLlmModel = 'torpor-dev';

export interface DevLlmOptions {
  port?: number;
  host?: string;
  /** Called for each request, for a log line; nothing by default. */
  onRequest?: (summary: { method: string; path: string; status: number; answer?: Answer['kind'] }) => void;
  /** Delay between streamed chunks, to make streaming visible in demos. */
  chunkDelayMs?: number;
}

export interface DevLlmServer {
  /** Base URL for OpenAI-compatible clients, ending in /v1. */
  url: string;
  port: number;
  host: string;
  close(): Promise<void>;
}

const maxBodyBytes = 32 * 1024 * 1024;

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBodyBytes) {
        reject(new Error('request body too large'));
        request.destroy();
      } else chunks.push(chunk);
    });
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

function sendJson(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  response.end(text);
}

function openAiError(response: ServerResponse, status: number, message: string, type: string, headers: Record<string, string> = {}): void {
  sendJson(response, status, { error: { message, type, code: type, param: null } }, headers);
}

function validRequest(value: unknown): value is ChatRequest {
  if (!value || typeof value !== 'object') return false;
  const messages = (value as { messages?: unknown }).messages;
  return (
    Array.isArray(messages) && messages.length > 0 && messages.every((message) => message && typeof message === 'object' && typeof message.role === 'string')
  );
}

/** Splits text into small pieces, as a real model streams tokens, keeping whitespace attached. */
function pieces(text: string): string[] {
  return text.match(/\S+\s*|\s+/g) ?? [];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A deterministic OpenAI-compatible chat server for tests and offline demos (no provider is needed):
 * POST /v1/chat/completions (plain and `stream: true`) and GET /v1/models. What it answers is scripted
 * by the last user message; see `script.ts`.
 */
export async function startDevLlm(options: DevLlmOptions = {}): Promise<DevLlmServer> {
  const rateLimited = new Set<string>();
  let sequence = 0;
  const report = options.onRequest ?? (() => {});

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    const path = (request.url ?? '/').split('?')[0].replace(/\/+$/, '');
    const method = request.method ?? 'GET';
    if (method === 'GET' && (path === '/v1/models' || path === '/models')) {
      sendJson(response, 200, { object: 'list', data: [{ id: devLlmModel, object: 'model', created: 0, owned_by: 'torpor' }] });
      return report({ method, path, status: 200 });
    }
    if (path !== '/v1/chat/completions' && path !== '/chat/completions') {
      openAiError(response, 404, `no route ${method} ${path}; try POST /v1/chat/completions or GET /v1/models`, 'not_found');
      return report({ method, path, status: 404 });
    }
    if (method !== 'POST') {
      openAiError(response, 405, 'use POST', 'method_not_allowed', { allow: 'POST' });
      return report({ method, path, status: 405 });
    }
    let body: unknown;
    try {
      body = JSON.parse(await readBody(request));
    } catch (error) {
      openAiError(response, 400, `the body is not JSON: ${(error as Error).message}`, 'invalid_request_error');
      return report({ method, path, status: 400 });
    }
    if (!validRequest(body)) {
      openAiError(response, 400, 'expected {model, messages: [{role, content}, ...]} with at least one message', 'invalid_request_error');
      return report({ method, path, status: 400 });
    }
    const chat = body;
    const answer = decideAnswer(chat, {
      alreadyRateLimited: (key) => rateLimited.has(key),
    });
    if (answer.kind === 'rate-limit') {
      rateLimited.add(conversationKey(chat));
      const retryAfter = answer.httpDate
        ? new Date(Math.ceil((Date.now() + answer.retryAfterSeconds * 1000) / 1000) * 1000).toUTCString()
        : String(answer.retryAfterSeconds);
      openAiError(response, 429, `Rate limit reached; retry after ${answer.retryAfterSeconds} s.`, 'rate_limit_exceeded', { 'retry-after': retryAfter });
      return report({ method, path, status: 429, answer: answer.kind });
    }

    sequence += 1;
    const id = `chatcmpl-dev-${sequence}`;
    const created = Math.floor(Date.now() / 1000);
    const model = typeof chat.model === 'string' && chat.model ? chat.model : devLlmModel;
    const input = promptTokens(chat);
    const toolCall = answer.kind === 'tool-call' ? answer.toolCall : undefined;
    const text = answer.text ?? '';
    const reasoning = answer.kind === 'text' ? answer.reasoning : undefined;
    const output =
      countTokens(text) + countTokens(reasoning ?? '') + (toolCall ? countTokens(toolCall.name) + countTokens(JSON.stringify(toolCall.arguments)) : 0);
    const usage = { prompt_tokens: input, completion_tokens: output, total_tokens: input + output };
    const finishReason = toolCall ? 'tool_calls' : 'stop';
    const openAiToolCall = toolCall && { id: toolCall.id, type: 'function', function: { name: toolCall.name, arguments: JSON.stringify(toolCall.arguments) } };

    if (!chat.stream) {
      const message: Record<string, unknown> = { role: 'assistant', content: text || null };
      if (reasoning) message.reasoning_content = reasoning;
      if (openAiToolCall) message.tool_calls = [openAiToolCall];
      sendJson(response, 200, {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: [{ index: 0, message, finish_reason: finishReason, logprobs: null }],
        usage,
      });
      return report({ method, path, status: 200, answer: answer.kind });
    }

    response.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const chunk = (delta: Record<string, unknown>, finish: string | null = null, extra: Record<string, unknown> = {}) =>
      `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }], ...extra })}\n\n`;
    const write = async (data: string) => {
      if (response.destroyed) return;
      response.write(data);
      if (options.chunkDelayMs) await sleep(options.chunkDelayMs);
    };
    await write(chunk({ role: 'assistant', content: '' }));
    if (reasoning) for (const piece of pieces(reasoning)) await write(chunk({ reasoning_content: piece }));
    for (const piece of pieces(text)) await write(chunk({ content: piece }));
    if (openAiToolCall) {
      // Like OpenAI: the first delta names the call, the arguments follow in fragments.
      await write(
        chunk({ tool_calls: [{ index: 0, id: openAiToolCall.id, type: 'function', function: { name: openAiToolCall.function.name, arguments: '' } }] }),
      );
      const args = openAiToolCall.function.arguments;
      for (let start = 0; start < args.length; start += 16)
        await write(chunk({ tool_calls: [{ index: 0, function: { arguments: args.slice(start, start + 16) } }] }));
    }
    await write(chunk({}, finishReason));
    await write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, choices: [], usage })}\n\n`);
    await write('data: [DONE]\n\n');
    response.end();
    report({ method, path, status: 200, answer: answer.kind });
  };

  const server: Server = createServer((request, response) => {
    handle(request, response).catch((error: Error) => {
      if (!response.headersSent) openAiError(response, 500, error.message, 'server_error');
      else response.destroy(error);
    });
  });
  // An agent's steps reuse one keep-alive connection, with a tool run in its VM between two calls.
  // Node's default closes an idle connection after 5 s: a tool step longer than that (a loaded TCG
  // guest) met a connection the server was closing, and the turn failed with "other side closed".
  // 65 s, as `torpor serve` keeps.
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  const host = options.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHost = host.includes(':') ? `[${host}]` : host === '0.0.0.0' ? '127.0.0.1' : host;
  return {
    url: `http://${urlHost}:${port}/v1`,
    port,
    host,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
