import { open, rm } from 'node:fs/promises';
import { TorporError } from '../util/errors.ts';
import type { SnapshotManifest, CaptureInput } from '../snapshot/snapshot-store.ts';
import { environment } from '../config/environment.ts';
import {
  holdLazyMemoryPin,
  lazyMemoryFiles,
  lazyMemorySupport,
  pagerEnvironment,
  pagerLibrary,
  prepareLazyMemory,
  readLazyMemoryStatus,
  readPagerState,
  releaseLazyMemoryPin,
  removeLazyMemoryFiles,
  freezeGuestMemory,
  thawGuestMemory,
  copiedChunks,
  workingSet,
  type LazyMemoryStatus,
} from '../snapshot/lazy-memory.ts';
import { pathExists } from '../util/path-exists.ts';

// Where the runtime meets lazy guest memory: the restore decides lazy or eager, the supervisor
// preloads the pager into QEMU, checks it took over before the guest runs, and captures a lazily
// restored machine without reading its never-faulted chunks as zeros. architecture/lazy-memory.md.

let fallbackNoted = false;

/**
 * Prepares the snapshot's RAM to be served on demand, if this host can (userfaultfd, a C compiler)
 * and TORPOR_LAZY_MEMORY is not 0. Returns false when the caller must materialize it instead.
 */
export async function prepareLazyRestore(
  manifest: SnapshotManifest,
  machineId: string,
  memoryFile: string,
  base: { manifest: SnapshotManifest; memoryFile: string } | undefined,
  present?: Uint8Array,
): Promise<boolean> {
  const support = await lazyMemorySupport();
  if (!support.available) {
    if (!fallbackNoted && environment().TORPOR_LAZY_MEMORY) {
      fallbackNoted = true;
      process.stderr.write(`torpor: note: restoring guest memory eagerly (lazy restore unavailable: ${support.reason})\n`);
    }
    return false;
  }
  // TORPOR_LAZY_PREFETCH=0 turns the working-set prefetch off (for the benchmark's comparison).
  const prefetch = !environment().TORPOR_LAZY_PREFETCH ? undefined : (manifest.metadata as { workingSet?: unknown }).workingSet;
  await prepareLazyMemory(manifest, {
    memoryFile,
    base,
    prefetch: Array.isArray(prefetch) ? prefetch.filter((entry): entry is number => typeof entry === 'number') : undefined,
    pinKey: machineId,
    present,
  });
  return true;
}

/**
 * For a warm spare supervisor, before it has a machine: the userfaultfd probe (a child process) and
 * the pager library's lookup (a hash of its source), which every restore and start needs, are done
 * while nobody waits for them. Failures are left for the start that needs them to report.
 */
export async function warmLazyRestore(): Promise<void> {
  await Promise.all([lazyMemorySupport(), pagerLibrary()]).catch(() => {});
}

/**
 * QEMU's extra environment for a restore onto this RAM file: the pager, if the restore was prepared
 * lazily; `held` settles once this process holds the restore's chunk pin (await it before the
 * process that prepared the restore may exit: before the machine shows as running).
 */
export async function restoreEnvironment(
  machineId: string,
  memoryFile: string,
): Promise<{ environment: Record<string, string>; held: Promise<void> } | undefined> {
  const files = lazyMemoryFiles(memoryFile);
  if (!(await pathExists(files.mapFile))) return undefined;
  // The process that prepared the restore probed userfaultfd already: only the library is needed here.
  const library = await pagerLibrary().catch(() => undefined);
  if (!library) {
    throw new TorporError('lazy-memory-unavailable', 'this restore was prepared for lazy memory, but the pager library cannot be built here', {
      hint: 'restore again with TORPOR_LAZY_MEMORY=0',
    });
  }
  // The supervisor holds the chunks from now on (the CLI that prepared the restore may exit); it
  // holds them already while that CLI waits, so this goes on beside QEMU's start.
  const held = holdLazyMemoryPin(machineId, process.pid);
  held.catch(() => {});
  return { environment: pagerEnvironment(library, files), held };
}

/**
 * Before the guest runs: the pager must have taken over the RAM file. If the preload was ignored
 * (a missing library makes ld.so only warn) the guest would see zeros where its memory is.
 */
export async function confirmPagerServing(memoryFile: string): Promise<void> {
  const status = await readPagerState(memoryFile);
  if (!status) return;
  if (status.state !== 'serving') {
    throw new TorporError(
      'lazy-memory-failed',
      `the lazy memory pager did not take over the guest's RAM (${status.state}${status.error ? `: ${status.error}` : ''})`,
      {
        hint: 'restore again with TORPOR_LAZY_MEMORY=0 and report this',
      },
    );
  }
}

/** What a machine's write tracking is relative to: the chunk ids after its last protect round. */
export interface WriteBaseline {
  generation: number;
  chunks: (string | null)[];
  /** that snapshot's delta -> base chunk map */
  deltaBases?: Record<string, string>;
}

