import type { SessionEvent } from './events.ts';
import { readSessionEvents } from './session-events.ts';
import { Torpor } from './torpor.ts';
import type { TorporOptions } from './transport.ts';

/**
 * The AI SDK UI adapter: a torpor session behind `useChat`. It speaks the AI SDK v5 UI message
 * stream protocol (server-sent events of UI message chunks, ended by `[DONE]`, announced by the
 * `x-vercel-ai-ui-message-stream: v1` header) directly, so apps need no `ai` import on the server.
 */
export type UIMessageChunk = { type: string } & Record<string, unknown>;

/** Headers the AI SDK's client expects on a UI message stream response. */
export const uiMessageStreamHeaders = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-vercel-ai-ui-message-stream': 'v1',
  'x-accel-buffering': 'no',
} as const;

/** Maps a turn's events to UI message chunks: text and reasoning parts, tool calls and results, steps. */
export async function* sessionEventsToUIMessageChunks(
  events: AsyncIterable<SessionEvent>,
  options: { messageId?: string } = {},
): AsyncGenerator<UIMessageChunk> {
  let part = 0;
  let open: { kind: 'text' | 'reasoning'; id: string } | undefined;
  let inStep = false;
  const close = function* (): Generator<UIMessageChunk> {
    if (open) yield { type: `${open.kind}-end`, id: open.id };
    open = undefined;
  };
  const step = function* (): Generator<UIMessageChunk> {
    if (!inStep) yield { type: 'start-step' };
    inStep = true;
  };
  const delta = function* (kind: 'text' | 'reasoning', text: string): Generator<UIMessageChunk> {
    yield* step();
    if (open?.kind !== kind) {
      yield* close();
      open = { kind, id: `${kind}-${part++}` };
      yield { type: `${kind}-start`, id: open.id };
    }
    yield { type: `${kind}-delta`, id: open.id, delta: text };
  };
  yield { type: 'start', ...(options.messageId ? { messageId: options.messageId } : {}) };
  let failed = false;
  for await (const event of events) {
    switch (event.type) {
      case 'text-delta':
        yield* delta('text', event.delta);
        break;
      case 'reasoning-delta':
        yield* delta('reasoning', event.delta);
        break;
      case 'tool-call':
        yield* step();
        yield* close();
        yield { type: 'tool-input-available', toolCallId: event.toolCallId, toolName: event.toolName, input: event.input };
        break;
      case 'tool-result':
        yield* step();
        yield* close();
        if (event.output.type === 'error-text' || event.output.type === 'error-json') {
          yield {
            type: 'tool-output-error',
            toolCallId: event.toolCallId,
            errorText: typeof event.output.value === 'string' ? event.output.value : JSON.stringify(event.output.value),
          };
        } else {
          yield { type: 'tool-output-available', toolCallId: event.toolCallId, output: event.output.value };
        }
        break;
      case 'message-finish':
        // One model step ended (its complete message is in the log): close the step in the UI too.
        yield* close();
        if (inStep) yield { type: 'finish-step' };
        inStep = false;
        break;
      case 'error':
        failed = true;
        yield* close();
        yield { type: 'error', errorText: event.message };
        break;
      case 'session-state':
      case 'turn-suspend':
      case 'usage':
        // Shown to the UI as transient data parts (not kept in the message): "waking up", "sleeps until".
        yield { type: 'data-torpor', data: event, transient: true };
        break;
      default:
        break;
    }
  }
  yield* close();
  if (inStep) yield { type: 'finish-step' };
  yield { type: 'finish', ...(failed ? { finishReason: 'error' } : {}) };
}

/** The chunks as the SSE byte stream the AI SDK's `DefaultChatTransport` reads. */
export function sessionEventsToUIMessageStream(events: AsyncIterable<SessionEvent>, options: { messageId?: string } = {}): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  const chunks = sessionEventsToUIMessageChunks(events, options);
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      try {
        const { value, done } = await chunks.next();
        if (done) {
          controller.enqueue(encoder.encode('data: [DONE]\n\n'));
          controller.close();
          return;
        }
        controller.enqueue(encoder.encode(`data: ${JSON.stringify(value)}\n\n`));
      } catch (error) {
        // The turn failed mid-way (server gone, session deleted): tell the UI, then end cleanly.
        controller.enqueue(encoder.encode(`data: ${JSON.stringify({ type: 'error', errorText: (error as Error).message })}\n\n`));
        controller.enqueue(encoder.encode('data: [DONE]\n\n'));
        controller.close();
      }
    },
    async cancel() {
      await chunks.return(undefined);
    },
  });
}

