import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { TorporError } from '../../util/errors.ts';
import { ImageBudget, importLimits, limitExceeded, type ImportLimits } from './import-limits.ts';
import { baseNameOf, memberPath, parentOf } from './member-path.ts';
import { TarReader } from './tar-reader.ts';
import { TreeWriter, type WriterPolicy } from './tree-writer.ts';

/** One filesystem layer: a tar stream (already decompressed), opened once. */
export interface LayerSource {
  /** How errors name this layer, e.g. "layer 2/3 (sha256:ab12…)". */
  description: string;
  open(): Promise<Readable>;
  /** The sha256 of the uncompressed tar (the config's diff_id), checked as it streams when known. */
  diffId?: string;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';

export function asLayerError(description: string, error: unknown): unknown {
  if (error instanceof TorporError) {
    return error.message.startsWith(description) ? error : new TorporError(error.code, `${description}: ${error.message}`, { hint: error.hint, cause: error });
  }
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (/^Z_|^ERR_ZSTD|zstd/i.test(code) || /incorrect header|unexpected end|invalid|corrupt|zstd/i.test(String((error as Error).message))) {
    return new TorporError('layer-corrupt', `${description}: cannot decompress: ${(error as Error).message}`, { hint: 'the layer is truncated or corrupt', cause: error });
  }
  if (code === 'ENOSPC') return new TorporError('disk-full', `${description}: no space left while writing the layer; nothing was imported`, { hint: 'free disk space, or `torpor image rm` unused images', cause: error });
  return error;
}

/** The stream's chunks, hashed and counted on the way, stopped as soon as a limit is crossed. */
async function* measured(stream: AsyncIterable<Buffer>, hash: ReturnType<typeof createHash>, limits: ImportLimits, budget: ImageBudget): AsyncGenerator<Buffer> {
  let bytes = 0;
  for await (const chunk of stream) {
    bytes += chunk.length;
    if (bytes > limits.maxLayerBytes) throw limitExceeded('the uncompressed layer', 'maxLayerBytes', limits.maxLayerBytes);
    budget.spend(chunk.length, 'with this layer');
    hash.update(chunk);
    yield chunk;
  }
}

/**
 * Reads a tar stream once and writes it into `root` as it is read: the parse that checks a member
 * is the parse that writes it. `layer` semantics add OCI whiteouts; without them (an image
 * archive being unpacked) `.wh.` names are ordinary files.
 */
export async function extractTar(
  stream: AsyncIterable<Buffer>,
  root: string,
  options: { policy: WriterPolicy; layerSemantics: boolean; limits: ImportLimits; budget: ImageBudget; hash: ReturnType<typeof createHash> },
): Promise<void> {
  const { policy } = options;
  const reader = new TarReader(measured(stream, options.hash, options.limits, options.budget), { maxMembers: options.limits.maxLayerMembers });
  const writer = new TreeWriter(root, policy);
  for (let entry = await reader.next(); entry; entry = await reader.next()) {
    const path = memberPath(entry.name, { layer: policy.description });
    const base = baseNameOf(path);
    if (options.layerSemantics && base.startsWith(WHITEOUT_PREFIX)) {
      if (entry.type !== 'file') throw new TorporError('layer-unsafe-path', `${policy.description}: the whiteout ${JSON.stringify(entry.name)} is a ${entry.type}, not an empty file`, { hint: 'the image is malformed; nothing was imported' });
      if (base === OPAQUE_MARKER) writer.opaque(parentOf(path));
      else if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) {
        // Other aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs) carries no meaning for OCI.
      } else {
        const hidden = base.slice(WHITEOUT_PREFIX.length);
        if (hidden === '' || hidden === '.' || hidden === '..') {
          throw new TorporError('layer-unsafe-path', `${policy.description}: the whiteout ${JSON.stringify(entry.name)} names no file`, { hint: 'the image is malformed or malicious; nothing was imported' });
        }
        const parent = parentOf(path);
        writer.remove(parent ? `${parent}/${hidden}` : hidden);
      }
      continue;
    }
    switch (entry.type) {
      case 'directory': writer.directory(path, entry); break;
      case 'file': await writer.file(path, entry, reader.data()); break;
      case 'symlink': writer.symlink(path, entry); break;
      case 'hardlink': writer.hardlink(path, memberPath(entry.linkTarget, { layer: policy.description, what: `hard link target of ${JSON.stringify(entry.name)}` })); break;
      default: writer.device(path, entry);
    }
  }
  writer.finish();
}

const runningAsRoot = () => process.getuid?.() === 0;

/** Applies one layer onto `root` with OCI semantics (whiteouts, opaque directories, replacement), in one pass. */
export async function applyLayer(root: string, layer: LayerSource, options: { limits?: ImportLimits; budget?: ImageBudget } = {}): Promise<void> {
  const limits = options.limits ?? importLimits();
  const budget = options.budget ?? new ImageBudget(limits);
  const hash = createHash('sha256');
  const stream = await layer.open();
  try {
    await extractTar(stream, root, {
      policy: { description: layer.description, owners: runningAsRoot(), modes: true, devices: true, xattrs: true },
      layerSemantics: true, limits, budget, hash,
    });
  } catch (error) {
    throw asLayerError(layer.description, error);
  } finally {
    stream.destroy();
  }
  const diffId = `sha256:${hash.digest('hex')}`;
  if (layer.diffId && layer.diffId !== diffId) {
    throw new TorporError('layer-digest-mismatch', `${layer.description}: uncompressed content is ${diffId}, but the image config says ${layer.diffId}`, {
      hint: 'the layer is corrupt or does not belong to this image; nothing was imported',
    });
  }
}
