import { Agent, fetch as undiciFetch, type RequestInit, type Response } from 'undici';
import { TorporError } from '../util/errors.ts';

// The CLI's requests to `torpor serve`. Node's global fetch gives up on a response whose headers take
// more than 300 s (undici's default headersTimeout) and says only "fetch failed": a session create
// that boots its machine in a slow nested guest took longer, and the CLI reported an unreachable
// server while the server went on creating it. A CLI call waits as long as the server works on it
// (Ctrl-C ends it); a reply stream may pause for as long as the agent thinks.
let dispatcher: Agent | undefined;

export async function fetchFromServer(base: string, path: string, init: RequestInit): Promise<Response> {
  dispatcher ??= new Agent({ headersTimeout: 0, bodyTimeout: 0 });
  try {
    return await undiciFetch(`${base}${path}`, { ...init, dispatcher });
  } catch (error) {
    // undici's own message is "fetch failed"; what failed is in its cause (ECONNREFUSED, a reset...).
    const cause = (error as Error & { cause?: Error & { code?: string } }).cause;
    const detail = cause ? `${cause.code ?? cause.name}: ${cause.message}` : (error as Error).message;
    throw new TorporError('no-server', `cannot reach the torpor server at ${base}: ${detail}`, { hint: 'is `torpor serve` running?' });
  }
}
