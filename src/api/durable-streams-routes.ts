import type { Context, Hono } from 'hono';
import { Hono as HonoApp } from 'hono';
import { stream as streamBody } from 'hono/streaming';
import { join } from 'node:path';
import { ContextLogError, ProducerFencedError, ProducerSequenceGapError, type ContextLog } from '../context/index.ts';
import { stateDirectory } from '../context/state-directory.ts';
import { DurableStreamStore, type AppendDecision, type ProducerStamp, type StreamConfig, type StreamMetadata } from './durable-stream-store.ts';
import { producerHeaderValues } from './producer-headers.ts';

/**
 * The Durable Streams HTTP protocol under /v1/stream/…, beside torpor's own routes, so that
 * @durable-streams/client and browsers read with offsets, long-poll and SSE, and resume exactly
 * where they stopped:
 *   /v1/stream/logs/<session>            a session's context log (JSON messages = stored entries;
 *                                          POST appends entries, with idempotent producers)
 *   /v1/stream/sessions/<id>/events      a session's turn events, recorded as they stream (read-only)
 *   /v1/stream/<any other path>          general-purpose streams (create, append, close, fork, delete)
 * Offsets are "<16 digits>_<16 digits>" (the second part is a byte position, or the log offset):
 * fixed width, so they sort as strings.
 */

export interface DurableStreamsOptions {
  store: DurableStreamStore;
  log?: ContextLog;
  /** Longest a live=long-poll request waits for data. Default 30 s. */
  longPollTimeoutMs?: number;
  /** An SSE connection is closed after this long so that CDNs can collapse readers. Default 60 s. */
  sseMaxDurationMs?: number;
  /** Largest catch-up response. Default 1 MiB (a single larger record is still sent whole). */
  maxChunkBytes?: number;
  /** Largest request body. Default 64 MiB. */
  maxBodyBytes?: number;
}

const header = {
  nextOffset: 'Stream-Next-Offset',
  upToDate: 'Stream-Up-To-Date',
  cursor: 'Stream-Cursor',
  closed: 'Stream-Closed',
  ttl: 'Stream-TTL',
  expiresAt: 'Stream-Expires-At',
  sequence: 'Stream-Seq',
  forkedFrom: 'Stream-Forked-From',
  forkOffset: 'Stream-Fork-Offset',
  forkSubOffset: 'Stream-Fork-Sub-Offset',
  producerId: 'Producer-Id',
  producerEpoch: 'Producer-Epoch',
  producerSequence: 'Producer-Seq',
  producerExpected: 'Producer-Expected-Seq',
  producerReceived: 'Producer-Received-Seq',
} as const;

const exposedHeaders = [...Object.values(header), 'ETag', 'Location', 'Content-Type'].join(', ');
const maxSafe = Number.MAX_SAFE_INTEGER;
const routePrefix = '/v1/stream/';

class ProtocolError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function formatOffset(position: number): string {
  return `0000000000000000_${String(position).padStart(16, '0')}`;
}

/** "-1" and absent mean the start, "now" the tail; anything else must be an offset this server made. */
function parseOffset(value: string | undefined, tail: number): number {
  if (value === undefined || value === '-1') return 0;
  if (value === 'now') return tail;
  const match = /^(\d{16})_(\d{16})$/.exec(value);
  if (!match)
    throw new ProtocolError(
      400,
      'invalid-offset',
      `offset must be -1, now, or a Stream-Next-Offset this server returned; got ${JSON.stringify(value.slice(0, 100))}`,
    );
  const position = Number(match[2]);
  if (position > tail) throw new ProtocolError(400, 'offset-beyond-end', `offset ${value} is beyond the end of the stream (${formatOffset(tail)})`);
  return position;
}

/** Media type without parameters, lower case: "Application/JSON; charset=utf-8" -> "application/json". */
function mediaType(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const type = contentType.split(';')[0].trim().toLowerCase();
  return type === '' ? undefined : type;
}

const isJson = (contentType: string) => mediaType(contentType) === 'application/json';
const allowsSse = (contentType: string) => isJson(contentType) || (mediaType(contentType) ?? '').startsWith('text/');

