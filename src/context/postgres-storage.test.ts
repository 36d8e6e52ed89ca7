import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ContextLog } from './context-log.ts';
import { DatabaseLockedError, StorageReadOnlyError, StorageUnavailableError } from './errors.ts';
import { PostgresStorage } from './postgres-storage.ts';
import { describeContextLogContract, user } from './testing/contract.ts';
import { runCrashScenario } from './testing/crash-scenario.ts';
import { startPostgresServer, type PostgresServer } from './testing/postgres-server.ts';

let server: PostgresServer;
before(async () => {
  server = await startPostgresServer();
});
after(async () => {
  await server?.stop();
});

function schemaName(): string {
  return `test_${randomBytes(6).toString('hex')}`;
}

describeContextLogContract({
  name: 'postgres',
  async createStore() {
    const schema = schemaName();
    // A huge poll interval proves that cross-connection tails are woken by LISTEN/NOTIFY alone.
    const open = async (options?: ConstructorParameters<typeof ContextLog>[1]) =>
      new ContextLog(await PostgresStorage.connect({ connectionString: server.url, schema, pollIntervalMs: 60_000, poolSize: 4 }), options);
    return {
      open,
      async rowCount() {
        const client = new pg.Client({ connectionString: server.url });
        await client.connect();
        try {
          return Number((await client.query(`SELECT count(*) AS count FROM ${schema}.context_entries`)).rows[0].count);
        } finally {
          await client.end();
        }
      },
      async cleanup() {},
    };
  },
});

describe('postgres storage specifics', () => {
  it('keeps every acknowledged append, exactly once, when the writer is killed with SIGKILL', async () => {
    const schema = schemaName();
    await runCrashScenario(
      ['postgres', server.url, schema, 'crash'],
      async () => new ContextLog(await PostgresStorage.connect({ connectionString: server.url, schema })),
      'crash',
    );
  });

  it('fails with DatabaseLockedError when another transaction holds the session past the lock timeout', async () => {
    const schema = schemaName();
    const log = new ContextLog(await PostgresStorage.connect({ connectionString: server.url, schema, lockTimeoutMs: 200 }));
    await log.append('locked', [user('a')]);
    const holder = new pg.Client({ connectionString: server.url });
    await holder.connect();
    try {
      await holder.query('BEGIN');
      await holder.query(`SELECT * FROM ${schema}.context_sessions WHERE id = 'locked' FOR UPDATE`);
      await assert.rejects(log.append('locked', [user('b')]), DatabaseLockedError);
      assert.equal((await log.read('locked')).entries.length, 1);
      await holder.query('ROLLBACK');
    } finally {
      await holder.end();
    }
    assert.deepEqual((await log.append('locked', [user('b')])).offsets, [1]);
    await log.close();
  });

  it('fails with StorageReadOnlyError on a read-only connection', async () => {
    const schema = schemaName();
    const writable = new ContextLog(await PostgresStorage.connect({ connectionString: server.url, schema }));
    await writable.append('ro', [user('a')]);
    await writable.close();
    const url = `${server.url}?options=${encodeURIComponent('-c default_transaction_read_only=on')}`;
    const readOnly = new ContextLog(await PostgresStorage.connect({ connectionString: url, schema }));
    assert.equal((await readOnly.read('ro')).entries.length, 1);
    await assert.rejects(readOnly.append('ro', [user('b')]), StorageReadOnlyError);
    await readOnly.close();
  });

  it('fails with StorageUnavailableError when the server is unreachable or the database is gone', async () => {
    await assert.rejects(PostgresStorage.connect({ connectionString: 'postgres://postgres@127.0.0.1:1/postgres' }), StorageUnavailableError);
    await assert.rejects(PostgresStorage.connect({ connectionString: `${server.url.replace(/\/postgres$/, '/no_such_database')}` }), StorageUnavailableError);
    const log = new ContextLog(await PostgresStorage.connect({ connectionString: server.url, schema: schemaName() }));
    await log.append('kicked', [user('a')]);
    await log.close();
    await assert.rejects(log.append('kicked', [user('b')]), StorageUnavailableError);
  });

  it('keeps the data in one database so another server can rebuild the session', async () => {
    const schema = schemaName();
    const database = await server.createDatabase(`db_${randomBytes(4).toString('hex')}`);
    const first = new ContextLog(await PostgresStorage.connect({ connectionString: database, schema }));
    await first.append('shared', [user('a'), { kind: 'message', role: 'user', content: 'x'.repeat(5000) }]);
    await first.close();
    const second = new ContextLog(await PostgresStorage.connect({ connectionString: database, schema }), { maxEntryBytes: 1000 });
    await second.append('shared', [{ kind: 'message', role: 'user', content: 'y'.repeat(5000) }]);
    const entries = (await second.read('shared')).entries;
    assert.equal(entries.length, 3);
    assert.equal((entries[2].entry as { content: string }).content.length, 5000);
    await second.close();
  });
});
