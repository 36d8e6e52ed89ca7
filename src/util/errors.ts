/**
 * An error a user can act on: `message` says what went wrong, `hint` says what to do about it.
 * The CLI prints both and exits with `exitCode`; the HTTP API maps `code` to a status.
 */
export class TorporError extends Error {
  readonly code: string;
  readonly hint?: string;
  readonly exitCode: number;

  constructor(code: string, message: string, options: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TorporError';
    this.code = code;
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? 125;
  }
}

export function isNodeError(error: unknown, code?: string): error is NodeJS.ErrnoException {
  return error instanceof Error && 'code' in error && (code === undefined || (error as NodeJS.ErrnoException).code === code);
}
