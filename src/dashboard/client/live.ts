import { useEffect, useRef, useState } from 'preact/hooks';
import type { SessionView } from './shapes.ts';

type Listener = (session: SessionView) => void;
const listeners = new Set<Listener>();
let source: EventSource | undefined;
let connected = false;
const connectionListeners = new Set<(connected: boolean) => void>();

/**
 * One EventSource for the whole page (the server's /ui/api/events SSE): every session change is
 * handed to whoever listens. EventSource reconnects by itself; pages refetch on reconnect.
 */
function ensureSource(): void {
  if (source) return;
  source = new EventSource('/ui/api/events');
  source.addEventListener('session', (event) => {
    const session = JSON.parse((event as MessageEvent<string>).data) as SessionView;
    for (const listener of listeners) listener(session);
  });
  source.addEventListener('ready', () => setConnected(true));
  source.addEventListener('error', () => {
    setConnected(false);
    // A 401 closes the stream for good: the sign-in expired.
    if (source?.readyState === EventSource.CLOSED)
      void fetch('/ui/api/sessions').then((response) => response.status === 401 && window.location.assign('/login'));
  });
}

function setConnected(value: boolean): void {
  connected = value;
  for (const listener of connectionListeners) listener(value);
}

export function useSessionEvents(listener: Listener): void {
  const current = useRef(listener);
  current.current = listener;
  useEffect(() => {
    ensureSource();
    const forward: Listener = (session) => current.current(session);
    listeners.add(forward);
    return () => void listeners.delete(forward);
  }, []);
}

/** Whether the live stream is up (shown in the header), and a counter that changes on each reconnect. */
export function useLiveConnection(): { connected: boolean; generation: number } {
  const [state, setState] = useState({ connected, generation: 0 });
  useEffect(() => {
    ensureSource();
    const update = (value: boolean) =>
      setState((previous) => ({ connected: value, generation: value && !previous.connected ? previous.generation + 1 : previous.generation }));
    connectionListeners.add(update);
    return () => void connectionListeners.delete(update);
  }, []);
  return state;
}

/** Re-renders every `ms` so idle times and "ago" columns move. */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(timer);
  }, [ms]);
  return now;
}
