import { z } from 'zod';
import { contentPartSchemas, errorFields, jsonObject, jsonValue, providerOptions, usageFields, type JsonValue } from './content-parts.ts';
import { InvalidEntryError, type EntryIssue } from './errors.ts';

/**
 * The entry schema: what may go into the log. Shapes follow the Vercel AI SDK v5 prompt parts so
 * that building model context is a near-identity mapping; provider-specific data rides along in
 * `providerOptions` (sent back to the provider) or `metadata` (never sent to a model).
 *
 * Objects are strict: an unknown field is a typo or a newer writer, and silently dropping it would
 * lose data in a log whose point is to lose nothing.
 */

export type { JsonValue };

const common = {
  /** Entries with the same messageId came from one provider message (e.g. text + tool calls). */
  messageId: z.string().min(1).max(256).optional(),
  providerOptions: providerOptions.optional(),
  metadata: jsonObject.optional(),
};

const { textPart, imagePart, filePart, toolResultOutput } = contentPartSchemas(z.strictObject);

const userContent = z.union([z.string(), z.array(z.discriminatedUnion('type', [textPart, imagePart, filePart]))]);
const assistantContent = z.union([z.string(), z.array(z.discriminatedUnion('type', [textPart, filePart]))]);

const systemMessage = z.strictObject({ kind: z.literal('message'), role: z.literal('system'), content: z.string(), ...common });
const userMessage = z.strictObject({ kind: z.literal('message'), role: z.literal('user'), content: userContent, ...common });
const assistantMessage = z.strictObject({ kind: z.literal('message'), role: z.literal('assistant'), content: assistantContent, ...common });

const toolCall = z.strictObject({
  kind: z.literal('tool-call'),
  toolCallId: z.string().min(1),
  toolName: z.string().min(1),
  input: jsonValue,
  providerExecuted: z.boolean().optional(),
  ...common,
});

const toolResult = z.strictObject({
  kind: z.literal('tool-result'),
  toolCallId: z.string().min(1),
  /** Optional because OpenAI and Anthropic results do not repeat it; filled from the matching call. */
  toolName: z.string().min(1).optional(),
  output: toolResultOutput,
  ...common,
});

const reasoning = z.strictObject({ kind: z.literal('reasoning'), text: z.string(), ...common });

const errorEntry = z.strictObject({
  kind: z.literal('error'),
  ...errorFields,
  ...common,
});

const usage = z.strictObject({
  kind: z.literal('usage'),
  ...usageFields,
  ...common,
});

const offset = z.number().int().nonnegative();
const summary = z
  .strictObject({
    kind: z.literal('summary'),
    /** The half-open range [from, to) of earlier entries that this summary stands for in model context. */
    covers: z.strictObject({ from: offset, to: offset }),
    text: z.string(),
    /** Role of the message that replaces the range; user by default since not every provider takes late system messages. */
    role: z.enum(['system', 'user', 'assistant']).optional(),
    ...common,
  })
  .refine((value) => value.covers.from < value.covers.to, { message: 'covers.from must be less than covers.to', path: ['covers'] });

/** Annotations that never reach a model: model settings, tags, checkpoints of the agent's own state. */
const metadataEntry = z.strictObject({ kind: z.literal('metadata'), data: jsonObject, ...common });

const message = z.discriminatedUnion('role', [systemMessage, userMessage, assistantMessage]);

export const entrySchema = z.union([message, toolCall, toolResult, reasoning, errorEntry, usage, summary, metadataEntry]);

export type Entry = z.infer<typeof entrySchema>;
export type MessageEntry = z.infer<typeof message>;
export type ToolCallEntry = z.infer<typeof toolCall>;
export type ToolResultEntry = z.infer<typeof toolResult>;
export type ToolResultOutput = z.infer<typeof toolResultOutput>;
export type ReasoningEntry = z.infer<typeof reasoning>;
export type ErrorEntry = z.infer<typeof errorEntry>;
export type UsageEntry = z.infer<typeof usage>;
export type SummaryEntry = z.infer<typeof summary>;
export type MetadataEntry = z.infer<typeof metadataEntry>;
export type EntryKind = Entry['kind'];
export type ProviderOptions = z.infer<typeof providerOptions>;

