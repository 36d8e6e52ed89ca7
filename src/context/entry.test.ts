import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseEntries, parseEntry } from './entry.ts';
import { InvalidEntryError } from './errors.ts';

function issues(run: () => unknown): Array<{ index: number; path: string; message: string }> {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof InvalidEntryError);
    assert.match(error.message, /nothing was written/);
    return error.issues;
  }
  assert.fail('expected InvalidEntryError');
}

describe('entry schema', () => {
  it('accepts every kind', () => {
    const entries = parseEntries([
      { kind: 'message', role: 'system', content: 's' },
      {
        kind: 'message',
        role: 'user',
        content: [
          { type: 'text', text: 't' },
          { type: 'image', image: 'aGk=', mediaType: 'image/png' },
        ],
      },
      { kind: 'message', role: 'assistant', content: 'a', messageId: 'm1', providerOptions: { openai: { store: true } }, metadata: { latencyMs: 12 } },
      { kind: 'tool-call', toolCallId: 'c', toolName: 'f', input: { a: [1, null] } },
      { kind: 'tool-result', toolCallId: 'c', output: { type: 'content', value: [{ type: 'media', data: 'x', mediaType: 'image/png' }] } },
      { kind: 'reasoning', text: 'r' },
      { kind: 'error', message: 'boom', code: 'E1', details: { retry: true } },
      { kind: 'usage', inputTokens: 1, outputTokens: 2, totalTokens: 3, model: 'm', provider: 'p' },
      { kind: 'summary', covers: { from: 0, to: 2 }, text: 'sum' },
      { kind: 'metadata', data: { temperature: 0.2 } },
    ]);
    assert.equal(entries.length, 10);
  });

  it('says which entry and field is wrong', () => {
    assert.deepEqual(
      issues(() => parseEntry({ kind: 'message', role: 'user', content: 5 }, 3)).map((issue) => [issue.index, issue.path]),
      [[3, 'content']],
    );
    assert.equal(issues(() => parseEntry({ kind: 'teleport' }))[0].path, 'kind');
    assert.match(issues(() => parseEntry({ kind: 'teleport' }))[0].message, /expected one of message, tool-call/);
    assert.equal(issues(() => parseEntry('text'))[0].path, '');
    assert.equal(issues(() => parseEntry({ kind: 'message', role: 'system', content: [{ type: 'text', text: 'x' }] }))[0].path, 'content');
    assert.equal(issues(() => parseEntry({ kind: 'usage', inputTokens: -1 }))[0].path, 'inputTokens');
    assert.equal(issues(() => parseEntry({ kind: 'summary', covers: { from: 3, to: 3 }, text: 'x' }))[0].path, 'covers');
  });

  it('rejects unknown fields instead of silently dropping them', () => {
    assert.equal(issues(() => parseEntry({ kind: 'message', role: 'user', content: 'x', contnet: 'typo' }))[0].message.includes('contnet'), true);
  });

  it('rejects values that are not JSON', () => {
    assert.equal(issues(() => parseEntry({ kind: 'tool-call', toolCallId: 'c', toolName: 'f', input: { when: new Date() } })).length > 0, true);
    assert.equal(issues(() => parseEntry({ kind: 'tool-call', toolCallId: 'c', toolName: 'f', input: Number.NaN })).length > 0, true);
  });

  it('reports every bad entry of a batch, and rejects empty or non-array batches', () => {
    assert.deepEqual(
      issues(() => parseEntries([{ kind: 'reasoning', text: 'ok' }, { kind: 'reasoning' }, { kind: 'error' }])).map((issue) => issue.index),
      [1, 2],
    );
    assert.equal(issues(() => parseEntries([])).length, 1);
    assert.equal(issues(() => parseEntries({ kind: 'reasoning', text: 'x' })).length, 1);
  });
});
