import { TorporError } from '../util/errors.ts';

// Digests name files in the store (images/blobs/<hex>, images/layers/sha256/<hex>, blobs/sha256/<hex>
// in an OCI layout), so a digest that came from outside (a registry, a manifest, a command line, a
// ref file) is checked here before any path is built from it: `sha256:../../..` must never reach join().

const digestPattern = /^sha256:[a-f0-9]{64}$/;

export function isDigest(value: unknown): value is string {
  return typeof value === 'string' && digestPattern.test(value);
}

/** Throws unless `value` is `sha256:` followed by 64 lowercase hex digits. `context` says where it came from. */
export function assertDigest(value: unknown, context: string, options: { code?: string; hint?: string } = {}): asserts value is string {
  if (!isDigest(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value) : String(value);
    throw new TorporError(options.code ?? 'invalid-digest', `${context}: ${shown} is not a sha256 digest (sha256: followed by 64 lowercase hex digits)`, {
      hint: options.hint ?? 'the image metadata is malformed or malicious',
    });
  }
}

/** The 64 hex digits of a checked digest, the only part that may become a file name. */
export function digestHex(digest: string, context = 'digest'): string {
  assertDigest(digest, context);
  return digest.slice('sha256:'.length);
}
