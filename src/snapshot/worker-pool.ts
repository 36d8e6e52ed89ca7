import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../util/project-root.ts';
import { Worker } from 'node:worker_threads';
import {
  captureChunk,
  materializeChunk,
  ChunkCorruptError,
  type CaptureChunkTask,
  type CaptureChunkResult,
  type MaterializeChunkTask,
  type MaterializeChunkResult,
} from './chunk-operations.ts';
import { snapshotWorkerCount } from '../config/environment.ts';

export type WorkerRequest = { jobId: number; kind: 'capture'; task: CaptureChunkTask } | { jobId: number; kind: 'materialize'; task: MaterializeChunkTask };

export type WorkerReply =
  | { ready: true; jobId?: undefined }
  | { jobId: number; result: CaptureChunkResult | MaterializeChunkResult; error?: undefined; ready?: undefined }
  | { jobId: number; error: { message: string; code?: string; chunkId?: string }; result?: undefined; ready?: undefined };

interface Job {
  request: WorkerRequest;
  resolve: (value: never) => void;
  reject: (error: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  ready: boolean;
  inFlight: Map<number, Job>;
}

// Two requests queued per thread: the next chunk is already waiting when one finishes, so a thread
// never idles for a message round trip.
/**
 * The checkout runs the TypeScript worker through tsx; an installed package has no sources and no
 * tsx, and runs the worker bundle that `npm pack` built (bin/bundles.mjs).
 */
function workerScript(): string {
  // Running from a bundle (a supervisor, the CLI: build/<dir>/*.mjs, this code maybe in its chunks/):
  // the chunk worker of that same build, plain JavaScript. A thread of the sources through tsx takes
  // ~0.45 s of CPU to start here, the bundled one ~0.1 s; a machine's first snapshot (a fork of a
  // machine never snapshotted) paid that for each thread.
  const self = fileURLToPath(import.meta.url);
  if (self.endsWith('.mjs')) {
    for (const candidate of [join(dirname(self), 'chunk-worker.mjs'), join(dirname(self), '..', 'chunk-worker.mjs')])
      if (existsSync(candidate)) return candidate;
  }
  const source = join(projectRoot(), 'src', 'snapshot', 'chunk-worker-entry.mjs');
  if (existsSync(source)) return source;
  // An installed package: the chunk worker of the build it ships (bin/bundles.mjs writes current.json).
  const current = JSON.parse(readFileSync(join(projectRoot(), 'build', 'current.json'), 'utf8')) as { directory: string };
  return join(projectRoot(), 'build', current.directory, 'chunk-worker.mjs');
}

const depthPerWorker = 2;
// A thread that keeps dying (e.g. it cannot load its code) is not restarted forever.
const restartLimit = 3;

function errorFromReply(reply: { message: string; code?: string; chunkId?: string }): Error {
  if (reply.chunkId) return new ChunkCorruptError(reply.chunkId, reply.message);
  const error = new Error(reply.message) as NodeJS.ErrnoException;
  if (reply.code) error.code = reply.code;
  return error;
}

function runInline(request: WorkerRequest): CaptureChunkResult | MaterializeChunkResult {
  return request.kind === 'capture' ? captureChunk(request.task) : materializeChunk(request.task);
}

/**
 * Runs chunk tasks (hashing, zstd and file I/O: CPU-bound and synchronous) on worker threads.
 * A thread takes ~180 ms to load its TypeScript; until one is ready the main thread runs the queue
 * itself, so a small restore in a short-lived CLI never waits for threads it does not need.
 * Threads are unreferenced while idle so they never keep a process alive.
 */
export class ChunkWorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly queue: Job[] = [];
  private nextJobId = 1;
  private restarts = 0;
  private inlineScheduled = false;

  constructor(readonly size: number) {
    for (let index = 0; index < size; index++) this.workers.push(this.startWorker());
  }

  private startWorker(): PoolWorker {
    const worker = new Worker(workerScript(), { execArgv: [] });
    const entry: PoolWorker = { worker, ready: false, inFlight: new Map() };
    worker.unref();
    worker.on('message', (reply: WorkerReply) => {
      if (reply.ready) {
        entry.ready = true;
        this.dispatch();
        return;
      }
      const job = entry.inFlight.get(reply.jobId);
      if (!job) return;
      entry.inFlight.delete(reply.jobId);
      if (reply.error) job.reject(errorFromReply(reply.error));
      else job.resolve(reply.result as never);
      this.dispatch();
    });
    let failed = false;
    const fail = (error: Error) => {
      if (failed) return;
      failed = true;
      // Its jobs go back to the queue: they are idempotent (a chunk is written under a fresh name).
      for (const job of entry.inFlight.values()) this.queue.unshift(job);
      entry.inFlight.clear();
      const index = this.workers.indexOf(entry);
      if (index >= 0) {
        if (this.restarts++ < restartLimit) this.workers.splice(index, 1, this.startWorker());
        else this.workers.splice(index, 1);
      }
      void error;
      this.dispatch();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`snapshot worker exited with code ${code}`)));
    return entry;
  }

  private dispatch(): void {
    let readyWorkers = 0;
    for (const entry of this.workers) {
      if (!entry.ready) continue;
      readyWorkers++;
      while (entry.inFlight.size < depthPerWorker && this.queue.length > 0) {
        const job = this.queue.shift()!;
        entry.inFlight.set(job.request.jobId, job);
        entry.worker.postMessage(job.request);
      }
      if (entry.inFlight.size > 0) entry.worker.ref();
      else entry.worker.unref();
    }
    // The main thread helps only while threads are missing: with all of them running it would just
    // compete with them for the cores and delay their messages.
    if (this.queue.length > 0 && (this.size === 0 || readyWorkers < this.size) && !this.inlineScheduled) {
      this.inlineScheduled = true;
      setImmediate(() => {
        this.inlineScheduled = false;
        const job = this.queue.shift();
        if (job) {
          try {
            job.resolve(runInline(job.request) as never);
          } catch (error) {
            job.reject(error as Error);
          }
        }
        this.dispatch();
      });
    }
  }

  private run<T>(request: Omit<WorkerRequest, 'jobId'>): Promise<T> {
    const full = { ...request, jobId: this.nextJobId++ } as WorkerRequest;
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

  /** Resolves once every thread has loaded (for benchmarks that measure steady state). */
  async ready(): Promise<void> {
    while (this.workers.some((entry) => !entry.ready)) await new Promise((resolve) => setTimeout(resolve, 5));
  }

  async close(): Promise<void> {
    const workers = this.workers.splice(0);
    this.restarts = restartLimit;
    await Promise.all(workers.map((entry) => entry.worker.terminate()));
  }
}

let shared: ChunkWorkerPool | undefined;

/** Threads default to the number of cores (the work is CPU-bound); TORPOR_SNAPSHOT_WORKERS overrides, 0 = main thread only. */
export function defaultPoolSize(): number {
  return snapshotWorkerCount();
}

/** The process's one chunk worker pool, started on first use. */
export function sharedPool(): ChunkWorkerPool {
  shared ??= new ChunkWorkerPool(defaultPoolSize());
  return shared;
}

/** Starts the threads ahead of time (e.g. when a supervisor starts), so a capture finds them loaded. */
export function startSnapshotWorkers(): Promise<void> {
  return sharedPool().ready();
}

/** Ends the shared pool's threads (so a process can exit); the next use starts a new pool. */
export async function stopSnapshotWorkers(): Promise<void> {
  const pool = shared;
  shared = undefined;
  await pool?.close();
}
