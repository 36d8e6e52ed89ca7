import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { stepCountIs, streamText, tool } from 'ai';
import { z } from 'zod';
import { startDevLlm, type DevLlmServer } from '../dev-llm/server.ts';
import { encodeLine, parseAgentEvent, type AgentEvent, type HostMessage } from '../session/agent-protocol.ts';
import { eventToEntries } from '../session/agent-events-to-entries.ts';
import { createAgent, historyToModelMessages, type Agent, type AgentOptions } from './agent.ts';
import { retryAfterMs, type StreamTextResultLike } from './index.ts';

/** The host's end of the pipes: real streams, the agent's real parser and writer. */
class Host {
  readonly input = new PassThrough();
  readonly output = new PassThrough();
  readonly log = new PassThrough();
  readonly events: AgentEvent[] = [];
  logText = '';
  private buffer = '';
  private listeners: Array<() => void> = [];

  constructor() {
    this.output.on('data', (data: Buffer) => {
      this.buffer += data.toString();
      const lines = this.buffer.split('\n');
      this.buffer = lines.pop()!;
      for (const line of lines) this.events.push(parseAgentEvent(line));
      for (const listener of this.listeners.splice(0)) listener();
    });
    this.log.on('data', (data: Buffer) => (this.logText += data.toString()));
  }

  agent(options: AgentOptions = {}): Agent {
    return createAgent({ input: this.input, output: this.output, logOutput: this.log, ...options });
  }

  send(message: HostMessage): void {
    this.input.write(encodeLine(message));
  }

