/**
 * Errors of the torpor client. Every failure the server reports arrives as a `TorporApiError`
 * subclass chosen by HTTP status, carrying the server's own `code` (e.g. "session-unknown"), its
 * `status` and its `hint` (what to do), so apps can branch on `instanceof` or on `code`.
 */
export class TorporClientError extends Error {
  override readonly name: string = 'TorporClientError';
  readonly code: string;
  readonly hint?: string;

  constructor(code: string, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
  }
}

/** The server could not be reached (refused, reset, DNS): nothing was answered. */
export class TorporConnectionError extends TorporClientError {
  override readonly name: string = 'TorporConnectionError';
}

/** The server answered with an error status. */
export class TorporApiError extends TorporClientError {
  override readonly name: string = 'TorporApiError';
  readonly status: number;
  /** Fields of the server's error object beyond code, message and hint. */
  readonly details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, options: { hint?: string; details?: Record<string, unknown> } = {}) {
    super(code, message, { hint: options.hint });
    this.status = status;
    this.details = options.details ?? {};
  }
}

/** 400 / 413 / 422: the request was wrong; the message says what to change. */
export class InvalidRequestError extends TorporApiError {
  override readonly name: string = 'InvalidRequestError';
}
/** 401 / 403: no token, a wrong one, or one without the right. */
export class AuthenticationError extends TorporApiError {
  override readonly name: string = 'AuthenticationError';
}
/** 404: no such session, log, machine or stream. */
export class NotFoundError extends TorporApiError {
  override readonly name: string = 'NotFoundError';
}
/** 409: the thing exists already, or its state forbids the operation. */
export class ConflictError extends TorporApiError {
  override readonly name: string = 'ConflictError';
}
/** 5xx: the server or the agent behind it failed. */
export class ServerError extends TorporApiError {
  override readonly name: string = 'ServerError';
}

function classFor(status: number): new (...parameters: ConstructorParameters<typeof TorporApiError>) => TorporApiError {
  if (status === 401 || status === 403) return AuthenticationError;
  if (status === 404) return NotFoundError;
  if (status === 409) return ConflictError;
  if (status >= 500) return ServerError;
  if (status >= 400) return InvalidRequestError;
  return TorporApiError;
}

/** Turns an error response into the matching error class; tolerates bodies that are not JSON. */
export async function errorFromResponse(response: Response, what: string): Promise<TorporApiError> {
  const text = await response.text().catch(() => '');
  let error: Record<string, unknown> | undefined;
  try {
    const body = JSON.parse(text) as { error?: unknown };
    if (body && typeof body.error === 'object' && body.error !== null) error = body.error as Record<string, unknown>;
  } catch {
    // not JSON (a proxy's HTML page, an empty body): fall back to the status line
  }
  const { code, message, hint, ...details } = error ?? {};
  const Class = classFor(response.status);
  return new Class(
    response.status,
    typeof code === 'string' ? code : `http-${response.status}`,
    typeof message === 'string' ? message : `${what} failed: HTTP ${response.status}${text && !error ? ` ${text.slice(0, 200)}` : ''}`,
    { hint: typeof hint === 'string' ? hint : undefined, details },
  );
}
