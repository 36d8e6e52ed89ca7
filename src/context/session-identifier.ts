import { randomBytes } from 'node:crypto';
import { InvalidSessionIdError } from './errors.ts';

/**
 * Session ids appear in URLs, file names and `SESSION@OFFSET` on the command line, so `/` and `@`
 * are excluded and the length is bounded.
 */
const sessionIdPattern = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export function assertSessionId(sessionId: unknown): asserts sessionId is string {
  if (typeof sessionId !== 'string' || !sessionIdPattern.test(sessionId)) throw new InvalidSessionIdError(sessionId);
}

export function isSessionId(sessionId: unknown): sessionId is string {
  return typeof sessionId === 'string' && sessionIdPattern.test(sessionId);
}

/** Default name of a fork: the parent's name, where it forked, and a random suffix against collisions. */
export function forkSessionId(parentId: string, atOffset: number): string {
  const suffix = `-fork-${atOffset}-${randomBytes(4).toString('hex')}`;
  return parentId.slice(0, 128 - suffix.length) + suffix;
}
