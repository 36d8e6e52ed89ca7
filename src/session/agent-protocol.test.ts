import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { entriesToModelMessages } from '../context/model-messages.ts';
import { AgentProtocolError, encodeLine, parseAgentEvent, parseHostMessage, protocolVersion, type AgentEvent, type HostMessage } from './agent-protocol.ts';
import { eventToEntries } from './agent-events-to-entries.ts';

function protocolError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof AgentProtocolError, String(error));
    return error.message;
  }
  assert.fail('expected AgentProtocolError');
}

describe('agent protocol', () => {
  it('round-trips every host message through a JSON line', () => {
    const messages: HostMessage[] = [
      { type: 'hello', protocol: protocolVersion, sessionId: 's1' },
      { type: 'hello', protocol: protocolVersion, sessionId: 's1', history: [{ kind: 'message', role: 'user', content: 'hi' }] },
      { type: 'message', turnId: 't1', message: { role: 'user', content: 'run: ls' } },
      {
        type: 'message',
        turnId: 't1',
        message: {
          role: 'user',
          content: [
            { type: 'text', text: 'look' },
            { type: 'image', image: 'aGk=', mediaType: 'image/png' },
          ],
        },
      },
      { type: 'wake', reason: 'timer' },
      { type: 'checkpoint-done', snapshot: 'session-s1-x' },
      { type: 'checkpoint-failed', error: 'no space' },
      { type: 'history', entries: [{ kind: 'usage', inputTokens: 3 }] },
      { type: 'shutdown' },
    ];
    for (const message of messages) {
      const line = encodeLine(message);
      assert.equal(line.indexOf('\n'), line.length - 1);
      assert.deepEqual(parseHostMessage(line.trim()), message);
    }
  });

  it('round-trips every agent event through a JSON line', () => {
    const events: AgentEvent[] = [
      { type: 'turn-start', turnId: 't' },
      { type: 'text-delta', turnId: 't', delta: 'a\nb' },
      { type: 'reasoning-delta', turnId: 't', delta: 'hmm' },
      { type: 'tool-call', turnId: 't', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } },
      { type: 'tool-result', turnId: 't', toolCallId: 'c1', toolName: 'shell', output: { type: 'text', value: 'a b' } },
      { type: 'message-finish', turnId: 't', message: { role: 'assistant', content: [{ type: 'text', text: 'ok' }] } },
      { type: 'usage', turnId: 't', inputTokens: 1, outputTokens: 2, totalTokens: 3 },
      { type: 'error', message: 'boom', code: 'E' },
      { type: 'turn-finish', turnId: 't' },
      { type: 'entries-append', entries: [{ kind: 'metadata', data: { a: 1 } }] },
      { type: 'sleep-until', until: '2030-01-01T00:00:00.000Z', reason: 'rate limited' },
      { type: 'checkpoint' },
      { type: 'history-request' },
    ];
    for (const event of events) assert.deepEqual(parseAgentEvent(encodeLine(event).trim()), event);
  });

  it('ignores unknown fields but rejects unknown types, bad JSON and missing fields', () => {
    assert.deepEqual(parseAgentEvent({ type: 'turn-finish', turnId: 't', futureField: 1 }), { type: 'turn-finish', turnId: 't' });
    assert.match(
      protocolError(() => parseAgentEvent({ type: 'text-delta', turnId: 't' })),
      /delta/,
    );
    assert.match(
      protocolError(() => parseAgentEvent({ type: 'explode' })),
      /invalid agent message/,
    );
    assert.match(
      protocolError(() => parseAgentEvent('{not json')),
      /not a JSON line/,
    );
    assert.match(
      protocolError(() => parseHostMessage({ type: 'wake', reason: 'boredom' })),
      /reason/,
    );
    assert.match(
      protocolError(() => parseAgentEvent({ type: 'sleep-until', until: 'tomorrow' })),
      /until/,
    );
  });

  it('accepts offsets in sleep-until dates', () => {
    assert.equal(parseAgentEvent({ type: 'sleep-until', until: '2030-01-01T00:00:00+02:00' }).type, 'sleep-until');
  });

  it("holds entries to the log's strict schema", () => {
    assert.match(
      protocolError(() => parseAgentEvent({ type: 'entries-append', entries: [{ kind: 'message', role: 'user', contnet: 'x' }] })),
      /entries/,
    );
    assert.match(
      protocolError(() => parseAgentEvent({ type: 'entries-append', entries: [] })),
      /entries/,
    );
    assert.match(
      protocolError(() => parseHostMessage({ type: 'history', entries: [{ kind: 'nope' }] })),
      /entries/,
    );
  });
});

