import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContextLog, type ContextLogOptions } from '../context-log.ts';
import type { Entry, StoredEntry } from '../entry.ts';
import { SqliteStorage } from '../sqlite-storage.ts';

/** A real SQLite-backed log in a temporary directory, removed by `cleanup`. */
export function temporaryLog(options?: ContextLogOptions): { log: ContextLog; directory: string; cleanup(): Promise<void> } {
  const directory = mkdtempSync(join(tmpdir(), 'torpor-log-'));
  const log = new ContextLog(
    new SqliteStorage({ path: join(directory, 'context', 'log.sqlite'), blobDirectory: join(directory, 'context', 'blobs') }),
    options,
  );
  return {
    log,
    directory,
    async cleanup() {
      await log.close();
      rmSync(directory, { recursive: true, force: true });
    },
  };
}

/** Stores entries and reads them back, so conversions are tested through the real schema and storage. */
export async function storeAndRead(entries: Entry[]): Promise<StoredEntry[]> {
  const { log, cleanup } = temporaryLog();
  try {
    await log.append('conversion', entries);
    return (await log.read('conversion')).entries;
  } finally {
    await cleanup();
  }
}
