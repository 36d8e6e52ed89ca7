// The typed client against a real `torpor serve` process and a real session (a VM running the
// shell agent), plus the AI SDK adapter driven by the AI SDK's own chat transport.
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DefaultChatTransport, readUIMessageStream, type UIMessage } from 'ai';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { shellAgent } from '../session/testing/shell-agent.ts';
import { startTorporServer, type TorporServerProcess } from './testing/torpor-server.ts';
import {
  ConflictError,
  InvalidRequestError,
  NotFoundError,
  Torpor,
  TorporApiError,
  TorporConnectionError,
  type SessionEvent,
  type StoredEntry,
} from './index.ts';
import {
  createChatHandler,
  createChatResumeHandler,
  sessionEventsToUIMessageChunks,
  sessionEventsToUIMessageStream,
  uiMessageStreamHeaders,
} from './ai-sdk.ts';

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: TorporServerProcess;
let torpor: Torpor;

before(async () => {
  home = await useTemporaryHome();
  server = await startTorporServer({ env: { ...process.env, TORPOR_HOME: home.home, TORPOR_TURN_SNAPSHOTS: '3' } });
  torpor = new Torpor({ baseUrl: server.url, token: server.token });
});

after(async () => {
  await server?.stop();
  await home?.cleanup();
});

async function* fromArray(events: SessionEvent[]): AsyncGenerator<SessionEvent> {
  yield* events;
}

/** What `useChat` does with a response: the AI SDK's transport parses and validates the chunks. */
async function chatThrough(handler: (request: Request) => Promise<Response>, text: string): Promise<UIMessage> {
  const transport = new DefaultChatTransport({
    api: 'http://app.invalid/api/chat',
    fetch: (async (input: string | URL | Request, init?: RequestInit) => handler(new Request(input, init))) as typeof fetch,
  });
  const stream = await transport.sendMessages({
    chatId: 'chat-1',
    trigger: 'submit-message',
    messageId: undefined,
    abortSignal: undefined,
    messages: [{ id: 'm1', role: 'user', parts: [{ type: 'text', text }] }],
  });
  let last: UIMessage | undefined;
  for await (const message of readUIMessageStream({ stream, onError: (error) => assert.fail(String(error)) })) last = message;
  assert.ok(last, 'the stream produced no message');
  return last;
}

describe('client options and errors', () => {
  it('reads TORPOR_URL and TORPOR_TOKEN and sends the token as a bearer token', async () => {
    const seen: IncomingHttpHeaders[] = [];
    const probe = createServer((request, response) => {
      seen.push(request.headers);
      response
        .writeHead(401, { 'content-type': 'application/json' })
        .end(JSON.stringify({ error: { code: 'unauthorized', message: 'bad token', hint: 'check TORPOR_TOKEN' } }));
    });
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    const saved = { url: process.env.TORPOR_URL, token: process.env.TORPOR_TOKEN };
    try {
      process.env.TORPOR_URL = `http://127.0.0.1:${(probe.address() as AddressInfo).port}/`;
      process.env.TORPOR_TOKEN = 'secret-token';
      const client = new Torpor();
      const error = await client.sessions.list().then(
        () => undefined,
        (caught: unknown) => caught,
      );
      assert.ok(error instanceof TorporApiError && error.name === 'AuthenticationError', String(error));
      assert.equal(error.status, 401);
      assert.equal(error.code, 'unauthorized');
      assert.equal(error.hint, 'check TORPOR_TOKEN');
      assert.equal(seen[0].authorization, 'Bearer secret-token');
      // An explicit option wins over the environment; no token means no header at all.
      await new Torpor({ token: '' }).sessions.list().catch(() => {});
      assert.equal(seen[1].authorization, undefined);
    } finally {
      process.env.TORPOR_URL = saved.url;
      process.env.TORPOR_TOKEN = saved.token;
      if (saved.url === undefined) delete process.env.TORPOR_URL;
      if (saved.token === undefined) delete process.env.TORPOR_TOKEN;
      probe.close();
    }
  });

  it('turns answers that are not JSON (a proxy page) into typed errors with the status', async () => {
    const probe = createServer((_request, response) => response.writeHead(502, { 'content-type': 'text/html' }).end('<html>bad gateway</html>'));
    await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
    try {
      const client = new Torpor({ baseUrl: `http://127.0.0.1:${(probe.address() as AddressInfo).port}` });
      await assert.rejects(
        client.sessions.get('x'),
        (error: TorporApiError) => error.name === 'ServerError' && error.status === 502 && error.code === 'http-502',
      );
    } finally {
      probe.close();
    }
  });

  it('says when no server answers', async () => {
    const client = new Torpor({ baseUrl: 'http://127.0.0.1:1' });
    await assert.rejects(
      client.sessions.list(),
      (error: unknown) => error instanceof TorporConnectionError && error.code === 'no-server' && /torpor serve/.test(error.hint ?? ''),
    );
    assert.throws(() => new Torpor({ baseUrl: 'not a url' }), /absolute http/);
  });

  it("carries the server's code and status for unknown sessions and bad requests", async () => {
    await assert.rejects(
      torpor.sessions.get('s-000000000000'),
      (error: unknown) => error instanceof NotFoundError && error.code === 'session-unknown' && error.status === 404 && /session ls/.test(error.hint ?? ''),
    );
    await assert.rejects(
      torpor.sessions.create({ image: '', command: [] }),
      (error: unknown) => error instanceof InvalidRequestError && error.status === 400 && /image/.test(error.message),
    );
    // A hostile name cannot walk the URL space: it is one path segment, and simply unknown.
    await assert.rejects(torpor.sessions.get('../../v1/logs'), NotFoundError);
    await assert.rejects(torpor.sessions.send('nope', 'hi').text(), (error: unknown) => error instanceof NotFoundError && error.code === 'session-unknown');
  });
});

