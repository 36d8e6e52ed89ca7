import { useEffect, useRef, useState } from 'preact/hooks';
import { getJson, RequestError } from './api.ts';
import { ErrorNote, StateBadge } from './components.tsx';
import { Conversation, useLogEntries } from './conversation.tsx';
import { TableHead } from './data-table.tsx';
import { formatBytes, formatDateTime, formatDuration } from './format.ts';
import { useLiveConnection, useNow, useSessionEvents } from './live.ts';
import { SessionActionDialog, idleFor } from './sessions-page.tsx';
import type { SessionDetail, SessionView } from './shapes.ts';
import { Timeline, TurnChart } from './timeline.tsx';
import { useTurn } from './turn.ts';

export function SessionPage({ sessionId }: { sessionId: string }) {
  const [detail, setDetail] = useState<SessionDetail>();
  const [error, setError] = useState<RequestError>();
  const [action, setAction] = useState<{ kind: 'fork' | 'delete'; session: SessionView }>();
  const [draft, setDraft] = useState('');
  const { entries, error: logError } = useLogEntries(sessionId);
  const { turn, send, busy } = useTurn(sessionId);
  const { generation } = useLiveConnection();
  const now = useNow();

  // Answers can arrive out of order; only the newest request's answer is shown.
  const latest = useRef(0);
  const load = () => {
    const request = ++latest.current;
    return getJson<SessionDetail>(`/ui/api/sessions/${encodeURIComponent(sessionId)}`).then(
      (body) => request === latest.current && (setDetail(body), setError(undefined)),
      (reason: RequestError) => request === latest.current && setError(reason),
    );
  };
  useEffect(() => void load(), [sessionId, generation]);
  // Each change of this session brings a new history line: fetch the timeline again.
  useSessionEvents((changed) => {
    if (changed.id !== detail?.session.id && changed.id !== sessionId && changed.name !== sessionId) return;
    setDetail((current) => (current ? { ...current, session: { ...changed, storedBytes: changed.storedBytes ?? current.session.storedBytes } } : current));
    void load();
  });

  if (!detail) return error ? <ErrorNote error={error} /> : <p class="loading">Loading the session…</p>;
  const { session, timeline } = detail;
  const lastWake = timeline.wakes.at(-1);
  return (
    <section class="session-page" aria-labelledby="session-title">
      <header class="page-header">
        <div>
          <h1 id="session-title">{session.name}</h1>
          <div class="facts">
            <StateBadge state={session.state} /> <span>{session.turns} turns</span> <span>idle {idleFor(session, now)}</span>{' '}
            <span>stored {formatBytes(session.storedBytes?.referenced)}</span> <span class="mono">{session.image}</span>{' '}
            {lastWake && <span>last wake {formatDuration(lastWake.milliseconds)}</span>}
          </div>
          {session.note && <p class="note">{session.note}</p>}
        </div>
        <div class="actions">
          <button type="button" onClick={() => setAction({ kind: 'fork', session })}>
            Fork
          </button>
          <button type="button" class="danger" onClick={() => setAction({ kind: 'delete', session })}>
            Delete
          </button>
        </div>
      </header>
      <ErrorNote error={error} />
      <div class="columns">
        <section class="panel conversation-panel" aria-labelledby="conversation-title">
          <h2 id="conversation-title">Conversation</h2>
          {logError && <p class="muted">{logError}</p>}
          <Conversation entries={entries} live={turn} />
          <form
            class="composer"
            onSubmit={(event) => {
              event.preventDefault();
              const content = draft.trim();
              if (!content || busy) return;
              setDraft('');
              void send(content);
            }}
          >
            <label for="composer-input" class="visually-hidden">
              Message
            </label>
            <textarea
              id="composer-input"
              rows={2}
              placeholder={session.state === 'hibernated' ? 'Message (wakes the machine)' : 'Message'}
              value={draft}
              onInput={(event) => setDraft((event.target as HTMLTextAreaElement).value)}
              onKeyDown={(event) => {
                if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) (event.currentTarget.form as HTMLFormElement).requestSubmit();
              }}
            />
            <button type="submit" class="primary" disabled={busy || !draft.trim()}>
              {busy ? 'Sending…' : 'Send'}
            </button>
          </form>
        </section>
        <section class="panel" aria-labelledby="timeline-title">
          <h2 id="timeline-title">Machine timeline</h2>
          <Timeline timeline={timeline} now={now} />
          <h2>Per turn</h2>
          <TurnChart timeline={timeline} />
          <h2>Snapshots</h2>
          {timeline.snapshots.length === 0 ? (
            <p class="empty">No snapshot yet.</p>
          ) : (
            <div class="table-wrap">
              <table>
                <TableHead columns={['Taken', { label: 'New bytes', number: true }, { label: 'Took', number: true }]} />
                <tbody>
                  {timeline.snapshots.map((snapshot) => (
                    <tr key={snapshot.snapshot}>
                      <td title={snapshot.snapshot}>{formatDateTime(snapshot.at)}</td>
                      <td class="number">{formatBytes(snapshot.newBytes)}</td>
                      <td class="number">{formatDuration(snapshot.milliseconds)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </section>
      </div>
      <SessionActionDialog action={action} onClose={() => setAction(undefined)} />
    </section>
  );
}
