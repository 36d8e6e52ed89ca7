import type { Entry, JsonValue, ProviderOptions, StoredEntry } from './entry.ts';
import { contextItems, type ContextItem } from './compaction.ts';
import { InvalidArgumentError } from './errors.ts';
import { groupBySide, neverMerge } from './grouping.ts';
import { newMessageId } from './model-messages.ts';

/**
 * Anthropic Messages API shapes: a top-level `system` plus alternating user/assistant messages whose
 * content is a string or blocks. Tool results travel inside user messages; thinking blocks carry a
 * signature that must be sent back verbatim, kept here in `providerOptions.anthropic` as the AI SDK
 * does.
 */
type CacheControl = { type: 'ephemeral'; ttl?: string };
type Source = { type: 'base64'; media_type: string; data: string } | { type: 'url'; url: string };

export type AnthropicTextBlock = { type: 'text'; text: string; cache_control?: CacheControl };
export type AnthropicBlock =
  | AnthropicTextBlock
  | { type: 'image'; source: Source; cache_control?: CacheControl }
  | { type: 'document'; source: Source; title?: string; cache_control?: CacheControl }
  | { type: 'tool_use'; id: string; name: string; input: unknown; cache_control?: CacheControl }
  | { type: 'tool_result'; tool_use_id: string; content?: string | AnthropicBlock[]; is_error?: boolean; cache_control?: CacheControl }
  | { type: 'thinking'; thinking: string; signature: string }
  | { type: 'redacted_thinking'; data: string };

export interface AnthropicMessage {
  role: 'user' | 'assistant';
  content: string | AnthropicBlock[];
}

export interface AnthropicConversation {
  system?: string | AnthropicTextBlock[];
  messages: AnthropicMessage[];
}

type UserPart = Exclude<Extract<Entry, { kind: 'message'; role: 'user' }>['content'], string>[number];

function cacheOptions(block: { cache_control?: CacheControl }): { providerOptions?: ProviderOptions } {
  return block.cache_control ? { providerOptions: { anthropic: { cacheControl: block.cache_control as unknown as JsonValue } } } : {};
}

function cacheControlOf(providerOptions: ProviderOptions | undefined): { cache_control?: CacheControl } {
  const value = providerOptions?.anthropic?.cacheControl;
  return value ? { cache_control: value as unknown as CacheControl } : {};
}

function sourceToData(source: Source): { data: string; mediaType?: string } {
  return source.type === 'base64' ? { data: source.data, mediaType: source.media_type } : { data: source.url };
}

function dataToSource(data: string, mediaType: string | undefined): Source {
  return /^https?:\/\//.test(data) ? { type: 'url', url: data } : { type: 'base64', media_type: mediaType ?? 'application/octet-stream', data };
}

function blockToUserPart(block: AnthropicBlock, index: number): UserPart {
  switch (block.type) {
    case 'text':
      return { type: 'text', text: block.text, ...cacheOptions(block) };
    case 'image': {
      const { data, mediaType } = sourceToData(block.source);
      return { type: 'image', image: data, ...(mediaType ? { mediaType } : {}), ...cacheOptions(block) };
    }
    case 'document': {
      const { data, mediaType } = sourceToData(block.source);
      return { type: 'file', data, mediaType: mediaType ?? 'application/pdf', ...(block.title ? { filename: block.title } : {}), ...cacheOptions(block) };
    }
    default:
      throw new InvalidArgumentError(`message ${index}: unsupported Anthropic block ${JSON.stringify(block.type)} in a user message`);
  }
}

