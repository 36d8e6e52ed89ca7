import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { streamSSE } from 'hono/streaming';
import {
  ContextLogError,
  InvalidArgumentError,
  entriesToAnthropic,
  entriesToModelMessages,
  entriesToOpenAIChat,
  type ContextLog,
  type ProducerStamp,
} from '../context/index.ts';
import { TorporError } from '../util/errors.ts';
import type { SessionManager } from '../session/session-manager.ts';
import { answerError, answerNotFound } from './errors.ts';
import { headers } from './headers.ts';
import { producerHeaderValues } from './producer-headers.ts';
import { createMachineRoutes } from './machine-routes.ts';
import { createSessionTurnRoutes } from './session-turn-routes.ts';
import { createSessionRoutes } from './session-routes.ts';
import { createDashboardRoutes } from '../dashboard/dashboard-routes.ts';

export { headers } from './headers.ts';

export interface ApiOptions {
  log: ContextLog;
  /** Longest a long-poll may wait, in milliseconds. Default 60 s. */
  maxLongPollMs?: number;
  /** Interval of SSE keep-alive comments, so idle proxies do not cut the stream. Default 15 s. */
  heartbeatMs?: number;
  /** Largest request body accepted. Default 128 MiB (the blob limit plus JSON overhead). */
  maxBodyBytes?: number;
  /** Agent sessions to serve under /v1/sessions (none: the API serves the context log only). */
  sessions?: SessionManager;
}

