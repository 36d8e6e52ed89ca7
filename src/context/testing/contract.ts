import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { ContextLog, ContextLogOptions } from '../context-log.ts';
import {
  EntryTooLargeError,
  InvalidArgumentError,
  InvalidEntryError,
  InvalidSessionIdError,
  OffsetBeyondEndError,
  OffsetConflictError,
  ProducerFencedError,
  ProducerSequenceGapError,
  ProducerSequenceReusedError,
  SessionExistsError,
  UnknownSessionError,
} from '../errors.ts';
import type { Entry, StoredEntry } from '../entry.ts';
import { entriesToModelMessages } from '../model-messages.ts';

/**
 * The behaviour every backend must have, run against each real backend (never a mock): the
 * SQLite file and a PostgreSQL server. A backend passes only if it is indistinguishable here.
 */
export interface ContractStore {
  /** Another ContextLog over the same storage, with its own connection, as a second process would have. */
  open(options?: ContextLogOptions): Promise<ContextLog>;
  /** Rows physically stored in the entries table, to prove that forks share rather than copy. */
  rowCount(): Promise<number>;
  cleanup(): Promise<void>;
}

export interface ContractBackend {
  name: string;
  /** A new, empty store. */
  createStore(): Promise<ContractStore>;
}

export const user = (text: string): Entry => ({ kind: 'message', role: 'user', content: text });
export const assistant = (text: string): Entry => ({ kind: 'message', role: 'assistant', content: text });

function texts(entries: StoredEntry[]): unknown[] {
  return entries.map((stored) => ('content' in stored.entry ? stored.entry.content : stored.entry.kind));
}