/**
 * For a capture of a lazily restored machine: the chunk ids known without reading the RAM file.
 * Chunks it never faulted in come from its snapshot; with write tracking, chunks not written since
 * `baseline` (the last snapshot, or the restore itself for generation 0) keep the baseline's id.
 * `baseline` null means tracking is not trusted (a protect round failed): loaded chunks are read.
 */
export async function knownMemoryOf(
  memoryFile: string,
  baseline: WriteBaseline | null | undefined,
): Promise<{ input: CaptureInput['knownMemory']; status?: LazyMemoryStatus; clean: number[] }> {
  const status = await readLazyMemoryStatus(memoryFile);
  if (!status) return { input: undefined, clean: [] };
  if (status.state === 'failed')
    throw new TorporError('lazy-memory-failed', `the lazy memory pager failed: ${status.error}`, { hint: 'the machine cannot be snapshotted' });
  const reference = baseline === undefined ? { generation: 0, chunks: status.chunks } : baseline;
  const tracked =
    status.tracking && reference !== null && reference.generation === status.protectGeneration && reference.chunks.length === status.chunks.length;
  const clean: number[] = [];
  const ids = status.chunks.map((id, index) => {
    if (status.loaded[index] === 0) return id;
    if (tracked && status.dirty[index] === 0) {
      clean.push(index);
      return reference!.chunks[index];
    }
    return undefined;
  });
  // A changed chunk may be stored as a delta against the chunk it replaces (the capture diffs them).
  const previous = reference?.chunks.length === status.chunks.length ? reference.chunks : status.chunks;
  // Known chunks come from the page map and the baseline: the bases of deltas among them, from both.
  // (no baseline, or an untrusted one: only page-map ids are taken as known)
  const baselineBases = baseline ? baseline.deltaBases : {};
  const deltaBases = status.deltaBases && baselineBases ? { ...status.deltaBases, ...baselineBases } : undefined;
  const deltas = environment().TORPOR_PAGE_DELTAS;
  return { input: { chunkSize: status.chunkSize, ids, ...(deltas ? { previous } : {}), ...(deltaBases ? { deltaBases } : {}) }, status, clean };
}

/**
 * A check for tests and benchmarks (TORPOR_VERIFY_WRITE_TRACKING=1): every chunk write tracking
 * calls clean must hash to the id it is given. Run with the guest paused, before the capture.
 */
export async function verifyCleanChunks(memoryFile: string, known: NonNullable<CaptureInput['knownMemory']>, clean: number[]): Promise<void> {
  // Loaded here only: chunk hashing brings the native xxhash and zstd packages, which an idle
  // supervisor (it imports this file) should not carry.
  const { chunkIdOf } = await import('../snapshot/chunk-operations.ts');
  const handle = await open(memoryFile, 'r');
  try {
    const buffer = Buffer.alloc(known.chunkSize);
    for (const index of clean) {
      const { bytesRead } = await handle.read(buffer, 0, known.chunkSize, index * known.chunkSize);
      buffer.fill(0, bytesRead);
      const actual = buffer.every((byte) => byte === 0) ? null : chunkIdOf(buffer);
      if (actual !== known.ids[index])
        throw new TorporError('write-tracking-missed', `write tracking called chunk ${index} unchanged, but it was written`, {
          hint: 'run with TORPOR_TRACK_WRITES=0 and report this',
        });
    }
  } finally {
    await handle.close();
  }
}

/** Chunks this machine touched in its first second: the next restore of what it becomes prefetches them. */
export async function earlyWorkingSet(memoryFile: string): Promise<number[] | undefined> {
  const status = await readLazyMemoryStatus(memoryFile);
  return status ? workingSet(status) : undefined;
}

export async function releaseLazyMemory(machineId: string, memoryFile: string): Promise<void> {
  await removeLazyMemoryFiles(memoryFile);
  await releaseLazyMemoryPin(machineId);
}

/** A disk layer with more data than this is captured with the guest paused (copying it would pause longer). */
const layerCopyLimit = 64 * 1024 * 1024;

export interface CaptureBesideGuest {
  /** the dirty generation the pager started at the freeze */
  generation: number;
  /** the disk to capture: a copy as of the pause (`copy`), or the live layer read with `diskCopies` (`job`) */
  diskCopy: string;
  /** with QEMU's job, `diskCopy` is the live layer and these are the ranges copied before the guest overwrote them */
  diskCopies?: NonNullable<CaptureInput['diskCopies']>;
  /** how the disk was taken: QEMU's copy job, or copied here with the guest paused */
  diskMethod: 'job' | 'copy';
  memoryCopies: NonNullable<CaptureInput['memoryCopies']>;
  /** undoes what the start did (the supervisor calls it after the capture, stored or not) */
  finish: () => Promise<void>;
}

/** Starts QEMU's disk copy job (guest paused); throws when QEMU refuses, then the disk is copied here. */
export type StartDiskJob = () => Promise<{ copies: NonNullable<CaptureInput['diskCopies']>; finish: () => Promise<void> }>;