  /** The first event from `index` on that matches, waiting for it if needed. */
  async next(type: AgentEvent['type'], from = 0, timeoutMs = 5000): Promise<AgentEvent & { index: number }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.events.findIndex((event, position) => position >= from && event.type === type);
      if (index >= 0) return { ...this.events[index], index };
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Error(`no ${type} event; got ${this.events.map((event) => event.type).join(', ')}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.listeners.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

let llm: DevLlmServer;
before(async () => {
  llm = await startDevLlm();
});
after(() => llm.close());

function model() {
  return createOpenAICompatible({ name: 'dev', baseURL: llm.url, includeUsage: true })('torpor-dev');
}

describe('agent SDK protocol handling', () => {
  it('greets, then runs each message as a turn between turn-start and turn-finish', async () => {
    const host = new Host();
    const agent = host.agent();
    host.send({ type: 'hello', protocol: 1, sessionId: 's1' });
    assert.equal((await agent.hello).sessionId, 's1');
    assert.equal(agent.sessionId, 's1');
    host.send({ type: 'message', turnId: 't1', message: { role: 'user', content: 'one' } });
    host.send({
      type: 'message',
      turnId: 't2',
      message: {
        role: 'user',
        content: [
          { type: 'text', text: 'tw' },
          { type: 'text', text: 'o' },
        ],
      },
    });
    const seen: string[] = [];
    const loop = (async () => {
      for await (const turn of agent.messages()) {
        seen.push(turn.text);
        agent.send({ type: 'text-delta', turnId: turn.turnId, delta: turn.text.toUpperCase() });
        if (seen.length === 2) host.send({ type: 'shutdown' });
      }
    })();
    await loop;
    assert.deepEqual(seen, ['one', 'two']);
    assert.deepEqual(host.events, [
      { type: 'turn-start', turnId: 't1' },
      { type: 'text-delta', turnId: 't1', delta: 'ONE' },
      { type: 'turn-finish', turnId: 't1' },
      { type: 'turn-start', turnId: 't2' },
      { type: 'text-delta', turnId: 't2', delta: 'TWO' },
      { type: 'turn-finish', turnId: 't2' },
    ]);
    await agent.closed;
  });

  it('reports a failing onMessage handler as an error event and keeps serving', async () => {
    const host = new Host();
    const agent = host.agent({
      onMessage: (turn) => {
        if (turn.text === 'fail') throw new Error('handler broke');
      },
    });
    host.send({ type: 'message', turnId: 'bad', message: { role: 'user', content: 'fail' } });
    host.send({ type: 'message', turnId: 'good', message: { role: 'user', content: 'fine' } });
    await host.next('turn-finish', 3);
    host.input.end();
    await agent.done;
    assert.deepEqual(host.events, [
      { type: 'turn-start', turnId: 'bad' },
      { type: 'error', turnId: 'bad', message: 'handler broke', code: 'agent_error' },
      { type: 'turn-finish', turnId: 'bad' },
      { type: 'turn-start', turnId: 'good' },
      { type: 'turn-finish', turnId: 'good' },
    ]);
    assert.match(host.logText, /handler broke/);
  });

  it('sleeps until a wake, and answers checkpoint and history requests in order', async () => {
    const host = new Host();
    const agent = host.agent();
    const until = new Date(Date.now() + 60_000);
    const woken = agent.sleepUntil(until, { reason: 'nightly job' });
    assert.deepEqual(await host.next('sleep-until'), { type: 'sleep-until', until: until.toISOString(), reason: 'nightly job', index: 0 });
    let resolved = false;
    void woken.then(() => (resolved = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(resolved, false, 'a sleep lasts until the host wakes it');
    host.send({ type: 'wake', reason: 'timer' });
    assert.deepEqual(await woken, { type: 'wake', reason: 'timer' });

    const first = agent.checkpoint();
    const second = agent.checkpoint();
    const history = agent.history();
    host.send({ type: 'checkpoint-done', snapshot: 'snap-1' });
    host.send({ type: 'checkpoint-failed', error: 'disk full' });
    host.send({ type: 'history', entries: [{ kind: 'message', role: 'user', content: 'hi' }] });
    assert.equal(await first, 'snap-1');
    await assert.rejects(second, /checkpoint failed: disk full/);
    assert.deepEqual(await history, [{ kind: 'message', role: 'user', content: 'hi' }]);
    assert.deepEqual(
      host.events.map((event) => event.type),
      ['sleep-until', 'checkpoint', 'checkpoint', 'history-request'],
    );

    const orphan = agent.sleepUntil(Date.now() + 1000);
    host.send({ type: 'shutdown' });
    await assert.rejects(orphan, /closed the connection/);
    await assert.rejects(agent.checkpoint(), /closed/);
  });

  it('rejects malformed events where they are made, and ignores garbage from the host', async () => {
    const host = new Host();
    const agent = host.agent();
    assert.throws(() => agent.send({ type: 'text-delta', turnId: 't' } as never), /delta/);
    assert.throws(() => agent.appendEntries([{ kind: 'message', role: 'user' } as never]), /entries/);
    host.input.write('not json\n');
    host.send({
      type: 'hello',
      protocol: 1,
      sessionId: 's',
      history: [
        { kind: 'message', role: 'user', content: 'earlier' },
        { kind: 'message', role: 'assistant', content: 'reply' },
      ],
    });
    const hello = await agent.hello;
    assert.deepEqual(historyToModelMessages(hello.history!), [
      { role: 'user', content: 'earlier' },
      { role: 'assistant', content: 'reply' },
    ]);
    assert.match(host.logText, /ignoring a line from the host: not a JSON line/);
    host.input.end();
  });
});

describe('agent.streamText with the AI SDK', () => {
  const shell = tool({
    description: 'run a shell command',
    inputSchema: z.object({ command: z.string() }),
    execute: async ({ command }) => ({ exitCode: 0, stdout: `ran ${command}` }),
  });

  it("forwards a tool loop as events whose log entries rebuild the AI SDK's own messages", async () => {
    const host = new Host();
    const agent = host.agent();
    const conversation: Parameters<typeof streamText>[0]['messages'] & object = [{ role: 'user', content: 'run: uname' }];
    const result = streamText({ model: model(), messages: conversation, tools: { shell }, stopWhen: stepCountIs(4) });
    const checked: StreamTextResultLike = result; // the structural interface accepts a real result
    const requestSizes: number[] = [];
    const watched: StreamTextResultLike = {
      fullStream: (async function* () {
        for await (const part of checked.fullStream) {
          const body = (part as { request?: { body?: unknown } }).request?.body;
          if (part.type === 'start-step') requestSizes.push(JSON.parse(typeof body === 'string' ? body : JSON.stringify(body)).messages.length);
          yield part;
        }
      })(),
    };
    const forwarded = await agent.streamText(watched, { turnId: 't', messages: conversation as never });
    assert.deepEqual(requestSizes, [1, 3], 'the second step sends user, assistant (tool call) and tool messages once each');
    const response = await result.response;
    const json = (value: unknown) => JSON.parse(JSON.stringify(value));
    assert.deepEqual(forwarded.messages, json(response.messages));
    assert.equal(forwarded.text, 'The shell tool returned: {"exitCode":0,"stdout":"ran uname"}');
    assert.equal(forwarded.steps, 2);
    assert.equal(conversation.length, 1 + response.messages.length, 'completed steps were appended to the conversation');

    const types = host.events.map((event) => event.type);
    assert.deepEqual(types.slice(0, 4), ['tool-call', 'message-finish', 'tool-result', 'usage']);
    assert.ok(types.slice(4).includes('text-delta'));
    assert.deepEqual(types.slice(-2), ['message-finish', 'usage']);
    const usage = host.events.find((event) => event.type === 'usage');
    assert.ok(usage?.type === 'usage' && usage.inputTokens! > 0 && usage.model === 'torpor-dev');

    // What the host logs, read back as model context, is what the AI SDK itself would continue from.
    const entries = [{ kind: 'message' as const, role: 'user' as const, content: 'run: uname' }, ...host.events.flatMap((event) => eventToEntries(event))];
    assert.deepEqual(historyToModelMessages(entries), [{ role: 'user', content: 'run: uname' }, ...json(response.messages)]);
  });

  it('forwards reasoning and keeps provider metadata out of the way', async () => {
    const host = new Host();
    const agent = host.agent();
    const forwarded = await agent.streamText(streamText({ model: model(), prompt: 'think: tea' }), 't2');
    assert.equal(forwarded.text, 'My answer about tea: 42.');
    const reasoning = host.events
      .filter((event) => event.type === 'reasoning-delta')
      .map((event) => (event.type === 'reasoning-delta' ? event.delta : ''))
      .join('');
    assert.equal(reasoning, 'Let me think about tea.');
    const finish = host.events.find((event) => event.type === 'message-finish');
    assert.deepEqual(finish?.type === 'message-finish' && finish.message.content, [
      { type: 'reasoning', text: 'Let me think about tea.' },
      { type: 'text', text: 'My answer about tea: 42.' },
    ]);
  });

  it('sleeps through a 429 and retries: withRateLimitSleep', async () => {
    const host = new Host();
    const agent = host.agent();
    const conversation: Array<{ role: 'user'; content: string }> = [{ role: 'user', content: 'rate-limit 2' }];
    let attempts = 0;
    const started = Date.now();
    const done = agent.withRateLimitSleep(
      () => {
        attempts++;
        return agent.streamText(streamText({ model: model(), messages: conversation, maxRetries: 0, onError: () => {} }), {
          turnId: 't3',
          messages: conversation as never,
        });
      },
      { turnId: 't3' },
    );
    const sleep = await host.next('sleep-until');
    assert.ok(sleep.type === 'sleep-until');
    const ahead = Date.parse(sleep.until) - started;
    assert.ok(ahead >= 1900 && ahead <= 3000, `sleeps about 2 s ahead, got ${ahead} ms`);
    assert.match(sleep.reason ?? '', /429/);
    assert.equal(sleep.turnId, 't3');
    assert.equal(attempts, 1);
    host.send({ type: 'wake', reason: 'timer' });
    const result = await done;
    assert.equal(attempts, 2);
    assert.equal(result.text, 'Done waiting: the rate limit of 2 s is over.');
  });

  it("keeps the completed steps when a later step fails, and rethrows that step's error", async () => {
    const host = new Host();
    const agent = host.agent();
    const limited = Object.assign(new Error('Too Many Requests'), { statusCode: 429, responseHeaders: { 'retry-after': '1' } });
    // Recorded AI SDK v5 part shapes: step 1 calls a tool, step 2 fails with a 429.
    const parts = [
      { type: 'start' },
      { type: 'start-step', request: {}, warnings: [] },
      { type: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } },
      { type: 'tool-result', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' }, output: 'a.txt', preliminary: true },
      { type: 'tool-result', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' }, output: 'a.txt b.txt' },
      {
        type: 'finish-step',
        finishReason: 'tool-calls',
        usage: { inputTokens: 3, outputTokens: 4, totalTokens: 7 },
        response: { modelId: 'm' },
        providerMetadata: undefined,
      },
      { type: 'start-step', request: {}, warnings: [] },
      { type: 'text-start', id: '0' },
      { type: 'text-delta', id: '0', text: 'partial' },
      { type: 'error', error: limited },
      { type: 'finish', finishReason: 'error', totalUsage: {} },
    ];
    const conversation: unknown[] = [{ role: 'user', content: 'run: ls' }];
    await assert.rejects(
      agent.streamText(
        {
          fullStream: (async function* () {
            yield* parts;
          })(),
        },
        { turnId: 't', messages: conversation },
      ),
      (error) => error === limited,
    );
    assert.deepEqual(conversation.slice(1), [
      { role: 'assistant', content: [{ type: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } }] },
      { role: 'tool', content: [{ type: 'tool-result', toolCallId: 'c1', toolName: 'shell', output: { type: 'text', value: 'a.txt b.txt' } }] },
    ]);
    assert.deepEqual(
      host.events.map((event) => event.type),
      ['tool-call', 'message-finish', 'tool-result', 'usage', 'text-delta'],
    );
  });

  it('parses Retry-After as seconds, milliseconds or an HTTP date', () => {
    const now = Date.parse('2030-01-01T00:00:00Z');
    assert.equal(retryAfterMs({ 'retry-after': '2' }, now), 2000);
    assert.equal(retryAfterMs({ 'Retry-After': '1.5' }, now), 1500);
    assert.equal(retryAfterMs({ 'retry-after-ms': '250', 'retry-after': '9' }, now), 250);
    assert.equal(retryAfterMs({ 'retry-after': 'Tue, 01 Jan 2030 00:00:30 GMT' }, now), 30_000);
    assert.equal(retryAfterMs({ 'retry-after': 'Mon, 31 Dec 2029 00:00:00 GMT' }, now), 0);
    assert.equal(retryAfterMs(new Headers({ 'retry-after': '7' }), now), 7000);
    assert.equal(retryAfterMs({ 'retry-after': 'soon' }, now), undefined);
    assert.equal(retryAfterMs(undefined, now), undefined);
  });

  it('rethrows errors that are not rate limits, and gives up after maxSleeps', async () => {
    const host = new Host();
    const agent = host.agent();
    await assert.rejects(
      agent.withRateLimitSleep(async () => Promise.reject(new Error('boom'))),
      /boom/,
    );
    const limited = Object.assign(new Error('slow down'), { statusCode: 429, responseHeaders: { 'retry-after': '1' } });
    const wrapped = { name: 'AI_RetryError', message: 'Failed after 3 attempts', lastError: limited, errors: [limited] };
    const gaveUp = agent.withRateLimitSleep(async () => Promise.reject(wrapped), { maxSleeps: 1 });
    await host.next('sleep-until');
    host.send({ type: 'wake', reason: 'timer' });
    await assert.rejects(gaveUp, (error) => error === wrapped);
    assert.equal(host.events.filter((event) => event.type === 'sleep-until').length, 1);
  });
});