export interface ChatHandlerOptions extends TorporOptions {
  /** The session to talk to: an id or name, or a function of the chat request (e.g. its chat id). */
  session: string | ((chat: { id?: string; request: Request }) => string | Promise<string>);
  /** A client to reuse; otherwise one is made from the other options. */
  client?: Torpor;
}

interface ChatRequestBody {
  id?: string;
  messages?: Array<{ id?: string; role?: string; parts?: Array<{ type?: string; text?: string }>; content?: string }>;
}

function lastUserText(body: ChatRequestBody): string | undefined {
  const message = [...(body.messages ?? [])].reverse().find((candidate) => candidate?.role === 'user');
  if (!message) return undefined;
  if (typeof message.content === 'string') return message.content;
  const text = (message.parts ?? [])
    .filter((part) => part?.type === 'text' && typeof part.text === 'string')
    .map((part) => part.text)
    .join('');
  return text === '' ? undefined : text;
}

/**
 * A route handler for `useChat` (Next.js `export const POST = createChatHandler({ session })`, or
 * any framework with Request/Response): sends the chat's last user message to the session — the
 * session keeps the history, so only the new message travels — and streams the turn back.
 */
export function createChatHandler(options: ChatHandlerOptions): (request: Request) => Promise<Response> {
  const client = options.client ?? new Torpor(options);
  return async (request) => {
    let body: ChatRequestBody;
    try {
      body = (await request.json()) as ChatRequestBody;
    } catch {
      return Response.json(
        { error: { code: 'invalid-request', message: 'the body is not JSON; send the useChat request body ({ id, messages })' } },
        { status: 400 },
      );
    }
    const text = lastUserText(body ?? {});
    if (text === undefined) return Response.json({ error: { code: 'invalid-request', message: 'no user message with text in messages' } }, { status: 400 });
    const session = typeof options.session === 'function' ? await options.session({ id: body.id, request }) : options.session;
    const turn = client.sessions.send(session, text, { signal: request.signal });
    return new Response(sessionEventsToUIMessageStream(turn), { headers: uiMessageStreamHeaders });
  };
}

/** Whether an event ends the turn it belongs to (as far as a live reader is concerned). */
const endsTurn = (event: SessionEvent) => event.type === 'turn-finish' || event.type === 'turn-suspend';

/**
 * The other half of `useChat({ resume: true })`: a GET handler for `<api>/<chatId>/stream`. If
 * the session's latest turn is still running (a page reload mid-answer), it replays that turn's
 * events recorded so far (the Durable Stream `sessions/<id>/events`) and follows it live to its
 * end; if no turn is running it answers 204, which tells the AI SDK there is nothing to resume.
 */
export function createChatResumeHandler(options: ChatHandlerOptions): (request: Request) => Promise<Response> {
  const client = options.client ?? new Torpor(options);
  return async (request) => {
    const chatId = /\/([^/]+)\/stream\/?$/.exec(new URL(request.url).pathname)?.[1];
    const session =
      typeof options.session === 'function'
        ? await options.session({ id: chatId === undefined ? undefined : decodeURIComponent(chatId), request })
        : options.session;
    const info = await client.sessions.get(session);
    // What is recorded so far; the latest turn is everything from its last turn-start on.
    const recorded: SessionEvent[] = [];
    let offset = '-1';
    for await (const batch of readSessionEvents(client.transport, info.id, { live: false, signal: request.signal })) {
      recorded.push(...batch.events);
      offset = batch.offset;
    }
    const start = recorded.findLastIndex((event) => event.type === 'turn-start');
    if (start < 0 || recorded.slice(start).some(endsTurn)) return new Response(null, { status: 204 });
    const turn = recorded.slice(start);
    async function* replayThenFollow(): AsyncGenerator<SessionEvent> {
      yield* turn;
      for await (const batch of readSessionEvents(client.transport, info.id, { offset, live: true, signal: request.signal })) {
        for (const event of batch.events) {
          yield event;
          if (endsTurn(event)) return;
        }
      }
    }
    return new Response(sessionEventsToUIMessageStream(replayThenFollow()), { headers: uiMessageStreamHeaders });
  };
}
