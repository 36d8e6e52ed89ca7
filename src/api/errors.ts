import type { Context } from 'hono';
import { OffsetConflictError, ProducerFencedError, ProducerSequenceGapError } from '../context/index.ts';
import { TorporError } from '../util/errors.ts';
import { headers } from './headers.ts';

/**
 * The API's one error handler (Hono `onError`): every route throws, nothing answers errors by hand.
 * A TorporError brings its own code, message, hint and status; anything else is a bug (500).
 */
export function answerError(error: Error, context: Context): Response {
  if (error instanceof TorporError) {
    // The log protocol also states some facts of its errors in headers (as Durable Streams does).
    if (error instanceof ProducerFencedError) context.header(headers.producerEpoch, String(error.details.currentEpoch));
    if (error instanceof ProducerSequenceGapError) {
      context.header(headers.producerExpectedSequence, String(error.details.expectedSequence));
      context.header(headers.producerReceivedSequence, String(error.details.receivedSequence));
    }
    if (error instanceof OffsetConflictError) context.header(headers.nextOffset, String(error.details.endOffset));
    return context.json(error.toJSON(), error.status as 400);
  }
  return context.json(new TorporError('internal', `internal error: ${error.message}`).toJSON(), 500);
}

/** The answer for a path no route serves. */
export function answerNotFound(context: Context): Response {
  return context.json(new TorporError('not-found', `no route for ${context.req.method} ${context.req.path}`).toJSON(), 404);
}
