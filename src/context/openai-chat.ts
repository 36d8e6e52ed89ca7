import type { Entry, JsonValue, StoredEntry } from './entry.ts';
import { contextItems, type ContextItem } from './compaction.ts';
import { InvalidArgumentError } from './errors.ts';
import { groupBySide, neverMerge } from './grouping.ts';
import { newMessageId } from './model-messages.ts';

/**
 * OpenAI chat-completions message shapes (the `messages` array of a request, and the `message` of
 * a response choice). Only what the log needs is typed; unknown content part types are rejected
 * rather than dropped.
 */
export type OpenAIContentPart =
  | { type: 'text'; text: string }
  | { type: 'image_url'; image_url: { url: string; detail?: 'auto' | 'low' | 'high' } }
  | { type: 'input_audio'; input_audio: { data: string; format: 'wav' | 'mp3' } }
  | { type: 'file'; file: { file_data?: string; file_id?: string; filename?: string } };

export interface OpenAIToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

export type OpenAIChatMessage =
  | { role: 'system' | 'developer'; content: string | Array<{ type: 'text'; text: string }>; name?: string }
  | { role: 'user'; content: string | OpenAIContentPart[]; name?: string }
  | {
      role: 'assistant';
      content?: string | null | Array<{ type: 'text'; text: string } | { type: 'refusal'; refusal: string }>;
      tool_calls?: OpenAIToolCall[];
      refusal?: string | null;
      name?: string;
    }
  | { role: 'tool'; tool_call_id: string; content: string | Array<{ type: 'text'; text: string }> };

type UserPart = Exclude<Extract<Entry, { kind: 'message'; role: 'user' }>['content'], string>[number];

type OpenAIMetadata = { role?: string; name?: string; refusal?: string; contentParts?: boolean; rawArguments?: boolean; nullContent?: boolean };

function openaiMetadata(entry: Entry): OpenAIMetadata {
  const value = entry.metadata?.openai;
  return value && typeof value === 'object' && !Array.isArray(value) ? (value as OpenAIMetadata) : {};
}

function withMetadata<T extends Entry>(entry: T, metadata: OpenAIMetadata): T {
  const cleaned = Object.fromEntries(Object.entries(metadata).filter(([, value]) => value !== undefined));
  return Object.keys(cleaned).length === 0 ? entry : { ...entry, metadata: { ...(entry.metadata ?? {}), openai: cleaned as JsonValue } };
}

const audioMediaTypes: Record<string, string> = { wav: 'audio/wav', mp3: 'audio/mpeg' };

function mediaTypeOfDataUrl(url: string): string | undefined {
  return /^data:([^;,]+)[;,]/.exec(url)?.[1];
}

