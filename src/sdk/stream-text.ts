import type { JsonValue, ProviderOptions } from '../context/entry.ts';
import type { ModelMessage, ModelToolResultPart } from '../context/model-messages.ts';
import type { AgentEvent, AssistantContentPart, ToolResultOutput } from '../session/agent-protocol.ts';

/**
 * The parts of a Vercel AI SDK v5 `streamText` result this helper reads, restated structurally: the
 * SDK does not import `ai`, so an agent bundles exactly one copy of it (its own) and programs that
 * use another client pay nothing. `stream-text.test.ts` checks a real `streamText` result fits.
 */
export interface StreamPartLike {
  type: string;
  [field: string]: unknown;
}
export interface StreamTextResultLike {
  fullStream: AsyncIterable<StreamPartLike>;
}

/** Tools as passed to `streamText`, only to honour a tool's own `toModelOutput`. */
export type ToolsLike = Record<string, { toModelOutput?: (output: never) => unknown } | undefined>;

export interface ForwardStreamOptions {
  turnId: string;
  /**
   * The conversation: the completed steps' messages are appended to it when the stream ends, also
   * when a later step failed (a 429 in step 3 keeps steps 1 and 2), so a retry continues instead of
   * re-running tools. It may be the very array passed to `streamText`.
   */
  messages?: unknown[];
  tools?: ToolsLike;
}

export interface ForwardStreamResult {
  /** The messages of the completed steps, as the AI SDK's `response.messages` would list them. */
  messages: ModelMessage[];
  /** The text of the last step. */
  text: string;
  finishReason?: string;
  steps: number;
}

/** Errors the stream reported, re-thrown so that callers (and `withRateLimitSleep`) can act on them. */
export class StreamTextError extends Error {
  constructor(readonly streamError: unknown) {
    super(streamError instanceof Error ? streamError.message : `the model stream failed: ${JSON.stringify(streamError)}`, { cause: streamError });
    this.name = 'StreamTextError';
  }
}

function toJson(value: unknown): JsonValue {
  if (value === undefined) return null;
  try {
    return JSON.parse(JSON.stringify(value)) as JsonValue;
  } catch {
    return String(value);
  }
}

function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  if (typeof error === 'string') return error;
  return JSON.stringify(toJson(error));
}

function providerOptionsOf(part: StreamPartLike): ProviderOptions | undefined {
  const metadata = part.providerMetadata;
  return metadata && typeof metadata === 'object' && Object.keys(metadata).length > 0 ? (toJson(metadata) as ProviderOptions) : undefined;
}

function withOptions<T extends object>(value: T, providerOptions: ProviderOptions | undefined): T {
  return providerOptions ? { ...value, providerOptions } : value;
}

function modelOutput(output: unknown, toolName: string, tools: ToolsLike | undefined): ToolResultOutput {
  const custom = tools?.[toolName]?.toModelOutput;
  if (custom) return custom(output as never) as ToolResultOutput;
  return typeof output === 'string' ? { type: 'text', value: output } : { type: 'json', value: toJson(output) };
}

function count(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isInteger(value) && value >= 0 ? value : undefined;
}

type GrowingPart = { type: 'text' | 'reasoning'; text: string; providerOptions?: ProviderOptions };

/** One step's assistant content in stream order; text and reasoning grow delta by delta. */
class StepBuilder {
  readonly parts: AssistantContentPart[] = [];
  readonly toolResults: ModelToolResultPart[] = [];
  private readonly open = new Map<string, GrowingPart>();

  growing(kind: 'text' | 'reasoning', part: StreamPartLike): GrowingPart {
    const key = `${kind}:${String(part.id ?? '')}`;
    let current = this.open.get(key);
    if (current === undefined) {
      const created: GrowingPart = { type: kind, text: '' };
      this.open.set(key, created);
      this.parts.push(created);
      current = created;
    }
    const providerOptions = providerOptionsOf(part);
    if (providerOptions) current.providerOptions = { ...current.providerOptions, ...providerOptions };
    return current;
  }

  assistantMessage(): ModelMessage | undefined {
    const content = this.parts.filter((part) => part.type !== 'text' || part.text.length > 0);
    return content.length > 0 ? ({ role: 'assistant', content } as ModelMessage) : undefined;
  }
}

/**
 * Forwards a `streamText` result as protocol events through `send`, and returns the step messages.
 *
 * Per step: deltas and tool calls go out live; at `finish-step` the step's complete assistant
 * message goes out as `message-finish`, then the held-back tool results, then `usage`. Holding the
 * results until the step ends is what makes the log read call-then-result (the AI SDK emits a
 * tool's result before its step finishes).
 */