describe('AI SDK UI adapter (offline events)', () => {
  it('maps text, reasoning, tools, steps and state to chunks the AI SDK accepts', async () => {
    const events: SessionEvent[] = [
      { type: 'session-state', state: 'waking' },
      { type: 'turn-start', turnId: 't' },
      { type: 'reasoning-delta', turnId: 't', delta: 'think' },
      { type: 'text-delta', turnId: 't', delta: 'Let me ' },
      { type: 'text-delta', turnId: 't', delta: 'look.' },
      { type: 'tool-call', turnId: 't', toolCallId: 'c1', toolName: 'bash', input: { command: 'ls' } },
      { type: 'message-finish', turnId: 't', message: { role: 'assistant', content: 'Let me look.' } },
      { type: 'tool-result', turnId: 't', toolCallId: 'c1', toolName: 'bash', output: { type: 'text', value: 'a.txt' } },
      { type: 'text-delta', turnId: 't', delta: 'One file.' },
      { type: 'message-finish', turnId: 't', message: { role: 'assistant', content: 'One file.' } },
      { type: 'turn-finish', turnId: 't' },
    ];
    const handler = async () => new Response(sessionEventsToUIMessageStream(fromArray(events)), { headers: uiMessageStreamHeaders });
    const message = await chatThrough(handler, 'hi');
    assert.equal(message.role, 'assistant');
    const parts = message.parts.filter((part) => part.type !== 'step-start');
    assert.deepEqual(
      parts.map((part) => part.type),
      ['reasoning', 'text', 'tool-bash', 'text'],
    );
    assert.equal((parts[1] as { text: string }).text, 'Let me look.');
    assert.deepEqual((parts[2] as { input: unknown; output: unknown; state: string }).output, 'a.txt');
    assert.equal((parts[2] as { state: string }).state, 'output-available');
    assert.equal((parts[3] as { text: string }).text, 'One file.');
    const chunks = [];
    for await (const chunk of sessionEventsToUIMessageChunks(fromArray([{ type: 'error', message: 'boom' }]))) chunks.push(chunk);
    assert.deepEqual(chunks.at(-1), { type: 'finish', finishReason: 'error' });
    assert.ok(chunks.some((chunk) => chunk.type === 'error' && chunk.errorText === 'boom'));
  });

  it('rejects chat requests without a user message', async () => {
    const handler = createChatHandler({ session: 'x', client: torpor });
    const response = await handler(
      new Request('http://app.invalid/api/chat', { method: 'POST', body: JSON.stringify({ messages: [{ role: 'assistant', parts: [] }] }) }),
    );
    assert.equal(response.status, 400);
    const garbage = await handler(new Request('http://app.invalid/api/chat', { method: 'POST', body: '{not json' }));
    assert.equal(garbage.status, 400);
  });
});