/** An Anthropic request (or a response message appended to it) to log entries. */
export function anthropicToEntries(conversation: AnthropicConversation, options: { messageId?: () => string } = {}): Entry[] {
  const makeId = options.messageId ?? newMessageId;
  const entries: Entry[] = [];
  if (typeof conversation.system === 'string') entries.push({ kind: 'message', role: 'system', content: conversation.system });
  else if (Array.isArray(conversation.system)) {
    for (const block of conversation.system) {
      entries.push({ kind: 'message', role: 'system', content: block.text, ...cacheOptions(block), metadata: { anthropic: { systemBlock: true } } });
    }
  }
  conversation.messages.forEach((message, index) => {
    const messageId = makeId();
    if (typeof message.content === 'string') {
      entries.push({ kind: 'message', role: message.role, content: message.content, messageId } as Entry);
      return;
    }
    let run: UserPart[] = [];
    const flush = () => {
      if (run.length === 0) return;
      entries.push({ kind: 'message', role: message.role, content: run, messageId } as Entry);
      run = [];
    };
    for (const block of message.content) {
      if (message.role === 'user' && block.type === 'tool_result') {
        flush();
        const content = block.content;
        let output: Extract<Entry, { kind: 'tool-result' }>['output'];
        if (content === undefined || typeof content === 'string') output = { type: block.is_error ? 'error-text' : 'text', value: content ?? '' };
        else {
          output = {
            type: 'content',
            value: content.map((part) => {
              if (part.type === 'text') return { type: 'text' as const, text: part.text };
              if (part.type === 'image' && part.source.type === 'base64')
                return { type: 'media' as const, data: part.source.data, mediaType: part.source.media_type };
              throw new InvalidArgumentError(`message ${index}: unsupported block ${JSON.stringify(part.type)} inside a tool_result`);
            }),
          };
        }
        const isErrorContent = block.is_error && output.type === 'content';
        entries.push({
          kind: 'tool-result',
          toolCallId: block.tool_use_id,
          output,
          messageId,
          ...cacheOptions(block),
          ...(isErrorContent ? { metadata: { anthropic: { isError: true } } } : {}),
        });
      } else if (message.role === 'assistant' && block.type === 'tool_use') {
        flush();
        entries.push({
          kind: 'tool-call',
          toolCallId: block.id,
          toolName: block.name,
          input: (block.input ?? {}) as JsonValue,
          messageId,
          ...cacheOptions(block),
        });
      } else if (message.role === 'assistant' && block.type === 'thinking') {
        flush();
        entries.push({ kind: 'reasoning', text: block.thinking, providerOptions: { anthropic: { signature: block.signature } }, messageId });
      } else if (message.role === 'assistant' && block.type === 'redacted_thinking') {
        flush();
        entries.push({ kind: 'reasoning', text: '', providerOptions: { anthropic: { redactedData: block.data } }, messageId });
      } else if (message.role === 'assistant') {
        if (block.type !== 'text')
          throw new InvalidArgumentError(`message ${index}: unsupported Anthropic block ${JSON.stringify(block.type)} in an assistant message`);
        run.push({ type: 'text', text: block.text, ...cacheOptions(block) });
      } else {
        run.push(blockToUserPart(block, index));
      }
    }
    flush();
  });
  return entries;
}

function anthropicSide(item: ContextItem): string | undefined {
  if (item.type === 'summary') return item.stored.entry.role ?? 'user';
  const entry = item.stored.entry;
  if (entry.kind === 'message') return entry.role;
  if (entry.kind === 'tool-result') return 'user';
  if (entry.kind === 'tool-call' || entry.kind === 'reasoning') return 'assistant';
  return undefined;
}

