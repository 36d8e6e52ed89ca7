import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RemoteContextLog } from '../context/index.ts';
import { temporaryLog } from '../context/testing/temporary-log.ts';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { startApiServer, type ApiServer } from './server.ts';

let server: ApiServer;
let cleanup: () => Promise<void>;
before(async () => {
  const temporary = temporaryLog({ maxEntryBytes: 2048, maxBlobBytes: 16 * 1024 });
  cleanup = temporary.cleanup;
  server = await startApiServer({ port: 0, log: temporary.log, maxBodyBytes: 64 * 1024, heartbeatMs: 200 });
  servers.push(server);
});
after(async () => {
  await server.close();
  await cleanup();
});

// Every request carries the server's token; the attacks on authentication live in security.test.ts.
const servers: ApiServer[] = [];
const tokenFor = (url: string) => servers.find((each) => url.startsWith(each.url))?.token ?? '';
const fetch = (url: string, init: RequestInit = {}) =>
  globalThis.fetch(url, { ...init, headers: { authorization: `Bearer ${tokenFor(url)}`, ...(init.headers as Record<string, string>) } });

const user = (text: string) => ({ kind: 'message', role: 'user', content: text });

async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

async function errorOf(response: Response): Promise<{ code: string; message: string } & Record<string, unknown>> {
  const body = (await response.json()) as { error: { code: string; message: string } };
  return body.error;
}

/** Reads SSE events from a fetch response until `count` entry events arrived. */
async function sseEntries(response: Response, count: number): Promise<Array<{ id: string; data: { offset: number } }>> {
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  const events: Array<{ id: string; data: { offset: number } }> = [];
  while (events.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let boundary: number;
    while ((boundary = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, boundary);
      buffer = buffer.slice(boundary + 2);
      const fields = Object.fromEntries(
        block
          .split('\n')
          .filter((line) => !line.startsWith(':'))
          .map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1).trim()]),
      );
      if (fields.event === 'entry') events.push({ id: fields.id, data: JSON.parse(fields.data) });
    }
  }
  await reader.cancel();
  return events;
}

