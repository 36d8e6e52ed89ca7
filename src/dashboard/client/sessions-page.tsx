import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { deleteResource, getJson, postJson, RequestError } from './api.ts';
import { Dialog, ErrorNote, StateBadge } from './components.tsx';
import { DataTable, type Column } from './data-table.tsx';
import { formatBytes, since } from './format.ts';
import { useLiveConnection, useNow, useSessionEvents } from './live.ts';
import { navigate } from './router.ts';
import type { SessionView } from './shapes.ts';
import { useTurn } from './turn.ts';

type Action = { kind: 'send' | 'fork' | 'delete'; session: SessionView };

/** Idle time counts from the last activity while nothing runs; a working session shows a dash. */
export function idleFor(session: SessionView, now: number): string {
  return session.state === 'idle' || session.state === 'hibernated' ? since(session.lastActivityAt, now) : '–';
}

/** A session's new state laid over the list: updated in place, appended when new, dropped when deleted. */
function merge(list: SessionView[], changed: SessionView): SessionView[] {
  if (changed.state === 'deleted') return list.filter((each) => each.id !== changed.id);
  const index = list.findIndex((each) => each.id === changed.id);
  if (index < 0) return [...list, changed];
  // The stream leaves out stored bytes unless a snapshot changed: keep the ones we know.
  const merged = { ...changed, storedBytes: changed.storedBytes ?? (changed.snapshot === list[index]!.snapshot ? list[index]!.storedBytes : undefined) };
  return list.map((each, position) => (position === index ? merged : each));
}

function sessionColumns(now: number, setAction: (action: Action) => void): Column<SessionView>[] {
  return [
    {
      label: 'Session',
      rowHeader: true,
      cell: (session) => (
        <>
          <a href={`/session/${encodeURIComponent(session.id)}`}>{session.name}</a>
          {session.name !== session.id && <div class="muted mono">{session.id}</div>}
          {session.parentId && <div class="muted">fork of {session.parentId}</div>}
        </>
      ),
    },
    {
      label: 'State',
      cell: (session) => (
        <>
          <StateBadge state={session.state} />
          {session.wakeAt && <div class="muted">wakes {new Date(session.wakeAt).toLocaleTimeString()}</div>}
        </>
      ),
    },
    { label: 'Turns', number: true, cell: (session) => session.turns },
    { label: 'Idle', number: true, cell: (session) => idleFor(session, now) },
    {
      label: 'Stored',
      number: true,
      title: (session) => (session.storedBytes ? `${formatBytes(session.storedBytes.exclusive)} exclusive` : undefined),
      cell: (session) => formatBytes(session.storedBytes?.referenced),
    },
    { label: 'Image', class: 'mono', cell: (session) => session.image },
    {
      label: 'Actions',
      cell: (session) => (
        <div class="actions">
          <button type="button" onClick={() => setAction({ kind: 'send', session })} aria-label={`Send a message to ${session.name}`}>
            Send
          </button>
          <button type="button" onClick={() => setAction({ kind: 'fork', session })} aria-label={`Fork ${session.name}`}>
            Fork
          </button>
          <button type="button" class="danger" onClick={() => setAction({ kind: 'delete', session })} aria-label={`Delete ${session.name}`}>
            Delete
          </button>
        </div>
      ),
    },
  ];
}

export function SessionsPage() {
  const [sessions, setSessions] = useState<SessionView[]>();
  const [error, setError] = useState<RequestError>();
  const [stateFilter, setStateFilter] = useState('all');
  const [search, setSearch] = useState('');
  const [action, setAction] = useState<Action>();
  const { generation } = useLiveConnection();
  const now = useNow();

  // Changes that stream in while the list is being fetched are newer than the list: laid over it.
  const inFlight = useRef<Map<string, SessionView> | undefined>(undefined);
  const load = () => {
    const changes = (inFlight.current = new Map());
    return getJson<{ sessions: SessionView[] }>('/ui/api/sessions').then(
      (body) => {
        if (inFlight.current !== changes) return;
        inFlight.current = undefined;
        let list = body.sessions;
        for (const changed of changes.values()) list = merge(list, changed);
        setSessions(list);
        setError(undefined);
      },
      (reason: RequestError) => setError(reason),
    );
  };
  useEffect(() => void load(), [generation]);
  useSessionEvents((changed) => {
    inFlight.current?.set(changed.id, changed);
    setSessions((list) => (list ? merge(list, changed) : list));
  });

  const visible = useMemo(() => {
    const needle = search.trim().toLowerCase();
    return (sessions ?? []).filter(
      (session) =>
        (stateFilter === 'all' || (stateFilter === 'awake' ? !['hibernated', 'failed'].includes(session.state) : session.state === stateFilter)) &&
        (!needle || `${session.name} ${session.id} ${session.image}`.toLowerCase().includes(needle)),
    );
  }, [sessions, stateFilter, search]);

  return (
    <section aria-labelledby="sessions-title">
      <h1 id="sessions-title">Sessions</h1>
      <div class="filters" role="search">
        <label>
          State{' '}
          <select value={stateFilter} onChange={(event) => setStateFilter((event.target as HTMLSelectElement).value)}>
            {['all', 'awake', 'running', 'idle', 'hibernated', 'waking', 'failed'].map((state) => (
              <option value={state}>{state}</option>
            ))}
          </select>
        </label>
        <label>
          Search <input type="search" value={search} placeholder="name, id or image" onInput={(event) => setSearch((event.target as HTMLInputElement).value)} />
        </label>
        <span class="count" aria-live="polite">
          {sessions ? `${visible.length} of ${sessions.length}` : ''}
        </span>
      </div>
      <ErrorNote error={error} />
      {sessions === undefined ? (
        <p class="loading">Loading sessions…</p>
      ) : sessions.length === 0 ? (
        <p class="empty">
          No sessions yet. Create one with <code>torpor session create IMAGE -- COMMAND</code> or <code>POST /v1/sessions</code>.
        </p>
      ) : (
        <DataTable
          class="sessions"
          columns={sessionColumns(now, setAction)}
          items={visible}
          rowKey={(session) => session.id}
          rowAttributes={(session) => ({ 'data-session': session.id, 'data-state': session.state })}
        />
      )}
      <SessionActionDialog action={action} onClose={() => setAction(undefined)} onChanged={() => void load()} />
    </section>
  );
}