/** Cursors for CDN collapsing (protocol §8.1): 20 s intervals since 2024-10-09, never going back. */
function nextCursor(clientCursor: string | undefined): string {
  const interval = Math.floor((Date.now() - Date.UTC(2024, 9, 9)) / 20_000);
  const client = clientCursor !== undefined && /^\d{1,15}$/.test(clientCursor) ? Number(clientCursor) : -1;
  if (client < interval) return String(interval);
  return String(client + 1 + Math.floor(Math.random() * 180));
}

function parseInteger(name: string, value: string): number {
  if (!/^(0|[1-9]\d*)$/.test(value) || Number(value) > maxSafe)
    throw new ProtocolError(400, 'invalid-header', `${name} must be a non-negative integer without sign or leading zeros, got ${JSON.stringify(value)}`);
  return Number(value);
}

function producerFrom(context: Context): ProducerStamp | undefined {
  const values = producerHeaderValues(context, (message) => new ProtocolError(400, 'invalid-producer', message));
  return values && { id: values.id, epoch: parseInteger(header.producerEpoch, values.epoch), sequence: parseInteger(header.producerSequence, values.sequence) };
}

/** Splits a body into records: one per message for JSON (one array level flattened), one per append otherwise. */
function recordsOf(contentType: string, body: Buffer, options: { allowEmptyArray: boolean }): Buffer[] {
  if (!isJson(contentType)) return body.length === 0 ? [] : [body];
  if (body.length === 0) return [];
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (error) {
    throw new ProtocolError(400, 'invalid-json', `the body is not valid JSON (${(error as Error).message})`);
  }
  const messages = Array.isArray(value) ? value : [value];
  if (messages.length === 0 && !options.allowEmptyArray)
    throw new ProtocolError(400, 'empty-array', 'an empty JSON array appends nothing; send at least one message');
  return messages.map((message) => Buffer.from(JSON.stringify(message)));
}

function parseConfig(context: Context): StreamConfig {
  const ttl = context.req.header(header.ttl);
  const expiresAt = context.req.header(header.expiresAt);
  if (ttl !== undefined && expiresAt !== undefined) throw new ProtocolError(400, 'ttl-and-expiry', `send ${header.ttl} or ${header.expiresAt}, not both`);
  const config: StreamConfig = { contentType: context.req.header('content-type')?.trim() || 'application/octet-stream' };
  if (ttl !== undefined) config.ttlSeconds = parseInteger(header.ttl, ttl);
  if (expiresAt !== undefined) {
    const rfc3339 = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
    if (!rfc3339.test(expiresAt) || Number.isNaN(Date.parse(expiresAt)))
      throw new ProtocolError(400, 'invalid-expiry', `${header.expiresAt} must be an RFC 3339 time such as 2030-01-01T00:00:00Z`);
    config.expiresAt = expiresAt;
  }
  return config;
}

function sameConfig(stream: StreamMetadata, config: StreamConfig): boolean {
  return (
    mediaType(stream.contentType) === mediaType(config.contentType) &&
    stream.ttlSeconds === config.ttlSeconds &&
    (stream.expiresAt === undefined
      ? config.expiresAt === undefined
      : config.expiresAt !== undefined && Date.parse(stream.expiresAt) === Date.parse(config.expiresAt))
  );
}

async function bodyOf(context: Context, maxBodyBytes: number): Promise<Buffer> {
  const declared = Number(context.req.header('content-length') ?? '0');
  if (declared > maxBodyBytes) throw new ProtocolError(413, 'body-too-large', `the body is larger than ${maxBodyBytes} bytes; split it into several appends`);
  const body = Buffer.from(await context.req.arrayBuffer());
  if (body.length > maxBodyBytes)
    throw new ProtocolError(413, 'body-too-large', `the body is larger than ${maxBodyBytes} bytes; split it into several appends`);
  return body;
}

function isTrue(value: string | undefined): boolean {
  return value !== undefined && value.trim().toLowerCase() === 'true';
}

/** What a read returns, independent of where the stream lives (the store, the context log). */
interface ReadChunk {
  /** JSON streams: each message's JSON text; byte streams: the bytes. */
  records: Buffer[];
  start: number;
  end: number;
  tail: number;
  closed: boolean;
}

