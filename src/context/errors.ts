import { TorporError } from '../util/errors.ts';

export { TorporError, type TorporErrorOptions } from '../util/errors.ts';

/**
 * Typed errors of the context log, members of the one `TorporError` family. Every error carries a
 * stable `code` (for programs), an HTTP `status` and a message that says what to do next, because
 * these reach people through the CLI and the HTTP API unchanged. The subclasses exist so that
 * programs can `instanceof` them (`torpor/context` exports them).
 */
export class ContextLogError extends TorporError {
  constructor(code: string, status: number, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown; hint?: string }) {
    super(code, message, { status, details, exitCode: 1, cause: options?.cause, hint: options?.hint });
  }
}

export interface EntryIssue {
  /** Index of the entry in the submitted batch. */
  index: number;
  /** Path inside the entry, e.g. `content.0.text`. */
  path: string;
  message: string;
}

export class InvalidEntryError extends ContextLogError {
  readonly issues: EntryIssue[];
  constructor(issues: EntryIssue[]) {
    const first = issues[0];
    const where = first ? `entry ${first.index}${first.path ? ` at ${first.path}` : ''}: ${first.message}` : 'no details';
    super('invalid-entry', 400, `Invalid entry (${where}); nothing was written. Fix the entry and append the whole batch again.`, { issues });
    this.issues = issues;
  }
}

export class InvalidArgumentError extends ContextLogError {
  constructor(message: string, details: Record<string, unknown> = {}) {
    super('invalid-argument', 400, message, details);
  }
}

export class InvalidSessionIdError extends ContextLogError {
  constructor(sessionId: unknown) {
    super(
      'invalid-session-id',
      400,
      `Invalid session id ${JSON.stringify(sessionId)}: use 1-128 characters from A-Z a-z 0-9 . _ : - starting with a letter or digit.`,
      { sessionId },
    );
  }
}

export class EntryTooLargeError extends ContextLogError {
  constructor(index: number, size: number, limit: number, hint: string) {
    super('entry-too-large', 413, `Entry ${index} is ${size} bytes, over the limit of ${limit} bytes; nothing was written. ${hint}`, {
      index,
      size,
      limit,
    });
  }
}

export class UnknownSessionError extends ContextLogError {
  constructor(sessionId: string) {
    super('session-unknown', 404, `Unknown session "${sessionId}". List sessions with \`torpor log ls\`; a session is created by its first append.`, {
      sessionId,
    });
  }
}

export class SessionExistsError extends ContextLogError {
  constructor(sessionId: string) {
    super('session-exists', 409, `Session "${sessionId}" already exists; choose another name.`, { sessionId });
  }
}

export class OffsetBeyondEndError extends ContextLogError {
  constructor(sessionId: string, offset: number, endOffset: number) {
    super(
      'offset-beyond-end',
      416,
      `Offset ${offset} is beyond the end of session "${sessionId}", whose next offset is ${endOffset}; use an offset from 0 to ${endOffset}.`,
      { sessionId, offset, endOffset },
    );
  }
}

/** Optimistic concurrency failed: someone else appended first. */
export class OffsetConflictError extends ContextLogError {
  constructor(sessionId: string, expectedOffset: number, endOffset: number) {
    super(
      'offset-conflict',
      412,
      `Session "${sessionId}" is at offset ${endOffset}, not the expected ${expectedOffset}: another writer appended first. Read from ${expectedOffset}, then retry with expectedOffset ${endOffset}.`,
      { sessionId, expectedOffset, endOffset },
    );
  }
}

/** A newer epoch of this producer exists: this writer is a zombie and must stop. */
export class ProducerFencedError extends ContextLogError {
  constructor(producerId: string, epoch: number, currentEpoch: number) {
    super(
      'producer-fenced',
      403,
      `Producer "${producerId}" epoch ${epoch} is fenced: epoch ${currentEpoch} has taken over. Stop this writer, or restart it with epoch ${currentEpoch + 1} and sequence 0.`,
      { producerId, epoch, currentEpoch },
    );
  }
}

export class ProducerSequenceGapError extends ContextLogError {
  constructor(producerId: string, epoch: number, expectedSequence: number, receivedSequence: number) {
    super(
      'producer-sequence-gap',
      409,
      `Producer "${producerId}" epoch ${epoch} sent sequence ${receivedSequence} but ${expectedSequence} was expected; send the missing batches first (sequences start at 0 in each epoch).`,
      { producerId, epoch, expectedSequence, receivedSequence },
    );
  }
}

/** A retry reused a (producer, epoch, sequence) for different entries: a client bug, never deduplicate it. */
export class ProducerSequenceReusedError extends ContextLogError {
  constructor(producerId: string, epoch: number, sequence: number) {
    super(
      'producer-sequence-reused',
      409,
      `Producer "${producerId}" epoch ${epoch} sequence ${sequence} was already used for different entries; a retry must resend the same batch, new entries need the next sequence.`,
      { producerId, epoch, sequence },
    );
  }
}

export class DatabaseLockedError extends ContextLogError {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(
      'database-locked',
      503,
      `The context log database is locked by another writer (${detail}); retry shortly, or stop the process that holds the lock.`,
      {},
      options,
    );
  }
}

export class StorageReadOnlyError extends ContextLogError {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(
      'storage-read-only',
      503,
      `The context log storage is read-only (${detail}); nothing was written. Check file permissions, disk space or the database role.`,
      {},
      options,
    );
  }
}

export class StorageUnavailableError extends ContextLogError {
  constructor(detail: string, options?: { cause?: unknown }) {
    super(
      'storage-unavailable',
      503,
      `The context log storage is unavailable (${detail}); check that the database exists and is reachable, then retry.`,
      {},
      options,
    );
  }
}

/** The writer's lease on the session was taken over by another node (a higher epoch): nothing was written. */
export class LeaseLostError extends ContextLogError {
  constructor(sessionId: string, holder: string, epoch: number, current: { holder: string | null; epoch: number } | undefined) {
    super(
      'lease-lost',
      409,
      current
        ? `${holder} no longer holds session ${sessionId} (epoch ${epoch}): ${current.holder ?? 'no node'} holds it at epoch ${current.epoch}; nothing was written`
        : `session ${sessionId} has no lease record; nothing was written`,
      { sessionId, holder, epoch, currentHolder: current?.holder ?? null, currentEpoch: current?.epoch ?? null },
      { hint: 'this node was paused or cut off and another node took the session over: send the request again, any node routes it to the holder' },
    );
  }
}
