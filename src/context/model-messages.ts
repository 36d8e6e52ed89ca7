import { randomBytes } from 'node:crypto';
import { contextItems, type ContextItem } from './compaction.ts';
import type { Entry, JsonValue, ProviderOptions, StoredEntry, ToolResultOutput } from './entry.ts';
import { InvalidArgumentError } from './errors.ts';
import { groupBySide, neverMerge } from './grouping.ts';

/**
 * The Vercel AI SDK v5 `ModelMessage` shapes, restated structurally so this library does not
 * depend on `ai` at run time; model-messages.test.ts checks them against the real types and schema.
 */
export type ModelDataContent = string | Uint8Array | ArrayBuffer | URL;
export interface ModelTextPart {
  type: 'text';
  text: string;
  providerOptions?: ProviderOptions;
}
export interface ModelImagePart {
  type: 'image';
  image: ModelDataContent;
  mediaType?: string;
  providerOptions?: ProviderOptions;
}
export interface ModelFilePart {
  type: 'file';
  data: ModelDataContent;
  mediaType: string;
  filename?: string;
  providerOptions?: ProviderOptions;
}
export interface ModelReasoningPart {
  type: 'reasoning';
  text: string;
  providerOptions?: ProviderOptions;
}
export interface ModelToolCallPart {
  type: 'tool-call';
  toolCallId: string;
  toolName: string;
  input: unknown;
  providerOptions?: ProviderOptions;
  providerExecuted?: boolean;
}
export interface ModelToolResultPart {
  type: 'tool-result';
  toolCallId: string;
  toolName: string;
  output: ToolResultOutput;
  providerOptions?: ProviderOptions;
}
export type ModelMessage =
  | { role: 'system'; content: string; providerOptions?: ProviderOptions }
  | { role: 'user'; content: string | Array<ModelTextPart | ModelImagePart | ModelFilePart>; providerOptions?: ProviderOptions }
  | {
      role: 'assistant';
      content: string | Array<ModelTextPart | ModelFilePart | ModelReasoningPart | ModelToolCallPart | ModelToolResultPart>;
      providerOptions?: ProviderOptions;
    }
  | { role: 'tool'; content: ModelToolResultPart[]; providerOptions?: ProviderOptions };

type AssistantPart = ModelTextPart | ModelFilePart | ModelReasoningPart | ModelToolCallPart | ModelToolResultPart;

function withProviderOptions<T extends object>(value: T, providerOptions: ProviderOptions | undefined): T {
  return providerOptions === undefined ? value : { ...value, providerOptions };
}

function mergeProviderOptions(target: ProviderOptions | undefined, source: ProviderOptions | undefined): ProviderOptions | undefined {
  if (source === undefined) return target;
  const merged: ProviderOptions = { ...(target ?? {}) };
  for (const [provider, options] of Object.entries(source)) merged[provider] = { ...(merged[provider] ?? {}), ...options };
  return merged;
}

/** Where an entry goes in AI SDK terms; undefined for entries that never reach a model. */
function modelSide(item: ContextItem): string | undefined {
  if (item.type === 'summary') return item.stored.entry.role ?? 'user';
  const entry = item.stored.entry;
  switch (entry.kind) {
    case 'message':
      return entry.role;
    case 'reasoning':
    case 'tool-call':
      return 'assistant';
    case 'tool-result':
      return 'tool';
    default:
      return undefined;
  }
}

function messageIdOf(item: ContextItem): string | undefined | typeof neverMerge {
  if (item.type === 'summary') return neverMerge;
  const entry = item.stored.entry;
  // System prompts are separate messages in every provider's model.
  if (entry.kind === 'message' && entry.role === 'system') return neverMerge;
  return entry.messageId;
}

/** http(s) URLs become URL objects: the AI SDK downloads those, while a plain string means base64 data. */
function dataContent(value: string): ModelDataContent {
  if (/^https?:\/\//i.test(value)) {
    try {
      return new URL(value);
    } catch {
      return value;
    }
  }
  return value;
}

export function toolNamesById(stored: readonly StoredEntry[]): Map<string, string> {
  const names = new Map<string, string>();
  for (const item of stored) if (item.entry.kind === 'tool-call') names.set(item.entry.toolCallId, item.entry.toolName);
  return names;
}

export interface ToModelMessagesOptions {
  /** Skip compaction: every original entry, summaries left out. */
  ignoreSummaries?: boolean;
}

