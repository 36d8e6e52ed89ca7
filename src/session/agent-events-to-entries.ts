import { parseEntries, type Entry, type JsonValue } from '../context/entry.ts';
import { modelMessagesToEntries, type ModelMessage } from '../context/model-messages.ts';
import { AgentProtocolError, parseAgentEvent, type AgentEvent } from './agent-protocol.ts';

export interface EventToEntriesOptions {
  /** The message id for a `message-finish` without one; random by default. */
  messageId?: () => string;
}

/**
 * What the host appends to the context log for one agent event (often nothing: deltas, live tool
 * calls and requests are for the live stream only).
 *
 * - `message-finish` -> the assistant message's entries (text, reasoning, tool calls), one messageId
 * - `tool-result` -> a `tool-result` entry
 * - `usage` -> a `usage` entry; `error` -> an `error` entry
 * - `entries-append` -> its entries, as they are
 * - `sleep-until` -> a `metadata` entry, so the log says why the session paused
 *
 * Turn-scoped entries carry `metadata.turnId`, like the user message the host logs for the turn.
 * Accepts a raw value too: it is validated first, and the returned entries always pass the log's schema.
 * An invalid event does not throw: it becomes an `error` entry (code `invalid_agent_event`) holding
 * the event, because a buggy agent must neither crash the host nor have its output silently dropped.
 */
export function eventToEntries(event: AgentEvent | unknown, options: EventToEntriesOptions = {}): Entry[] {
  let parsed: AgentEvent;
  try {
    parsed = parseAgentEvent(event);
  } catch (error) {
    if (!(error instanceof AgentProtocolError)) throw error;
    return [invalidEventEntry(event, error.message)];
  }
  const turnMetadata = (turnId: string | undefined) => (turnId === undefined ? {} : { metadata: { turnId } as Record<string, JsonValue> });
  switch (parsed.type) {
    case 'message-finish': {
      const messageId = parsed.messageId;
      const entries = modelMessagesToEntries([parsed.message as ModelMessage], messageId ? { messageId: () => messageId } : options);
      return parseEntries(entries.map((entry) => ({ ...entry, metadata: { ...entry.metadata, turnId: parsed.turnId } })));
    }
    case 'tool-result':
      return parseEntries([
        { kind: 'tool-result', toolCallId: parsed.toolCallId, toolName: parsed.toolName, output: parsed.output, ...turnMetadata(parsed.turnId) },
      ]);
    case 'usage': {
      const { type: _type, turnId, ...counts } = parsed;
      return parseEntries([{ kind: 'usage', ...counts, ...turnMetadata(turnId) }]);
    }
    case 'error': {
      const { type: _type, turnId, ...error } = parsed;
      return parseEntries([{ kind: 'error', ...error, ...turnMetadata(turnId) }]);
    }
    case 'entries-append':
      return parseEntries(parsed.entries);
    case 'sleep-until': {
      const data: Record<string, JsonValue> = { event: 'sleep-until', until: parsed.until };
      if (parsed.reason !== undefined) data.reason = parsed.reason;
      return parseEntries([{ kind: 'metadata', data, ...turnMetadata(parsed.turnId) }]);
    }
    case 'turn-start':
    case 'text-delta':
    case 'reasoning-delta':
    case 'tool-call':
    case 'turn-finish':
    case 'checkpoint':
    case 'history-request':
      return [];
  }
}

/** The `error` entry (code `invalid_agent_event`) that records an event the agent got wrong, with the event. */
export function invalidEventEntry(event: unknown, message: string): Entry {
  let details: JsonValue;
  try {
    details = typeof event === 'string' ? event : (JSON.parse(JSON.stringify(event ?? null)) as JsonValue);
  } catch {
    details = String(event);
  }
  return { kind: 'error', code: 'invalid_agent_event', message, details };
}
