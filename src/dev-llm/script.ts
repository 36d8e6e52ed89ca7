import { createHash } from 'node:crypto';

/**
 * The dev LLM's behaviour: a pure function from an OpenAI chat request to an answer, scripted by
 * the last user message so that tests and demos get the same answer every time.
 *
 *   run: <shell command>      -> tool call `shell` {command}
 *   write <path>: <text>      -> tool call `write_file` {path, content}
 *   read <path>               -> tool call `read_file` {path}
 *   (a tool result)           -> text summarising the result
 *   remember <fact>           -> acknowledges; the fact lives in the conversation (and the agent's memory)
 *   what do you remember      -> lists every `remember` of the conversation and facts in the system prompt
 *   think: <text>             -> reasoning, then text
 *   rate-limit <n> [date]     -> HTTP 429 with Retry-After: n seconds (or an HTTP date), once per conversation
 *   anything else             -> "You said: <text>"
 */

export interface ChatMessage {
  role: string;
  content?: unknown;
  tool_calls?: Array<{ id: string; type?: string; function: { name: string; arguments: string } }>;
  tool_call_id?: string;
  name?: string;
}

export interface ChatRequest {
  model?: string;
  messages: ChatMessage[];
  tools?: Array<{ type: string; function: { name: string } }>;
  stream?: boolean;
}

export interface ToolCallAnswer {
  id: string;
  name: string;
  arguments: Record<string, string>;
}

export type Answer =
  | { kind: 'text'; text: string; reasoning?: string }
  | { kind: 'tool-call'; text?: string; toolCall: ToolCallAnswer }
  | { kind: 'rate-limit'; retryAfterSeconds: number; httpDate: boolean };

/** Text of a message whatever its shape (string, or an array of content parts). */
export function messageText(message: ChatMessage | undefined): string {
  if (!message) return '';
  const content = message.content;
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => (part && typeof part === 'object' && typeof (part as { text?: unknown }).text === 'string' ? (part as { text: string }).text : ''))
      .join('');
  }
  return '';
}

/** Deterministic ids: the same conversation always gets the same tool call id. */
function stableId(prefix: string, ...parts: unknown[]): string {
  return `${prefix}_${createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 16)}`;
}

/** Identifies a conversation up to its last message, so that a retry of the same request is recognised. */
export function conversationKey(request: ChatRequest): string {
  return createHash('sha256')
    .update(JSON.stringify(request.messages.map((message) => [message.role, messageText(message), message.tool_call_id ?? null])))
    .digest('hex');
}

function hasTool(request: ChatRequest, name: string): boolean {
  return (request.tools ?? []).some((tool) => tool.function?.name === name);
}

function toolCall(request: ChatRequest, name: string, args: Record<string, string>): Answer {
  if (!hasTool(request, name)) return { kind: 'text', text: `I would call ${name} ${JSON.stringify(args)}, but no such tool was offered.` };
  return { kind: 'tool-call', toolCall: { id: stableId('call', request.messages.length, name, args), name, arguments: args } };
}

function truncate(text: string, limit = 2000): string {
  return text.length <= limit ? text : `${text.slice(0, limit)}… (${text.length - limit} more characters)`;
}

function summariseToolResults(request: ChatRequest): string {
  const messages = request.messages;
  let start = messages.length;
  while (start > 0 && messages[start - 1].role === 'tool') start--;
  const names = new Map<string, string>();
  for (const message of messages) for (const call of message.tool_calls ?? []) names.set(call.id, call.function.name);
  return messages
    .slice(start)
    .map((message) => {
      const name = (message.tool_call_id && names.get(message.tool_call_id)) ?? message.name ?? 'tool';
      const output = messageText(message).trim();
      return `The ${name} tool returned: ${truncate(output) || '(nothing)'}`;
    })
    .join('\n');
}

function rememberedFacts(request: ChatRequest): string[] {
  const facts: string[] = [];
  for (const message of request.messages) {
    const text = messageText(message);
    if (message.role === 'user') {
      const match = /^\s*remember\s+(.+)$/is.exec(text);
      if (match) facts.push(match[1].trim());
    } else if (message.role === 'system') {
      // An agent may keep facts in its own memory and hand them over in the system prompt.
      const match = /^facts:\s*(.+)$/im.exec(text);
      if (match)
        facts.push(
          ...match[1]
            .split(';')
            .map((fact) => fact.trim())
            .filter(Boolean),
        );
    }
  }
  return [...new Set(facts)];
}

export function decideAnswer(request: ChatRequest, options: { alreadyRateLimited: (key: string) => boolean } = { alreadyRateLimited: () => false }): Answer {
  const last = request.messages[request.messages.length - 1];
  if (last?.role === 'tool') return { kind: 'text', text: summariseToolResults(request) };
  const lastUser = [...request.messages].reverse().find((message) => message.role === 'user');
  const text = messageText(lastUser).trim();

  const rateLimit = /^rate-limit\s+(\d+(?:\.\d+)?)(\s+date)?\b/i.exec(text);
  if (rateLimit && !options.alreadyRateLimited(conversationKey(request))) {
    return { kind: 'rate-limit', retryAfterSeconds: Number(rateLimit[1]), httpDate: Boolean(rateLimit[2]) };
  }
  if (rateLimit) return { kind: 'text', text: `Done waiting: the rate limit of ${rateLimit[1]} s is over.` };

  const run = /^run:\s*([\s\S]+)$/i.exec(text);
  if (run) return toolCall(request, 'shell', { command: run[1].trim() });
  const write = /^write\s+(\S+?):\s?([\s\S]*)$/i.exec(text);
  if (write) return toolCall(request, 'write_file', { path: write[1], content: write[2] });
  const read = /^read\s+(\S+)\s*$/i.exec(text);
  if (read) return toolCall(request, 'read_file', { path: read[1] });

  const remember = /^remember\s+(.+)$/is.exec(text);
  if (remember) return { kind: 'text', text: `OK, I will remember ${remember[1].trim()}.` };
  if (/what do you remember/i.test(text)) {
    const facts = rememberedFacts(request);
    return { kind: 'text', text: facts.length > 0 ? `I remember: ${facts.join('; ')}.` : 'I do not remember anything yet.' };
  }
  const think = /^think:\s*([\s\S]+)$/i.exec(text);
  if (think) return { kind: 'text', reasoning: `Let me think about ${think[1].trim()}.`, text: `My answer about ${think[1].trim()}: 42.` };
  return { kind: 'text', text: text ? `You said: ${text}` : 'Hello! Say `run: <command>`, `read <path>`, `write <path>: <text>` or `remember <fact>`.' };
}

/** A token count that is deterministic and roughly proportional to length: words and punctuation. */
export function countTokens(text: string): number {
  return (text.match(/[\p{L}\p{N}_]+|[^\s\p{L}\p{N}_]/gu) ?? []).length;
}

export function promptTokens(request: ChatRequest): number {
  let total = 0;
  for (const message of request.messages) {
    total += 4 + countTokens(messageText(message));
    for (const call of message.tool_calls ?? []) total += countTokens(call.function.name) + countTokens(call.function.arguments);
  }
  return total;
}