describe('eventToEntries', () => {
  it("logs a step's assistant message as entries sharing one messageId and the turn id", () => {
    const entries = eventToEntries(
      {
        type: 'message-finish',
        turnId: 't1',
        message: {
          role: 'assistant',
          content: [
            { type: 'reasoning', text: 'think', providerOptions: { anthropic: { signature: 'sig' } } },
            { type: 'text', text: 'I will list' },
            { type: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } },
          ],
        },
      },
      { messageId: () => 'm1' },
    );
    assert.deepEqual(entries, [
      { kind: 'reasoning', text: 'think', providerOptions: { anthropic: { signature: 'sig' } }, messageId: 'm1', metadata: { turnId: 't1' } },
      { kind: 'message', role: 'assistant', content: [{ type: 'text', text: 'I will list' }], messageId: 'm1', metadata: { turnId: 't1' } },
      { kind: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' }, messageId: 'm1', metadata: { turnId: 't1' } },
    ]);
  });

  it("uses the event's messageId when it has one", () => {
    const entries = eventToEntries({ type: 'message-finish', turnId: 't', messageId: 'given', message: { role: 'assistant', content: 'hello' } });
    assert.deepEqual(entries, [{ kind: 'message', role: 'assistant', content: 'hello', messageId: 'given', metadata: { turnId: 't' } }]);
  });

  it('maps results, usage, errors, appended entries and sleeps; live-only events log nothing', () => {
    assert.deepEqual(eventToEntries({ type: 'tool-result', turnId: 't', toolCallId: 'c1', toolName: 'shell', output: { type: 'json', value: { code: 0 } } }), [
      { kind: 'tool-result', toolCallId: 'c1', toolName: 'shell', output: { type: 'json', value: { code: 0 } }, metadata: { turnId: 't' } },
    ]);
    assert.deepEqual(eventToEntries({ type: 'usage', inputTokens: 5, outputTokens: 7, model: 'm' }), [
      { kind: 'usage', inputTokens: 5, outputTokens: 7, model: 'm' },
    ]);
    assert.deepEqual(eventToEntries({ type: 'error', turnId: 't', message: '429', code: 'rate_limited', details: { retryAfter: 2 } }), [
      { kind: 'error', message: '429', code: 'rate_limited', details: { retryAfter: 2 }, metadata: { turnId: 't' } },
    ]);
    assert.deepEqual(eventToEntries({ type: 'entries-append', entries: [{ kind: 'metadata', data: { notes: 1 } }] }), [
      { kind: 'metadata', data: { notes: 1 } },
    ]);
    assert.deepEqual(eventToEntries({ type: 'sleep-until', until: '2030-01-01T00:00:00.000Z', reason: '429', turnId: 't' }), [
      { kind: 'metadata', data: { event: 'sleep-until', until: '2030-01-01T00:00:00.000Z', reason: '429' }, metadata: { turnId: 't' } },
    ]);
    for (const event of [
      { type: 'turn-start', turnId: 't' },
      { type: 'text-delta', turnId: 't', delta: 'x' },
      { type: 'reasoning-delta', turnId: 't', delta: 'x' },
      { type: 'tool-call', turnId: 't', toolCallId: 'c', toolName: 'n', input: null },
      { type: 'turn-finish', turnId: 't' },
      { type: 'checkpoint' },
      { type: 'history-request' },
    ]) {
      assert.deepEqual(eventToEntries(event), [], event.type);
    }
  });

  it('turns an invalid event into an error entry instead of throwing', () => {
    const [entry] = eventToEntries({ type: 'message-finish', turnId: 't', message: { role: 'assistant', content: [{ type: 'text' }] } });
    assert.equal(entry.kind, 'error');
    assert.equal(entry.kind === 'error' && entry.code, 'invalid_agent_event');
    assert.deepEqual(entry.kind === 'error' && entry.details, {
      type: 'message-finish',
      turnId: 't',
      message: { role: 'assistant', content: [{ type: 'text' }] },
    });
    assert.equal(eventToEntries('garbage')[0].kind, 'error');
  });

  it("rebuilds the model conversation from a turn's events", () => {
    const events: AgentEvent[] = [
      { type: 'turn-start', turnId: 't' },
      {
        type: 'message-finish',
        turnId: 't',
        message: {
          role: 'assistant',
          content: [
            { type: 'text', text: 'listing' },
            { type: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } },
          ],
        },
      },
      { type: 'tool-result', turnId: 't', toolCallId: 'c1', toolName: 'shell', output: { type: 'text', value: 'a.txt' } },
      { type: 'message-finish', turnId: 't', message: { role: 'assistant', content: [{ type: 'text', text: 'there is a.txt' }] } },
      { type: 'turn-finish', turnId: 't' },
    ];
    const entries = [{ kind: 'message' as const, role: 'user' as const, content: 'ls please' }, ...events.flatMap((event) => eventToEntries(event))];
    const stored = entries.map((entry, offset) => ({ sessionId: 's', offset, appendedAt: '', entry }));
    assert.deepEqual(entriesToModelMessages(stored), [
      { role: 'user', content: 'ls please' },
      {
        role: 'assistant',
        content: [
          { type: 'text', text: 'listing' },
          { type: 'tool-call', toolCallId: 'c1', toolName: 'shell', input: { command: 'ls' } },
        ],
      },
      { role: 'tool', content: [{ type: 'tool-result', toolCallId: 'c1', toolName: 'shell', output: { type: 'text', value: 'a.txt' } }] },
      { role: 'assistant', content: [{ type: 'text', text: 'there is a.txt' }] },
    ]);
  });
});
