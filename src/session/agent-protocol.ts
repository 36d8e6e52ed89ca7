import { z } from 'zod';
import { contentPartSchemas, errorFields, jsonValue, providerOptions, usageFields } from '../context/content-parts.ts';
import { entrySchema, parseEntries, parseEntry, type Entry, type JsonValue } from '../context/entry.ts';
import { InvalidEntryError } from '../context/errors.ts';
import { modelMessagesToEntries, type ModelMessage } from '../context/model-messages.ts';

/**
 * The agent protocol, version 1: how torpor and the agent program in a session's machine talk.
 *
 * Transport: JSON, one object per line, on the main process's stdin (host -> agent) and stdout
 * (agent -> host). stdio rides the machine's host channel, which survives snapshot and restore; a TCP
 * connection would not. stderr is the program's own log and is never parsed.
 *
 * Compatibility rules: a new message type or an incompatible change bumps `protocolVersion`; within
 * a version, new optional fields may appear, so readers ignore unknown fields (zod strips them) but
 * reject unknown message types. Anything that ends up in the context log is validated with the log's
 * own strict entry schema, so a valid event always yields entries the log accepts.
 */
export const protocolVersion = 1;

const identifier = z.string().min(1).max(256);
const turnId = identifier;
const entries = z.array(entrySchema);

/** Re-checks a value against the log's strict schema, reporting the log's own issue messages. */
function asEntries(value: unknown, context: z.core.$RefinementCtx, toEntries: () => Entry[]): void {
  try {
    parseEntries(toEntries());
  } catch (error) {
    if (!(error instanceof InvalidEntryError)) {
      context.addIssue({ code: 'custom', message: (error as Error).message, input: value });
      return;
    }
    for (const issue of error.issues) context.addIssue({ code: 'custom', message: `${issue.path || 'message'}: ${issue.message}`, input: value });
  }
}

// ---------------------------------------------------------------------------------------------
// Messages: AI SDK v5 model message shapes with JSON-only data (base64 strings or URLs for files).
// ---------------------------------------------------------------------------------------------

const { textPart, imagePart, filePart, toolResultOutput } = contentPartSchemas(z.object);
const reasoningPart = z.object({ type: z.literal('reasoning'), text: z.string(), providerOptions: providerOptions.optional() });
const toolCallPart = z.object({
  type: z.literal('tool-call'),
  toolCallId: identifier,
  toolName: z.string().min(1),
  input: jsonValue,
  providerExecuted: z.boolean().optional(),
  providerOptions: providerOptions.optional(),
});

/** What a tool produced, as the model will see it (the AI SDK's `ToolResultOutput`). */
export const toolResultOutputSchema = toolResultOutput;
export type ToolResultOutput = z.infer<typeof toolResultOutputSchema>;

/** Provider-executed tools (web search and the like) put their results inside the assistant message. */
const toolResultPart = z.object({
  type: z.literal('tool-result'),
  toolCallId: identifier,
  toolName: z.string().min(1),
  output: toolResultOutputSchema,
  providerOptions: providerOptions.optional(),
});

export const userMessageSchema = z
  .object({
    role: z.literal('user'),
    content: z.union([z.string(), z.array(z.discriminatedUnion('type', [textPart, imagePart, filePart]))]),
    providerOptions: providerOptions.optional(),
  })
  .superRefine((message, context) => asEntries(message, context, () => [parseEntry({ kind: 'message', ...message })]));
export type UserMessage = z.infer<typeof userMessageSchema>;

export const assistantContentPartSchema = z.discriminatedUnion('type', [textPart, reasoningPart, filePart, toolCallPart, toolResultPart]);
export type AssistantContentPart = z.infer<typeof assistantContentPartSchema>;

export const assistantMessageSchema = z
  .object({
    role: z.literal('assistant'),
    content: z.union([z.string(), z.array(assistantContentPartSchema)]),
    providerOptions: providerOptions.optional(),
  })
  .superRefine((message, context) => asEntries(message, context, () => modelMessagesToEntries([message as ModelMessage])));
export type AssistantMessage = z.infer<typeof assistantMessageSchema>;

// ---------------------------------------------------------------------------------------------
// Host -> agent (stdin)
// ---------------------------------------------------------------------------------------------

/**
 * First line the program reads. `history` is present only when the session was rebuilt from its log
 * on a fresh machine (after a crash or a lost snapshot): the program's memory is gone and it should
 * rebuild its state from these entries. After a snapshot restore there is no new hello: the program
 * simply continues.
 */