export function describeContextLogContract(backend: ContractBackend): void {
  describe(`context log contract: ${backend.name}`, () => {
    const stores: ContractStore[] = [];
    const logs: ContextLog[] = [];
    async function fresh(options?: ContextLogOptions): Promise<{ store: ContractStore; log: ContextLog }> {
      const store = await backend.createStore();
      stores.push(store);
      const log = await store.open(options);
      logs.push(log);
      return { store, log };
    }
    async function another(store: ContractStore, options?: ContextLogOptions): Promise<ContextLog> {
      const log = await store.open(options);
      logs.push(log);
      return log;
    }
    after(async () => {
      for (const log of logs) await log.close();
      for (const store of stores) await store.cleanup();
    });

    it('appends a batch and reads it back in order with offsets', async () => {
      const { log } = await fresh();
      const first = await log.append('s1', [{ kind: 'message', role: 'system', content: 'be brief' }, user('hi')]);
      assert.deepEqual(first.offsets, [0, 1]);
      assert.equal(first.nextOffset, 2);
      assert.equal(first.duplicate, false);
      const second = await log.append('s1', [assistant('hello'), { kind: 'usage', inputTokens: 10, outputTokens: 2, model: 'm' }]);
      assert.deepEqual(second.offsets, [2, 3]);
      const read = await log.read('s1');
      assert.deepEqual(
        read.entries.map((entry) => entry.offset),
        [0, 1, 2, 3],
      );
      assert.deepEqual(texts(read.entries), ['be brief', 'hi', 'hello', 'usage']);
      assert.equal(read.endOffset, 4);
      assert.equal(read.nextOffset, 4);
      assert.ok(!Number.isNaN(Date.parse(read.entries[0].appendedAt)));
      assert.deepEqual(read.entries[3].entry, { kind: 'usage', inputTokens: 10, outputTokens: 2, model: 'm' });
    });

    it('pages with from, to and limit', async () => {
      const { log } = await fresh();
      await log.append(
        'paged',
        Array.from({ length: 10 }, (_, index) => user(`m${index}`)),
      );
      const page = await log.read('paged', { from: 3, limit: 4 });
      assert.deepEqual(texts(page.entries), ['m3', 'm4', 'm5', 'm6']);
      assert.equal(page.nextOffset, 7);
      const range = await log.read('paged', { from: 2, to: 5 });
      assert.deepEqual(texts(range.entries), ['m2', 'm3', 'm4']);
      const atEnd = await log.read('paged', { from: 10 });
      assert.deepEqual(atEnd.entries, []);
      assert.equal(atEnd.nextOffset, 10);
    });

    it('rejects unknown sessions, offsets beyond the end and bad ids with typed errors', async () => {
      const { log } = await fresh();
      await assert.rejects(log.read('nobody'), UnknownSessionError);
      await assert.rejects(log.describe('nobody'), UnknownSessionError);
      await log.append('short', [user('a')]);
      await assert.rejects(log.read('short', { from: 5 }), (error: unknown) => error instanceof OffsetBeyondEndError && error.details.endOffset === 1);
      await assert.rejects(log.read('short', { from: -1 }), InvalidArgumentError);
      await assert.rejects(log.append('bad/id', [user('a')]), InvalidSessionIdError);
      await assert.rejects(log.append('', [user('a')]), InvalidSessionIdError);
    });

    it('writes nothing when any entry of a batch is malformed', async () => {
      const { log } = await fresh();
      await log.append('atomic', [user('kept')]);
      const bad = [user('would be 1'), { kind: 'message', role: 'user' }, { kind: 'nonsense' }];
      await assert.rejects(log.append('atomic', bad), (error: unknown) => {
        assert.ok(error instanceof InvalidEntryError);
        assert.deepEqual(
          error.issues.map((issue) => issue.index),
          [1, 2],
        );
        return true;
      });
      await assert.rejects(log.append('atomic', []), InvalidEntryError);
      await assert.rejects(log.append('never-created', [{ kind: 'tool-call', toolCallId: 'c', input: {} }]), InvalidEntryError);
      assert.equal((await log.describe('atomic')).nextOffset, 1);
      await assert.rejects(log.describe('never-created'), UnknownSessionError);
    });

    it('enforces expectedOffset and reports the actual end on conflict', async () => {
      const { log } = await fresh();
      assert.deepEqual((await log.append('occ', [user('a')], { expectedOffset: 0 })).offsets, [0]);
      assert.deepEqual((await log.append('occ', [user('b')], { expectedOffset: 1 })).offsets, [1]);
      await assert.rejects(log.append('occ', [user('c')], { expectedOffset: 1 }), (error: unknown) => {
        assert.ok(error instanceof OffsetConflictError);
        assert.equal(error.details.endOffset, 2);
        return true;
      });
      assert.equal((await log.describe('occ')).nextOffset, 2);
    });

    it('lets exactly one of two concurrent writers with the same expectedOffset win', async () => {
      const { store, log } = await fresh();
      const other = await another(store);
      await log.append('race', [user('start')]);
      for (let round = 0; round < 5; round++) {
        const end = (await log.describe('race')).nextOffset;
        const results = await Promise.allSettled([
          log.append('race', [user(`a${round}`)], { expectedOffset: end }),
          other.append('race', [user(`b${round}`)], { expectedOffset: end }),
        ]);
        const won = results.filter((result) => result.status === 'fulfilled');
        const lost = results.filter((result) => result.status === 'rejected');
        assert.equal(won.length, 1);
        assert.ok((lost[0] as PromiseRejectedResult).reason instanceof OffsetConflictError);
      }
      assert.equal((await log.describe('race')).nextOffset, 6);
    });

    it('gives concurrent appends from two connections distinct, contiguous offsets', async () => {
      const { store, log } = await fresh();
      const other = await another(store);
      const writes = Array.from({ length: 20 }, (_, index) => (index % 2 === 0 ? log : other).append('many', [user(`x${index}`), user(`y${index}`)]));
      const results = await Promise.all(writes);
      const offsets = results.flatMap((result) => result.offsets).sort((left, right) => left - right);
      assert.deepEqual(
        offsets,
        Array.from({ length: 40 }, (_, index) => index),
      );
      for (const result of results) assert.equal(result.offsets[1], result.offsets[0] + 1);
    });

    it('deduplicates producer retries and returns the original offsets', async () => {
      const { store, log } = await fresh();
      const producer = (epoch: number, sequence: number) => ({ producer: { id: 'agent-1', epoch, sequence } });
      const a = await log.append('idem', [user('a0'), user('a1')], producer(0, 0));
      assert.deepEqual(a.offsets, [0, 1]);
      await log.append('idem', [user('other writer')]);
      const b = await log.append('idem', [user('b')], producer(0, 1));
      assert.deepEqual(b.offsets, [3]);
      const retryA = await log.append('idem', [user('a0'), user('a1')], producer(0, 0));
      assert.deepEqual(retryA.offsets, [0, 1]);
      assert.equal(retryA.duplicate, true);
      // A retry whose stale expectedOffset would now conflict must still be recognised as a retry.
      const retryB = await log.append('idem', [user('b')], { ...producer(0, 1), expectedOffset: 2 });
      assert.deepEqual(retryB.offsets, [3]);
      assert.equal(retryB.duplicate, true);
      assert.equal((await log.describe('idem')).nextOffset, 4);
      // The dedup state is in the database, not in memory: a new connection (a restarted server) sees it.
      const restarted = await another(store);
      assert.equal((await restarted.append('idem', [user('b')], producer(0, 1))).duplicate, true);
      assert.equal((await restarted.describe('idem')).nextOffset, 4);
    });

    it('fences stale epochs, rejects sequence gaps and reused sequences', async () => {
      const { log } = await fresh();
      const stamp = (epoch: number, sequence: number) => ({ producer: { id: 'p', epoch, sequence } });
      await assert.rejects(log.append('fence', [user('x')], stamp(0, 1)), ProducerSequenceGapError);
      await log.append('fence', [user('e0s0')], stamp(0, 0));
      await log.append('fence', [user('e0s1')], stamp(0, 1));
      await assert.rejects(log.append('fence', [user('gap')], stamp(0, 3)), (error: unknown) => {
        assert.ok(error instanceof ProducerSequenceGapError);
        assert.equal(error.details.expectedSequence, 2);
        return true;
      });
      await assert.rejects(log.append('fence', [user('different')], stamp(0, 1)), ProducerSequenceReusedError);
      await assert.rejects(log.append('fence', [user('new epoch must start at 0')], stamp(1, 4)), ProducerSequenceGapError);
      await log.append('fence', [user('e1s0')], stamp(1, 0));
      await assert.rejects(log.append('fence', [user('zombie')], stamp(0, 2)), (error: unknown) => {
        assert.ok(error instanceof ProducerFencedError);
        assert.equal(error.details.currentEpoch, 1);
        return true;
      });
      // Other producers and unstamped writers are unaffected.
      await log.append('fence', [user('q')], { producer: { id: 'q', epoch: 0, sequence: 0 } });
      await log.append('fence', [user('plain')]);
      assert.deepEqual(texts((await log.read('fence')).entries), ['e0s0', 'e0s1', 'e1s0', 'q', 'plain']);
      await assert.rejects(log.append('fence', [user('x')], { producer: { id: '', epoch: 0, sequence: 0 } }), InvalidArgumentError);
      await assert.rejects(log.append('fence', [user('x')], { producer: { id: 'p', epoch: -1, sequence: 0 } }), InvalidArgumentError);
    });

    it('forks copy-on-write: shared prefix, independent futures, no copied rows', async () => {
      const { store, log } = await fresh();
      await log.append(
        'parent',
        Array.from({ length: 5 }, (_, index) => user(`p${index}`)),
      );
      const rowsBefore = await store.rowCount();
      const child = await log.fork('parent', 3, { name: 'child' });
      assert.equal(child.id, 'child');
      assert.equal(child.parentId, 'parent');
      assert.equal(child.forkOffset, 3);
      assert.equal(child.nextOffset, 3);
      assert.equal(await store.rowCount(), rowsBefore);
      assert.deepEqual(texts((await log.read('child')).entries), ['p0', 'p1', 'p2']);
      assert.deepEqual((await log.append('child', [user('c3')])).offsets, [3]);
      assert.deepEqual((await log.append('parent', [user('p5')])).offsets, [5]);
      assert.deepEqual(texts((await log.read('child')).entries), ['p0', 'p1', 'p2', 'c3']);
      assert.deepEqual(texts((await log.read('parent')).entries), ['p0', 'p1', 'p2', 'p3', 'p4', 'p5']);
      assert.deepEqual(texts((await log.read('child', { from: 2, limit: 2 })).entries), ['p2', 'c3']);
      // A fork of a fork, below the first fork point, must not see the first fork's own entries.
      await log.fork('child', 2, { name: 'grandchild' });
      await log.append('grandchild', [user('g2')]);
      assert.deepEqual(texts((await log.read('grandchild')).entries), ['p0', 'p1', 'g2']);
      const deep = await log.fork('child', 4, { name: 'deep' });
      assert.equal(deep.nextOffset, 4);
      assert.deepEqual(texts((await log.read('deep')).entries), ['p0', 'p1', 'p2', 'c3']);
      const unnamed = await log.fork('parent', 0);
      assert.match(unnamed.id, /^parent-fork-0-[0-9a-f]{8}$/);
      assert.deepEqual((await log.read(unnamed.id)).entries, []);
      await assert.rejects(log.fork('parent', 99), (error: unknown) => error instanceof OffsetBeyondEndError && error.details.endOffset === 6);
      await assert.rejects(log.fork('missing', 0), UnknownSessionError);
      await assert.rejects(log.fork('parent', 1, { name: 'child' }), SessionExistsError);
      const listed = (await log.sessions()).map((session) => [session.id, session.parentId, session.nextOffset]);
      assert.deepEqual(
        listed.filter(([id]) => id !== unnamed.id),
        [
          ['parent', null, 6],
          ['child', 'parent', 4],
          ['grandchild', 'child', 3],
          ['deep', 'child', 4],
        ],
      );
    });

    it('tails live across connections, resumes from an offset and stops on abort', async () => {
      const { store, log } = await fresh();
      const writer = await another(store);
      await log.append('live', [user('a'), user('b')]);
      const controller = new AbortController();
      const seen: string[] = [];
      const tailing = (async () => {
        for await (const stored of log.tail('live', { from: 1, signal: controller.signal })) {
          seen.push(`${stored.offset}:${(stored.entry as { content: string }).content}`);
          if (seen.length === 3) controller.abort();
        }
      })();
      await new Promise((resolve) => setTimeout(resolve, 50));
      await writer.append('live', [user('c')]);
      await writer.append('live', [user('d')]);
      await tailing;
      assert.deepEqual(seen, ['1:b', '2:c', '3:d']);
      await assert.rejects(async () => {
        for await (const _ of log.tail('nobody', { signal: AbortSignal.timeout(1000) })) void _;
      }, UnknownSessionError);
    });

    it('long-polls: waits for the next entry, or returns empty at the timeout', async () => {
      const { store, log } = await fresh();
      const writer = await another(store);
      await log.append('poll', [user('a')]);
      const empty = await log.readOrWait('poll', { from: 1, timeoutMs: 100 });
      assert.deepEqual(empty.entries, []);
      const waiting = log.readOrWait('poll', { from: 1, timeoutMs: 5000 });
      setTimeout(() => void writer.append('poll', [user('b')]), 50);
      const started = Date.now();
      const result = await waiting;
      assert.deepEqual(texts(result.entries), ['b']);
      assert.ok(Date.now() - started < 3000);
    });

    it('compacts without loss: a summary replaces its range in model context only', async () => {
      const { log } = await fresh();
      await log.append('compact', [
        { kind: 'message', role: 'system', content: 'sys' },
        user('q1'),
        { kind: 'tool-call', toolCallId: 'c1', toolName: 'search', input: { q: 'x' } },
        { kind: 'tool-result', toolCallId: 'c1', output: { type: 'json', value: { hits: 3 } } },
        assistant('a1'),
        user('q2'),
      ]);
      await assert.rejects(log.append('compact', [{ kind: 'summary', covers: { from: 1, to: 9 }, text: 'future' }]), InvalidEntryError);
      await log.append('compact', [{ kind: 'summary', covers: { from: 1, to: 5 }, text: 'Earlier: searched x, 3 hits.' }]);
      const messages = await log.toModelMessages('compact');
      assert.deepEqual(messages, [
        { role: 'system', content: 'sys' },
        { role: 'user', content: 'Earlier: searched x, 3 hits.' },
        { role: 'user', content: 'q2' },
      ]);
      assert.equal((await log.read('compact')).entries.length, 7);
      const full = await log.toModelMessages('compact', { ignoreSummaries: true });
      assert.equal(full.length, 6);
      assert.deepEqual(full[3], {
        role: 'tool',
        content: [{ type: 'tool-result', toolCallId: 'c1', toolName: 'search', output: { type: 'json', value: { hits: 3 } } }],
      });
      // Compacting again over the first summary's range supersedes it.
      await log.append('compact', [assistant('a2'), { kind: 'summary', covers: { from: 0, to: 8 }, text: 'All so far.', role: 'system' }]);
      assert.deepEqual(await log.toModelMessages('compact'), [{ role: 'system', content: 'All so far.' }]);
    });

    it('builds compacted context from summaries and uncovered entries only, across forks', async () => {
      const { log } = await fresh();
      const turns: Entry[] = [];
      for (let turn = 0; turn < 30; turn++) {
        turns.push(user(`q${turn}`), { kind: 'tool-call', toolCallId: `c${turn}`, toolName: `tool${turn}`, input: {} });
        turns.push({ kind: 'tool-result', toolCallId: `c${turn}`, output: { type: 'text', value: `r${turn}` } }, assistant(`a${turn}`));
      }
      await log.append('long', turns);
      await log.append('long', [{ kind: 'summary', covers: { from: 0, to: 40 }, text: 'first ten turns' }]);
      await log.append('long', [user('more'), { kind: 'summary', covers: { from: 40, to: 80 }, text: 'next ten turns' }]);
      await log.fork('long', 121, { name: 'long-fork' });
      await log.append('long-fork', [{ kind: 'summary', covers: { from: 0, to: 100 }, text: 'all but the last turns' }]);
      for (const session of ['long', 'long-fork']) {
        const naive = entriesToModelMessages((await log.read(session)).entries);
        assert.deepEqual(await log.toModelMessages(session), naive);
      }
      const forkMessages = await log.toModelMessages('long-fork');
      assert.deepEqual(forkMessages[0], { role: 'user', content: 'all but the last turns' });
      // A summary that swallows a call but not its result still names the tool.
      await log.append('long', [{ kind: 'summary', covers: { from: 81, to: 82 }, text: 'q20 asked' }]);
      const afterSplit = await log.toModelMessages('long');
      assert.deepEqual(afterSplit, entriesToModelMessages((await log.read('long')).entries));
      assert.ok(JSON.stringify(afterSplit).includes('"toolName":"tool20"'));
    });

    it('moves oversized entries to the blob store and reads them back intact', async () => {
      const { log } = await fresh({ maxEntryBytes: 1024, maxBlobBytes: 64 * 1024 });
      const big = 'x'.repeat(10_000) + 'é';
      const result = await log.append('blobby', [user('small'), user(big), user(big)]);
      assert.deepEqual(result.offsets, [0, 1, 2]);
      const read = await log.read('blobby');
      assert.equal((read.entries[1].entry as { content: string }).content, big);
      assert.equal((read.entries[2].entry as { content: string }).content, big);
      await assert.rejects(log.append('blobby', [user('y'.repeat(70_000))]), EntryTooLargeError);
      assert.equal((await log.describe('blobby')).nextOffset, 3);
      const strict = await another(await backend.createStore().then((store) => (stores.push(store), store)), { maxEntryBytes: 1024, maxBlobBytes: 0 });
      await assert.rejects(strict.append('blobless', [user(big)]), (error: unknown) => error instanceof EntryTooLargeError && error.details.limit === 1024);
    });

    it('survives reopening: everything committed is there for a new connection', async () => {
      const { store, log } = await fresh();
      await log.append('durable', [user('one'), { kind: 'reasoning', text: 'think', providerOptions: { anthropic: { signature: 'sig' } } }]);
      await log.fork('durable', 1, { name: 'durable-fork' });
      await log.close();
      logs.splice(logs.indexOf(log), 1);
      const reopened = await another(store);
      assert.deepEqual(texts((await reopened.read('durable')).entries), ['one', 'reasoning']);
      assert.deepEqual((await reopened.read('durable')).entries[1].entry, {
        kind: 'reasoning',
        text: 'think',
        providerOptions: { anthropic: { signature: 'sig' } },
      });
      assert.equal((await reopened.describe('durable-fork')).parentId, 'durable');
    });
  });
}
