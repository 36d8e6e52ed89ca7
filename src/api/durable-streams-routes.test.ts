// torpor's own streams through the Durable Streams protocol, read and written with the protocol's
// reference client (@durable-streams/client): a context log and a session's events, resumed from
// saved offsets; plus the attacks a public stream endpoint must turn away.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DurableStream, IdempotentProducer, stream } from '@durable-streams/client';
import { temporaryLog } from '../context/testing/temporary-log.ts';
import type { StoredEntry } from '../context/index.ts';
import { startApiServer, type ApiServer } from './server.ts';
import { mountDurableStreams } from './durable-streams-routes.ts';
import type { DurableStreamStore } from './durable-stream-store.ts';

let server: ApiServer;
let store: DurableStreamStore;
let directory: string;
let cleanupLog: () => Promise<void>;
const sessions = new EventEmitter<{ event: [string, unknown] }>();

before(async () => {
  directory = await mkdtemp(join(tmpdir(), 'torpor-streams-'));
  const temporary = temporaryLog();
  cleanupLog = temporary.cleanup;
  server = await startApiServer({
    port: 0,
    log: temporary.log,
    configure: (app, log) => {
      store = mountDurableStreams(app, { log, sessions, stateDirectory: directory, environment: { TORPOR_STREAM_LONG_POLL_MS: '500' } });
    },
  });
});

after(async () => {
  await server.close();
  store.close();
  await cleanupLog();
  await rm(directory, { recursive: true, force: true });
});

const user = (text: string) => ({ kind: 'message', role: 'user', content: text });
const content = (stored: StoredEntry) => (stored.entry as { content?: unknown }).content;
const url = (path: string) => `${server.url}/v1/stream/${path}`;
/** Every request carries the server's token; the attacks on authentication live in security.test.ts. */
const auth = () => ({ authorization: `Bearer ${server.token}` });
const fetch = (input: string, init: RequestInit = {}) =>
  globalThis.fetch(input, { ...init, headers: { ...auth(), ...(init.headers as Record<string, string>) } });

describe('a context log as a Durable Stream', () => {
  it('reads, resumes from a saved offset, and takes idempotent producer appends exactly once', async () => {
    await server.log.append('ds-log-1', [user('one'), user('two')]);
    const first = await stream<StoredEntry>({ url: url('logs/ds-log-1'), headers: auth(), live: false });
    const items = await first.json();
    assert.deepEqual(items.map(content), ['one', 'two']);
    const saved = first.offset;

    // A producer that retries (same epoch and sequence) must not log twice.
    const handle = await DurableStream.connect({ url: url('logs/ds-log-1'), headers: auth(), contentType: 'application/json' });
    const producer = new IdempotentProducer(handle, 'writer-1', { lingerMs: 0 });
    producer.append(JSON.stringify(user('three')));
    await producer.flush(); // not close(): that would close the stream (a context log cannot be closed)
    const retry = await fetch(url('logs/ds-log-1'), {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'Producer-Id': 'writer-1', 'Producer-Epoch': '0', 'Producer-Seq': '0' },
      body: JSON.stringify([user('three')]),
    });
    assert.equal(retry.status, 204, 'a retried batch is acknowledged as a duplicate');
    assert.equal((await server.log.describe('ds-log-1')).nextOffset, 3);

    const resumed = await stream<StoredEntry>({ url: url('logs/ds-log-1'), headers: auth(), offset: saved, live: false });
    assert.deepEqual(
      (await resumed.json()).map((stored) => [stored.offset, content(stored)]),
      [[2, 'three']],
    );
  });

  for (const live of ['long-poll', 'sse'] as const) {
    it(`follows new entries live (${live}) from where a reader stopped`, async () => {
      const session = `ds-live-${live}`;
      await server.log.append(session, [user('before')]);
      const caughtUp = await stream({ url: url(`logs/${session}`), headers: auth(), live: false });
      await caughtUp.json();
      const controller = new AbortController();
      const response = await stream<StoredEntry>({ url: url(`logs/${session}`), headers: auth(), offset: caughtUp.offset, live, signal: controller.signal });
      const seen: string[] = [];
      const done = new Promise<void>((resolve) => {
        response.subscribeJson((batch) => {
          for (const stored of batch.items) seen.push(String(content(stored)));
          if (seen.length >= 2) resolve();
        });
      });
      await new Promise((resolve) => setTimeout(resolve, 100));
      await server.log.append(session, [user('after 1')]);
      await server.log.append(session, [user('after 2')]);
      await done;
      controller.abort();
      assert.deepEqual(seen, ['after 1', 'after 2']);
    });
  }

  it('rejects entries the log would not accept, and appends nothing', async () => {
    const response = await fetch(url('logs/ds-bad'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify([{ kind: 'message', role: 'wizard' }]),
    });
    assert.equal(response.status, 400);
    assert.equal((await fetch(url('logs/ds-bad'))).status, 404);
    const wrongType = await fetch(url('logs/ds-bad'), { method: 'POST', headers: { 'content-type': 'text/plain' }, body: 'hello' });
    assert.equal(wrongType.status, 409);
  });
});

