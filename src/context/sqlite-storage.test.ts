import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { ContextLog } from './context-log.ts';
import { DatabaseLockedError, StorageReadOnlyError, StorageUnavailableError } from './errors.ts';
import { SqliteStorage } from './sqlite-storage.ts';
import { describeContextLogContract, user } from './testing/contract.ts';
import { runCrashScenario } from './testing/crash-scenario.ts';

const directories: string[] = [];
function temporaryDirectory(): string {
  const directory = mkdtempSync(join(tmpdir(), 'torpor-sqlite-test-'));
  directories.push(directory);
  return directory;
}
after(() => {
  for (const directory of directories) rmSync(directory, { recursive: true, force: true });
});

describeContextLogContract({
  name: 'sqlite',
  async createStore() {
    const directory = temporaryDirectory();
    const path = join(directory, 'context', 'log.sqlite');
    const open = (options?: ConstructorParameters<typeof ContextLog>[1]) =>
      Promise.resolve(new ContextLog(new SqliteStorage({ path, pollIntervalMs: 20 }), options));
    return {
      open,
      async rowCount() {
        const database = new Database(path, { readonly: true });
        try {
          return (database.prepare('SELECT count(*) AS count FROM entries').get() as { count: number }).count;
        } finally {
          database.close();
        }
      },
      async cleanup() {},
    };
  },
});

describe('sqlite storage specifics', () => {
  it('keeps every acknowledged append, exactly once, when the writer is killed with SIGKILL', async () => {
    const path = join(temporaryDirectory(), 'log.sqlite');
    await runCrashScenario(['sqlite', path, 'crash'], async () => new ContextLog(new SqliteStorage({ path })), 'crash');
  });

  it('uses WAL with synchronous=FULL so a returned append is on disk', () => {
    const path = join(temporaryDirectory(), 'log.sqlite');
    const storage = new SqliteStorage({ path });
    const database = new Database(path);
    try {
      assert.equal(database.pragma('journal_mode', { simple: true }), 'wal');
    } finally {
      database.close();
    }
    // synchronous is per connection: read it through the storage's own connection.
    const internal = (storage as unknown as { database: Database.Database }).database;
    assert.equal(internal.pragma('synchronous', { simple: true }), 2);
    void storage.close();
  });

  it('rebuilds a session on another machine from the database file alone', async () => {
    const source = join(temporaryDirectory(), 'log.sqlite');
    const log = new ContextLog(new SqliteStorage({ path: source }));
    await log.append('portable', [user('a'), user('b')]);
    await log.close();
    // Closing checkpoints the WAL into the main file, so the single file is the whole log.
    const target = join(temporaryDirectory(), 'copied.sqlite');
    copyFileSync(source, target);
    const elsewhere = new ContextLog(new SqliteStorage({ path: target }));
    assert.deepEqual(
      (await elsewhere.read('portable')).entries.map((stored) => stored.entry),
      [user('a'), user('b')],
    );
    await elsewhere.close();
  });

  it('fails with DatabaseLockedError while another process holds the write lock', async () => {
    const path = join(temporaryDirectory(), 'log.sqlite');
    const log = new ContextLog(new SqliteStorage({ path, busyTimeoutMs: 300 }));
    await log.append('locked', [user('a')]);
    const holder = new Database(path);
    holder.exec('BEGIN IMMEDIATE');
    try {
      const started = Date.now();
      // The wait must not block the event loop (an API server in this process keeps serving).
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 10);
      await assert.rejects(log.append('locked', [user('b')]), (error: unknown) => {
        assert.ok(error instanceof DatabaseLockedError);
        assert.match(error.message, /retry shortly/);
        return true;
      });
      clearInterval(ticker);
      assert.ok(Date.now() - started >= 250);
      assert.ok(ticks >= 10, `event loop ticked only ${ticks} times while waiting for the lock`);
      // Readers are not blocked by a writer in WAL mode.
      assert.equal((await log.read('locked')).entries.length, 1);
    } finally {
      holder.exec('ROLLBACK');
      holder.close();
    }
    assert.deepEqual((await log.append('locked', [user('b')])).offsets, [1]);
    // A lock released while an append waits is taken over instead of failing.
    const holderAgain = new Database(path);
    holderAgain.exec('BEGIN IMMEDIATE');
    setTimeout(() => {
      holderAgain.exec('ROLLBACK');
      holderAgain.close();
    }, 100);
    assert.deepEqual((await log.append('locked', [user('c')])).offsets, [2]);
    await log.close();
  });

  it('fails with StorageReadOnlyError on a read-only database', async () => {
    const path = join(temporaryDirectory(), 'log.sqlite');
    const writable = new ContextLog(new SqliteStorage({ path }));
    await writable.append('ro', [user('a')]);
    await writable.close();
    const readOnly = new ContextLog(new SqliteStorage({ path, readOnly: true }));
    assert.equal((await readOnly.read('ro')).entries.length, 1);
    await assert.rejects(readOnly.append('ro', [user('b')]), StorageReadOnlyError);
    await readOnly.close();
  });

  it('fails with StorageUnavailableError when the database file is deleted while open', async () => {
    const path = join(temporaryDirectory(), 'log.sqlite');
    const log = new ContextLog(new SqliteStorage({ path }));
    await log.append('gone', [user('a')]);
    unlinkSync(path);
    await assert.rejects(log.append('gone', [user('b')]), (error: unknown) => {
      assert.ok(error instanceof StorageUnavailableError);
      assert.match(error.message, /deleted or moved/);
      return true;
    });
    await log.close();
  });

  it('fails with StorageUnavailableError when the file is not a database', async () => {
    const directory = temporaryDirectory();
    const path = join(directory, 'log.sqlite');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path, 'this is not sqlite '.repeat(100));
    assert.throws(() => new SqliteStorage({ path }), StorageUnavailableError);
    assert.throws(() => new SqliteStorage({ path: join(directory, 'missing.sqlite'), readOnly: true }), StorageUnavailableError);
  });
});
