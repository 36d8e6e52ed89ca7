import { ContextLog, type ContextLogOptions } from './context-log.ts';
import { PostgresStorage } from './postgres-storage.ts';
import { SqliteStorage } from './sqlite-storage.ts';
import { contextLogPaths, stateDirectory } from './state-directory.ts';

export interface OpenContextLogOptions extends ContextLogOptions {
  /** State directory holding the SQLite file and blobs; default `$TORPOR_HOME` or ~/.local/share/torpor. */
  stateDirectory?: string;
  /** Use PostgreSQL at this connection URL instead of the embedded SQLite file. */
  postgresUrl?: string;
  /** With postgresUrl: the table of session leases fenced appends are checked against (cluster mode). */
  leaseTable?: string;
}

/** Opens the context log: embedded SQLite in the state directory unless a PostgreSQL URL is given. */
export async function openContextLog(options: OpenContextLogOptions = {}): Promise<ContextLog> {
  if (options.postgresUrl) {
    const storage = await PostgresStorage.connect({ connectionString: options.postgresUrl, leaseTable: options.leaseTable });
    return new ContextLog(storage, options);
  }
  const paths = contextLogPaths(options.stateDirectory ?? stateDirectory());
  return new ContextLog(new SqliteStorage({ path: paths.database, blobDirectory: paths.blobs }), options);
}