/** Send, fork and delete, each confirmed in a dialog; shared by the table and a session's page. */
export function SessionActionDialog({ action, onClose, onChanged }: { action?: Action; onClose: () => void; onChanged?: () => void }) {
  const title = action
    ? { send: `Send a message to ${action.session.name}`, fork: `Fork ${action.session.name}?`, delete: `Delete ${action.session.name}?` }[action.kind]
    : '';
  return (
    <Dialog open={action !== undefined} title={title} onClose={onClose}>
      {action?.kind === 'send' && <SendForm session={action.session} onClose={onClose} />}
      {action && action.kind !== 'send' && <ConfirmAction action={action} onClose={onClose} onChanged={onChanged} />}
    </Dialog>
  );
}

function SendForm({ session, onClose }: { session: SessionView; onClose: () => void }) {
  const [content, setContent] = useState('');
  const { turn, send, busy } = useTurn(session.id);
  return (
    <form
      method="dialog"
      onSubmit={(event) => {
        event.preventDefault();
        if (content.trim()) void send(content.trim()).then(() => setContent(''));
      }}
    >
      <label for="send-content">Message</label>
      <textarea id="send-content" rows={3} value={content} onInput={(event) => setContent((event.target as HTMLTextAreaElement).value)} autofocus required />
      {session.state === 'hibernated' && <p class="muted">The session is hibernated: sending wakes its machine first.</p>}
      {turn && (
        <div class="reply" aria-live="polite">
          <div class="muted">{turn.status === 'waking' ? 'waking the machine…' : turn.status === 'sending' ? 'sending…' : turn.status}</div>
          <p class="assistant-text">{turn.text}</p>
          {turn.errors.map((message) => (
            <p class="error">{message}</p>
          ))}
        </div>
      )}
      <div class="dialog-buttons">
        <button type="button" onClick={onClose}>
          Close
        </button>
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Sending…' : 'Send'}
        </button>
      </div>
    </form>
  );
}

function ConfirmAction({ action, onClose, onChanged }: { action: Action; onClose: () => void; onChanged?: () => void }) {
  const [error, setError] = useState<RequestError>();
  const [working, setWorking] = useState(false);
  const [name, setName] = useState('');
  const { session } = action;
  const run = async () => {
    setWorking(true);
    try {
      if (action.kind === 'fork') {
        const fork = await postJson<SessionView>(`/v1/sessions/${encodeURIComponent(session.id)}/fork`, name.trim() ? { name: name.trim() } : {});
        onChanged?.();
        onClose();
        if (fork) navigate(`/session/${encodeURIComponent(fork.id)}`);
      } else {
        await deleteResource(`/v1/sessions/${encodeURIComponent(session.id)}`);
        onChanged?.();
        onClose();
        if (window.location.pathname.startsWith('/session/')) navigate('/');
      }
    } catch (reason) {
      setError(reason as RequestError);
    } finally {
      setWorking(false);
    }
  };
  return (
    <div>
      {action.kind === 'fork' ? (
        <>
          <p>The fork starts hibernated on the same snapshot and context log, and continues on its own machine from its first message.</p>
          <label for="fork-name">Name of the fork (optional)</label>
          <input
            id="fork-name"
            value={name}
            onInput={(event) => setName((event.target as HTMLInputElement).value)}
            pattern="[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,62}"
          />
        </>
      ) : (
        <p>
          This stops its machine and removes the session and its snapshot (unless a fork still uses it). The context log stays under{' '}
          <code>/v1/logs/{session.id}</code>.
        </p>
      )}
      <ErrorNote error={error} />
      <div class="dialog-buttons">
        <button type="button" onClick={onClose} autofocus>
          Cancel
        </button>
        <button type="button" class={action.kind === 'delete' ? 'danger' : 'primary'} disabled={working} onClick={() => void run()}>
          {working ? 'Working…' : action.kind === 'fork' ? 'Fork' : 'Delete'}
        </button>
      </div>
    </div>
  );
}