function parseCount(name: string, value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError(`${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

function producerFrom(context: Context): ProducerStamp | undefined {
  const values = producerHeaderValues(context, (message) => new InvalidArgumentError(message));
  return values && { id: values.id, epoch: parseCount(headers.producerEpoch, values.epoch)!, sequence: parseCount(headers.producerSequence, values.sequence)! };
}

/** Reads the entries of an append: a JSON array, `{ "entries": [...] }`, one object, or NDJSON. */
async function entriesFrom(context: Context): Promise<unknown[]> {
  const text = await context.req.text();
  if (text.trim() === '') throw new InvalidArgumentError('the request body is empty; send a JSON array of entries');
  const type = context.req.header('content-type') ?? '';
  if (type.includes('ndjson') || type.includes('jsonl')) {
    return text
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line, index) => {
        try {
          return JSON.parse(line);
        } catch {
          throw new ContextLogError('invalid-json', 400, `line ${index + 1} of the body is not JSON; send one JSON entry per line`);
        }
      });
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new ContextLogError('invalid-json', 400, `the body is not JSON (${(error as Error).message}); send a JSON array of entries`);
  }
  if (Array.isArray(body)) return body;
  if (body && typeof body === 'object' && Array.isArray((body as { entries?: unknown }).entries)) return (body as { entries: unknown[] }).entries;
  return [body];
}

/**
 * The whole HTTP API: the context log under /v1/logs and, when given a session manager, agent
 * sessions under /v1/sessions. Errors are answered in one place (`answerError`).
 */
export function createApp(options: ApiOptions): Hono {
  const { log } = options;
  const maxLongPollMs = options.maxLongPollMs ?? 60_000;
  const heartbeatMs = options.heartbeatMs ?? 15_000;
  const app = new Hono();

  app.onError(answerError);
  app.notFound(answerNotFound);

  app.get('/health', (context) => context.json({ ok: true, storage: log.storage.kind }));

  app.get('/v1/logs', async (context) => context.json({ sessions: await log.sessions() }));

  app.get('/v1/logs/:sessionId', async (context) => context.json(await log.describe(context.req.param('sessionId'))));

  app.post(
    '/v1/logs/:sessionId/entries',
    bodyLimit({
      maxSize: options.maxBodyBytes ?? 128 * 1024 * 1024,
      onError: () => {
        throw new TorporError('body-too-large', 'the request body is too large; split the batch or store large data by reference', { status: 413 });
      },
    }),
    async (context) => {
      const sessionId = context.req.param('sessionId');
      const producer = producerFrom(context);
      const expectedOffset = parseCount(headers.expectedOffset, context.req.header(headers.expectedOffset) ?? context.req.query('expectedOffset'));
      const entries = await entriesFrom(context);
      const result = await log.append(sessionId, entries, { expectedOffset, producer });
      context.header(headers.nextOffset, String(result.nextOffset));
      if (result.duplicate) context.header(headers.duplicate, 'true');
      if (producer) {
        context.header(headers.producerEpoch, String(producer.epoch));
        context.header(headers.producerSequence, String(producer.sequence));
      }
      return context.json(result, 200);
    },
  );

  app.get('/v1/logs/:sessionId/entries', async (context) => {
    const sessionId = context.req.param('sessionId');
    const live = context.req.query('live');
    const to = parseCount('to', context.req.query('to'));
    const limit = Math.min(parseCount('limit', context.req.query('limit')) ?? 1000, 10_000);
    let from = parseCount('from', context.req.query('from')) ?? 0;

    if (live === 'sse') {
      // A reconnecting EventSource sends the id of the last event it saw: resume right after it.
      const lastEventId = parseCount('Last-Event-ID', context.req.header('Last-Event-ID'));
      if (lastEventId !== undefined) from = lastEventId + 1;
      await log.read(sessionId, { from, limit: 0 }); // unknown session or offset: fail before streaming
      context.header('Cache-Control', 'no-store');
      context.header('X-Accel-Buffering', 'no');
      return streamSSE(context, async (stream) => {
        const controller = new AbortController();
        stream.onAbort(() => controller.abort());
        const heartbeat = setInterval(() => void stream.write(': keep-alive\n\n').catch(() => controller.abort()), heartbeatMs);
        try {
          let next = from;
          while (!controller.signal.aborted) {
            const result = await log.read(sessionId, { from: next, limit });
            for (const stored of result.entries) {
              await stream.writeSSE({ id: String(stored.offset), event: 'entry', data: JSON.stringify(stored) });
            }
            next = result.nextOffset;
            if (result.entries.length < limit) {
              await stream.writeSSE({ event: 'control', data: JSON.stringify({ nextOffset: next, upToDate: next >= result.endOffset }) });
              await log.storage.waitForAppend(sessionId, next, controller.signal);
            }
          }
        } finally {
          clearInterval(heartbeat);
        }
      });
    }

    if (live === 'long-poll') {
      const timeoutMs = Math.min(parseCount('timeout', context.req.query('timeout')) ?? 30_000, maxLongPollMs);
      const controller = new AbortController();
      context.req.raw.signal?.addEventListener('abort', () => controller.abort(), { once: true });
      const result = await log.readOrWait(sessionId, { from, to, limit, timeoutMs, signal: controller.signal });
      context.header(headers.nextOffset, String(result.nextOffset));
      context.header(headers.endOffset, String(result.endOffset));
      context.header('Cache-Control', 'no-store');
      if (result.entries.length === 0) {
        context.header(headers.upToDate, 'true');
        return context.body(null, 204);
      }
      if (result.nextOffset >= result.endOffset) context.header(headers.upToDate, 'true');
      return context.json(result);
    }

    if (live !== undefined) throw new InvalidArgumentError(`live must be "sse" or "long-poll", got ${JSON.stringify(live)}`);
    const result = await log.read(sessionId, { from, to, limit });
    context.header(headers.nextOffset, String(result.nextOffset));
    context.header(headers.endOffset, String(result.endOffset));
    if (result.nextOffset >= result.endOffset) context.header(headers.upToDate, 'true');
    return context.json(result);
  });

  app.post('/v1/logs/:sessionId/fork', async (context) => {
    let body: { offset?: unknown; name?: unknown };
    try {
      body = (await context.req.json()) as typeof body;
    } catch {
      throw new ContextLogError('invalid-json', 400, 'the body is not JSON; send {"offset": N, "name": "optional-new-id"}');
    }
    if (typeof body?.offset !== 'number') throw new InvalidArgumentError('send {"offset": N} with the offset to fork at');
    if (body.name !== undefined && typeof body.name !== 'string') throw new InvalidArgumentError('name must be a string');
    const session = await log.fork(context.req.param('sessionId'), body.offset, { name: body.name });
    return context.json(session, 201);
  });

  app.get('/v1/logs/:sessionId/messages', async (context) => {
    const sessionId = context.req.param('sessionId');
    const format = context.req.query('format') ?? 'ai';
    const entries = await log.contextEntries(sessionId);
    if (format === 'ai') return context.json({ messages: entriesToModelMessages(entries) });
    if (format === 'openai') return context.json({ messages: entriesToOpenAIChat(entries) });
    if (format === 'anthropic') return context.json(entriesToAnthropic(entries));
    throw new InvalidArgumentError(`format must be ai, openai or anthropic, got ${JSON.stringify(format)}`);
  });

  if (options.sessions) {
    app.route('/v1/sessions', createSessionRoutes(options.sessions));
    app.route('/v1/sessions', createSessionTurnRoutes(options.sessions));
    app.route('/v1/machines', createMachineRoutes({ pool: options.sessions.supervisorPool }));
    // The server owns the token (api/token in its state directory); the dashboard only checks it.
    app.route('/', createDashboardRoutes({ sessions: options.sessions, heartbeatMs, ensureToken: false }));
  }
  return app;
}
