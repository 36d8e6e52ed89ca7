import { parentPort } from 'node:worker_threads';
import { captureChunk, materializeChunk, ChunkCorruptError } from './chunk-operations.ts';
import type { WorkerRequest, WorkerReply } from './worker-pool.ts';

// A thread of the snapshot store's pool: hashing, zstd and file I/O of one chunk per message.

parentPort!.on('message', (request: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    const result = request.kind === 'capture' ? captureChunk(request.task) : materializeChunk(request.task);
    reply = { jobId: request.jobId, result };
  } catch (error) {
    const failure = error as NodeJS.ErrnoException;
    reply = {
      jobId: request.jobId,
      error: { message: failure.message, code: failure.code, chunkId: error instanceof ChunkCorruptError ? error.chunkId : undefined },
    };
  }
  parentPort!.postMessage(reply);
});

// Jobs go to a thread only once it has loaded; until then the main thread works through the queue.
parentPort!.postMessage({ ready: true } satisfies WorkerReply);
