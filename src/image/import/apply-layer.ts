import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { TorporError } from '../../util/errors.ts';
import { ImageBudget, importLimits, limitExceeded, type ImportLimits } from './import-limits.ts';
import { extractTar, type ExtractSpec } from './extract-tar.ts';
import type { ExtractThread } from './extract-thread.ts';

/** One filesystem layer: a tar stream (already decompressed), opened once. */
export interface LayerSource {
  /** How errors name this layer, e.g. "layer 2/3 (sha256:ab12…)". */
  description: string;
  open(): Promise<Readable>;
  /** The sha256 of the uncompressed tar (the config's diff_id), checked as it streams when known. */
  diffId?: string;
}

export function asLayerError(description: string, error: unknown): unknown {
  if (error instanceof TorporError) {
    return error.message.startsWith(description) ? error : new TorporError(error.code, `${description}: ${error.message}`, { hint: error.hint, cause: error });
  }
  const code = (error as NodeJS.ErrnoException).code ?? '';
  if (/^Z_|^ERR_ZSTD|zstd/i.test(code) || /incorrect header|unexpected end|invalid|corrupt|zstd/i.test(String((error as Error).message))) {
    return new TorporError('layer-corrupt', `${description}: cannot decompress: ${(error as Error).message}`, {
      hint: 'the layer is truncated or corrupt',
      cause: error,
    });
  }
  if (code === 'ENOSPC')
    return new TorporError('disk-full', `${description}: no space left while writing the layer; nothing was imported`, {
      hint: 'free disk space, or `torpor image rm` unused images',
      cause: error,
    });
  return error;
}

/** The stream's chunks, hashed and counted on the way, stopped as soon as a limit is crossed. */
export async function* measured(
  stream: AsyncIterable<Buffer>,
  hash: ReturnType<typeof createHash>,
  limits: ImportLimits,
  budget: ImageBudget,
): AsyncGenerator<Buffer> {
  let bytes = 0;
  for await (const chunk of stream) {
    bytes += chunk.length;
    if (bytes > limits.maxLayerBytes) throw limitExceeded('the uncompressed layer', 'maxLayerBytes', limits.maxLayerBytes);
    budget.spend(chunk.length, 'with this layer');
    hash.update(chunk);
    yield chunk;
  }
}

const runningAsRoot = () => process.getuid?.() === 0;

/** Extracts `stream` per `spec`, on `thread` when there is one, inline otherwise: the same code either way. */
export async function extractStream(
  stream: AsyncIterable<Buffer>,
  spec: ExtractSpec,
  options: { limits: ImportLimits; budget: ImageBudget; hash: ReturnType<typeof createHash>; thread?: ExtractThread },
): Promise<void> {
  const chunks = measured(stream, options.hash, options.limits, options.budget);
  if (options.thread) await options.thread.extract(chunks, spec);
  else await extractTar(chunks, spec);
}

/** Applies one layer onto `root` with OCI semantics (whiteouts, opaque directories, replacement), in one pass. */
export async function applyLayer(
  root: string,
  layer: LayerSource,
  options: { limits?: ImportLimits; budget?: ImageBudget; thread?: ExtractThread } = {},
): Promise<void> {
  const limits = options.limits ?? importLimits();
  const budget = options.budget ?? new ImageBudget(limits);
  const hash = createHash('sha256');
  // A decompressing stream runs ahead as soon as it is opened: it must be read (and its errors
  // heard) right away, not after the thread has started.
  await options.thread?.started();
  const stream = await layer.open();
  try {
    await extractStream(
      stream,
      {
        root,
        policy: { description: layer.description, owners: runningAsRoot(), modes: true, devices: true, xattrs: true },
        layerSemantics: true,
        maxMembers: limits.maxLayerMembers,
      },
      { limits, budget, hash, thread: options.thread },
    );
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
