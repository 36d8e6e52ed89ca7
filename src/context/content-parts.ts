import { z } from 'zod';

// The AI SDK v5 prompt shapes, and the usage and error fields, that both the context log's entries
// (context/entry.ts) and the agent protocol's messages (session/agent-protocol.ts) carry. The two
// differ only in what an unknown field means (an error in the log, a newer writer's addition in the
// protocol), so each builds the same shapes with its own kind of object. Pure zod: the SDK bundles
// it into agents through both files.

export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

export const jsonValue: z.ZodType<JsonValue> = z.json() as z.ZodType<JsonValue>;
export const jsonObject = z.record(z.string(), jsonValue);
export const providerOptions = z.record(z.string(), jsonObject);

const tokenCount = z.number().int().nonnegative();

/** What a model call used: a usage entry in the log, a usage event from an agent. */
export const usageFields = {
  inputTokens: tokenCount.optional(),
  outputTokens: tokenCount.optional(),
  totalTokens: tokenCount.optional(),
  reasoningTokens: tokenCount.optional(),
  cachedInputTokens: tokenCount.optional(),
  model: z.string().optional(),
  provider: z.string().optional(),
};

/** What went wrong: an error entry in the log, an error event from an agent. */
export const errorFields = {
  message: z.string(),
  code: z.string().optional(),
  details: jsonValue.optional(),
};

/** Builds a zod object: `z.strictObject` for the log's entries, `z.object` for the agent protocol (whose readers drop unknown fields). */
export type ObjectBuilder<Config extends z.core.$ZodObjectConfig> = <Shape extends z.core.$ZodLooseShape>(shape: Shape) => z.ZodObject<Shape, Config>;

/**
 * The AI SDK content parts and tool output that the log's entries and the agent protocol's messages
 * both carry, built with the caller's `object` so each keeps its own rule for unknown fields.
 * Image and file data is a base64 string, a data: URL or an http(s) URL.
 */
export function contentPartSchemas<Config extends z.core.$ZodObjectConfig>(object: ObjectBuilder<Config>) {
  const textPart = object({ type: z.literal('text'), text: z.string(), providerOptions: providerOptions.optional() });
  const imagePart = object({
    type: z.literal('image'),
    image: z.string().min(1),
    mediaType: z.string().optional(),
    providerOptions: providerOptions.optional(),
  });
  const filePart = object({
    type: z.literal('file'),
    data: z.string().min(1),
    mediaType: z.string().min(1),
    filename: z.string().optional(),
    providerOptions: providerOptions.optional(),
  });
  /** What a tool produced, as the model will see it (the AI SDK's `ToolResultOutput`). */
  const toolResultOutput = z.discriminatedUnion('type', [
    object({ type: z.literal('text'), value: z.string() }),
    object({ type: z.literal('json'), value: jsonValue }),
    object({ type: z.literal('error-text'), value: z.string() }),
    object({ type: z.literal('error-json'), value: jsonValue }),
    object({
      type: z.literal('content'),
      value: z.array(
        z.discriminatedUnion('type', [
          object({ type: z.literal('text'), text: z.string() }),
          object({ type: z.literal('media'), data: z.string(), mediaType: z.string() }),
        ]),
      ),
    }),
  ]);
  return { textPart, imagePart, filePart, toolResultOutput };
}
