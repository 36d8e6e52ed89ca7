import { useCallback, useRef, useState } from 'preact/hooks';
import { postEventStream, RequestError } from './api.ts';

export interface ToolCard {
  toolCallId: string;
  toolName: string;
  input?: unknown;
  output?: unknown;
}

/** A turn as it streams in: the reply's text and reasoning so far, its tool calls, and where it stands. */
export interface LiveTurn {
  content: string;
  turnId?: string;
  text: string;
  reasoning: string;
  tools: ToolCard[];
  status: 'sending' | 'waking' | 'streaming' | 'done' | 'suspended' | 'failed';
  errors: string[];
  suspendedUntil?: string;
}

/**
 * Sends a message through the session API (POST /v1/sessions/:id/messages, answered as SSE) and
 * keeps the turn's live state: text deltas stream into `text` as the agent produces them.
 */
export function useTurn(sessionId: string): { turn?: LiveTurn; send: (content: string) => Promise<void>; busy: boolean; clear: () => void } {
  const [turn, setTurn] = useState<LiveTurn>();
  const busy = useRef(false);
  const send = useCallback(
    async (content: string) => {
      if (busy.current) return;
      busy.current = true;
      let state: LiveTurn = { content, text: '', reasoning: '', tools: [], status: 'sending', errors: [] };
      const update = (patch: Partial<LiveTurn>) => setTurn((state = { ...state, ...patch }));
      update({});
      try {
        await postEventStream(`/v1/sessions/${encodeURIComponent(sessionId)}/messages`, { content }, ({ event, data }) => {
          const value = data as Record<string, unknown>;
          if (event === 'session-state' && value.state === 'waking') update({ status: 'waking' });
          else if (event === 'turn-start') update({ status: 'streaming', turnId: String(value.turnId) });
          else if (event === 'text-delta') update({ status: 'streaming', text: state.text + String(value.delta ?? '') });
          else if (event === 'reasoning-delta') update({ reasoning: state.reasoning + String(value.delta ?? '') });
          else if (event === 'tool-call')
            update({ tools: [...state.tools, { toolCallId: String(value.toolCallId), toolName: String(value.toolName), input: value.input }] });
          else if (event === 'tool-result')
            update({ tools: state.tools.map((tool) => (tool.toolCallId === value.toolCallId ? { ...tool, output: value.output } : tool)) });
          else if (event === 'error') update({ errors: [...state.errors, String(value.message)] });
          else if (event === 'turn-suspend') update({ status: 'suspended', suspendedUntil: String(value.until) });
          else if (event === 'turn-finish' && value.turnId === state.turnId) update({ status: 'done' });
        });
        if (state.status !== 'suspended' && state.status !== 'done') update({ status: state.errors.length > 0 ? 'failed' : 'done' });
      } catch (error) {
        update({
          status: 'failed',
          errors: [...state.errors, error instanceof RequestError && error.hint ? `${error.message} (${error.hint})` : (error as Error).message],
        });
      } finally {
        busy.current = false;
      }
    },
    [sessionId],
  );
  return { turn, send, busy: turn?.status === 'sending' || turn?.status === 'waking' || turn?.status === 'streaming', clear: () => setTurn(undefined) };
}