/** Builds AI SDK model context from log entries (covered ranges replaced by their summaries). */
export function entriesToModelMessages(stored: readonly StoredEntry[], options: ToModelMessagesOptions = {}): ModelMessage[] {
  const items: ContextItem[] = options.ignoreSummaries
    ? stored.filter((item) => item.entry.kind !== 'summary').map((item) => ({ type: 'entry' as const, stored: item }))
    : contextItems(stored);
  const toolNames = toolNamesById(stored);
  const messages: ModelMessage[] = [];
  for (const group of groupBySide(items, modelSide, messageIdOf)) {
    const entries = group.items.map((item) => item.stored.entry);
    if (group.items[0].type === 'summary') {
      const summary = group.items[0].stored.entry as Extract<Entry, { kind: 'summary' }>;
      const role = summary.role ?? 'user';
      messages.push(withProviderOptions({ role, content: summary.text }, summary.providerOptions) as ModelMessage);
      continue;
    }
    if (group.side === 'system') {
      const entry = entries[0] as Extract<Entry, { kind: 'message'; role: 'system' }>;
      messages.push(withProviderOptions({ role: 'system' as const, content: entry.content }, entry.providerOptions));
    } else if (group.side === 'user') {
      let providerOptions: ProviderOptions | undefined;
      const parts: Array<ModelTextPart | ModelImagePart | ModelFilePart> = [];
      for (const entry of entries as Array<Extract<Entry, { kind: 'message'; role: 'user' }>>) {
        providerOptions = mergeProviderOptions(providerOptions, entry.providerOptions);
        if (typeof entry.content === 'string') parts.push({ type: 'text', text: entry.content });
        else for (const part of entry.content) parts.push(userPart(part));
      }
      const only = entries[0] as Extract<Entry, { kind: 'message'; role: 'user' }>;
      const content = entries.length === 1 && typeof only.content === 'string' ? only.content : parts;
      messages.push(withProviderOptions({ role: 'user' as const, content }, providerOptions));
    } else if (group.side === 'assistant') {
      let providerOptions: ProviderOptions | undefined;
      const parts: AssistantPart[] = [];
      for (const entry of entries) {
        if (entry.kind === 'message') {
          providerOptions = mergeProviderOptions(providerOptions, entry.providerOptions);
          const content = (entry as Extract<Entry, { kind: 'message'; role: 'assistant' }>).content;
          if (typeof content === 'string') parts.push({ type: 'text', text: content });
          else for (const part of content) parts.push(part.type === 'file' ? { ...part, data: dataContent(part.data) } : { ...part });
        } else if (entry.kind === 'reasoning') {
          parts.push(withProviderOptions({ type: 'reasoning' as const, text: entry.text }, entry.providerOptions));
        } else if (entry.kind === 'tool-call') {
          const part: ModelToolCallPart = { type: 'tool-call', toolCallId: entry.toolCallId, toolName: entry.toolName, input: entry.input };
          if (entry.providerExecuted !== undefined) part.providerExecuted = entry.providerExecuted;
          parts.push(withProviderOptions(part, entry.providerOptions));
        }
      }
      const only = entries[0];
      const content = entries.length === 1 && only.kind === 'message' && typeof only.content === 'string' ? only.content : parts;
      messages.push(withProviderOptions({ role: 'assistant' as const, content }, providerOptions));
    } else if (group.side === 'tool') {
      const parts: ModelToolResultPart[] = (entries as Array<Extract<Entry, { kind: 'tool-result' }>>).map((entry) =>
        withProviderOptions(
          {
            type: 'tool-result' as const,
            toolCallId: entry.toolCallId,
            toolName: entry.toolName ?? toolNames.get(entry.toolCallId) ?? 'unknown',
            output: entry.output,
          },
          entry.providerOptions,
        ),
      );
      messages.push({ role: 'tool', content: parts });
    }
  }
  return messages;
}

function userPart(part: Exclude<Extract<Entry, { kind: 'message'; role: 'user' }>['content'], string>[number]): ModelTextPart | ModelImagePart | ModelFilePart {
  if (part.type === 'image') return { ...part, image: dataContent(part.image) };
  if (part.type === 'file') return { ...part, data: dataContent(part.data) };
  return { ...part };
}

