export * from './errors.ts';
export * from './entry.ts';
export { assertSessionId, isSessionId, forkSessionId } from './session-identifier.ts';
export { decideProducer, batchDigest, type ProducerStamp, type ProducerState } from './producer.ts';
export { FileBlobStore, MissingBlobError, blobDigest, type BlobStore, type BlobReference } from './blob-store.ts';
export type { LogStorage, SessionRecord, AppendCommand, AppendFence, AppendOutcome, StoredRow, StorageRow } from './storage.ts';
export { SqliteStorage, type SqliteStorageOptions } from './sqlite-storage.ts';
export { PostgresStorage, type PostgresStorageOptions } from './postgres-storage.ts';
export {
  ContextLog,
  type ContextLogClient,
  type ContextLogOptions,
  type AppendOptions,
  type AppendResult,
  type ReadOptions,
  type ReadResult,
  type TailOptions,
  type SessionInfo,
} from './context-log.ts';
export { openContextLog, type OpenContextLogOptions } from './open-context-log.ts';
export { contextItems, activeSummaries, type ContextItem } from './compaction.ts';
export { entriesToModelMessages, modelMessagesToEntries, type ModelMessage, type ToModelMessagesOptions } from './model-messages.ts';
export { openAIChatToEntries, entriesToOpenAIChat, type OpenAIChatMessage } from './openai-chat.ts';
export { anthropicToEntries, entriesToAnthropic, type AnthropicConversation, type AnthropicMessage } from './anthropic-messages.ts';
export { RemoteContextLog, type RemoteContextLogOptions } from './remote-context-log.ts';
export { stateDirectory, contextLogPaths } from './state-directory.ts';