interface StreamSource {
  contentType: string;
  etagId: string;
  read(position: number): Promise<ReadChunk>;
  /** The tail position and whether the stream is closed. */
  head(): Promise<{ tail: number; closed: boolean }>;
  /** Resolves when there may be data past `position` (or the stream changed), or on timeout/abort. */
  wait(position: number, timeoutMs: number, signal: AbortSignal): Promise<void>;
}

function renderBody(contentType: string, records: Buffer[]): Buffer {
  if (!isJson(contentType)) return Buffer.concat(records);
  return Buffer.concat([Buffer.from('['), ...records.flatMap((record, index) => (index === 0 ? [record] : [Buffer.from(','), record])), Buffer.from(']')]);
}

export function createDurableStreamsRoutes(options: DurableStreamsOptions): Hono {
  const { store, log } = options;
  const longPollTimeoutMs = options.longPollTimeoutMs ?? 30_000;
  const sseMaxDurationMs = options.sseMaxDurationMs ?? 60_000;
  const maxChunkBytes = options.maxChunkBytes ?? 1024 * 1024;
  const maxBodyBytes = options.maxBodyBytes ?? 64 * 1024 * 1024;
  const app = new HonoApp();

  app.use('*', async (context, next) => {
    await next();
    context.res.headers.set('X-Content-Type-Options', 'nosniff');
    context.res.headers.set('Cross-Origin-Resource-Policy', 'cross-origin');
    context.res.headers.set('Access-Control-Expose-Headers', exposedHeaders);
  });

  const fail = (context: Context, error: unknown) => {
    if (error instanceof ProtocolError) {
      for (const [name, value] of Object.entries(error.headers)) context.header(name, value);
      return context.json({ error: { code: error.code, message: error.message } }, error.status as 400);
    }
    if (error instanceof ContextLogError) {
      if (error instanceof ProducerFencedError) context.header(header.producerEpoch, String(error.details.currentEpoch));
      if (error instanceof ProducerSequenceGapError) {
        context.header(header.producerExpected, String(error.details.expectedSequence));
        context.header(header.producerReceived, String(error.details.receivedSequence));
      }
      return context.json(error.toJSON(), error.status as 400);
    }
    return context.json({ error: { code: 'internal', message: (error as Error).message } }, 500);
  };

  /** The stream path after /v1/stream/, decoded; bounded, no control characters. */
  const pathOf = (context: Context): string => {
    const raw = context.req.path.slice(context.req.path.indexOf(routePrefix) + routePrefix.length);
    let path: string;
    try {
      path = decodeURIComponent(raw);
    } catch {
      throw new ProtocolError(400, 'invalid-path', 'the stream path is not valid percent-encoding');
    }
    if (path === '' || path.length > 1024 || /[\u0000-\u001f\u007f]/.test(path))
      throw new ProtocolError(400, 'invalid-path', 'a stream path must be 1 to 1024 printable characters');
    return path;
  };

  const gone = (path: string) => new ProtocolError(410, 'stream-deleted', `the stream at ${routePrefix}${path} was deleted`);
  const logSessionOf = (path: string) => (path.startsWith('logs/') ? path.slice(5) : undefined);
  const isSessionEvents = (path: string) => /^sessions\/[^/]+\/events$/.test(path);

  const storeSource = (stream: StreamMetadata): StreamSource => ({
    contentType: stream.contentType,
    etagId: `s${stream.id}`,
    async read(position) {
      const current = store.get(stream.path) ?? stream;
      if (isJson(current.contentType) && !store.isBoundary(current, position))
        throw new ProtocolError(400, 'invalid-offset', 'that offset is inside a JSON message; use an offset this server returned');
      const { records, end } = store.read(current, position, maxChunkBytes);
      return {
        records: records.map((record) => record.data),
        start: position,
        end: records.length > 0 ? end : position,
        tail: current.tail,
        closed: current.closed,
      };
    },
    async head() {
      const current = store.get(stream.path);
      if (!current) throw new ProtocolError(404, 'not-found', `the stream at ${routePrefix}${stream.path} was deleted`);
      return { tail: current.tail, closed: current.closed };
    },
    async wait(position, timeoutMs, signal) {
      const current = store.get(stream.path);
      if (!current || current.tail > position || current.closed) return;
      await store.waitForChange(stream.path, timeoutMs, signal);
    },
  });

  const logSource = async (sessionId: string): Promise<StreamSource> => {
    await log!.describe(sessionId); // unknown session: the log's own 404
    return {
      contentType: 'application/json',
      etagId: `l-${sessionId}`,
      async read(position) {
        // Rows as stored are already JSON: wrap them into stored entries without parsing them
        // (entries kept in the blob store go through the log's own decoding). Up to 10,000 rows,
        // cut at 4 x maxChunkBytes (a single larger entry still goes whole).
        const { nextOffset: tail } = await log!.describe(sessionId);
        if (position >= tail) return { records: [], start: position, end: position, tail, closed: false };
        const rows = await log!.storage.readRows(sessionId, position, tail, 10_000);
        const records: Buffer[] = [];
        let bytes = 0;
        let end = position;
        const prefix = `{"sessionId":${JSON.stringify(sessionId)},"offset":`;
        for (const row of rows) {
          const record = row.body.startsWith('{"$blob"')
            ? Buffer.from(JSON.stringify((await log!.read(sessionId, { from: row.offset, limit: 1 })).entries[0]))
            : Buffer.from(`${prefix}${row.offset},"appendedAt":${JSON.stringify(row.appendedAt)},"entry":${row.body}}`);
          if (records.length > 0 && bytes + record.length > 4 * maxChunkBytes) break;
          records.push(record);
          bytes += record.length;
          end = row.offset + 1;
        }
        return { records, start: position, end, tail, closed: false };
      },
      async head() {
        return { tail: (await log!.describe(sessionId)).nextOffset, closed: false };
      },
      async wait(position, timeoutMs, signal) {
        const deadline = AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]);
        await log!.storage.waitForAppend(sessionId, position, deadline);
      },
    };
  };

  const sourceFor = async (path: string, renew = false): Promise<StreamSource> => {
    const sessionId = logSessionOf(path);
    if (sessionId !== undefined) {
      if (!log) throw new ProtocolError(404, 'not-found', 'this server has no context log');
      return logSource(sessionId);
    }
    const stream = store.get(path);
    if (!stream) throw new ProtocolError(404, 'not-found', `no stream at ${routePrefix}${path}`);
    if (stream.deleted) throw gone(path);
    if (renew) store.renew(stream);
    return storeSource(stream);
  };

  const readHeaders = (context: Context, source: StreamSource, chunk: ReadChunk) => {
    context.header('Content-Type', source.contentType);
    context.header(header.nextOffset, formatOffset(chunk.end));
    if (chunk.end >= chunk.tail) {
      context.header(header.upToDate, 'true');
      if (chunk.closed) context.header(header.closed, 'true');
    }
  };

  // CORS preflight: browsers on other origins may read with conditional requests and append.
  app.options('/*', (context) => {
    context.header('Access-Control-Allow-Origin', context.req.header('origin') ?? '*');
    context.header('Access-Control-Allow-Methods', 'GET, HEAD, POST, PUT, DELETE, OPTIONS');
    context.header(
      'Access-Control-Allow-Headers',
      [
        'Authorization',
        'Content-Type',
        'If-None-Match',
        header.ttl,
        header.expiresAt,
        header.sequence,
        header.closed,
        header.forkedFrom,
        header.forkOffset,
        header.forkSubOffset,
        header.producerId,
        header.producerEpoch,
        header.producerSequence,
      ].join(', '),
    );
    context.header('Access-Control-Max-Age', '600');
    return context.body(null, 204);
  });

  const serveHead = async (context: Context) => {
    try {
      const path = pathOf(context);
      const source = await sourceFor(path);
      const chunk = await source.head();
      context.header('Content-Type', source.contentType);
      context.header(header.nextOffset, formatOffset(chunk.tail));
      context.header('Cache-Control', 'no-store');
      if (chunk.closed) context.header(header.closed, 'true');
      const stream = logSessionOf(path) === undefined ? store.get(path) : undefined;
      if (stream?.ttlSeconds !== undefined)
        context.header(header.ttl, String(Math.max(0, Math.ceil((stream.renewedAt + stream.ttlSeconds * 1000 - Date.now()) / 1000))));
      if (stream?.expiresAt !== undefined) context.header(header.expiresAt, stream.expiresAt);
      return context.body(null, 200);
    } catch (error) {
      if (error instanceof ProtocolError || error instanceof ContextLogError) return context.body(null, (error as { status: number }).status as 404);
      return context.body(null, 500);
    }
  };

  app.on(['GET'], '/*', async (context) => {
    // Hono hands HEAD to the GET route: HEAD has its own answer (no body, no TTL renewal).
    if (context.req.method === 'HEAD') return serveHead(context);
    try {
      const path = pathOf(context);
      const source = await sourceFor(path, true);
      const live = context.req.query('live');
      const offsetParameter = context.req.query('offset');
      const position = parseOffset(offsetParameter, (await source.head()).tail);

      if (live === 'sse') {
        if (offsetParameter === undefined) throw new ProtocolError(400, 'offset-required', 'live=sse needs an offset (-1 for the start)');
        return serveSse(context, source, position, context.req.query('cursor'));
      }

      if (live === 'long-poll') {
        if (offsetParameter === undefined)
          throw new ProtocolError(400, 'offset-required', 'live=long-poll needs an offset (-1 for the start, now for the tail)');
        const controller = new AbortController();
        context.req.raw.signal?.addEventListener('abort', () => controller.abort(), { once: true });
        let chunk = offsetParameter === 'now' ? { records: [], start: position, end: position, tail: position, closed: false } : await source.read(position);
        if (chunk.records.length === 0 && !(chunk.closed && chunk.end >= chunk.tail)) {
          await source.wait(position, longPollTimeoutMs, controller.signal);
          chunk = await source.read(position);
        }
        context.header(header.cursor, nextCursor(context.req.query('cursor')));
        context.header('Cache-Control', 'no-store');
        if (chunk.records.length === 0) {
          context.header(header.nextOffset, formatOffset(chunk.tail));
          context.header(header.upToDate, 'true');
          if (chunk.closed) context.header(header.closed, 'true');
          return context.body(null, 204);
        }
        readHeaders(context, source, chunk);
        context.header('ETag', `"${source.etagId}:${chunk.start}:${chunk.end}"`);
        return context.body(new Uint8Array(renderBody(source.contentType, chunk.records)), 200);
      }

      if (live !== undefined) throw new ProtocolError(400, 'invalid-live', `live must be long-poll or sse, got ${JSON.stringify(live)}`);
      if (offsetParameter === 'now') {
        const chunk = await source.read(position);
        context.header('Content-Type', source.contentType);
        context.header(header.nextOffset, formatOffset(chunk.tail));
        context.header(header.upToDate, 'true');
        if (chunk.closed) context.header(header.closed, 'true');
        context.header('Cache-Control', 'no-store');
        return context.body(isJson(source.contentType) ? '[]' : new Uint8Array(0), 200);
      }
      const chunk = await source.read(position);
      const etag = `"${source.etagId}:${chunk.start}:${chunk.end}${chunk.closed && chunk.end >= chunk.tail ? ':c' : ''}"`;
      readHeaders(context, source, chunk);
      context.header('ETag', etag);
      // Data before the tail never changes; the tail response changes with the next append.
      context.header('Cache-Control', chunk.end < chunk.tail ? 'private, max-age=60, stale-while-revalidate=300' : 'no-cache');
      if (context.req.header('if-none-match') === etag) return context.body(null, 304);
      return context.body(new Uint8Array(renderBody(source.contentType, chunk.records)), 200);
    } catch (error) {
      return fail(context, error);
    }
  });

  /**
   * SSE, written by hand: "data:" lines without the optional space (what the conformance suite
   * checks byte for byte), every payload line break (CR, LF, CRLF) starting a new data line so a
   * payload can never end an event early, and base64 for streams that are not text.
   */
  const serveSse = (context: Context, source: StreamSource, from: number, clientCursor: string | undefined) => {
    const binary = !allowsSse(source.contentType);
    context.header('Content-Type', 'text/event-stream');
    context.header('Cache-Control', 'no-cache');
    context.header('X-Accel-Buffering', 'no');
    if (binary) context.header('Stream-SSE-Data-Encoding', 'base64');
    const event = (name: string, data: string) =>
      `event: ${name}\n${data
        .split(/\r\n|\r|\n/)
        .map((line) => `data:${line}`)
        .join('\n')}\n\n`;
    return streamBody(context, async (stream) => {
      const controller = new AbortController();
      stream.onAbort(() => controller.abort());
      const stop = setTimeout(() => controller.abort(), sseMaxDurationMs);
      let cursor = clientCursor;
      let position = from;
      try {
        while (!controller.signal.aborted) {
          const chunk = await source.read(position).catch(() => undefined);
          if (!chunk) break; // deleted meanwhile
          let text = '';
          if (chunk.records.length > 0) {
            const payload = renderBody(source.contentType, chunk.records);
            text += event('data', binary ? payload.toString('base64') : payload.toString('utf8'));
            position = chunk.end;
          }
          const upToDate = position >= chunk.tail;
          const closed = upToDate && chunk.closed;
          if (!closed) cursor = nextCursor(cursor);
          text += event(
            'control',
            JSON.stringify({
              streamNextOffset: formatOffset(position),
              ...(closed ? { streamClosed: true } : { streamCursor: cursor }),
              ...(upToDate ? { upToDate: true } : {}),
            }),
          );
          await stream.write(text);
          if (closed) break;
          if (upToDate) await source.wait(position, sseMaxDurationMs, controller.signal);
        }
      } finally {
        clearTimeout(stop);
      }
    });
  };

  const readOnly = (path: string) => {
    if (logSessionOf(path) !== undefined)
      throw new ProtocolError(405, 'read-only', 'a context log is created by its first append and removed with its session; POST appends entries');
    if (isSessionEvents(path))
      throw new ProtocolError(405, 'read-only', "a session's event stream is written by the session; send messages with POST /v1/sessions/:id/messages");
  };

  app.put('/*', async (context) => {
    try {
      const path = pathOf(context);
      readOnly(path);
      const config = parseConfig(context);
      const closed = isTrue(context.req.header(header.closed));
      const body = await bodyOf(context, maxBodyBytes);
      const forkedFrom = context.req.header(header.forkedFrom);
      const subOffsetHeader = context.req.header(header.forkSubOffset);
      if (subOffsetHeader !== undefined && forkedFrom === undefined)
        throw new ProtocolError(400, 'invalid-fork', `${header.forkSubOffset} needs ${header.forkedFrom}`);
      let inherit: { from: StreamMetadata; upTo: number; spec: string } | undefined;
      if (forkedFrom !== undefined) {
        const sourcePath = forkedFrom.startsWith(routePrefix) ? forkedFrom.slice(routePrefix.length) : forkedFrom.replace(/^\/+/, '');
        const source = store.get(sourcePath);
        if (!source) throw new ProtocolError(404, 'fork-source-unknown', `no stream at ${forkedFrom} to fork from`);
        if (source.deleted) throw new ProtocolError(409, 'fork-source-deleted', `the stream at ${forkedFrom} was deleted; it cannot be forked any more`);
        if (mediaType(source.contentType) !== mediaType(config.contentType) && context.req.header('content-type') !== undefined)
          throw new ProtocolError(409, 'content-type-mismatch', `the fork must have its source's content type ${source.contentType}`);
        if (context.req.header('content-type') === undefined) config.contentType = source.contentType;
        // A fork keeps its source's lifetime unless it asks for its own.
        if (config.ttlSeconds === undefined && config.expiresAt === undefined) {
          config.ttlSeconds = source.ttlSeconds;
          config.expiresAt = source.expiresAt;
        }
        const forkOffset = context.req.header(header.forkOffset);
        const subOffset = subOffsetHeader === undefined ? 0 : parseInteger(header.forkSubOffset, subOffsetHeader);
        if (subOffset > 0 && forkOffset === undefined)
          throw new ProtocolError(400, 'invalid-fork', `${header.forkSubOffset} counts from ${header.forkOffset}: send both`);
        const position = parseOffset(forkOffset ?? 'now', source.tail);
        if (isJson(source.contentType) && !store.isBoundary(source, position))
          throw new ProtocolError(400, 'invalid-offset', 'a JSON stream forks at a message boundary');
        const upTo = store.forkEnd(source, position, subOffset, isJson(source.contentType));
        if (upTo === undefined)
          throw new ProtocolError(400, 'invalid-fork', `${header.forkSubOffset} ${subOffset} goes past the append at ${formatOffset(position)}`);
        inherit = { from: source, upTo, spec: JSON.stringify([source.id, upTo]) };
      }
      const existing = store.get(path);
      if (existing) {
        if (existing.deleted)
          throw new ProtocolError(409, 'stream-deleted', `the stream at ${routePrefix}${path} was deleted while forks of it live; its path cannot be reused`);
        if (!sameConfig(existing, config) || existing.closed !== closed || existing.forkSpec !== inherit?.spec)
          throw new ProtocolError(409, 'stream-exists', `a stream with another configuration exists at ${routePrefix}${path}`);
        context.header('Content-Type', existing.contentType);
        context.header(header.nextOffset, formatOffset(existing.tail));
        if (existing.closed) context.header(header.closed, 'true');
        return context.body(null, 200);
      }
      const created = store.create(path, config, recordsOf(config.contentType, body, { allowEmptyArray: true }), { closed, inherit });
      context.header('Location', new URL(context.req.url).toString());
      context.header('Content-Type', created.contentType);
      context.header(header.nextOffset, formatOffset(created.tail));
      if (created.closed) context.header(header.closed, 'true');
      return context.body(null, 201);
    } catch (error) {
      return fail(context, error);
    }
  });

  app.post('/*', async (context) => {
    try {
      const path = pathOf(context);
      const sessionId = logSessionOf(path);
      if (sessionId !== undefined && log) return await appendToLog(context, sessionId);
      readOnly(path);
      const producer = producerFrom(context);
      const close = isTrue(context.req.header(header.closed));
      const body = await bodyOf(context, maxBodyBytes);
      const stream = store.get(path);
      if (!stream) throw new ProtocolError(404, 'not-found', `no stream at ${routePrefix}${path}; create it with PUT first`);
      if (stream.deleted) throw gone(path);
      store.renew(stream);
      let records: Buffer[] = [];
      if (body.length > 0) {
        const type = context.req.header('content-type');
        if (mediaType(type) === undefined) throw new ProtocolError(400, 'content-type-required', `send Content-Type: ${stream.contentType}`);
        if (mediaType(type) !== mediaType(stream.contentType))
          throw new ProtocolError(409, 'content-type-mismatch', `this stream holds ${stream.contentType}, not ${type}`);
        records = recordsOf(stream.contentType, body, { allowEmptyArray: false });
      } else if (!close) {
        throw new ProtocolError(400, 'empty-body', 'an append needs a body (or Stream-Closed: true to close the stream)');
      }
      const streamSequence = context.req.header(header.sequence);
      let decision = store.append(path, records, { producer, streamSequence, close });
      // Pipelined producer batches can arrive out of order: give the missing ones a moment to land
      // before calling it a gap (the protocol asks servers to order appends per producer).
      for (const deadline = Date.now() + 1000; decision.kind === 'sequence-gap' && decision.received > decision.expected && Date.now() < deadline;) {
        await store.waitForChange(path, deadline - Date.now(), context.req.raw.signal);
        decision = store.append(path, records, { producer, streamSequence, close });
      }
      return appendAnswer(context, decision, producer, close, records.length === 0);
    } catch (error) {
      return fail(context, error);
    }
  });

  const appendAnswer = (context: Context, decision: AppendDecision, producer: ProducerStamp | undefined, close: boolean, closeOnly: boolean) => {
    switch (decision.kind) {
      case 'appended':
        context.header(header.nextOffset, formatOffset(decision.tail));
        if (close) context.header(header.closed, 'true');
        if (producer) {
          context.header(header.producerEpoch, String(producer.epoch));
          context.header(header.producerSequence, String(producer.sequence));
        }
        // New data under a producer is 200 (a duplicate would be 204); plain appends and closes are 204.
        return context.body(null, producer && !closeOnly ? 200 : 204);
      case 'duplicate':
        context.header(header.nextOffset, formatOffset(decision.tail));
        if (decision.closed) context.header(header.closed, 'true');
        context.header(header.producerEpoch, String(producer!.epoch));
        context.header(header.producerSequence, String(decision.lastSequence));
        return context.body(null, 204);
      case 'closed':
        if (close && closeOnly) {
          // Closing a closed stream again is a no-op success (a retried close).
          context.header(header.nextOffset, formatOffset(decision.tail));
          context.header(header.closed, 'true');
          return context.body(null, 204);
        }
        throw new ProtocolError(409, 'stream-closed', 'the stream is closed: nothing can be appended any more', {
          [header.closed]: 'true',
          [header.nextOffset]: formatOffset(decision.tail),
        });
      case 'stale-epoch':
        throw new ProtocolError(
          403,
          'producer-fenced',
          `producer epoch ${producer!.epoch} is fenced by epoch ${decision.currentEpoch}; restart with epoch ${decision.currentEpoch + 1} and sequence 0`,
          { [header.producerEpoch]: String(decision.currentEpoch) },
        );
      case 'sequence-gap':
        throw new ProtocolError(
          409,
          'producer-sequence-gap',
          `expected producer sequence ${decision.expected}, got ${decision.received}; send the missing batches first`,
          {
            [header.producerExpected]: String(decision.expected),
            [header.producerReceived]: String(decision.received),
          },
        );
      case 'epoch-must-start-at-zero':
        throw new ProtocolError(400, 'producer-epoch-sequence', 'a new producer epoch starts at sequence 0');
      case 'sequence-regression':
        throw new ProtocolError(409, 'sequence-regression', `${header.sequence} must increase; the last one was ${JSON.stringify(decision.last)}`);
    }
  };

  /** POST to logs/<session>: the entries go through the context log's own validation and producers. */
  const appendToLog = async (context: Context, sessionId: string) => {
    const producer = producerFrom(context);
    if (isTrue(context.req.header(header.closed))) throw new ProtocolError(405, 'not-closable', 'a context log cannot be closed');
    const type = mediaType(context.req.header('content-type'));
    if (type !== 'application/json')
      throw new ProtocolError(type === undefined ? 400 : 409, 'content-type-mismatch', 'a context log stream holds application/json entries');
    const body = await bodyOf(context, maxBodyBytes);
    const entries = recordsOf('application/json', body, { allowEmptyArray: false }).map((record) => JSON.parse(record.toString('utf8')) as unknown);
    if (entries.length === 0) throw new ProtocolError(400, 'empty-body', 'send one entry or a JSON array of entries');
    const result = await log!.append(sessionId, entries, { producer });
    context.header(header.nextOffset, formatOffset(result.nextOffset));
    if (producer) {
      context.header(header.producerEpoch, String(producer.epoch));
      context.header(header.producerSequence, String(producer.sequence));
      return context.body(null, result.duplicate ? 204 : 200);
    }
    return context.body(null, 204);
  };

  app.delete('/*', async (context) => {
    try {
      const path = pathOf(context);
      readOnly(path);
      const stream = store.get(path);
      if (!stream) throw new ProtocolError(404, 'not-found', `no stream at ${routePrefix}${path}`);
      if (stream.deleted) throw gone(path);
      store.delete(path);
      return context.body(null, 204);
    } catch (error) {
      return fail(context, error);
    }
  });

  return app;
}

