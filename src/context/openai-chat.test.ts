import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from './errors.ts';
import { entriesToOpenAIChat, openAIChatToEntries, type OpenAIChatMessage } from './openai-chat.ts';
import { entriesToModelMessages } from './model-messages.ts';
import { storeAndRead } from './testing/temporary-log.ts';

const request: OpenAIChatMessage[] = [
  { role: 'developer', content: 'Answer in French.' },
  { role: 'system', content: [{ type: 'text', text: 'Be kind.' }], name: 'policy' },
  {
    role: 'user',
    content: [
      { type: 'text', text: "What's the weather, and what is this?" },
      { type: 'image_url', image_url: { url: 'https://example.com/sky.jpg', detail: 'low' } },
      { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
    ],
    name: 'ana',
  },
  {
    role: 'assistant',
    content: null,
    tool_calls: [
      { id: 'call_a', type: 'function', function: { name: 'weather', arguments: '{"city":"Paris"}' } },
      { id: 'call_b', type: 'function', function: { name: 'broken', arguments: '{not json' } },
    ],
  },
  { role: 'tool', tool_call_id: 'call_a', content: '{"temp":21}' },
  { role: 'tool', tool_call_id: 'call_b', content: [{ type: 'text', text: 'error: bad args' }] },
  { role: 'assistant', content: 'Il fait 21 degrés.', refusal: null },
  { role: 'assistant', content: null, refusal: "I can't identify people." },
  { role: 'user', content: 'merci' },
];

// What comes back differs only in the forms OpenAI treats as equal (a null refusal is dropped).
const expected: OpenAIChatMessage[] = request.map((message) => {
  if (message.role === 'assistant' && message.refusal === null) {
    const { refusal: _refusal, ...rest } = message;
    return rest;
  }
  return message;
});

describe('OpenAI chat-completions conversion', () => {
  it('round-trips a request through a real log', async () => {
    const stored = await storeAndRead(openAIChatToEntries(request));
    assert.deepEqual(entriesToOpenAIChat(stored), expected);
  });

  it('keeps what the AI SDK needs: tool names on results, image detail in providerOptions', async () => {
    const stored = await storeAndRead(openAIChatToEntries(request));
    const messages = entriesToModelMessages(stored);
    const tool = messages.find((message) => message.role === 'tool');
    assert.deepEqual(tool?.content[0], { type: 'tool-result', toolCallId: 'call_a', toolName: 'weather', output: { type: 'text', value: '{"temp":21}' } });
    const userMessage = messages.find((message) => message.role === 'user' && Array.isArray(message.content));
    assert.ok(userMessage && Array.isArray(userMessage.content));
    assert.deepEqual(userMessage.content[1], {
      type: 'image',
      image: new URL('https://example.com/sky.jpg'),
      providerOptions: { openai: { imageDetail: 'low' } },
    });
    const call = stored.find((item) => item.entry.kind === 'tool-call' && item.entry.toolCallId === 'call_b');
    assert.deepEqual(call?.entry.kind === 'tool-call' && call.entry.input, '{not json');
  });

  it('renders summaries and leaves reasoning out', async () => {
    const stored = await storeAndRead([
      { kind: 'message', role: 'user', content: 'a' },
      { kind: 'reasoning', text: 'private' },
      { kind: 'message', role: 'assistant', content: 'b' },
      { kind: 'summary', covers: { from: 0, to: 1 }, text: 'user said a' },
    ]);
    assert.deepEqual(entriesToOpenAIChat(stored), [
      { role: 'user', content: 'user said a' },
      { role: 'assistant', content: 'b' },
    ]);
  });

  it('rejects content it cannot represent instead of dropping it', () => {
    assert.throws(() => openAIChatToEntries([{ role: 'user', content: [{ type: 'video' } as never] }]), InvalidArgumentError);
  });
});
