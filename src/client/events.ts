/**
 * What a session's turn streams, as the client sees it: the agent's own events (agent protocol v1,
 * src/session/agent-protocol.ts) plus the ones the server adds. Written out here rather than derived
 * from the server's schemas so that the published types stand alone.
 */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export type SessionState = 'creating' | 'running' | 'idle' | 'hibernating' | 'hibernated' | 'waking' | 'failed' | 'deleted';

export interface TurnStartEvent {
  type: 'turn-start';
  turnId: string;
}
export interface TextDeltaEvent {
  type: 'text-delta';
  turnId: string;
  delta: string;
}
export interface ReasoningDeltaEvent {
  type: 'reasoning-delta';
  turnId: string;
  delta: string;
}
export interface ToolCallEvent {
  type: 'tool-call';
  turnId: string;
  toolCallId: string;
  toolName: string;
  input: JsonValue;
}
export type ToolResultOutput =
  | { type: 'text'; value: string }
  | { type: 'json'; value: JsonValue }
  | { type: 'error-text'; value: string }
  | { type: 'error-json'; value: JsonValue }
  | { type: 'content'; value: Array<{ type: 'text'; text: string } | { type: 'media'; data: string; mediaType: string }> };
export interface ToolResultEvent {
  type: 'tool-result';
  turnId: string;
  toolCallId: string;
  toolName: string;
  output: ToolResultOutput;
}
/** The complete assistant message of one step: what the log records. */
export interface MessageFinishEvent {
  type: 'message-finish';
  turnId: string;
  messageId?: string;
  message: { role: 'assistant'; content: string | Array<{ type: string } & Record<string, JsonValue | undefined>> };
}
export interface UsageEvent {
  type: 'usage';
  turnId?: string;
  inputTokens?: number;
  outputTokens?: number;
  totalTokens?: number;
  reasoningTokens?: number;
  cachedInputTokens?: number;
  model?: string;
  provider?: string;
}
export interface ErrorEvent {
  type: 'error';
  turnId?: string;
  message: string;
  code?: string;
  details?: JsonValue;
}
export interface TurnFinishEvent {
  type: 'turn-finish';
  turnId: string;
}
export interface SleepUntilEvent {
  type: 'sleep-until';
  until: string;
  reason?: string;
  turnId?: string;
}
/** Added by the server: the session's machine changed state during the turn (woke, recovered). */
export interface SessionStateEvent {
  type: 'session-state';
  state: SessionState;
  note?: string;
}
/** Added by the server: the turn sleeps in a snapshot until `until`, then continues. */
export interface TurnSuspendEvent {
  type: 'turn-suspend';
  until: string;
}

export type SessionEvent =
  | TurnStartEvent
  | TextDeltaEvent
  | ReasoningDeltaEvent
  | ToolCallEvent
  | ToolResultEvent
  | MessageFinishEvent
  | UsageEvent
  | ErrorEvent
  | TurnFinishEvent
  | SleepUntilEvent
  | SessionStateEvent
  | TurnSuspendEvent;