describe('sessions through the client (a real VM)', { timeout: 600_000 }, () => {
  it('creates, streams a turn, tails the log, forks, lists and deletes', async () => {
    const session = await torpor.sessions.create({
      image: 'base',
      command: ['sh', '-c', shellAgent],
      name: 'client-chat',
      resources: { memory: '256m' },
      idle: '60s',
    });
    assert.match(session.id, /^s-[0-9a-f]{12}$/);
    assert.equal(session.name, 'client-chat');
    await assert.rejects(torpor.sessions.create({ image: 'base', command: ['sh', '-c', shellAgent], name: 'client-chat' }), ConflictError);

    const types: string[] = [];
    const turn = session.send('hello');
    for await (const event of turn) {
      types.push(event.type);
      if (event.type === 'text-delta') assert.equal(typeof event.delta, 'string');
    }
    assert.deepEqual(types, ['turn-start', 'text-delta', 'message-finish', 'turn-finish']);
    assert.equal(await turn.text(), 'turn 1: hello; notes 1; child yes');
    assert.equal(await torpor.sessions.send('client-chat', 'again').text(), 'turn 2: again; notes 2; child yes');

    // The log, live: the entries so far, then one that arrives while tailing.
    const controller = new AbortController();
    const seen: StoredEntry[] = [];
    const tailing = (async () => {
      for await (const entry of session.log.tail({ signal: controller.signal })) {
        seen.push(entry);
        if (entry.entry.role === 'assistant' && JSON.stringify(entry.entry.content).includes('turn 3')) controller.abort();
      }
    })();
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(await session.send('third').text(), 'turn 3: third; notes 3; child yes');
    await tailing;
    assert.deepEqual(
      seen.map((stored) => stored.offset),
      seen.map((_stored, index) => index),
      'every offset once, in order',
    );
    const messages = seen.filter((stored) => stored.entry.kind === 'message');
    assert.deepEqual(
      messages.map((stored) => stored.entry.role),
      ['user', 'assistant', 'user', 'assistant', 'user', 'assistant'],
    );

    // The recorded events (Durable Streams), read to the end, then resumed after one more turn.
    const recorded: SessionEvent[] = [];
    let resumeAt = '';
    for await (const batch of session.events({ live: false })) {
      recorded.push(...batch.events);
      resumeAt = batch.offset;
    }
    assert.equal(recorded.filter((event) => event.type === 'turn-finish').length, 3);
    assert.equal(
      recorded
        .filter((event) => event.type === 'text-delta')
        .map((event) => (event as { delta: string }).delta)
        .join('|'),
      'turn 1: hello; notes 1; child yes|turn 2: again; notes 2; child yes|turn 3: third; notes 3; child yes',
    );

    const fork = await session.fork({ name: 'client-fork' });
    assert.equal(fork.info.parentId, session.id);
    assert.equal(await fork.send('branch').text(), 'turn 4: branch; notes 4; child yes');

    // The AI SDK adapter against the real session: useChat's request in, a UI message out.
    const message = await chatThrough(createChatHandler({ session: session.id, client: torpor }), 'from ui');
    assert.equal(
      message.parts
        .filter((part) => part.type === 'text')
        .map((part) => (part as { text: string }).text)
        .join(''),
      'turn 4: from ui; notes 4; child yes',
    );

    const later: SessionEvent[] = [];
    const following = new AbortController();
    for await (const batch of session.events({ offset: resumeAt, signal: following.signal })) {
      later.push(...batch.events);
      if (later.some((event) => event.type === 'turn-finish')) break;
    }
    assert.deepEqual(
      later.map((event) => event.type),
      ['turn-start', 'text-delta', 'message-finish', 'turn-finish'],
      'only the turn after the saved offset',
    );

    // Rewind: the machine and the log as they were right after turn 2 (of 4; 3 are kept).
    // The snapshot of a turn is taken right after it, behind the reply: wait for turn 4's.
    for (let attempt = 0; attempt < 150 && !(await session.turns()).some((past) => past.turn === 4); attempt++)
      await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(
      (await session.turns()).map((past) => past.turn),
      [2, 3, 4],
    );
    const rewound = await session.fork({ name: 'client-rewind', atTurn: 2 });
    assert.equal(rewound.info.turns, 2);
    assert.equal(await rewound.send('other way').text(), 'turn 3: other way; notes 3; child yes');
    const rewoundMessages = (await rewound.log.read()).entries
      .filter((stored) => stored.entry.kind === 'message')
      .map((stored) => JSON.stringify(stored.entry.content));
    assert.equal(rewoundMessages.length, 6);
    assert.match(rewoundMessages[4], /other way/);
    await assert.rejects(
      session.fork({ atTurn: 1 }),
      (error: unknown) => error instanceof NotFoundError && error.code === 'turn-unknown' && /2, 3, 4/.test(error.hint ?? ''),
    );
    await assert.rejects(torpor.transport.json('POST', `/v1/sessions/${session.id}/fork`, { atTurn: -1 }), InvalidRequestError);
    await rewound.delete();

    const listed = await torpor.sessions.list();
    assert.deepEqual(listed.map((info) => info.name).sort(), ['client-chat', 'client-fork']);
    assert.equal((await session.refresh()).turns, 4);
    await fork.delete();
    await session.delete();
    await assert.rejects(session.refresh(), NotFoundError);
    assert.deepEqual(await torpor.sessions.list(), []);
  });
});

