import { useEffect, useRef, useState } from 'preact/hooks';
import type { LiveTurn, ToolCard } from './turn.ts';

/** A context-log entry as the log's SSE sends it (only the fields the page reads). */
export interface LoggedEntry {
  offset: number;
  appendedAt: string;
  entry: {
    kind: string;
    role?: string;
    content?: unknown;
    text?: string;
    toolCallId?: string;
    toolName?: string;
    input?: unknown;
    output?: unknown;
    message?: string;
    code?: string;
    data?: Record<string, unknown>;
    metadata?: Record<string, unknown>;
  };
}

/**
 * Follows a session's context log over the log API's own SSE (`?live=sse`): the history first,
 * then each entry as it is appended, whoever sent the message (this page, the CLI, a program).
 */
export function useLogEntries(sessionId: string): { entries: LoggedEntry[]; error?: string } {
  const [entries, setEntries] = useState<LoggedEntry[]>([]);
  const [error, setError] = useState<string>();
  useEffect(() => {
    setEntries([]);
    const source = new EventSource(`/v1/logs/${encodeURIComponent(sessionId)}/entries?live=sse`);
    source.addEventListener('entry', (event) => {
      const stored = JSON.parse((event as MessageEvent<string>).data) as LoggedEntry;
      setEntries((list) => (list.some((each) => each.offset === stored.offset) ? list : [...list, stored]));
      setError(undefined);
    });
    source.addEventListener('error', () => setError(source.readyState === EventSource.CLOSED ? 'the log stream closed' : 'reconnecting to the log…'));
    return () => source.close();
  }, [sessionId]);
  return { entries, error };
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content))
    return content
      .map((part: { type?: string; text?: string; filename?: string }) =>
        part.type === 'text' ? part.text : `[${part.type}${part.filename ? ` ${part.filename}` : ''}]`,
      )
      .join('');
  return '';
}

const pretty = (value: unknown) => (typeof value === 'string' ? value : JSON.stringify(value, null, 2));

function ToolCallCard({ tool }: { tool: ToolCard }) {
  return (
    <article class="card tool" aria-label={`tool call ${tool.toolName}`}>
      <header>
        <span class="tag">tool</span> <strong class="mono">{tool.toolName}</strong>
      </header>
      <pre>{pretty(tool.input)}</pre>
      {tool.output !== undefined && (
        <>
          <div class="muted">result</div>
          <pre>{pretty((tool.output as { value?: unknown })?.value ?? tool.output)}</pre>
        </>
      )}
    </article>
  );
}

function EntryView({ logged }: { logged: LoggedEntry }) {
  const { entry } = logged;
  switch (entry.kind) {
    case 'message':
      return (
        <div class={`message ${entry.role}`} data-role={entry.role}>
          <div class="who">{entry.role}</div>
          <p>{textOf(entry.content)}</p>
        </div>
      );
    case 'reasoning':
      return (
        <details class="reasoning">
          <summary>Reasoning</summary>
          <p>{entry.text}</p>
        </details>
      );
    case 'tool-call':
      return <ToolCallCard tool={{ toolCallId: entry.toolCallId ?? '', toolName: entry.toolName ?? '?', input: entry.input }} />;
    case 'tool-result':
      return (
        <article class="card tool-result" aria-label={`tool result ${entry.toolName ?? ''}`}>
          <header>
            <span class="tag">result</span> <strong class="mono">{entry.toolName ?? entry.toolCallId}</strong>
          </header>
          <pre>{pretty((entry.output as { value?: unknown })?.value ?? entry.output)}</pre>
        </article>
      );
    case 'error':
      return (
        <div class="card error-card" role="note">
          <span class="tag">error</span> {entry.code ? <code>{entry.code}</code> : null} {entry.message}
        </div>
      );
    case 'metadata':
      if (entry.data?.event === 'sleep-until')
        return (
          <div class="system-line">
            sleeping until {new Date(String(entry.data.until)).toLocaleTimeString()}
            {entry.data.reason ? ` (${String(entry.data.reason)})` : ''}
          </div>
        );
      if (entry.data?.event === 'session-create') return <div class="system-line">session created on {String(entry.data.image)}</div>;
      return null;
    case 'summary':
      return <div class="system-line">summary: {entry.text}</div>;
    default:
      return null;
  }
}

/** The conversation as people read it, with the turn being streamed right now at the end. */
export function Conversation({ entries, live }: { entries: LoggedEntry[]; live?: LiveTurn }) {
  // Once the log holds the streamed turn's reply, the log's copy is shown instead of the live one.
  const container = useRef<HTMLDivElement>(null);
  // Follow the end of the conversation as it grows, unless the reader scrolled up to read.
  const following = useRef(true);
  useEffect(() => {
    const element = container.current;
    if (element && following.current) element.scrollTop = element.scrollHeight;
  }, [entries.length, live?.text, live?.status]);
  const liveLogged =
    live?.turnId !== undefined &&
    entries.some((each) => each.entry.kind === 'message' && each.entry.role === 'assistant' && each.entry.metadata?.turnId === live.turnId);
  return (
    <div
      class="conversation"
      ref={container}
      tabIndex={0}
      aria-label="Conversation"
      aria-live="polite"
      aria-relevant="additions text"
      onScroll={(event) => {
        const element = event.currentTarget;
        following.current = element.scrollHeight - element.scrollTop - element.clientHeight < 40;
      }}
    >
      {entries.length === 0 && !live && <p class="empty">Nothing said yet.</p>}
      {entries.map((logged) => (
        <EntryView key={logged.offset} logged={logged} />
      ))}
      {live && !liveLogged && (live.status !== 'done' || live.text) && (
        <div class="message assistant streaming" data-role="assistant" data-streaming="true">
          <div class="who">
            assistant{' '}
            {live.status === 'waking'
              ? '· waking the machine…'
              : live.status === 'streaming'
                ? '· typing'
                : live.status === 'suspended'
                  ? `· sleeping until ${new Date(live.suspendedUntil!).toLocaleTimeString()}`
                  : ''}
          </div>
          {live.reasoning && (
            <details class="reasoning">
              <summary>Reasoning</summary>
              <p>{live.reasoning}</p>
            </details>
          )}
          {live.tools.map((tool) => (
            <ToolCallCard key={tool.toolCallId} tool={tool} />
          ))}
          <p>{live.text}</p>
        </div>
      )}
      {live?.errors.map((message) => (
        <p class="error" role="alert">
          {message}
        </p>
      ))}
    </div>
  );
}
