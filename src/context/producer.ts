import { createHash } from 'node:crypto';
import { InvalidArgumentError, ProducerFencedError, ProducerSequenceGapError } from './errors.ts';

/**
 * Idempotent producers, after Kafka's KIP-98 and the Durable Streams protocol: a writer names
 * itself (`id`), declares an `epoch` that it bumps on every restart, and numbers its batches
 * (`sequence`, from 0 in each epoch). The store keeps, per session and producer, the latest epoch
 * and sequence, plus every accepted batch's offsets and digest, all in the same transaction as the
 * entries; so a retry after a crash or a lost response returns the original offsets instead of
 * writing twice, and a zombie with an older epoch is turned away.
 */
export interface ProducerStamp {
  id: string;
  epoch: number;
  sequence: number;
}

export interface ProducerState {
  epoch: number;
  lastSequence: number;
}

export type ProducerDecision = { action: 'append' } | { action: 'duplicate' };

const maximumCounter = Number.MAX_SAFE_INTEGER;

export function assertProducerStamp(producer: ProducerStamp): void {
  if (typeof producer.id !== 'string' || producer.id.length === 0 || producer.id.length > 256) {
    throw new InvalidArgumentError('producer id must be a non-empty string of at most 256 characters', { producer });
  }
  for (const field of ['epoch', 'sequence'] as const) {
    const value = producer[field];
    if (!Number.isSafeInteger(value) || value < 0 || value > maximumCounter) {
      throw new InvalidArgumentError(`producer ${field} must be an integer from 0 to 2^53-1, got ${JSON.stringify(value)}`, { producer });
    }
  }
}

/**
 * Decides what to do with a stamped batch given the producer's stored state (undefined for a
 * producer never seen on this session). Pure, so both backends share the exact same rules.
 */
export function decideProducer(stamp: ProducerStamp, state: ProducerState | undefined): ProducerDecision {
  if (state === undefined || stamp.epoch > state.epoch) {
    // A new producer or a new epoch starts a fresh sequence; anything else means lost batches.
    if (stamp.sequence !== 0) throw new ProducerSequenceGapError(stamp.id, stamp.epoch, 0, stamp.sequence);
    return { action: 'append' };
  }
  if (stamp.epoch < state.epoch) throw new ProducerFencedError(stamp.id, stamp.epoch, state.epoch);
  if (stamp.sequence <= state.lastSequence) return { action: 'duplicate' };
  if (stamp.sequence === state.lastSequence + 1) return { action: 'append' };
  throw new ProducerSequenceGapError(stamp.id, stamp.epoch, state.lastSequence + 1, stamp.sequence);
}

/** Digest of a batch's serialized entries, so a retry can be told apart from a reused sequence. */
export function batchDigest(serializedEntries: readonly string[]): string {
  const hash = createHash('sha256');
  for (const text of serializedEntries) {
    hash.update(String(text.length));
    hash.update(':');
    hash.update(text);
  }
  return hash.digest('hex');
}
