export interface TorporErrorOptions {
  /** What to do about it, in one line; the CLI prints it after the message, the API sends it along. */
  hint?: string;
  /** The HTTP status the API answers with (default 500: an error nobody classified is the server's). */
  status?: number;
  /** The CLI's exit status (default 125, like docker and podman for their own errors). */
  exitCode?: number;
  /** Machine-readable facts (offsets, ids, limits) that the API puts next to code and message. */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/**
 * The one error family of torpor: an error a user can act on. `code` is stable for programs
 * (kebab-case, e.g. `name-in-use`), `message` says what went wrong, `hint` says what to do about
 * it, `status` is the HTTP status, so that the API maps errors in one place (its `onError`) without
 * a lookup table that can drift. The CLI prints message and hint and exits with `exitCode`.
 */
export class TorporError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly status: number;
  readonly exitCode: number;
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, options: TorporErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.hint = options.hint;
    this.status = options.status ?? 500;
    this.exitCode = options.exitCode ?? 125;
    this.details = options.details ?? {};
  }

  /** The body of an HTTP error answer: `{"error": {"code", "message", "hint"?, ...details}}`. */
  toJSON(): { error: Record<string, unknown> } {
    return { error: { code: this.code, message: this.message, ...(this.hint === undefined ? {} : { hint: this.hint }), ...this.details } };
  }
}

export function isNodeError(error: unknown, code?: string): error is NodeJS.ErrnoException {
  return error instanceof Error && 'code' in error && (code === undefined || (error as NodeJS.ErrnoException).code === code);
}