/** Appends a session's turn events to its `sessions/<id>/events` stream (created on the first). */
export function recordSessionEvent(store: DurableStreamStore, sessionId: string, event: unknown): void {
  const path = `sessions/${sessionId}/events`;
  if (!store.get(path)) store.create(path, { contentType: 'application/json' }, []);
  store.append(path, [Buffer.from(JSON.stringify(event))]);
}

/**
 * Mounts the Durable Streams routes at /v1/stream with the store in the state directory, and
 * records session events when given a session manager. The long-poll timeout comes from
 * TORPOR_STREAM_LONG_POLL_MS (default 30 s; tests use 500 ms).
 */
export function mountDurableStreams(
  app: Hono,
  options: {
    log: ContextLog;
    sessions?: { on(event: 'event', listener: (sessionId: string, event: unknown) => void): unknown };
    stateDirectory?: string;
    environment?: NodeJS.ProcessEnv;
  },
): DurableStreamStore {
  const environment = options.environment ?? process.env;
  const store = new DurableStreamStore(join(options.stateDirectory ?? stateDirectory(environment), 'streams', 'streams.sqlite'));
  const longPoll = environment.TORPOR_STREAM_LONG_POLL_MS;
  app.route(
    '/v1/stream',
    createDurableStreamsRoutes({ store, log: options.log, longPollTimeoutMs: longPoll && /^\d+$/.test(longPoll) ? Number(longPoll) : undefined }),
  );
  options.sessions?.on('event', (sessionId, event) => recordSessionEvent(store, sessionId, event));
  return store;
}