export async function forwardStream(
  result: StreamTextResultLike,
  options: ForwardStreamOptions,
  send: (event: AgentEvent) => void,
): Promise<ForwardStreamResult> {
  const { turnId } = options;
  const collected: ModelMessage[] = [];
  let step = new StepBuilder();
  let steps = 0;
  let lastText = '';
  let finishReason: string | undefined;
  let failure: { error: unknown } | undefined;

  for await (const part of result.fullStream) {
    switch (part.type) {
      case 'text-start':
      case 'text-end':
        step.growing('text', part);
        break;
      case 'text-delta': {
        const delta = String(part.text ?? part.delta ?? '');
        step.growing('text', part).text += delta;
        if (delta) send({ type: 'text-delta', turnId, delta });
        break;
      }
      case 'reasoning-start':
      case 'reasoning-end':
        step.growing('reasoning', part);
        break;
      case 'reasoning-delta': {
        const delta = String(part.text ?? part.delta ?? '');
        step.growing('reasoning', part).text += delta;
        if (delta) send({ type: 'reasoning-delta', turnId, delta });
        break;
      }
      case 'file': {
        const file = part.file as { base64?: string; mediaType?: string } | undefined;
        if (file?.base64 && file.mediaType)
          step.parts.push(withOptions({ type: 'file' as const, data: file.base64, mediaType: file.mediaType }, providerOptionsOf(part)));
        break;
      }
      case 'tool-call': {
        const toolCallId = String(part.toolCallId);
        const toolName = String(part.toolName);
        const input = toJson(part.input);
        const call: AssistantContentPart = withOptions({ type: 'tool-call' as const, toolCallId, toolName, input }, providerOptionsOf(part));
        if (part.providerExecuted === true) call.providerExecuted = true;
        step.parts.push(call);
        send({ type: 'tool-call', turnId, toolCallId, toolName, input });
        break;
      }
      case 'tool-result':
      case 'tool-error': {
        if (part.preliminary === true) break; // streaming tool progress: only the final result is the result
        const toolCallId = String(part.toolCallId);
        const toolName = String(part.toolName);
        const output: ToolResultOutput =
          part.type === 'tool-error' ? { type: 'error-text', value: errorMessage(part.error) } : modelOutput(part.output, toolName, options.tools);
        const resultPart = withOptions({ type: 'tool-result' as const, toolCallId, toolName, output }, providerOptionsOf(part));
        if (part.providerExecuted === true) step.parts.push(resultPart);
        else step.toolResults.push(resultPart);
        break;
      }
      case 'finish-step': {
        steps += 1;
        const assistant = step.assistantMessage();
        const stepMessages: ModelMessage[] = [];
        if (assistant) {
          stepMessages.push(assistant);
          send({ type: 'message-finish', turnId, message: assistant as Extract<AgentEvent, { type: 'message-finish' }>['message'] });
        }
        for (const toolResult of step.toolResults) {
          send({ type: 'tool-result', turnId, toolCallId: toolResult.toolCallId, toolName: toolResult.toolName, output: toolResult.output });
        }
        if (step.toolResults.length > 0) stepMessages.push({ role: 'tool', content: step.toolResults });
        const usage = (part.usage ?? {}) as Record<string, unknown>;
        const response = (part.response ?? {}) as { modelId?: unknown };
        const usageEvent: AgentEvent = { type: 'usage', turnId };
        for (const key of ['inputTokens', 'outputTokens', 'totalTokens', 'reasoningTokens', 'cachedInputTokens'] as const) {
          const value = count(usage[key]);
          if (value !== undefined) usageEvent[key] = value;
        }
        if (typeof response.modelId === 'string') usageEvent.model = response.modelId;
        send(usageEvent);
        lastText = step.parts.flatMap((content) => (content.type === 'text' ? [content.text] : [])).join('');
        collected.push(...stepMessages);
        step = new StepBuilder();
        break;
      }
      case 'finish':
        finishReason = typeof part.finishReason === 'string' ? part.finishReason : undefined;
        break;
      case 'error':
        failure = { error: part.error };
        break;
      case 'abort':
        failure = { error: new Error('the model stream was aborted') };
        break;
      default:
        // start, start-step, tool-input-*, source, raw: nothing the host needs.
        break;
    }
  }
  // Only now: the AI SDK re-reads the caller's messages array at every step, so appending while the
  // stream runs would send the completed steps twice.
  options.messages?.push(...collected);
  if (failure) throw failure.error instanceof Error ? failure.error : new StreamTextError(failure.error);
  return { messages: collected, text: lastText, finishReason, steps };
}
