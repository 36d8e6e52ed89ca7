import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { modelMessageSchema, type ModelMessage as AiModelMessage } from 'ai';
import { entriesToModelMessages, modelMessagesToEntries, type ModelMessage } from './model-messages.ts';
import { storeAndRead } from './testing/temporary-log.ts';

// Compile-time check that our structural types are the AI SDK's: each must be assignable to the other.
const toAi = (messages: ModelMessage[]): AiModelMessage[] => messages;
const fromAi = (messages: AiModelMessage[]): ModelMessage[] => messages as ModelMessage[];
void fromAi;

const conversation: ModelMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'What is in this picture?' },
  {
    role: 'user',
    content: [
      { type: 'text', text: 'and this one', providerOptions: { anthropic: { cacheControl: { type: 'ephemeral' } } } },
      { type: 'image', image: new URL('https://example.com/cat.png') },
      { type: 'file', data: 'JVBERi0=', mediaType: 'application/pdf', filename: 'a.pdf' },
    ],
  },
  {
    role: 'assistant',
    content: [
      { type: 'reasoning', text: 'look at it', providerOptions: { anthropic: { signature: 'sig-1' } } },
      { type: 'text', text: 'Let me check.' },
      { type: 'tool-call', toolCallId: 'call-1', toolName: 'vision', input: { url: 'https://example.com/cat.png' } },
      { type: 'tool-call', toolCallId: 'call-2', toolName: 'ocr', input: {} },
    ],
  },
  {
    role: 'tool',
    content: [
      { type: 'tool-result', toolCallId: 'call-1', toolName: 'vision', output: { type: 'json', value: { label: 'cat' } } },
      { type: 'tool-result', toolCallId: 'call-2', toolName: 'ocr', output: { type: 'error-text', value: 'no text' } },
    ],
  },
  { role: 'assistant', content: 'A cat.', providerOptions: { openai: { store: false } } },
  { role: 'assistant', content: 'Anything else?' },
];

describe('AI SDK model messages', () => {
  it('round-trip through a real log exactly and validate against the AI SDK schema', async () => {
    const stored = await storeAndRead(modelMessagesToEntries(conversation));
    const rebuilt = entriesToModelMessages(stored);
    assert.deepEqual(rebuilt, conversation);
    for (const message of toAi(rebuilt)) {
      const result = modelMessageSchema.safeParse(message);
      assert.ok(result.success, JSON.stringify(result.error?.issues));
    }
  });

  it('groups bare entries by side and fills tool names from the matching call', async () => {
    const stored = await storeAndRead([
      { kind: 'message', role: 'user', content: 'go' },
      { kind: 'reasoning', text: 'hmm' },
      { kind: 'tool-call', toolCallId: 't1', toolName: 'ls', input: { path: '/' } },
      { kind: 'tool-result', toolCallId: 't1', output: { type: 'text', value: 'bin etc' } },
      { kind: 'usage', inputTokens: 5, outputTokens: 7 },
      { kind: 'error', message: 'rate limited', code: '429' },
      { kind: 'metadata', data: { model: 'x' } },
      { kind: 'message', role: 'assistant', content: 'done' },
    ]);
    assert.deepEqual(entriesToModelMessages(stored), [
      { role: 'user', content: 'go' },
      {
        role: 'assistant',
        content: [
          { type: 'reasoning', text: 'hmm' },
          { type: 'tool-call', toolCallId: 't1', toolName: 'ls', input: { path: '/' } },
        ],
      },
      { role: 'tool', content: [{ type: 'tool-result', toolCallId: 't1', toolName: 'ls', output: { type: 'text', value: 'bin etc' } }] },
      { role: 'assistant', content: 'done' },
    ]);
  });

  it('keeps a partly overlapping later summary out rather than hide unsummarized entries', async () => {
    const stored = await storeAndRead([
      { kind: 'message', role: 'user', content: '0' },
      { kind: 'message', role: 'user', content: '1' },
      { kind: 'message', role: 'user', content: '2' },
      { kind: 'message', role: 'user', content: '3' },
      { kind: 'summary', covers: { from: 0, to: 2 }, text: 'S1' },
      { kind: 'summary', covers: { from: 1, to: 4 }, text: 'S2 overlaps S1 partly' },
      { kind: 'summary', covers: { from: 2, to: 3 }, text: 'S3' },
    ]);
    assert.deepEqual(
      entriesToModelMessages(stored).map((message) => message.content),
      ['S1', 'S3', '3'],
    );
  });
});