export const helloSchema = z.object({
  type: z.literal('hello'),
  /** The host's protocol version; a program that speaks an older one should say so on stderr and exit. */
  protocol: z.number().int().positive(),
  sessionId: z.string().min(1),
  history: entries.optional(),
});

/** A user message: starts a turn, which the program ends with `turn-finish` (or pauses with `sleep-until`). */
export const userMessageEventSchema = z.object({ type: z.literal('message'), turnId, message: userMessageSchema });

/** Answer to `sleep-until`, sent after the machine was restored: at the time asked for, or earlier for a user message. */
export const wakeSchema = z.object({ type: z.literal('wake'), reason: z.enum(['timer', 'message']) });

export const checkpointDoneSchema = z.object({ type: z.literal('checkpoint-done'), snapshot: z.string().min(1) });
export const checkpointFailedSchema = z.object({ type: z.literal('checkpoint-failed'), error: z.string() });

/**
 * Answer to `history-request`: the session's log, oldest first. The host bounds the answer's size
 * (TORPOR_AGENT_MAX_HISTORY): when older entries were left out, `truncated` is true and `from` is
 * the log offset of the first entry sent.
 */
export const historySchema = z.object({
  type: z.literal('history'),
  entries,
  from: z.number().int().nonnegative().optional(),
  truncated: z.boolean().optional(),
});

/** The session is being deleted: finish up (nothing more will be logged) and exit. */
export const shutdownSchema = z.object({ type: z.literal('shutdown') });

export const hostMessageSchema = z.discriminatedUnion('type', [
  helloSchema,
  userMessageEventSchema,
  wakeSchema,
  checkpointDoneSchema,
  checkpointFailedSchema,
  historySchema,
  shutdownSchema,
]);
export type HostMessage = z.infer<typeof hostMessageSchema>;
export type HelloMessage = z.infer<typeof helloSchema>;
export type UserMessageEvent = z.infer<typeof userMessageEventSchema>;
export type WakeMessage = z.infer<typeof wakeSchema>;
export type CheckpointDoneMessage = z.infer<typeof checkpointDoneSchema>;
export type CheckpointFailedMessage = z.infer<typeof checkpointFailedSchema>;
export type HistoryMessage = z.infer<typeof historySchema>;
export type ShutdownMessage = z.infer<typeof shutdownSchema>;

// ---------------------------------------------------------------------------------------------
// Agent -> host (stdout). Stream events are named noun-verb like the AI SDK's stream parts.
// ---------------------------------------------------------------------------------------------

export const turnStartSchema = z.object({ type: z.literal('turn-start'), turnId });
export const textDeltaSchema = z.object({ type: z.literal('text-delta'), turnId, delta: z.string() });
export const reasoningDeltaSchema = z.object({ type: z.literal('reasoning-delta'), turnId, delta: z.string() });

/** Live only: the call is logged as part of its step's `message-finish`. */
export const toolCallEventSchema = z.object({
  type: z.literal('tool-call'),
  turnId,
  toolCallId: identifier,
  toolName: z.string().min(1),
  input: jsonValue,
});

/**
 * Logged as a `tool-result` entry. Send it after the `message-finish` that holds its call, so the log
 * reads call-then-result (the SDK's `streamText` helper holds results back until the step ends).
 */
export const toolResultEventSchema = z.object({
  type: z.literal('tool-result'),
  turnId,
  toolCallId: identifier,
  toolName: z.string().min(1),
  output: toolResultOutputSchema,
});

/**
 * The complete assistant message of one step (text, reasoning, tool calls): what the log records of
 * the model's answer. Deltas are for live display only.
 */
export const messageFinishSchema = z.object({
  type: z.literal('message-finish'),
  turnId,
  /** Keeps the entries of this message together in the log; generated by the host when absent. */
  messageId: identifier.optional(),
  message: assistantMessageSchema,
});

export const usageEventSchema = z.object({
  type: z.literal('usage'),
  turnId: turnId.optional(),
  ...usageFields,
});

export const errorEventSchema = z.object({
  type: z.literal('error'),
  turnId: turnId.optional(),
  ...errorFields,
});

/** The turn is over: the host may hibernate the machine after the session's idle timeout. */
export const turnFinishSchema = z.object({ type: z.literal('turn-finish'), turnId });

