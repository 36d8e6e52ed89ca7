import { TorporError } from '../../util/errors.ts';

// How much one image may make torpor write. A layer is untrusted input: a few KiB of gzip or
// zstd can expand to terabytes, and a tar of empty files to millions of inodes.

export interface ImportLimits {
  /** Uncompressed bytes of one layer's tar stream (headers, data, padding). */
  maxLayerBytes: number;
  /** Headers in one layer (members, PAX and long-name headers). */
  maxLayerMembers: number;
  /** Uncompressed bytes of all layers of one image together (and of an image archive being unpacked). */
  maxImageBytes: number;
}

const GiB = 1024 ** 3;

export const defaultImportLimits: ImportLimits = {
  maxLayerBytes: 16 * GiB,
  maxLayerMembers: 1_000_000,
  maxImageBytes: 32 * GiB,
};

const environmentNames: Record<keyof ImportLimits, string> = {
  maxLayerBytes: 'TORPOR_MAX_LAYER_BYTES',
  maxLayerMembers: 'TORPOR_MAX_LAYER_MEMBERS',
  maxImageBytes: 'TORPOR_MAX_IMAGE_BYTES',
};

export const limitFlags: Record<keyof ImportLimits, string> = {
  maxLayerBytes: '--max-layer-bytes',
  maxLayerMembers: '--max-layer-members',
  maxImageBytes: '--max-image-bytes',
};

/** "123", "64k", "16g", "1.5t" (powers of 1024). */
export function parseSize(text: string, what: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$/i.exec(text);
  if (!match) {
    throw new TorporError('invalid-limit', `${what}: ${JSON.stringify(text)} is not a size`, {
      hint: 'write a number of bytes, or with a unit: 512m, 16g, 1t',
    });
  }
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[match[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const value = Math.floor(Number(match[1]) * unit);
  if (value <= 0 || !Number.isSafeInteger(value))
    throw new TorporError('invalid-limit', `${what}: ${JSON.stringify(text)} is out of range`, { hint: 'give a positive size' });
  return value;
}

/** Defaults, then the environment (TORPOR_MAX_LAYER_BYTES…), then what the caller passes (flags). */
export function importLimits(overrides: Partial<ImportLimits> = {}): ImportLimits {
  const limits = { ...defaultImportLimits };
  for (const key of Object.keys(environmentNames) as Array<keyof ImportLimits>) {
    const fromEnvironment = process.env[environmentNames[key]];
    if (fromEnvironment) limits[key] = parseSize(fromEnvironment, environmentNames[key]);
    if (overrides[key] !== undefined) limits[key] = overrides[key]!;
  }
  return limits;
}

export function formatBytes(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1 && value % 1024 === 0) {
    value /= 1024;
    unit++;
  }
  return `${value} ${units[unit]}`;
}

export function limitExceeded(what: string, key: keyof ImportLimits, limit: number): TorporError {
  const shown = key === 'maxLayerMembers' ? `${limit} members` : formatBytes(limit);
  return new TorporError('layer-too-large', `${what} exceeds the limit of ${shown} (${environmentNames[key]})`, {
    hint: `if the image is genuine, raise the limit: ${limitFlags[key]} or ${environmentNames[key]}=…; otherwise it is a decompression or tar bomb and nothing was imported`,
  });
}

/** Bytes left for the whole image, shared by its layers. */
export class ImageBudget {
  private used = 0;
  constructor(readonly limits: ImportLimits) {}

  spend(bytes: number, what: string): void {
    this.used += bytes;
    if (this.used > this.limits.maxImageBytes) throw limitExceeded(`${what}: the image`, 'maxImageBytes', this.limits.maxImageBytes);
  }
}
