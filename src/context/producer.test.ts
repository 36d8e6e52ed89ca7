import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProducerFencedError, ProducerSequenceGapError } from './errors.ts';
import { batchDigest, decideProducer } from './producer.ts';
import { chainSegments } from './storage.ts';

describe('producer decisions', () => {
  const stamp = (epoch: number, sequence: number) => ({ id: 'p', epoch, sequence });
  it('starts each epoch at sequence 0', () => {
    assert.deepEqual(decideProducer(stamp(0, 0), undefined), { action: 'append' });
    assert.deepEqual(decideProducer(stamp(7, 0), undefined), { action: 'append' });
    assert.throws(() => decideProducer(stamp(0, 1), undefined), ProducerSequenceGapError);
    assert.deepEqual(decideProducer(stamp(2, 0), { epoch: 1, lastSequence: 9 }), { action: 'append' });
    assert.throws(() => decideProducer(stamp(2, 1), { epoch: 1, lastSequence: 9 }), ProducerSequenceGapError);
  });
  it('accepts the next sequence, deduplicates old ones, rejects gaps and fences old epochs', () => {
    const state = { epoch: 1, lastSequence: 4 };
    assert.deepEqual(decideProducer(stamp(1, 5), state), { action: 'append' });
    assert.deepEqual(decideProducer(stamp(1, 4), state), { action: 'duplicate' });
    assert.deepEqual(decideProducer(stamp(1, 0), state), { action: 'duplicate' });
    assert.throws(() => decideProducer(stamp(1, 6), state), ProducerSequenceGapError);
    assert.throws(() => decideProducer(stamp(0, 5), state), ProducerFencedError);
  });
  it('digests batches unambiguously', () => {
    assert.notEqual(batchDigest(['ab', 'c']), batchDigest(['a', 'bc']));
    assert.equal(batchDigest(['x']), batchDigest(['x']));
  });
});

describe('fork chain segments', () => {
  it("splits reads over ancestors, honouring forks below a parent's own fork point", () => {
    const chain = [
      { key: 'root', forkOffset: null },
      { key: 'child', forkOffset: 10 },
      { key: 'grandchild', forkOffset: 5 },
    ];
    assert.deepEqual(chainSegments(chain, 0, 100), [
      { key: 'root', from: 0, to: 5 },
      { key: 'grandchild', from: 5, to: 100 },
    ]);
    assert.deepEqual(chainSegments(chain.slice(0, 2), 8, 12), [
      { key: 'root', from: 8, to: 10 },
      { key: 'child', from: 10, to: 12 },
    ]);
  });
});