/** OpenAI chat-completions messages to log entries; one messageId per message keeps them separable. */
export function openAIChatToEntries(messages: readonly OpenAIChatMessage[], options: { messageId?: () => string } = {}): Entry[] {
  const makeId = options.messageId ?? newMessageId;
  const toolNames = new Map<string, string>();
  const entries: Entry[] = [];
  messages.forEach((message, index) => {
    const messageId = makeId();
    switch (message.role) {
      case 'system':
      case 'developer': {
        const content = typeof message.content === 'string' ? message.content : message.content.map((part) => part.text).join('');
        entries.push(
          withMetadata(
            { kind: 'message', role: 'system', content },
            {
              role: message.role === 'developer' ? 'developer' : undefined,
              name: message.name,
              contentParts: typeof message.content === 'string' ? undefined : true,
            },
          ),
        );
        break;
      }
      case 'user': {
        const content =
          typeof message.content === 'string'
            ? message.content
            : message.content.map((part): UserPart => {
                switch (part.type) {
                  case 'text':
                    return { type: 'text' as const, text: part.text };
                  case 'image_url': {
                    const mediaType = mediaTypeOfDataUrl(part.image_url.url);
                    return {
                      type: 'image' as const,
                      image: part.image_url.url,
                      ...(mediaType ? { mediaType } : {}),
                      ...(part.image_url.detail ? { providerOptions: { openai: { imageDetail: part.image_url.detail } } } : {}),
                    };
                  }
                  case 'input_audio':
                    return { type: 'file' as const, data: part.input_audio.data, mediaType: audioMediaTypes[part.input_audio.format] ?? 'audio/wav' };
                  case 'file': {
                    if (part.file.file_data) {
                      return {
                        type: 'file' as const,
                        data: part.file.file_data,
                        mediaType: mediaTypeOfDataUrl(part.file.file_data) ?? 'application/pdf',
                        ...(part.file.filename ? { filename: part.file.filename } : {}),
                      };
                    }
                    if (part.file.file_id) {
                      return {
                        type: 'file' as const,
                        data: part.file.file_id,
                        mediaType: 'application/pdf',
                        providerOptions: { openai: { fileId: part.file.file_id } },
                        ...(part.file.filename ? { filename: part.file.filename } : {}),
                      };
                    }
                    throw new InvalidArgumentError(`message ${index}: a file part needs file_data or file_id`);
                  }
                  default:
                    throw new InvalidArgumentError(
                      `message ${index}: unsupported OpenAI content part type ${JSON.stringify((part as { type?: unknown }).type)}`,
                    );
                }
              });
        entries.push(withMetadata({ kind: 'message', role: 'user', content, messageId }, { name: message.name }));
        break;
      }
      case 'assistant': {
        let text: string | undefined;
        let refusal = message.refusal ?? undefined;
        if (typeof message.content === 'string') text = message.content;
        else if (Array.isArray(message.content)) {
          text = message.content.map((part) => (part.type === 'text' ? part.text : '')).join('');
          refusal ??= message.content.find((part) => part.type === 'refusal')?.refusal;
        }
        const metadata: OpenAIMetadata = { name: message.name, refusal };
        let placed = false;
        if (text !== undefined && text !== '') {
          entries.push(withMetadata({ kind: 'message', role: 'assistant', content: text, messageId }, metadata));
          placed = true;
        }
        for (const call of message.tool_calls ?? []) {
          toolNames.set(call.id, call.function.name);
          let input: JsonValue;
          let rawArguments = false;
          try {
            input = JSON.parse(call.function.arguments) as JsonValue;
          } catch {
            // Models do emit invalid JSON arguments; keep them verbatim rather than fail the log.
            input = call.function.arguments;
            rawArguments = true;
          }
          const entry: Entry = { kind: 'tool-call', toolCallId: call.id, toolName: call.function.name, input, messageId };
          entries.push(withMetadata(entry, { ...(placed ? {} : metadata), rawArguments: rawArguments || undefined }));
          placed = true;
        }
        // A refusal arrives with null content; remember that so it goes back out the same way.
        if (!placed)
          entries.push(
            withMetadata({ kind: 'message', role: 'assistant', content: text ?? '', messageId }, { ...metadata, nullContent: text === undefined || undefined }),
          );
        break;
      }
      case 'tool': {
        const output =
          typeof message.content === 'string'
            ? { type: 'text' as const, value: message.content }
            : { type: 'content' as const, value: message.content.map((part) => ({ type: 'text' as const, text: part.text })) };
        const toolName = toolNames.get(message.tool_call_id);
        entries.push({ kind: 'tool-result', toolCallId: message.tool_call_id, ...(toolName ? { toolName } : {}), output, messageId });
        break;
      }
      default:
        throw new InvalidArgumentError(`message ${index} has unknown role ${JSON.stringify((message as { role?: unknown }).role)}`);
    }
  });
  return entries;
}

function side(item: ContextItem): string | undefined {
  if (item.type === 'summary') return item.stored.entry.role ?? 'user';
  const entry = item.stored.entry;
  if (entry.kind === 'message') return entry.role;
  if (entry.kind === 'tool-call') return 'assistant';
  if (entry.kind === 'tool-result') return 'tool';
  // Chat completions has no place for reasoning text; it stays in the log.
  return undefined;
}

function toolResultText(output: Extract<Entry, { kind: 'tool-result' }>['output']): string | Array<{ type: 'text'; text: string }> {
  switch (output.type) {
    case 'text':
    case 'error-text':
      return output.value;
    case 'json':
    case 'error-json':
      return JSON.stringify(output.value);
    case 'content':
      return output.value.map((part) =>
        part.type === 'text' ? { type: 'text' as const, text: part.text } : { type: 'text' as const, text: `[${part.mediaType} omitted]` },
      );
  }
}