function dataToString(data: ModelDataContent | Buffer): string {
  if (typeof data === 'string') return data;
  if (data instanceof URL) return data.toString();
  if (data instanceof ArrayBuffer) return Buffer.from(data).toString('base64');
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('base64');
}

export function newMessageId(): string {
  return `msg_${randomBytes(8).toString('hex')}`;
}

function stripUndefined<T extends object>(value: T): T {
  return Object.fromEntries(Object.entries(value).filter(([, field]) => field !== undefined)) as T;
}

/** A tool result as an entry: from an assistant message (a provider-executed tool) or a tool message. */
function toolResultEntry(
  part: { toolCallId: string; toolName: string; output: ToolResultOutput; providerOptions?: ProviderOptions },
  common: { messageId: string },
): Entry {
  return stripUndefined({
    kind: 'tool-result',
    toolCallId: part.toolCallId,
    toolName: part.toolName,
    output: part.output,
    providerOptions: part.providerOptions,
    ...common,
  }) as Entry;
}

/**
 * AI SDK messages to entries (e.g. a `generateText` response's `response.messages`). Entries of one
 * message share a messageId so `toModelMessages` rebuilds the same messages.
 */
export function modelMessagesToEntries(messages: readonly ModelMessage[], options: { messageId?: () => string } = {}): Entry[] {
  const makeId = options.messageId ?? newMessageId;
  const entries: Entry[] = [];
  messages.forEach((message, index) => {
    const messageId = makeId();
    const common = { messageId };
    switch (message.role) {
      case 'system':
        entries.push(stripUndefined({ kind: 'message', role: 'system', content: message.content, providerOptions: message.providerOptions }) as Entry);
        break;
      case 'user': {
        const content =
          typeof message.content === 'string'
            ? message.content
            : message.content.map((part) => {
                if (part.type === 'image') return stripUndefined({ ...part, image: dataToString(part.image) });
                if (part.type === 'file') return stripUndefined({ ...part, data: dataToString(part.data) });
                return { ...part };
              });
        entries.push(stripUndefined({ kind: 'message', role: 'user', content, providerOptions: message.providerOptions, ...common }) as Entry);
        break;
      }
      case 'assistant': {
        if (typeof message.content === 'string') {
          entries.push(
            stripUndefined({ kind: 'message', role: 'assistant', content: message.content, providerOptions: message.providerOptions, ...common }) as Entry,
          );
          break;
        }
        let textRun: Array<ModelTextPart | { type: 'file'; data: string; mediaType: string; filename?: string; providerOptions?: ProviderOptions }> = [];
        let messageOptionsPlaced = false;
        const flush = () => {
          if (textRun.length === 0) return;
          const providerOptions = messageOptionsPlaced ? undefined : message.providerOptions;
          messageOptionsPlaced = true;
          entries.push(stripUndefined({ kind: 'message', role: 'assistant', content: textRun, providerOptions, ...common }) as Entry);
          textRun = [];
        };
        for (const part of message.content) {
          if (part.type === 'text') textRun.push({ ...part });
          else if (part.type === 'file') textRun.push(stripUndefined({ ...part, data: dataToString(part.data) }));
          else {
            flush();
            if (part.type === 'reasoning')
              entries.push(stripUndefined({ kind: 'reasoning', text: part.text, providerOptions: part.providerOptions, ...common }) as Entry);
            else if (part.type === 'tool-call') {
              entries.push(
                stripUndefined({
                  kind: 'tool-call',
                  toolCallId: part.toolCallId,
                  toolName: part.toolName,
                  input: (part.input ?? null) as JsonValue,
                  providerExecuted: part.providerExecuted,
                  providerOptions: part.providerOptions,
                  ...common,
                }) as Entry,
              );
            } else if (part.type === 'tool-result') {
              entries.push(toolResultEntry(part, common));
            }
          }
        }
        flush();
        if (!messageOptionsPlaced && message.providerOptions !== undefined) {
          throw new InvalidArgumentError(`message ${index}: providerOptions on an assistant message without text cannot be stored; move them to a part`);
        }
        break;
      }
      case 'tool':
        for (const part of message.content) {
          entries.push(toolResultEntry(part, common));
        }
        break;
      default:
        throw new InvalidArgumentError(`message ${index} has unknown role ${JSON.stringify((message as { role?: unknown }).role)}`);
    }
  });
  return entries;
}