function userBlocks(entry: Entry): AnthropicBlock[] {
  if (entry.kind === 'tool-result') {
    const output = entry.output;
    const base = { type: 'tool_result' as const, tool_use_id: entry.toolCallId, ...cacheControlOf(entry.providerOptions) };
    switch (output.type) {
      case 'text':
        return [{ ...base, content: output.value }];
      case 'error-text':
        return [{ ...base, content: output.value, is_error: true }];
      case 'json':
        return [{ ...base, content: JSON.stringify(output.value) }];
      case 'error-json':
        return [{ ...base, content: JSON.stringify(output.value), is_error: true }];
      case 'content': {
        const content: AnthropicBlock[] = output.value.map((part) =>
          part.type === 'text' ? { type: 'text', text: part.text } : { type: 'image', source: { type: 'base64', media_type: part.mediaType, data: part.data } },
        );
        const isError = (entry.metadata?.anthropic as { isError?: boolean } | undefined)?.isError;
        return [{ ...base, content, ...(isError ? { is_error: true } : {}) }];
      }
    }
  }
  if (entry.kind !== 'message' || entry.role === 'system') return [];
  if (typeof entry.content === 'string') return [{ type: 'text', text: entry.content }];
  return (entry.content as UserPart[]).map((part): AnthropicBlock => {
    const cache = cacheControlOf(part.providerOptions);
    if (part.type === 'text') return { type: 'text', text: part.text, ...cache };
    if (part.type === 'image') return { type: 'image', source: dataToSource(part.image, part.mediaType), ...cache };
    return { type: 'document', source: dataToSource(part.data, part.mediaType), ...(part.filename ? { title: part.filename } : {}), ...cache };
  });
}

function assistantBlocks(entry: Entry): AnthropicBlock[] {
  if (entry.kind === 'message') return userBlocks(entry);
  if (entry.kind === 'tool-call')
    return [{ type: 'tool_use', id: entry.toolCallId, name: entry.toolName, input: entry.input, ...cacheControlOf(entry.providerOptions) }];
  if (entry.kind === 'reasoning') {
    const anthropic = entry.providerOptions?.anthropic ?? {};
    if (typeof anthropic.redactedData === 'string') return [{ type: 'redacted_thinking', data: anthropic.redactedData }];
    return [{ type: 'thinking', thinking: entry.text, signature: typeof anthropic.signature === 'string' ? anthropic.signature : '' }];
  }
  return [];
}

/** Log entries to an Anthropic request body's `system` and `messages`, with summaries applied. */
export function entriesToAnthropic(stored: readonly StoredEntry[], options: { ignoreSummaries?: boolean } = {}): AnthropicConversation {
  const items: ContextItem[] = options.ignoreSummaries
    ? stored.filter((item) => item.entry.kind !== 'summary').map((item) => ({ type: 'entry' as const, stored: item }))
    : contextItems(stored);
  const systemBlocks: AnthropicTextBlock[] = [];
  let systemAsBlocks = false;
  const messages: AnthropicMessage[] = [];
  const groups = groupBySide(items, anthropicSide, (item) => (item.type === 'summary' ? neverMerge : item.stored.entry.messageId));
  for (const group of groups) {
    const first = group.items[0];
    if (group.side === 'system') {
      // Anthropic has one system prompt; every system entry (and system-role summary) joins it.
      for (const item of group.items) {
        const entry = item.stored.entry;
        const text = entry.kind === 'summary' ? entry.text : (entry as Extract<Entry, { kind: 'message'; role: 'system' }>).content;
        if ((entry.metadata?.anthropic as { systemBlock?: boolean } | undefined)?.systemBlock || entry.providerOptions?.anthropic?.cacheControl)
          systemAsBlocks = true;
        systemBlocks.push({ type: 'text', text, ...cacheControlOf(entry.providerOptions) });
      }
      continue;
    }
    const role = group.side as 'user' | 'assistant';
    if (first.type === 'summary') {
      messages.push({ role, content: first.stored.entry.text });
      continue;
    }
    const only = first.stored.entry;
    if (group.items.length === 1 && only.kind === 'message' && typeof only.content === 'string') {
      messages.push({ role, content: only.content });
      continue;
    }
    const content = group.items.flatMap((item) => (role === 'user' ? userBlocks(item.stored.entry) : assistantBlocks(item.stored.entry)));
    messages.push({ role, content });
  }
  const conversation: AnthropicConversation = { messages };
  if (systemBlocks.length > 0) conversation.system = systemAsBlocks ? systemBlocks : systemBlocks.map((block) => block.text).join('\n\n');
  return conversation;
}