describe('HTTP API', () => {
  it('appends and reads entries with offsets in headers and body', async () => {
    const response = await post('/v1/logs/api-1/entries', [user('a'), user('b')]);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('Log-Next-Offset'), '2');
    assert.deepEqual(await response.json(), { sessionId: 'api-1', offsets: [0, 1], nextOffset: 2, duplicate: false });
    const ndjson = await post('/v1/logs/api-1/entries', `${JSON.stringify(user('c'))}\n${JSON.stringify(user('d'))}\n`, {
      'content-type': 'application/x-ndjson',
    });
    assert.deepEqual(((await ndjson.json()) as { offsets: number[] }).offsets, [2, 3]);
    const read = await fetch(`${server.url}/v1/logs/api-1/entries?from=1&limit=2`);
    assert.equal(read.status, 200);
    assert.equal(read.headers.get('Log-Next-Offset'), '3');
    assert.equal(read.headers.get('Log-End-Offset'), '4');
    const body = (await read.json()) as { entries: Array<{ offset: number; entry: { content: string } }> };
    assert.deepEqual(
      body.entries.map((stored) => [stored.offset, stored.entry.content]),
      [
        [1, 'b'],
        [2, 'c'],
      ],
    );
    const listed = (await (await fetch(`${server.url}/v1/logs`)).json()) as { sessions: Array<{ id: string }> };
    assert.ok(listed.sessions.some((session) => session.id === 'api-1'));
    assert.equal(((await (await fetch(`${server.url}/v1/logs/api-1`)).json()) as { nextOffset: number }).nextOffset, 4);
  });

  it('answers bad input with 4xx and a JSON error that says what to do', async () => {
    const notJson = await post('/v1/logs/api-bad/entries', '{oops');
    assert.equal(notJson.status, 400);
    assert.equal((await errorOf(notJson)).code, 'invalid-json');
    const invalid = await post('/v1/logs/api-bad/entries', [user('ok'), { kind: 'message', role: 'user' }]);
    assert.equal(invalid.status, 400);
    const invalidError = await errorOf(invalid);
    assert.equal(invalidError.code, 'invalid-entry');
    assert.deepEqual(
      (invalidError.issues as Array<{ index: number }>).map((issue) => issue.index),
      [1],
    );
    assert.equal((await post('/v1/logs/api-bad/entries', '')).status, 400);
    assert.equal((await fetch(`${server.url}/v1/logs/api-bad`)).status, 404);
    const badId = await post('/v1/logs/bad%2Fid/entries', [user('x')]);
    assert.equal(badId.status, 400);
    assert.equal((await errorOf(badId)).code, 'invalid-session-id');
    const tooBig = await post('/v1/logs/api-bad/entries', [user('x'.repeat(20_000))]);
    assert.equal(tooBig.status, 413);
    assert.equal((await errorOf(tooBig)).code, 'entry-too-large');
    const bodyTooBig = await post('/v1/logs/api-bad/entries', [user('x'.repeat(70_000))]);
    assert.equal(bodyTooBig.status, 413);
    assert.equal((await errorOf(bodyTooBig)).code, 'body-too-large');
    await post('/v1/logs/api-short/entries', [user('x')]);
    const beyond = await fetch(`${server.url}/v1/logs/api-short/entries?from=9`);
    assert.equal(beyond.status, 416);
    assert.equal((await errorOf(beyond)).endOffset, 1);
    assert.equal((await fetch(`${server.url}/v1/logs/api-short/entries?from=-3`)).status, 400);
    assert.equal((await fetch(`${server.url}/v1/logs/api-short/entries?live=carrier-pigeon`)).status, 400);
    const missing = await fetch(`${server.url}/v1/nothing-here`);
    assert.equal(missing.status, 404);
    assert.equal((await errorOf(missing)).code, 'not-found');
  });

  it('supports producers and expected offsets through headers', async () => {
    const stamp = (epoch: number, sequence: number) => ({ 'Producer-Id': 'w', 'Producer-Epoch': String(epoch), 'Producer-Seq': String(sequence) });
    const first = await post('/v1/logs/api-p/entries', [user('a')], stamp(0, 0));
    assert.equal(first.status, 200);
    const retry = await post('/v1/logs/api-p/entries', [user('a')], stamp(0, 0));
    assert.equal(retry.headers.get('Log-Duplicate'), 'true');
    assert.deepEqual(((await retry.json()) as { offsets: number[] }).offsets, [0]);
    const gap = await post('/v1/logs/api-p/entries', [user('b')], stamp(0, 2));
    assert.equal(gap.status, 409);
    assert.equal(gap.headers.get('Producer-Expected-Seq'), '1');
    await post('/v1/logs/api-p/entries', [user('b')], stamp(1, 0));
    const fenced = await post('/v1/logs/api-p/entries', [user('c')], stamp(0, 1));
    assert.equal(fenced.status, 403);
    assert.equal(fenced.headers.get('Producer-Epoch'), '1');
    const partial = await post('/v1/logs/api-p/entries', [user('c')], { 'Producer-Id': 'w' });
    assert.equal(partial.status, 400);
    assert.match(JSON.stringify(await partial.json()), /send all three of Producer-Id, Producer-Epoch and Producer-Seq, or none/);
    const nameless = await post('/v1/logs/api-p/entries', [user('c')], { 'Producer-Id': '', 'Producer-Epoch': '0', 'Producer-Seq': '0' });
    assert.equal(nameless.status, 400);
    assert.match(JSON.stringify(await nameless.json()), /Producer-Id must not be empty/);
    const conflict = await post('/v1/logs/api-p/entries', [user('c')], { 'Expected-Offset': '0' });
    assert.equal(conflict.status, 412);
    assert.equal(conflict.headers.get('Log-Next-Offset'), '2');
    assert.equal((await post('/v1/logs/api-p/entries', [user('c')], { 'Expected-Offset': '2' })).status, 200);
  });

  it('long-polls: 204 with headers on timeout, entries as soon as they are appended', async () => {
    await post('/v1/logs/api-lp/entries', [user('a')]);
    const empty = await fetch(`${server.url}/v1/logs/api-lp/entries?from=1&live=long-poll&timeout=100`);
    assert.equal(empty.status, 204);
    assert.equal(empty.headers.get('Log-Up-To-Date'), 'true');
    assert.equal(empty.headers.get('Log-Next-Offset'), '1');
    const waiting = fetch(`${server.url}/v1/logs/api-lp/entries?from=1&live=long-poll&timeout=10000`);
    setTimeout(() => void post('/v1/logs/api-lp/entries', [user('b')]), 50);
    const started = Date.now();
    const response = await waiting;
    assert.equal(response.status, 200);
    assert.deepEqual(
      ((await response.json()) as { entries: Array<{ offset: number }> }).entries.map((stored) => stored.offset),
      [1],
    );
    assert.ok(Date.now() - started < 5000);
  });

  it('streams live entries over SSE and resumes after Last-Event-ID', async () => {
    await post('/v1/logs/api-sse/entries', [user('a'), user('b')]);
    const stream = await fetch(`${server.url}/v1/logs/api-sse/entries?live=sse&from=1`);
    assert.equal(stream.status, 200);
    assert.match(stream.headers.get('content-type') ?? '', /text\/event-stream/);
    setTimeout(() => void post('/v1/logs/api-sse/entries', [user('c')]), 50);
    const events = await sseEntries(stream, 2);
    assert.deepEqual(
      events.map((event) => [event.id, event.data.offset]),
      [
        ['1', 1],
        ['2', 2],
      ],
    );
    await post('/v1/logs/api-sse/entries', [user('d')]);
    const resumed = await fetch(`${server.url}/v1/logs/api-sse/entries?live=sse`, { headers: { 'Last-Event-ID': '2' } });
    assert.deepEqual(
      (await sseEntries(resumed, 1)).map((event) => event.data.offset),
      [3],
    );
    assert.equal((await fetch(`${server.url}/v1/logs/api-none/entries?live=sse`)).status, 404);
  });

  it('forks and serves model messages in three formats', async () => {
    await post('/v1/logs/api-f/entries', [{ kind: 'message', role: 'system', content: 's' }, user('a'), { kind: 'message', role: 'assistant', content: 'b' }]);
    const fork = await post('/v1/logs/api-f/fork', { offset: 2, name: 'api-f2' });
    assert.equal(fork.status, 201);
    const forked = (await fork.json()) as Record<string, unknown>;
    assert.deepEqual({ ...forked, createdAt: undefined }, { id: 'api-f2', parentId: 'api-f', forkOffset: 2, nextOffset: 2, createdAt: undefined });
    assert.equal((await post('/v1/logs/api-f/fork', { offset: 99 })).status, 416);
    assert.equal((await post('/v1/logs/api-f/fork', { name: 'x' })).status, 400);
    assert.equal((await post('/v1/logs/api-f/fork', { offset: 1, name: 'api-f2' })).status, 409);
    const ai = (await (await fetch(`${server.url}/v1/logs/api-f2/messages`)).json()) as { messages: unknown[] };
    assert.deepEqual(ai.messages, [
      { role: 'system', content: 's' },
      { role: 'user', content: 'a' },
    ]);
    const anthropic = await (await fetch(`${server.url}/v1/logs/api-f/messages?format=anthropic`)).json();
    assert.deepEqual(anthropic, {
      system: 's',
      messages: [
        { role: 'user', content: 'a' },
        { role: 'assistant', content: 'b' },
      ],
    });
    const openai = (await (await fetch(`${server.url}/v1/logs/api-f/messages?format=openai`)).json()) as { messages: unknown[] };
    assert.equal(openai.messages.length, 3);
  });

  it('serves the remote client with the same behaviour as the embedded log', async () => {
    const remote = new RemoteContextLog(server.url, { token: server.token });
    const appended = await remote.append('api-remote', [user('a'), user('b')], { producer: { id: 'r', epoch: 0, sequence: 0 } });
    assert.deepEqual(appended.offsets, [0, 1]);
    assert.equal((await remote.append('api-remote', [user('a'), user('b')], { producer: { id: 'r', epoch: 0, sequence: 0 } })).duplicate, true);
    assert.deepEqual(
      (await remote.read('api-remote', { from: 1 })).entries.map((stored) => stored.offset),
      [1],
    );
    await assert.rejects(remote.read('api-nobody'), (error: unknown) => (error as { code?: string }).code === 'session-unknown');
    await assert.rejects(remote.append('api-remote', [user('x')], { expectedOffset: 0 }), (error: unknown) => (error as { status?: number }).status === 412);
    const controller = new AbortController();
    const seen: number[] = [];
    const tailing = (async () => {
      for await (const stored of remote.tail('api-remote', { from: 1, signal: controller.signal })) {
        seen.push(stored.offset);
        if (seen.length === 2) controller.abort();
      }
    })();
    setTimeout(() => void remote.append('api-remote', [user('c')]), 50);
    await tailing;
    assert.deepEqual(seen, [1, 2]);
    assert.equal((await remote.fork('api-remote', 1, { name: 'api-remote-2' })).forkOffset, 1);
    assert.ok((await remote.sessions()).some((session) => session.id === 'api-remote-2'));
    assert.equal((await remote.describe('api-remote')).nextOffset, 3);
    await assert.rejects(
      new RemoteContextLog('http://127.0.0.1:1').sessions(),
      (error: unknown) => (error as { code?: string }).code === 'storage-unavailable',
    );
  });
});

