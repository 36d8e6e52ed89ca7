import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

/**
 * Opens (creating its directory) one of the server's own SQLite files: WAL, and synchronous=FULL
 * so a state change is on disk before the server acts on it, and a restarted server finds it.
 */
export function openDurableDatabase(path: string): Database.Database {
  mkdirSync(dirname(path), { recursive: true });
  const database = new Database(path);
  database.pragma('journal_mode = WAL');
  database.pragma('synchronous = FULL');
  return database;
}
