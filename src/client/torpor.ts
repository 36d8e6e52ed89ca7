import { Machines } from './machines.ts';
import { Sessions } from './sessions.ts';
import { Transport, type TorporOptions } from './transport.ts';

/**
 * The torpor client: `new Torpor()` talks to TORPOR_URL with TORPOR_TOKEN, or pass
 * `{ baseUrl, token }`. Resources hang off it: `torpor.sessions.create(...)`.
 */
export class Torpor {
  readonly sessions: Sessions;
  readonly machines: Machines;
  /** The transport, for calls this client has no method for yet. */
  readonly transport: Transport;

  constructor(options: TorporOptions = {}) {
    this.transport = new Transport(options);
    this.sessions = new Sessions(this.transport);
    this.machines = new Machines(this.transport);
  }

  get baseUrl(): string {
    return this.transport.baseUrl;
  }

  /** The server's health: `{ ok: true, storage: "sqlite" | "postgres" }`. */
  health(): Promise<{ ok: boolean; storage: string }> {
    return this.transport.json('GET', '/health', undefined, "checking the server's health");
  }
}
