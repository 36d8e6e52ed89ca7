import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import {
  captureChunk,
  materializeChunk,
  ChunkCorruptError,
  type CaptureChunkTask,
  type CaptureChunkResult,
  type MaterializeChunkTask,
  type MaterializeChunkResult,
} from './chunk-operations.ts';

export type WorkerRequest =
  | { jobId: number; kind: 'capture'; task: CaptureChunkTask }
  | { jobId: number; kind: 'materialize'; task: MaterializeChunkTask };

export type WorkerReply =
  | { jobId: number; result: CaptureChunkResult | MaterializeChunkResult; error?: undefined }
  | { jobId: number; error: { message: string; code?: string; chunkId?: string }; result?: undefined };

interface Job {
  request: WorkerRequest;
  resolve: (value: never) => void;
  reject: (error: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  inFlight: Map<number, Job>;
}

// Two requests queued per thread: the next chunk is already waiting when one finishes, so a thread
// never idles for a message round trip.
const depthPerWorker = 2;

function errorFromReply(reply: Extract<WorkerReply, { error: object }>['error']): Error {
  if (reply.chunkId) return new ChunkCorruptError(reply.chunkId, reply.message);
  const error = new Error(reply.message) as NodeJS.ErrnoException;
  if (reply.code) error.code = reply.code;
  return error;
}

/**
 * Runs chunk tasks on worker threads (hashing and zstd are CPU-bound and synchronous), or inline
 * when the size is 0. Threads are unreferenced while idle so they never keep a CLI process alive.
 */
export class ChunkWorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly queue: Job[] = [];
  private nextJobId = 1;

  constructor(readonly size: number) {
    for (let index = 0; index < size; index++) this.workers.push(this.startWorker());
  }

  private startWorker(): PoolWorker {
    const worker = new Worker(new URL('./chunk-worker-entry.mjs', import.meta.url), { execArgv: [] });
    const entry: PoolWorker = { worker, inFlight: new Map() };
    worker.unref();
    worker.on('message', (reply: WorkerReply) => {
      const job = entry.inFlight.get(reply.jobId);
      if (!job) return;
      entry.inFlight.delete(reply.jobId);
      if (reply.error) job.reject(errorFromReply(reply.error));
      else job.resolve(reply.result as never);
      this.dispatch();
    });
    const fail = (error: Error) => {
      // A dead thread fails its own jobs; a replacement takes its place for the rest.
      for (const job of entry.inFlight.values()) job.reject(error);
      entry.inFlight.clear();
      const index = this.workers.indexOf(entry);
      if (index >= 0) this.workers.splice(index, 1, this.startWorker());
      this.dispatch();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => {
      if (entry.inFlight.size > 0) fail(new Error(`snapshot worker exited with code ${code}`));
    });
    return entry;
  }

  private dispatch(): void {
    for (const entry of this.workers) {
      while (entry.inFlight.size < depthPerWorker && this.queue.length > 0) {
        const job = this.queue.shift()!;
        entry.inFlight.set(job.request.jobId, job);
        entry.worker.postMessage(job.request);
      }
      if (entry.inFlight.size > 0) entry.worker.ref();
      else entry.worker.unref();
    }
  }

  private run<T>(request: Omit<WorkerRequest, 'jobId'>): Promise<T> {
    const full = { ...request, jobId: this.nextJobId++ } as WorkerRequest;
    if (this.size === 0) {
      // Inline: still asynchronous, so callers' bookkeeping between chunks keeps its order.
      return new Promise<T>((resolve, reject) =>
        setImmediate(() => {
          try {
            resolve((full.kind === 'capture' ? captureChunk(full.task) : materializeChunk(full.task)) as T);
          } catch (error) {
            reject(error as Error);
          }
        }),
      );
    }
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ request: full, resolve: resolve as (value: never) => void, reject });
      this.dispatch();
    });
  }

  capture(task: CaptureChunkTask): Promise<CaptureChunkResult> {
    return this.run({ kind: 'capture', task });
  }

  materialize(task: MaterializeChunkTask): Promise<MaterializeChunkResult> {
    return this.run({ kind: 'materialize', task });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((entry) => entry.worker.terminate()));
    this.workers.length = 0;
  }
}

let shared: ChunkWorkerPool | undefined;

/** Threads default to the number of cores: the work is CPU-bound; TORPOR_SNAPSHOT_WORKERS overrides (0 = inline). */
export function defaultPoolSize(): number {
  const configured = process.env.TORPOR_SNAPSHOT_WORKERS;
  if (configured !== undefined && configured !== '' && Number.isInteger(Number(configured))) return Math.max(0, Number(configured));
  return Math.min(availableParallelism(), 8);
}

export function sharedPool(): ChunkWorkerPool {
  shared ??= new ChunkWorkerPool(defaultPoolSize());
  return shared;
}

/** Starts the threads ahead of time, so the first capture (with the VM paused) does not pay for it. */
export function startSnapshotWorkers(): void {
  sharedPool();
}

export async function stopSnapshotWorkers(): Promise<void> {
  const pool = shared;
  shared = undefined;
  await pool?.close();
}
