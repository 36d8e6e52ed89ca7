import { TorporError } from '../util/errors.ts';
import { saveCredentials, type Credentials } from './credentials.ts';
import { DEFAULT_REGISTRY } from './reference.ts';
import { RegistryClient, type RegistryClientOptions } from './registry-client.ts';

/** `torpor login REGISTRY`: checks the credentials against the registry, then keeps them for pulls. */
export async function login(registryText: string, credentials: Credentials, options: Pick<RegistryClientOptions, 'insecure' | 'retry'> = {}): Promise<string> {
  const registry = registryText.replace(/^https?:\/\//, '').replace(/\/.*$/, '');
  if (!registry) throw new TorporError('invalid-registry', 'no registry given', { hint: 'torpor login REGISTRY -u USER --password-stdin' });
  const normalized = ['index.docker.io', 'registry-1.docker.io'].includes(registry) ? DEFAULT_REGISTRY : registry;
  if (!credentials.username || !credentials.password) {
    throw new TorporError('invalid-credentials', 'a user name and a password are both needed', {
      hint: 'echo "$PASSWORD" | torpor login REGISTRY -u USER --password-stdin',
    });
  }
  await new RegistryClient(normalized, { ...options, credentials }).checkAccess();
  await saveCredentials(normalized, credentials);
  return normalized;
}
