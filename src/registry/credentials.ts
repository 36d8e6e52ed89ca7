import { readFile, open, rename, mkdir } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { stateHome } from '../state/paths.ts';
import { isNodeError } from '../util/errors.ts';
import { environment } from '../config/environment.ts';
import { syncDirectory } from '../util/atomic-file.ts';
import { DEFAULT_REGISTRY } from './reference.ts';

export interface Credentials {
  username: string;
  password: string;
}

// Same shape as ~/.docker/config.json, so a user can copy entries between the two.
interface AuthFile {
  auths?: Record<string, { auth?: string; username?: string; password?: string; identitytoken?: string }>;
}

export const torporAuthPath = () => join(stateHome(), 'auth.json');
const dockerConfigPath = () => join(environment().DOCKER_CONFIG ?? join(homedir(), '.docker'), 'config.json');

/** `https://index.docker.io/v1/`, `ghcr.io`, `https://ghcr.io` all name a registry host. */
function registryKey(key: string): string {
  const host = key.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
  return host === 'index.docker.io' || host === 'registry-1.docker.io' ? DEFAULT_REGISTRY : host;
}

async function readAuthFile(path: string): Promise<AuthFile> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as AuthFile;
  } catch (error) {
    if (isNodeError(error, 'ENOENT')) return {};
    if (error instanceof SyntaxError) return {};
    throw error;
  }
}

function credentialsIn(file: AuthFile, registry: string): Credentials | undefined {
  for (const [key, entry] of Object.entries(file.auths ?? {})) {
    if (registryKey(key) !== registry) continue;
    if (entry.username && entry.password) return { username: entry.username, password: entry.password };
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
  }
  return undefined;
}

/** Credentials for a registry: torpor's own (from `torpor login`) first, then docker's. */
export async function findCredentials(registry: string): Promise<Credentials | undefined> {
  return credentialsIn(await readAuthFile(torporAuthPath()), registry) ?? credentialsIn(await readAuthFile(dockerConfigPath()), registry);
}

/** Stores credentials readable by the owner only (written 0600 from the start, then renamed into place). */
export async function saveCredentials(registry: string, credentials: Credentials): Promise<void> {
  const path = torporAuthPath();
  const file = await readAuthFile(path);
  file.auths = { ...file.auths, [registry]: { auth: Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64') } };
  await mkdir(dirname(path), { recursive: true });
  const temporary = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  const handle = await open(temporary, 'wx', 0o600);
  try {
    await handle.writeFile(JSON.stringify(file, null, 2) + '\n');
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, path);
  await syncDirectory(dirname(path));
}
