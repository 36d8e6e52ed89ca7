import { parentPort } from 'node:worker_threads';
import { TorporError } from '../../util/errors.ts';
import { extractTar, type ExtractSpec } from './extract-tar.ts';
import type { ExtractReply, ExtractRequest } from './extract-thread.ts';

// The extraction thread: parses and writes one tar stream at a time, fed chunk by chunk by the
// main thread (which decompresses, hashes and counts). Same reader, same writer as inline.

/** The chunks the main thread sends, as an async iterable; each one handed out is acknowledged. */
class ChunkFeed implements AsyncIterable<Buffer> {
  private readonly queue: Buffer[] = [];
  private ended = false;
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  push(chunk: Buffer): void {
    this.queue.push(chunk);
    this.wake?.();
  }

  end(failure?: Error): void {
    this.ended = true;
    this.failure = failure;
    this.wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    for (;;) {
      const chunk = this.queue.shift();
      if (chunk) {
        parentPort!.postMessage({ kind: 'consumed' } satisfies ExtractReply);
        yield chunk;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
      this.wake = undefined;
    }
  }
}

let feed: ChunkFeed | undefined;

async function run(spec: ExtractSpec, current: ChunkFeed): Promise<void> {
  let reply: ExtractReply;
  try {
    await extractTar(current, spec);
    reply = { kind: 'done' };
  } catch (error) {
    const failure = error as NodeJS.ErrnoException & { hint?: string };
    reply = { kind: 'failed', error: { torpor: error instanceof TorporError, code: failure.code, message: failure.message, hint: failure.hint } };
  }
  if (feed === current) feed = undefined;
  parentPort!.postMessage(reply);
}

parentPort!.on('message', (request: ExtractRequest) => {
  switch (request.kind) {
    case 'start':
      feed = new ChunkFeed();
      void run(request.spec, feed);
      break;
    case 'chunk':
      feed?.push(Buffer.from(request.chunk.buffer, request.chunk.byteOffset, request.chunk.byteLength));
      break;
    case 'end':
      feed?.end();
      break;
    case 'abort':
      feed?.end(new Error('aborted by the main thread'));
      break;
  }
});

parentPort!.postMessage({ kind: 'ready' } satisfies ExtractReply);
