import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { TorporError } from '../../util/errors.ts';
import { projectRoot } from '../../util/project-root.ts';
import type { ExtractSpec } from './extract-tar.ts';

// Extraction on a worker thread, so that decompressing and hashing (main thread) run in parallel
// with parsing and the file system calls (worker), as they did when GNU tar was a separate
// process. The worker runs the very same extractTar(); only the bytes travel between threads.

export type ExtractRequest = { kind: 'start'; spec: ExtractSpec } | { kind: 'chunk'; chunk: Uint8Array } | { kind: 'end' } | { kind: 'abort' };

export type ExtractReply =
  { kind: 'ready' } | { kind: 'consumed' } | { kind: 'done' } | { kind: 'failed'; error: { torpor: boolean; code?: string; message: string; hint?: string } };

/** Chunks (~256 KiB each) sent ahead of the worker: enough to keep it busy, bounded in memory. */
const MAX_CHUNKS_IN_FLIGHT = 16;

function rebuild(error: { torpor: boolean; code?: string; message: string; hint?: string }): Error {
  if (error.torpor) return new TorporError(error.code ?? 'layer-extract-failed', error.message, { hint: error.hint });
  const rebuilt = new Error(error.message) as NodeJS.ErrnoException;
  if (error.code) rebuilt.code = error.code;
  return rebuilt;
}

export class ExtractThread {
  private readonly worker: Worker;
  private readonly ready: Promise<void>;
  private broken: Error | undefined;

  constructor() {
    this.worker = new Worker(join(projectRoot(), 'src', 'image', 'import', 'extract-worker-entry.mjs'), { execArgv: [] });
    this.ready = new Promise((resolve, reject) => {
      const onMessage = (reply: ExtractReply) => {
        if (reply.kind !== 'ready') return;
        this.worker.off('message', onMessage);
        resolve();
      };
      this.worker.on('message', onMessage);
      this.worker.once('error', reject);
      this.worker.once('exit', (code) => reject(new Error(`the extraction thread exited with code ${code} before it was ready`)));
    });
    this.ready.catch(() => {});
    this.worker.on('error', (error) => {
      this.broken = error;
    });
    this.worker.on('exit', (code) => {
      this.broken ??= new Error(`the extraction thread exited with code ${code}`);
    });
  }

  /** Resolves once the worker has loaded its code (rejects if it cannot). */
  started(): Promise<void> {
    return this.ready;
  }

  /** Feeds `chunks` to the worker, which extracts them per `spec`; settles when the worker is done. */
  async extract(chunks: AsyncIterable<Buffer>, spec: ExtractSpec): Promise<void> {
    await this.ready;
    if (this.broken) throw this.broken;
    const worker = this.worker;
    let inFlight = 0;
    let settled = false;
    let wake: (() => void) | undefined;
    let onMessage!: (reply: ExtractReply) => void;
    let onExit!: () => void;
    const finished = new Promise<void>((resolve, reject) => {
      onMessage = (reply) => {
        if (reply.kind === 'consumed') {
          inFlight--;
          wake?.();
        } else if (reply.kind === 'done') {
          settled = true;
          resolve();
        } else if (reply.kind === 'failed') {
          settled = true;
          reject(rebuild(reply.error));
        }
        if (settled) wake?.();
      };
      onExit = () => {
        settled = true;
        wake?.();
        reject(this.broken ?? new Error('the extraction thread stopped'));
      };
      worker.on('message', onMessage);
      worker.once('exit', onExit);
    });
    finished.catch(() => {});
    const post = (request: ExtractRequest, transfer?: ArrayBuffer[]) => worker.postMessage(request, transfer);
    try {
      post({ kind: 'start', spec });
      try {
        for await (const chunk of chunks) {
          while (inFlight >= MAX_CHUNKS_IN_FLIGHT && !settled)
            await new Promise<void>((resolve) => {
              wake = resolve;
            });
          if (settled) break;
          const copy = new Uint8Array(chunk);
          post({ kind: 'chunk', chunk: copy }, [copy.buffer as ArrayBuffer]);
          inFlight++;
        }
      } catch (error) {
        // The source failed (corrupt gzip, a size limit): the worker stops, this error wins.
        if (!settled) {
          post({ kind: 'abort' });
          await finished.catch(() => {});
        }
        throw error;
      }
      if (!settled) post({ kind: 'end' });
      await finished;
    } finally {
      worker.off('message', onMessage);
      worker.off('exit', onExit);
    }
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