/** Milliseconds of each step done with the guest paused (the snapshot summary's breakdown). */
export type PausedPhases = Record<string, number>;

/**
 * The part of a checkpoint that continues that needs the guest paused, after its device state was
 * saved: freezes the pager (copy-before-write) and takes the disk layer as of now: QEMU's copy job
 * (`startDiskJob`, copy-before-write for the disk, run beside the guest) when it can, else a copy of
 * the layer's data extents here, paused. Undefined when that cannot be done (no write tracking, no
 * copy file, a large layer without the job): the caller captures with the guest paused, as before.
 * Fills `phases` with what it spent.
 */
export async function startCaptureBesideGuest(
  memoryFile: string,
  layerDisk: string,
  phases: PausedPhases,
  startDiskJob?: StartDiskJob,
): Promise<CaptureBesideGuest | undefined> {
  if (!environment().TORPOR_COPY_BEFORE_WRITE) return undefined;
  let mark = performance.now();
  const phase = (name: string) => {
    const now = performance.now();
    phases[name] = (phases[name] ?? 0) + now - mark;
    mark = now;
  };
  const files = lazyMemoryFiles(memoryFile);
  if (!(await pathExists(files.copyFile))) return undefined;
  const memoryCopies = { file: files.copyFile, copied: () => copiedChunks(memoryFile) };
  if (startDiskJob) {
    // Independent of each other: the pager's freeze and QEMU's job start at once.
    const timed = <T>(name: string, step: Promise<T>): Promise<T> => {
      const begun = performance.now();
      return step.finally(() => (phases[name] = performance.now() - begun));
    };
    const [generation, job] = await Promise.all([
      timed('freezeMs', freezeGuestMemory(memoryFile)).catch(() => undefined),
      timed('diskJobMs', startDiskJob()).catch((error: unknown) => {
        process.stderr.write(`torpor: note: QEMU's disk copy job did not start (${(error as Error).message}); copying the disk layer with the guest paused\n`);
        return undefined;
      }),
    ]);
    mark = performance.now();
    if (generation === undefined) {
      await job?.finish();
      return undefined;
    }
    if (job) {
      return {
        generation,
        diskCopy: layerDisk,
        diskCopies: job.copies,
        diskMethod: 'job',
        memoryCopies,
        finish: async () => {
          await thawGuestMemory(memoryFile).catch(() => {});
          await job.finish();
        },
      };
    }
    // Frozen already: the paused copy below keeps this generation.
    return copyDiskPaused(memoryFile, layerDisk, generation, memoryCopies, phase);
  }
  return copyDiskPaused(memoryFile, layerDisk, undefined, memoryCopies, phase);
}

export const pausedDiskCopyOf = (layerDisk: string): string => `${layerDisk}.capture`;

/** The disk layer's data extents copied with the guest paused (the path before QEMU's copy job, and its fallback). */
async function copyDiskPaused(
  memoryFile: string,
  layerDisk: string,
  frozen: number | undefined,
  memoryCopies: CaptureBesideGuest['memoryCopies'],
  phase: (name: string) => void,
): Promise<CaptureBesideGuest | undefined> {
  const { dataExtents } = await import('../snapshot/extents.ts');
  const extents = await dataExtents(layerDisk);
  phase('extentsMs');
  if (extents.reduce((sum, extent) => sum + extent.end - extent.start, 0) > layerCopyLimit) {
    if (frozen !== undefined) await thawGuestMemory(memoryFile).catch(() => {});
    return undefined;
  }
  const generation = frozen ?? (await freezeGuestMemory(memoryFile).catch(() => undefined));
  phase('freezeMs');
  if (generation === undefined) return undefined;
  const diskCopy = pausedDiskCopyOf(layerDisk);
  const finish = async () => {
    await thawGuestMemory(memoryFile).catch(() => {});
    await rm(diskCopy, { force: true });
  };
  try {
    await copyExtents(layerDisk, diskCopy, extents);
  } catch (error) {
    await finish();
    throw error;
  }
  phase('diskCopyMs');
  return { generation, diskCopy, diskMethod: 'copy', memoryCopies, finish };
}

/** A sparse copy of the data extents of `source` (holes stay holes, so the capture skips them too). */
async function copyExtents(source: string, target: string, extents: { start: number; end: number }[]): Promise<void> {
  const input = await open(source, 'r');
  const output = await open(target, 'w', 0o600);
  try {
    await output.truncate((await input.stat()).size);
    const buffer = Buffer.allocUnsafe(1024 * 1024);
    for (const extent of extents) {
      for (let position = extent.start; position < extent.end;) {
        const { bytesRead } = await input.read(buffer, 0, Math.min(buffer.length, extent.end - position), position);
        if (bytesRead === 0) break;
        await output.write(buffer, 0, bytesRead, position);
        position += bytesRead;
      }
    }
  } finally {
    await Promise.all([input.close(), output.close()]);
  }
}