// An agent whose turns take a while: a reader can drop out in the middle of one.
const slowAgent = String.raw`
while read -r line; do
  case "$line" in
  *'"type":"message"'*)
    turn=$(echo "$line" | sed 's/.*"turnId":"\([^"]*\)".*/\1/')
    echo "{\"type\":\"turn-start\",\"turnId\":\"$turn\"}"
    echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\",\"delta\":\"part one, \"}"
    sleep 4
    echo "{\"type\":\"text-delta\",\"turnId\":\"$turn\",\"delta\":\"part two\"}"
    echo "{\"type\":\"message-finish\",\"turnId\":\"$turn\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"part one, part two\"}]}}"
    echo "{\"type\":\"turn-finish\",\"turnId\":\"$turn\"}" ;;
  esac
done
`;

describe('useChat resume (a real VM)', { timeout: 600_000 }, () => {
  it('replays the running turn to a reloaded page and follows it to its end; 204 when nothing runs', async () => {
    const session = await torpor.sessions.create({ image: 'base', command: ['sh', '-c', slowAgent], resources: { memory: '256m' }, idle: '60s' });
    const resume = createChatResumeHandler({ client: torpor, session: () => session.id });
    const transport = new DefaultChatTransport({
      api: 'http://app.invalid/api/chat',
      fetch: (async (input: string | URL | Request, init?: RequestInit) => resume(new Request(input, init))) as typeof fetch,
    });
    assert.equal(await transport.reconnectToStream({ chatId: 'chat-1' }), null, 'nothing to resume before any turn');

    const running = session.send('go').text();
    // The page reloads after the first part was shown.
    for (let attempt = 0; attempt < 300; attempt++) {
      const seen: SessionEvent[] = [];
      for await (const batch of session.events({ live: false })) seen.push(...batch.events);
      if (seen.some((event) => event.type === 'text-delta')) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const stream = await transport.reconnectToStream({ chatId: 'chat-1' });
    assert.ok(stream, 'a running turn can be resumed');
    let last: UIMessage | undefined;
    for await (const message of readUIMessageStream({ stream })) last = message;
    assert.equal(
      last?.parts
        .filter((part) => part.type === 'text')
        .map((part) => (part as { text: string }).text)
        .join(''),
      'part one, part two',
    );
    assert.equal(await running, 'part one, part two');
    assert.equal(await transport.reconnectToStream({ chatId: 'chat-1' }), null, 'nothing to resume after the turn');
    await session.delete();
  });
});
