/**
 * Rate limits, the torpor way: instead of holding a machine (and its memory) while waiting out a
 * 429, the agent asks to sleep until the provider's Retry-After. The host snapshots and stops the
 * machine, restores it at that time and sends `wake`; then the call is retried.
 */

export interface RateLimitInfo {
  /** When to try again. */
  until: Date;
  /** The provider's own words, for the log. */
  message: string;
  statusCode: number;
}

interface ApiCallErrorLike {
  statusCode?: unknown;
  responseHeaders?: unknown;
  message?: unknown;
  lastError?: unknown;
  errors?: unknown;
  cause?: unknown;
}

/**
 * Finds an HTTP 429 in an error: the AI SDK's `APICallError`, also when wrapped in its `RetryError`
 * (after its own retries) or as a `cause`. Checked by shape, not `instanceof`, so that it works
 * whichever copy of `ai` the agent bundles.
 */
export function findRateLimitError(error: unknown, depth = 0): ApiCallErrorLike | undefined {
  if (!error || typeof error !== 'object' || depth > 5) return undefined;
  const candidate = error as ApiCallErrorLike;
  if (candidate.statusCode === 429) return candidate;
  if (candidate.lastError !== undefined) {
    const found = findRateLimitError(candidate.lastError, depth + 1);
    if (found) return found;
  }
  if (candidate.cause !== undefined) return findRateLimitError(candidate.cause, depth + 1);
  return undefined;
}

function header(headers: unknown, name: string): string | undefined {
  if (!headers || typeof headers !== 'object') return undefined;
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  for (const [key, value] of Object.entries(headers as Record<string, unknown>)) {
    if (key.toLowerCase() === name && typeof value === 'string') return value;
  }
  return undefined;
}

/**
 * How long a 429 asks us to wait, in ms: `retry-after-ms` (OpenAI), else `Retry-After` as seconds or
 * as an HTTP date (RFC 9110). Undefined when the response says nothing usable.
 */
export function retryAfterMs(headers: unknown, now = Date.now()): number | undefined {
  const milliseconds = header(headers, 'retry-after-ms');
  if (milliseconds && /^\s*\d+(\.\d+)?\s*$/.test(milliseconds)) return Math.max(0, Number(milliseconds));
  const value = header(headers, 'retry-after')?.trim();
  if (!value) return undefined;
  if (/^\d+(\.\d+)?$/.test(value)) return Number(value) * 1000;
  const date = Date.parse(value);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

export interface RateLimitSleepOptions {
  /** Give up (rethrow the 429) after this many sleeps. */
  maxSleeps?: number;
  /** Wait when the 429 carries no Retry-After; doubled on each further 429. */
  defaultDelayMs?: number;
  /** Never sleep longer than this at once. */
  maxDelayMs?: number;
  /** Logged with the sleep, so the log says which turn paused. */
  turnId?: string;
  /** Called before each sleep (for a log line, say). */
  onRateLimit?: (info: RateLimitInfo) => void;
}

export type SleepUntil = (until: Date, options: { reason: string; turnId?: string }) => Promise<unknown>;

/** The retry loop behind `agent.withRateLimitSleep`, with the sleep passed in. */
export async function retryWithRateLimitSleep<T>(fn: () => Promise<T>, sleepUntil: SleepUntil, options: RateLimitSleepOptions = {}): Promise<T> {
  const maxSleeps = options.maxSleeps ?? 5;
  const maxDelayMs = options.maxDelayMs ?? 24 * 60 * 60 * 1000;
  let fallbackDelayMs = options.defaultDelayMs ?? 10_000;
  for (let sleeps = 0; ; sleeps++) {
    try {
      return await fn();
    } catch (error) {
      const rateLimit = findRateLimitError(error);
      if (!rateLimit || sleeps >= maxSleeps) throw error;
      const asked = retryAfterMs(rateLimit.responseHeaders);
      const delay = Math.min(maxDelayMs, asked ?? fallbackDelayMs);
      if (asked === undefined) fallbackDelayMs *= 2;
      const info: RateLimitInfo = {
        until: new Date(Date.now() + delay),
        message: typeof rateLimit.message === 'string' ? rateLimit.message : 'rate limited',
        statusCode: 429,
      };
      options.onRateLimit?.(info);
      await sleepUntil(info.until, { reason: `rate limited (HTTP 429): ${info.message}`, turnId: options.turnId });
    }
  }
}
