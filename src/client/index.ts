/** The torpor client, the package's main export: `import { Torpor } from "torpor"`. */
export { Torpor } from './torpor.ts';
export type { TorporOptions } from './transport.ts';
export { Transport } from './transport.ts';
export { Sessions, Session, type SessionInfo, type CreateSessionOptions, type TurnSnapshotInfo } from './sessions.ts';
export { SessionLog, type StoredEntry, type LogEntry, type ReadResult, type AppendResult } from './session-log.ts';
export { Turn } from './turn.ts';
export {
  Machines,
  Machine,
  Execution,
  type MachineInfo,
  type MachineStatus,
  type CreateMachineOptions,
  type ExecOptions,
  type ExecEvent,
  type SnapshotInfo,
} from './machines.ts';
export { readSessionEvents, type SessionEventBatch } from './session-events.ts';
export type * from './events.ts';
export {
  TorporClientError,
  TorporConnectionError,
  TorporApiError,
  InvalidRequestError,
  AuthenticationError,
  NotFoundError,
  ConflictError,
  ServerError,
} from './errors.ts';
export { readServerSentEvents, type ServerSentEvent } from './server-sent-events.ts';
export {
  sessionEventsToUIMessageStream,
  sessionEventsToUIMessageChunks,
  createChatHandler,
  createChatResumeHandler,
  uiMessageStreamHeaders,
  type ChatHandlerOptions,
  type UIMessageChunk,
} from './ai-sdk.ts';
