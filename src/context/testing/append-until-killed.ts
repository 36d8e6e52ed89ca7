/**
 * Child process for crash tests: appends stamped batches forever and prints an acknowledgement
 * after each append returns, until it is killed with SIGKILL. Whatever it acknowledged must be in
 * the log afterwards, exactly once.
 *
 *   node --import tsx append-until-killed.ts sqlite PATH SESSION
 *   node --import tsx append-until-killed.ts postgres URL SCHEMA SESSION
 */
import { ContextLog } from '../context-log.ts';
import { PostgresStorage } from '../postgres-storage.ts';
import { SqliteStorage } from '../sqlite-storage.ts';

const [backend, location, ...rest] = process.argv.slice(2);
const storage = backend === 'postgres' ? await PostgresStorage.connect({ connectionString: location, schema: rest[0] }) : new SqliteStorage({ path: location });
const sessionId = backend === 'postgres' ? rest[1] : rest[0];
const log = new ContextLog(storage);
process.stdout.write('ready\n');
for (let sequence = 0; ; sequence++) {
  const entries = [0, 1, 2].map((part) => ({ kind: 'message' as const, role: 'user' as const, content: `batch ${sequence} part ${part}` }));
  const result = await log.append(sessionId, entries, { producer: { id: 'crasher', epoch: 0, sequence } });
  process.stdout.write(`ack ${sequence} ${result.offsets[0]}\n`);
}