describe("a session's events as a Durable Stream", () => {
  it('records every event and lets a reader resume after a disconnect', async () => {
    sessions.emit('event', 's-00000000abcd', { type: 'turn-start', turnId: 't1' });
    sessions.emit('event', 's-00000000abcd', { type: 'text-delta', turnId: 't1', delta: 'hel' });
    const controller = new AbortController();
    const first = await stream<{ type: string; delta?: string }>({
      url: url('sessions/s-00000000abcd/events'),
      headers: auth(),
      live: 'sse',
      signal: controller.signal,
    });
    const seen: string[] = [];
    let saved = '';
    await new Promise<void>((resolve) => {
      first.subscribeJson((batch) => {
        seen.push(...batch.items.map((event) => event.type));
        saved = batch.offset;
        if (batch.upToDate) resolve();
      });
    });
    controller.abort(); // the browser tab goes away
    sessions.emit('event', 's-00000000abcd', { type: 'text-delta', turnId: 't1', delta: 'lo' });
    sessions.emit('event', 's-00000000abcd', { type: 'turn-finish', turnId: 't1' });
    const resumed = await stream<{ type: string; delta?: string }>({ url: url('sessions/s-00000000abcd/events'), headers: auth(), offset: saved, live: false });
    const rest = await resumed.json();
    assert.deepEqual(seen, ['turn-start', 'text-delta']);
    assert.deepEqual(
      rest.map((event) => event.delta ?? event.type),
      ['lo', 'turn-finish'],
    );
  });

  it('cannot be written, closed or deleted over HTTP: agent events come only from the agent', async () => {
    const path = url('sessions/s-00000000abcd/events');
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const response = await fetch(path, {
        method,
        headers: { 'content-type': 'application/json' },
        body: method === 'DELETE' ? undefined : JSON.stringify({ type: 'text-delta', delta: 'forged' }),
      });
      assert.equal(response.status, 405, method);
    }
    const events = (await (await fetch(`${path}?offset=-1`)).json()) as Array<{ delta?: string }>;
    assert.ok(!events.some((event) => event.delta === 'forged'));
  });
});

describe('general streams', () => {
  it('orders pipelined producer batches that arrive out of order, and still reports a real gap', async () => {
    await fetch(url('pipelined'), { method: 'PUT', headers: { 'content-type': 'application/json' } });
    const post = (sequence: number) =>
      fetch(url('pipelined'), {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'Producer-Id': 'p1', 'Producer-Epoch': '0', 'Producer-Seq': String(sequence) },
        body: JSON.stringify([{ sequence }]),
      });
    const second = post(1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const first = post(0);
    assert.deepEqual([(await first).status, (await second).status], [200, 200]);
    assert.deepEqual(await (await fetch(url('pipelined?offset=-1'))).json(), [{ sequence: 0 }, { sequence: 1 }]);
    const gap = await post(5);
    assert.equal(gap.status, 409);
    assert.equal(gap.headers.get('Producer-Expected-Seq'), '2');
  });
});

describe('hostile requests', () => {
  it('turns away bad paths, offsets and bodies with clear errors', async () => {
    await fetch(url('attack-1'), { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '[{"a":1},{"b":2}]' });
    const cases: Array<[string, RequestInit | undefined, number]> = [
      [url('attack-1?offset=../../etc/passwd'), undefined, 400],
      [url('attack-1?offset=0000000000000000_9999999999999999'), undefined, 400],
      [url('attack-1?offset=0000000000000000_0000000000000003'), undefined, 400], // inside a JSON message
      [url('attack-1?live=forever&offset=-1'), undefined, 400],
      [url('attack%00null'), { method: 'PUT' }, 400],
      [url('x'.repeat(2000)), { method: 'PUT' }, 400],
      [url('attack-1'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"unterminated' }, 400],
      [url('attack-1'), { method: 'POST', headers: { 'content-type': 'application/json' }, body: '[]' }, 400],
      [url('attack-1'), { method: 'POST', headers: { 'content-type': 'application/json', 'Producer-Id': 'p' }, body: '[1]' }, 400],
      [
        url('attack-1'),
        { method: 'POST', headers: { 'content-type': 'application/json', 'Producer-Id': '', 'Producer-Epoch': '0', 'Producer-Seq': '0' }, body: '[1]' },
        400,
      ],
      [
        url('attack-1'),
        { method: 'POST', headers: { 'content-type': 'application/json', 'Producer-Id': 'p', 'Producer-Epoch': '-1', 'Producer-Seq': '0' }, body: '[1]' },
        400,
      ],
      [url('attack-1'), { method: 'PUT', headers: { 'content-type': 'application/json', 'Stream-TTL': '1e9' } }, 400],
      [url('attack-1'), { method: 'PUT', headers: { 'content-type': 'application/json', 'Stream-Forked-From': '/v1/stream/attack-1' } }, 409],
      [url('logs/ds-log-1'), { method: 'DELETE' }, 405],
      [url('logs/ds-log-1'), { method: 'PUT', headers: { 'content-type': 'application/json' } }, 405],
    ];
    for (const [target, init, status] of cases) {
      const response = await fetch(target, init);
      assert.equal(response.status, status, `${init?.method ?? 'GET'} ${target.slice(0, 120)}`);
      if (status >= 400 && init?.method !== 'HEAD') {
        const body = (await response.json()) as { error?: { code?: string; message?: string } };
        assert.ok(body.error?.message, `an error message for ${target.slice(0, 80)}`);
      }
    }
    const intact = (await (await fetch(url('attack-1?offset=-1'))).json()) as unknown[];
    assert.deepEqual(intact, [{ a: 1 }, { b: 2 }]);
  });

  it('keeps stream data on disk across a restart of the store', async () => {
    await fetch(url('persisted'), { method: 'PUT', headers: { 'content-type': 'text/plain' }, body: 'kept' });
    const { DurableStreamStore } = await import('./durable-stream-store.ts');
    const reopened = new DurableStreamStore(join(directory, 'streams', 'streams.sqlite'));
    try {
      const metadata = reopened.get('persisted')!;
      assert.equal(
        reopened
          .read(metadata, 0, 1024)
          .records.map((record) => record.data.toString())
          .join(''),
        'kept',
      );
    } finally {
      reopened.close();
    }
  });
});