/** Log entries to OpenAI chat-completions messages, with summaries applied. */
export function entriesToOpenAIChat(stored: readonly StoredEntry[], options: { ignoreSummaries?: boolean } = {}): OpenAIChatMessage[] {
  const items: ContextItem[] = options.ignoreSummaries
    ? stored.filter((item) => item.entry.kind !== 'summary').map((item) => ({ type: 'entry' as const, stored: item }))
    : contextItems(stored);
  const messages: OpenAIChatMessage[] = [];
  const groups = groupBySide(items, side, (item) => {
    if (item.type === 'summary') return neverMerge;
    const entry = item.stored.entry;
    if (entry.kind === 'tool-result' || (entry.kind === 'message' && entry.role !== 'assistant')) return neverMerge;
    return entry.messageId;
  });
  for (const group of groups) {
    const first = group.items[0];
    if (first.type === 'summary') {
      messages.push({ role: first.stored.entry.role ?? 'user', content: first.stored.entry.text } as OpenAIChatMessage);
      continue;
    }
    const entry = first.stored.entry;
    const metadata = openaiMetadata(entry);
    if (entry.kind === 'message' && entry.role === 'system') {
      const role = metadata.role === 'developer' ? 'developer' : 'system';
      const content = metadata.contentParts ? [{ type: 'text' as const, text: entry.content }] : entry.content;
      messages.push({ role, content, ...(metadata.name ? { name: metadata.name } : {}) });
    } else if (entry.kind === 'message' && entry.role === 'user') {
      const content =
        typeof entry.content === 'string'
          ? entry.content
          : entry.content.map((part): OpenAIContentPart => {
              if (part.type === 'text') return { type: 'text', text: part.text };
              if (part.type === 'image') {
                const detail = part.providerOptions?.openai?.imageDetail as 'auto' | 'low' | 'high' | undefined;
                const url = /^(https?:|data:)/.test(part.image) ? part.image : `data:${part.mediaType ?? 'image/png'};base64,${part.image}`;
                return { type: 'image_url', image_url: { url, ...(detail ? { detail } : {}) } };
              }
              if (part.mediaType.startsWith('audio/'))
                return { type: 'input_audio', input_audio: { data: part.data, format: part.mediaType === 'audio/mpeg' ? 'mp3' : 'wav' } };
              const fileId = part.providerOptions?.openai?.fileId;
              if (typeof fileId === 'string') return { type: 'file', file: { file_id: fileId, ...(part.filename ? { filename: part.filename } : {}) } };
              return { type: 'file', file: { file_data: part.data, ...(part.filename ? { filename: part.filename } : {}) } };
            });
      messages.push({ role: 'user', content, ...(metadata.name ? { name: metadata.name } : {}) });
    } else if (entry.kind === 'tool-result') {
      messages.push({ role: 'tool', tool_call_id: entry.toolCallId, content: toolResultText(entry.output) });
    } else {
      let text: string | null = null;
      const toolCalls: OpenAIToolCall[] = [];
      let groupMetadata: OpenAIMetadata = {};
      for (const item of group.items) {
        const part = item.stored.entry;
        const partMetadata = openaiMetadata(part);
        if (partMetadata.name || partMetadata.refusal || partMetadata.nullContent) groupMetadata = { ...groupMetadata, ...partMetadata };
        if (part.kind === 'message') {
          const content = part.content as string | Array<{ type: string; text?: string }>;
          text = (text ?? '') + (typeof content === 'string' ? content : content.map((piece) => piece.text ?? '').join(''));
        } else if (part.kind === 'tool-call') {
          const argumentsText = partMetadata.rawArguments && typeof part.input === 'string' ? part.input : JSON.stringify(part.input);
          toolCalls.push({ id: part.toolCallId, type: 'function', function: { name: part.toolName, arguments: argumentsText } });
        }
      }
      if (groupMetadata.nullContent && text === '') text = null;
      const message: Extract<OpenAIChatMessage, { role: 'assistant' }> = { role: 'assistant', content: text };
      if (toolCalls.length > 0) message.tool_calls = toolCalls;
      if (groupMetadata.refusal) message.refusal = groupMetadata.refusal;
      if (groupMetadata.name) message.name = groupMetadata.name;
      messages.push(message);
    }
  }
  return messages;
}
