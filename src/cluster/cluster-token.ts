import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { clusterTables } from './cluster-schema.ts';

/**
 * The bearer token every node of a cluster accepts: one node forwards a request to the session's
 * holder with it (after checking the client's own token). The first node to start creates it;
 * whoever can read the control plane's database can read it, as they could every session anyway.
 */
export async function clusterToken(pool: pg.Pool): Promise<string> {
  await pool.query(`INSERT INTO ${clusterTables.settings} (key, value) VALUES ('token', $1) ON CONFLICT (key) DO NOTHING`, [
    `torpor_${randomBytes(32).toString('base64url')}`,
  ]);
  return (await pool.query<{ value: string }>(`SELECT value FROM ${clusterTables.settings} WHERE key = 'token'`)).rows[0]!.value;
}