describe('HTTP API with sessions', () => {
  let sessionServer: ApiServer;
  let removeHome: () => Promise<void>;
  let removeLog: () => Promise<void>;
  before(async () => {
    removeHome = (await useTemporaryHome()).cleanup;
    const temporary = temporaryLog();
    removeLog = temporary.cleanup;
    sessionServer = await startApiServer({ port: 0, log: temporary.log, sessions: true });
    servers.push(sessionServer);
  });
  after(async () => {
    await sessionServer.close();
    await removeLog();
    await removeHome();
  });

  it('answers session errors through the one error handler, with code, hint and status', async () => {
    const unknown = await fetch(`${sessionServer.url}/v1/sessions/nobody`);
    assert.equal(unknown.status, 404);
    const unknownError = await errorOf(unknown);
    assert.equal(unknownError.code, 'session-unknown');
    assert.match(String(unknownError.hint), /torpor session ls/);
    assert.equal((await fetch(`${sessionServer.url}/v1/sessions/nobody/log`)).status, 404);
    assert.equal((await fetch(`${sessionServer.url}/v1/sessions/nobody`, { method: 'DELETE' })).status, 404);
    const invalid = await fetch(`${sessionServer.url}/v1/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ image: 'base', command: [], surprise: 1 }),
    });
    assert.equal(invalid.status, 400);
    assert.equal((await errorOf(invalid)).code, 'invalid-request');
    const badMemory = await fetch(`${sessionServer.url}/v1/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ image: 'base', command: ['true'], resources: { memory: 'lots' } }),
    });
    assert.equal(badMemory.status, 400);
    assert.equal((await errorOf(badMemory)).code, 'invalid-memory');
    const notJson = await fetch(`${sessionServer.url}/v1/sessions/nobody/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{oops',
    });
    assert.equal(notJson.status, 400);
    // A body that does not say it is JSON is refused before any route reads it (no cross-site text/plain posts).
    assert.equal((await fetch(`${sessionServer.url}/v1/sessions/nobody/messages`, { method: 'POST', body: '{}' })).status, 415);
    // Only /v1/sessions: the old unversioned alias is gone.
    assert.equal((await fetch(`${sessionServer.url}/sessions`)).status, 404);
    assert.equal((await fetch(`${sessionServer.url}/v1/logs`)).status, 200);
  });
});