export const entryKinds: readonly EntryKind[] = ['message', 'tool-call', 'tool-result', 'reasoning', 'error', 'usage', 'summary', 'metadata'];

const kindSchemas: Record<EntryKind, z.ZodType> = {
  message,
  'tool-call': toolCall,
  'tool-result': toolResult,
  reasoning,
  error: errorEntry,
  usage,
  summary,
  metadata: metadataEntry,
};

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let current = value;
  for (const key of path) current = current && typeof current === 'object' ? (current as Record<PropertyKey, unknown>)[key] : undefined;
  return current;
}

type Issue = z.core.$ZodIssue;

/**
 * Zod's union errors say only "Invalid input". Report the branch that got furthest instead (the
 * deepest nested issue), which is almost always what the writer meant, and say plainly when a
 * field is missing.
 */
function explain(value: unknown, issue: Issue, prefix: readonly PropertyKey[] = []): { path: PropertyKey[]; message: string } {
  const path = [...prefix, ...issue.path];
  if (issue.code === 'invalid_union' && issue.errors.length > 0) {
    const deepest = issue.errors.flatMap((branch) => branch.slice(0, 1)).sort((left, right) => right.path.length - left.path.length)[0];
    if (deepest && deepest.path.length > 0) return explain(value, deepest, path);
    const expected = [...new Set(issue.errors.map((branch) => (branch[0] as { expected?: string } | undefined)?.expected).filter(Boolean))];
    const actual = valueAt(value, path);
    if (actual === undefined) return { path, message: 'required field is missing' };
    if (expected.length > 0)
      return { path, message: `expected ${expected.join(' or ')}, got ${Array.isArray(actual) ? 'array' : actual === null ? 'null' : typeof actual}` };
  }
  if (path.length > 0 && valueAt(value, path) === undefined) return { path, message: 'required field is missing' };
  return { path, message: issue.message };
}

function issuesFrom(index: number, value: unknown, error: z.ZodError): EntryIssue[] {
  return error.issues.map((issue) => {
    const { path, message } = explain(value, issue);
    return { index, path: path.map(String).join('.'), message };
  });
}

/**
 * Validates one entry. Errors are reported against the schema of the entry's own kind (not the
 * whole union) so that a bad `content` says so instead of "no union member matched".
 */
export function parseEntry(value: unknown, index = 0): Entry {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidEntryError([{ index, path: '', message: 'an entry must be a JSON object with a `kind` field' }]);
  }
  const kind = (value as { kind?: unknown }).kind;
  if (typeof kind !== 'string' || !(entryKinds as readonly string[]).includes(kind)) {
    throw new InvalidEntryError([{ index, path: 'kind', message: `unknown kind ${JSON.stringify(kind)}; expected one of ${entryKinds.join(', ')}` }]);
  }
  const result = kindSchemas[kind as EntryKind].safeParse(value);
  if (!result.success) throw new InvalidEntryError(issuesFrom(index, value, result.error));
  return result.data as Entry;
}

/** Validates a whole batch; any bad entry rejects the batch, so a batch is all-or-nothing. */
export function parseEntries(values: unknown): Entry[] {
  if (!Array.isArray(values)) {
    throw new InvalidEntryError([{ index: 0, path: '', message: 'expected an array of entries' }]);
  }
  if (values.length === 0) {
    throw new InvalidEntryError([{ index: 0, path: '', message: 'a batch must contain at least one entry' }]);
  }
  const issues: EntryIssue[] = [];
  const entries: Entry[] = [];
  values.forEach((value, index) => {
    try {
      entries.push(parseEntry(value, index));
    } catch (error) {
      if (error instanceof InvalidEntryError) issues.push(...error.issues);
      else throw error;
    }
  });
  if (issues.length > 0) throw new InvalidEntryError(issues);
  return entries;
}

/** A committed entry with its position. `appendedAt` is the store's clock, in ISO 8601. */
export interface StoredEntry {
  sessionId: string;
  offset: number;
  appendedAt: string;
  entry: Entry;
}
