import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { anthropicToEntries, entriesToAnthropic, type AnthropicConversation } from './anthropic-messages.ts';
import { InvalidArgumentError } from './errors.ts';
import { entriesToModelMessages } from './model-messages.ts';
import { storeAndRead } from './testing/temporary-log.ts';

const conversation: AnthropicConversation = {
  system: [
    { type: 'text', text: 'You are a coding agent.' },
    { type: 'text', text: 'Repository rules: ...', cache_control: { type: 'ephemeral' } },
  ],
  messages: [
    { role: 'user', content: 'List the files.' },
    {
      role: 'assistant',
      content: [
        { type: 'thinking', thinking: 'I should call ls.', signature: 'EqQBCkYIBx' },
        { type: 'redacted_thinking', data: 'opaque' },
        { type: 'text', text: 'Listing.' },
        { type: 'tool_use', id: 'toolu_1', name: 'bash', input: { command: 'ls' } },
      ],
    },
    {
      role: 'user',
      content: [
        { type: 'tool_result', tool_use_id: 'toolu_1', content: 'a.ts\nb.ts' },
        { type: 'text', text: 'Also show this:' },
        { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } },
        { type: 'document', source: { type: 'url', url: 'https://example.com/spec.pdf' }, title: 'spec' },
      ],
    },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_2', name: 'read', input: { path: 'a.ts' } }] },
    {
      role: 'user',
      content: [{ type: 'tool_result', tool_use_id: 'toolu_2', content: 'permission denied', is_error: true }],
    },
    { role: 'assistant', content: [{ type: 'text', text: 'I could not read a.ts.' }] },
  ],
};

describe('Anthropic messages conversion', () => {
  it('round-trips a conversation through a real log, signatures included', async () => {
    const stored = await storeAndRead(anthropicToEntries(conversation));
    assert.deepEqual(entriesToAnthropic(stored), conversation);
  });

  it('maps to AI SDK messages with the signature in providerOptions', async () => {
    const stored = await storeAndRead(anthropicToEntries(conversation));
    const messages = entriesToModelMessages(stored);
    assert.equal(messages[0].role, 'system');
    const assistant = messages.find((message) => message.role === 'assistant');
    assert.ok(assistant && Array.isArray(assistant.content));
    assert.deepEqual(assistant.content[0], { type: 'reasoning', text: 'I should call ls.', providerOptions: { anthropic: { signature: 'EqQBCkYIBx' } } });
    const tool = messages.filter((message) => message.role === 'tool');
    assert.deepEqual(tool[1].content[0], {
      type: 'tool-result',
      toolCallId: 'toolu_2',
      toolName: 'read',
      output: { type: 'error-text', value: 'permission denied' },
    });
  });

  it('joins plain system text and places summaries', async () => {
    const stored = await storeAndRead([
      { kind: 'message', role: 'system', content: 'one' },
      { kind: 'message', role: 'user', content: 'u1' },
      { kind: 'message', role: 'assistant', content: 'a1' },
      { kind: 'message', role: 'user', content: 'u2' },
      { kind: 'summary', covers: { from: 1, to: 3 }, text: 'earlier talk' },
    ]);
    assert.deepEqual(entriesToAnthropic(stored), {
      system: 'one',
      messages: [
        { role: 'user', content: 'earlier talk' },
        { role: 'user', content: 'u2' },
      ],
    });
  });

  it('rejects blocks it cannot represent', () => {
    assert.throws(() => anthropicToEntries({ messages: [{ role: 'assistant', content: [{ type: 'server_tool_use' } as never] }] }), InvalidArgumentError);
  });
});