/** Anything else the program wants in the log (its own metadata, summaries, injected messages). */
export const entriesAppendSchema = z.object({ type: z.literal('entries-append'), entries: entries.min(1) });

/**
 * "Nothing to do until then" (a 429's Retry-After, a scheduled job): the host snapshots and stops the
 * machine, restores it at `until` and sends `wake`. The program just awaits the wake; its memory is
 * intact when it arrives. Inside a turn this suspends the turn, which continues after the wake.
 */
export const sleepUntilSchema = z.object({
  type: z.literal('sleep-until'),
  until: z.iso.datetime({ offset: true }),
  reason: z.string().optional(),
  turnId: turnId.optional(),
});

/** Take a snapshot now (say, before a risky step); answered by `checkpoint-done` or `checkpoint-failed`. */
export const checkpointRequestSchema = z.object({ type: z.literal('checkpoint') });

/** Ask for the whole log; answered by `history`. */
export const historyRequestSchema = z.object({ type: z.literal('history-request') });

export const agentEventSchema = z.discriminatedUnion('type', [
  turnStartSchema,
  textDeltaSchema,
  reasoningDeltaSchema,
  toolCallEventSchema,
  toolResultEventSchema,
  messageFinishSchema,
  usageEventSchema,
  errorEventSchema,
  turnFinishSchema,
  entriesAppendSchema,
  sleepUntilSchema,
  checkpointRequestSchema,
  historyRequestSchema,
]);
export type AgentEvent = z.infer<typeof agentEventSchema>;
export type AgentEventType = AgentEvent['type'];
export type TurnStartEvent = z.infer<typeof turnStartSchema>;
export type TextDeltaEvent = z.infer<typeof textDeltaSchema>;
export type ReasoningDeltaEvent = z.infer<typeof reasoningDeltaSchema>;
export type ToolCallEvent = z.infer<typeof toolCallEventSchema>;
export type ToolResultEvent = z.infer<typeof toolResultEventSchema>;
export type MessageFinishEvent = z.infer<typeof messageFinishSchema>;
export type UsageEvent = z.infer<typeof usageEventSchema>;
export type ErrorEvent = z.infer<typeof errorEventSchema>;
export type TurnFinishEvent = z.infer<typeof turnFinishSchema>;
export type EntriesAppendEvent = z.infer<typeof entriesAppendSchema>;
export type SleepUntilEvent = z.infer<typeof sleepUntilSchema>;
export type CheckpointRequestEvent = z.infer<typeof checkpointRequestSchema>;
export type HistoryRequestEvent = z.infer<typeof historyRequestSchema>;

/** Types of events that ask the host for something and expect an answer on stdin. */
export const requestEventTypes = ['sleep-until', 'checkpoint', 'history-request'] as const satisfies readonly AgentEventType[];

// ---------------------------------------------------------------------------------------------
// Parsing and encoding
// ---------------------------------------------------------------------------------------------

export class AgentProtocolError extends Error {
  constructor(
    message: string,
    /** The offending line or value, for logs. */
    readonly input: unknown,
  ) {
    super(message);
    this.name = 'AgentProtocolError';
  }
}

function describe(error: z.ZodError): string {
  return error.issues
    .slice(0, 3)
    .map((issue) => `${issue.path.length > 0 ? issue.path.join('.') : '(root)'}: ${issue.message}`)
    .join('; ');
}

function parseWith<T>(schema: z.ZodType<T>, input: unknown, side: string): T {
  let value = input;
  if (typeof input === 'string') {
    try {
      value = JSON.parse(input);
    } catch {
      throw new AgentProtocolError(`not a JSON line: ${input.slice(0, 200)}`, input);
    }
  }
  const result = schema.safeParse(value);
  if (!result.success) throw new AgentProtocolError(`invalid ${side} message (${describe(result.error)})`, input);
  return result.data;
}

/** Parses one line (or an already parsed value) from the agent's stdout. Throws `AgentProtocolError`. */
export function parseAgentEvent(input: unknown): AgentEvent {
  return parseWith(agentEventSchema, input, 'agent');
}

/** Parses one line (or an already parsed value) from the host, as the agent reads its stdin. Throws `AgentProtocolError`. */
export function parseHostMessage(input: unknown): HostMessage {
  return parseWith(hostMessageSchema, input, 'host');
}

/** One protocol line. JSON.stringify never emits a raw newline, so a line is always one message. */
export function encodeLine(message: HostMessage | AgentEvent): string {
  return `${JSON.stringify(message)}\n`;
}
