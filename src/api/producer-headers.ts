import type { Context } from 'hono';
import { headers } from './headers.ts';

/**
 * The idempotent-producer headers of an append, as both the log and the Durable Streams routes take
 * them (same names): none, or all three with a non-empty id. The numbers stay text, because each
 * protocol has its own integer rule, and each its own error (`invalid`).
 */
export function producerHeaderValues(context: Context, invalid: (message: string) => Error): { id: string; epoch: string; sequence: string } | undefined {
  const id = context.req.header(headers.producerId);
  const epoch = context.req.header(headers.producerEpoch);
  const sequence = context.req.header(headers.producerSequence);
  const given = [id, epoch, sequence].filter((value) => value !== undefined).length;
  if (given === 0) return undefined;
  if (given !== 3) throw invalid(`send all three of ${headers.producerId}, ${headers.producerEpoch} and ${headers.producerSequence}, or none`);
  if (!id) throw invalid(`${headers.producerId} must not be empty`);
  return { id, epoch: epoch!, sequence: sequence! };
}
