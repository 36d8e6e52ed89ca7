import { TorporError } from '../util/errors.ts';
import { isDigest } from '../image/digest.ts';

/** An image in a registry, normalized the way docker does (docker.io, library/, latest). */
export interface ImageReference {
  /** Registry host as written in references, e.g. docker.io, ghcr.io, localhost:5000. */
  registry: string;
  repository: string;
  tag?: string;
  digest?: string;
}

export const DEFAULT_REGISTRY = 'docker.io';
const componentPattern = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const tagPattern = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;

function invalid(text: string, why: string): TorporError {
  return new TorporError('invalid-reference', `invalid image reference ${JSON.stringify(text)}: ${why}`, {
    hint: 'write it like docker: alpine, alpine:3.20, ghcr.io/owner/image:tag, localhost:5000/image@sha256:…',
  });
}

/** Whether the first component of a name is a registry host rather than part of the repository. */
function isRegistryHost(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost' || /^\[.*\]/.test(component);
}

export function parseReference(text: string): ImageReference {
  let rest = text.trim();
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at !== -1) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) throw invalid(text, 'the digest must be sha256: followed by 64 hex digits');
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagPattern.test(tag)) throw invalid(text, `${JSON.stringify(tag)} is not a valid tag`);
  }
  const components = rest.split('/');
  let registry = DEFAULT_REGISTRY;
  if (components.length > 1 && isRegistryHost(components[0]!)) registry = components.shift()!;
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DEFAULT_REGISTRY;
  if (components.length === 0 || components.some((component) => !componentPattern.test(component))) {
    throw invalid(text, 'repository names are lowercase letters, digits and separators (. _ -), split by /');
  }
  if (registry === DEFAULT_REGISTRY && components.length === 1) components.unshift('library');
  return { registry, repository: components.join('/'), tag: tag ?? (digest ? undefined : 'latest'), digest };
}

/** Whether a name names a registry explicitly (so `run` may pull it) rather than a local image. */
export function namesRegistry(text: string): boolean {
  const first = text.split('/')[0]!;
  if (!text.includes('/') || !isRegistryHost(first)) return false;
  try {
    parseReference(text);
    return true;
  } catch {
    return false;
  }
}

/** The full name: registry/repository:tag or registry/repository@digest. */
export function canonicalName(reference: ImageReference): string {
  return `${reference.registry}/${reference.repository}${reference.digest ? `@${reference.digest}` : `:${reference.tag}`}`;
}

/** The short name docker shows: docker.io/library/ dropped, tag always present. */
export function familiarName(reference: ImageReference): string {
  let name = `${reference.registry}/${reference.repository}`;
  if (reference.registry === DEFAULT_REGISTRY) name = reference.repository.replace(/^library\//, '');
  return `${name}${reference.digest ? `@${reference.digest}` : `:${reference.tag}`}`;
}

/** The host the API lives on: Docker Hub's differs from its name. */
export function apiHost(registry: string): string {
  return registry === DEFAULT_REGISTRY ? 'registry-1.docker.io' : registry;
}

/** Loopback registries may speak plain HTTP, as with docker. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.split(':')[0]!;
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
