/**
 * torpor/agent: the SDK for agent programs that run in a torpor session. See
 * architecture/agent-protocol.md for the protocol it speaks.
 */
export { Agent, CheckpointFailedError, createAgent, historyToModelMessages, withRateLimitSleep, type AgentOptions, type Turn } from './agent.ts';
export {
  forwardStream,
  StreamTextError,
  type ForwardStreamOptions,
  type ForwardStreamResult,
  type StreamPartLike,
  type StreamTextResultLike,
} from './stream-text.ts';
export { findRateLimitError, retryAfterMs, retryWithRateLimitSleep, type RateLimitInfo, type RateLimitSleepOptions } from './rate-limit.ts';
export type { Entry } from '../context/entry.ts';
export type { ModelMessage } from '../context/model-messages.ts';
export {
  protocolVersion,
  parseAgentEvent,
  parseHostMessage,
  encodeLine,
  AgentProtocolError,
  type AgentEvent,
  type HostMessage,
  type HelloMessage,
  type WakeMessage,
  type UserMessage,
  type AssistantMessage,
  type ToolResultOutput,
} from '../session/agent-protocol.ts';
