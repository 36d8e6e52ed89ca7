/** The dashboard's calls to its server. The credential is the HttpOnly cookie: no script holds the token. */

export class RequestError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly hint?: string,
  ) {
    super(message);
  }
}

/** Signed out (expired cookie, rotated token): back to the login page. */
function signedOut(): never {
  window.location.assign('/login');
  throw new RequestError('signed out', 401);
}

async function failure(response: Response): Promise<RequestError> {
  if (response.status === 401) signedOut();
  const body = (await response.json().catch(() => undefined)) as { error?: { message?: string; hint?: string } } | undefined;
  return new RequestError(body?.error?.message ?? `${response.status} ${response.statusText}`, response.status, body?.error?.hint);
}

export async function getJson<T>(path: string): Promise<T> {
  const response = await fetch(path, { headers: { accept: 'application/json' } });
  if (!response.ok) throw await failure(response);
  return (await response.json()) as T;
}

export async function postJson<T>(path: string, body: unknown, method = 'POST'): Promise<T | undefined> {
  const response = await fetch(path, {
    method,
    headers: { 'content-type': 'application/json', accept: 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? undefined : ((await response.json()) as T);
}

export async function deleteResource(path: string): Promise<void> {
  const response = await fetch(path, { method: 'DELETE' });
  if (!response.ok) throw await failure(response);
}

export async function signOut(): Promise<void> {
  await fetch('/ui/logout', { method: 'POST' }).catch(() => undefined);
  window.location.assign('/login');
}

export interface StreamedEvent {
  event: string;
  data: unknown;
}

/**
 * A POST whose answer is an SSE stream (sending a message): EventSource only does GET, so the
 * stream is read from fetch and split into events here.
 */
export async function postEventStream(path: string, body: unknown, onEvent: (event: StreamedEvent) => void, signal?: AbortSignal): Promise<void> {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok || !response.body) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, '\n');
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length === 0) continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(data.join('\n'));
      } catch {
        parsed = data.join('\n');
      }
      onEvent({ event, data: parsed });
    }
  }
}
