import { mkdir, open, readFile, rm, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { dirname, join } from 'node:path';
import { paths } from '../state/paths.ts';
import { projectRoot } from '../util/project-root.ts';
import { runCommand } from '../util/command.ts';
import { TorporError } from '../util/errors.ts';
import { buildNative } from './native-build.ts';
import { beginActivity } from './store-activity.ts';
import { addPinHolder, pinChunks, unpinChunks } from './chunk-pins.ts';
import { environment } from '../config/environment.ts';
import type { SnapshotManifest } from './snapshot-store.ts';

// The TypeScript half of lazy guest memory (native/lazy-memory.c is the other): decides whether
// it can be used here, writes the page map the preloaded pager reads, and reads back what the pager
// served. See architecture/lazy-memory.md.

const source = join(projectRoot(), 'native', 'lazy-memory.c');

const mapHeaderSize = 4160;
const recordSize = 48;
const pathSize = 1024;
const statusHeaderSize = 512;

const ChunkSource = { zero: 0, template: 1, store: 2 } as const;

/** The files of one lazily restored RAM file; they live beside it in tmpfs and go with it. */
export interface LazyMemoryFiles {
  memoryFile: string;
  mapFile: string;
  statusFile: string;
  /** the snapshot's delta -> base chunk map (JSON): a capture of the machine records the bases of the deltas it keeps */
  deltasFile: string;
  /** sparse, RAM-sized: chunks copied before a write while a snapshot is captured with the guest running */
  copyFile: string;
}

export function lazyMemoryFiles(memoryFile: string): LazyMemoryFiles {
  return {
    memoryFile,
    mapFile: `${memoryFile}.map`,
    statusFile: `${memoryFile}.pager`,
    deltasFile: `${memoryFile}.deltas.json`,
    copyFile: `${memoryFile}.cow`,
  };
}

export interface LazyMemorySupport {
  available: boolean;
  /** why not, when not: shown to the user as a note */
  reason?: string;
  /** the preloadable pager */
  library?: string;
  /** userfaultfd write-protect on shared memory (for dirty tracking) */
  writeProtect: boolean;
}

let support: Promise<LazyMemorySupport> | undefined;

let pagerLibraryPath: Promise<string | undefined> | undefined;

/** The preloadable pager library (built once per source version); for a restore already prepared lazily. */
export function pagerLibrary(): Promise<string | undefined> {
  // Once per process: a supervisor asks at every start, and each ask reads and hashes the source.
  pagerLibraryPath ??= buildNative(source, 'lazy-memory.so', ['-shared', '-fPIC', '-pthread'], ['-lzstd']);
  pagerLibraryPath.catch(() => (pagerLibraryPath = undefined));
  return pagerLibraryPath;
}

async function probe(): Promise<LazyMemorySupport> {
  let library: string | undefined;
  let prober: string | undefined;
  try {
    library = await pagerLibrary();
    prober = await buildNative(source, 'lazy-memory-probe', ['-DTORPOR_LAZY_MEMORY_PROBE', '-pthread']);
  } catch (error) {
    return {
      available: false,
      reason: `the pager does not build (apt-get install -y libzstd-dev libxxhash-dev): ${(error as Error).message.split('\n')[0]}`,
      writeProtect: false,
    };
  }
  if (!library || !prober) return { available: false, reason: 'no C compiler to build the pager (apt-get install -y gcc)', writeProtect: false };
  const { stdout } = await runCommand(prober, [], { allowFailure: true });
  const verdict = stdout.trim();
  if (!verdict.startsWith('available'))
    return { available: false, reason: verdict.replace(/^unavailable /, '') || 'the userfaultfd probe failed', writeProtect: false };
  return { available: true, library, writeProtect: verdict.includes('write-protect=1') };
}

/** Whether restores can serve guest RAM on demand here (probed once per process; the build is cached per host). */
/** The pager library and its probe, built (the `torpor` image carries them prebuilt: it has no compiler). */
export async function lazyMemoryHelpers(): Promise<string[]> {
  const library = await pagerLibrary();
  const prober = await buildNative(source, 'lazy-memory-probe', ['-DTORPOR_LAZY_MEMORY_PROBE', '-pthread']);
  return [library, prober].filter((path): path is string => Boolean(path));
}

export function lazyMemorySupport(): Promise<LazyMemorySupport> {
  if (!environment().TORPOR_LAZY_MEMORY) return Promise.resolve({ available: false, reason: 'TORPOR_LAZY_MEMORY=0', writeProtect: false });
  support ??= probe();
  return support;
}

export interface PrepareLazyMemoryOptions {
  memoryFile: string;
  /** an already materialized snapshot whose chunks may be copied (the boot template's RAM in tmpfs) */
  base?: { manifest: SnapshotManifest; memoryFile: string };
  /** chunk indices to serve first, in order (the working set a previous restore touched early) */
  prefetch?: number[];
  /** unique per machine: names the pin that keeps this restore's chunks through gc */
  pinKey: string;
  /** the RAM file already holds these chunks (a warm RAM file): keep it, and serve only the others */
  present?: Uint8Array;
}

function statusSize(chunkCount: number): number {
  return statusHeaderSize + Math.ceil(chunkCount / 8) * 8 * 4 + chunkCount * 8;
}

function writePath(header: Buffer, index: number, path: string): void {
  const bytes = Buffer.from(path);
  if (bytes.length >= pathSize)
    throw new TorporError('path-too-long', `path too long for the lazy memory pager: ${path}`, { hint: 'use a shorter TORPOR_HOME or TORPOR_MEMORY_DIR' });
  bytes.copy(header, 64 + index * pathSize);
}

/** The page map (format in native/lazy-memory.c): where each chunk of the snapshot's RAM comes from. */
export function encodePageMap(
  manifest: SnapshotManifest,
  files: LazyMemoryFiles,
  chunksDirectory: string,
  options: Pick<PrepareLazyMemoryOptions, 'base' | 'prefetch'>,
): Buffer {
  const layout = manifest.memory;
  const count = layout.chunks.length;
  const prefetch = (options.prefetch ?? []).filter((index) => Number.isInteger(index) && index >= 0 && index < count && layout.chunks[index] !== null);
  const map = Buffer.alloc(mapHeaderSize + count * recordSize + prefetch.length * 4);
  map.write('TORPMAP1', 0, 'latin1');
  map.writeBigUInt64LE(BigInt(layout.size), 8);
  map.writeUInt32LE(layout.chunkSize, 16);
  map.writeUInt32LE(count, 20);
  map.writeUInt32LE(prefetch.length, 24);
  writePath(map, 0, files.memoryFile);
  writePath(map, 1, chunksDirectory);
  writePath(map, 2, options.base?.memoryFile ?? '');
  writePath(map, 3, files.statusFile);
  const baseLayout = options.base && options.base.manifest.memory.chunkSize === layout.chunkSize ? options.base.manifest.memory : undefined;
  layout.chunks.forEach((id, index) => {
    const record = mapHeaderSize + index * recordSize;
    if (id === null) return; // source zero, id unused
    map.writeUInt8(baseLayout?.chunks[index] === id ? ChunkSource.template : ChunkSource.store, record);
    if (!/^[0-9a-f]{32}$/.test(id))
      throw new TorporError('snapshot-corrupt', `snapshot ${manifest.name} has an invalid chunk id`, {
        hint: `remove it: torpor snapshots rm ${manifest.name}`,
      });
    map.write(id, record + 16, 'latin1');
  });
  prefetch.forEach((index, position) => map.writeUInt32LE(index, mapHeaderSize + count * recordSize + position * 4));
  return map;
}

/**
 * Prepares a lazy restore of a snapshot's RAM: an empty sparse RAM file, the page map, the status
 * file the pager reports into, and a pin on the chunks it may read. QEMU then starts with the pager
 * preloaded (`pagerEnvironment`) and the guest's memory arrives as it touches it.
 */
export async function prepareLazyMemory(manifest: SnapshotManifest, options: PrepareLazyMemoryOptions): Promise<LazyMemoryFiles> {
  const files = lazyMemoryFiles(options.memoryFile);
  const root = paths.snapshots();
  const map = encodePageMap(manifest, files, join(root, 'chunks'), options);
  const count = manifest.memory.chunks.length;
  if (options.present && options.present.length !== count) throw new TorporError('lazy-memory-failed', 'the warm RAM file does not match the snapshot layout');
  const status = Buffer.alloc(statusSize(count));
  if (options.present) status.set(options.present, statusHeaderSize);
  // The pin needs the store's activity marker (gc must not run between reading the manifest and
  // pinning its chunks); the machine's own files are outside the store and need nothing of it, so
  // they are written beside it, not after it (the marker and gc check cost 1-9 ms under load, on
  // the way to QEMU's launch). Nothing reads them before this returns.
  const pinned = (async () => {
    const endActivity = await beginActivity(root, 'lazy-restore');
    try {
      await pinChunks(
        root,
        options.pinKey,
        // The bases of its deltas too: the pager reads them to rebuild a delta chunk.
        [...manifest.memory.chunks.filter((id): id is string => id !== null), ...Object.values(manifest.memory.deltaBases ?? {})],
      );
    } finally {
      await endActivity();
    }
  })();
  const written = await Promise.allSettled([
    pinned,
    mkdir(dirname(files.memoryFile), { recursive: true }).then(() =>
      Promise.all(
        (
          [
            [files.memoryFile, manifest.memory.size, undefined],
            [files.statusFile, status.length, status],
            [files.mapFile, map.length, map],
            [files.deltasFile, 0, Buffer.from(JSON.stringify(manifest.memory.deltaBases ?? {}))],
            [files.copyFile, manifest.memory.size, undefined],
          ] as const
        ).map(async ([path, size, content]) => {
          if (path === files.memoryFile && options.present) return;
          // (the copy file is sparse: it takes memory only while a capture runs beside the guest)
          const handle = await open(path, 'w', 0o600);
          try {
            if (content) await handle.writeFile(content);
            else await handle.truncate(size);
          } finally {
            await handle.close();
          }
        }),
      ),
    ),
  ]);
  const failure = written.find((outcome) => outcome.status === 'rejected');
  if (failure) {
    await removeLazyMemoryFiles(options.memoryFile);
    // (a pin written before another step failed; none if the pin itself failed)
    await unpinChunks(root, options.pinKey);
    throw (failure as PromiseRejectedResult).reason;
  }
  return files;
}

/** What QEMU's environment needs for the pager to take over the RAM file. */
/**
 * Preloads the same library into every QEMU that drops root, only to re-arm its parent-death signal
 * after QEMU's setuid (the kernel clears it then). Without the library (no C compiler) a QEMU whose
 * supervisor is killed keeps running, and `torpor ps` says so.
 */
export async function parentDeathEnvironment(): Promise<Record<string, string>> {
  const support = await lazyMemorySupport();
  return support.library ? { LD_PRELOAD: support.library, TORPOR_PARENT_DEATH: '1' } : {};
}

export function pagerEnvironment(library: string, files: LazyMemoryFiles): Record<string, string> {
  return { LD_PRELOAD: library, TORPOR_LAZY_MEMORY_MAP: files.mapFile };
}

/** The machine that prepared the pin may hand it on (the supervisor outlives the CLI). */
export function holdLazyMemoryPin(pinKey: string, pid: number): Promise<void> {
  return addPinHolder(paths.snapshots(), pinKey, pid);
}

export function releaseLazyMemoryPin(pinKey: string): Promise<void> {
  return unpinChunks(paths.snapshots(), pinKey);
}

export async function removeLazyMemoryFiles(memoryFile: string): Promise<void> {
  const files = lazyMemoryFiles(memoryFile);
  await Promise.all([
    rm(files.mapFile, { force: true }),
    rm(files.statusFile, { force: true }),
    rm(`${files.statusFile}.sock`, { force: true }),
    rm(files.deltasFile, { force: true }),
    rm(files.copyFile, { force: true }),
  ]);
}

/**
 * Asks the pager to write-protect the guest's RAM again (call with the guest paused, right after a
 * snapshot): from then on its dirty flags say which chunks were written since that snapshot.
 * Resolves to the new generation.
 */
export function protectGuestMemory(memoryFile: string, timeoutMs = 5000): Promise<number> {
  return pagerRequest(memoryFile, 'protect', timeoutMs);
}

/**
 * Guest paused: a protect round (the new generation is returned), and from now until `thaw` the
 * pager copies a loaded chunk to the copy file before its first write goes through. A capture can
 * then run beside the guest: `copiedChunks` says which chunks to read from the copy instead.
 */
export function freezeGuestMemory(memoryFile: string, timeoutMs = 5000): Promise<number> {
  return pagerRequest(memoryFile, 'freeze', timeoutMs);
}

export function thawGuestMemory(memoryFile: string, timeoutMs = 5000): Promise<number> {
  return pagerRequest(memoryFile, 'thaw', timeoutMs);
}

/** 1 per chunk the pager copied before a write since the last freeze (read after the capture's reads). */
export async function copiedChunks(memoryFile: string): Promise<Uint8Array> {
  const status = await readLazyMemoryStatus(memoryFile);
  if (!status) throw new Error('the machine has no pager');
  return status.copied;
}

function pagerRequest(memoryFile: string, request: 'protect' | 'freeze' | 'thaw', timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect(`${lazyMemoryFiles(memoryFile).statusFile}.sock`);
    let reply = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the pager did not answer the ${request} request`));
    }, timeoutMs);
    socket.on('connect', () => socket.write(`${request}\n`));
    socket.on('data', (data) => (reply += data.toString()));
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.on('close', () => {
      clearTimeout(timer);
      const match = /^ok (\d+)/.exec(reply);
      if (match) resolve(Number(match[1]));
      else reject(new Error(`the pager refused to ${request}: ${reply.trim() || 'no answer'}`));
    });
  });
}

export interface LazyMemoryCounters {
  faults: number;
  zeroPages: number;
  templateChunks: number;
  storeChunks: number;
  zeroChunks: number;
  templateMismatches: number;
  copiedBytes: number;
  templateMs: number;
  storeMs: number;
  prefetchedChunks: number;
  servedChunks: number;
  /** mean time a faulting thread waited for its page, in microseconds */
  meanFaultMicroseconds: number;
}

export interface LazyMemoryStatus {
  state: 'waiting' | 'serving' | 'failed';
  error?: string;
  counters: LazyMemoryCounters;
  chunkSize: number;
  /** the snapshot's chunk ids, as in the page map */
  chunks: (string | null)[];
  /** 1 per chunk the pager has placed into the RAM file */
  loaded: Uint8Array;
  /** chunks in the order they were served, with milliseconds since the pager started */
  order: { chunk: number; milliseconds: number }[];
  /** writes are tracked: `dirty` is valid relative to the page map (generation 0) or the last protect round */
  tracking: boolean;
  protectGeneration: number;
  writeFaults: number;
  /** 1 per chunk written since the last protect round */
  dirty: Uint8Array;
  /** 1 per chunk copied to the copy file before a write, since the last freeze */
  copied: Uint8Array;
  /** the restored snapshot's delta -> base chunk map (undefined: not recorded, read the chunk files) */
  deltaBases?: Record<string, string>;
}

interface PageMap {
  /** identifies the files' versions (inode, time, size): a map written again is read again */
  version: string;
  chunkSize: number;
  chunks: (string | null)[];
  deltaBases?: Record<string, string>;
}

/**
 * The page map and the delta map do not change while a machine runs, and a checkpoint reads them
 * with the guest paused: parsed once per version of the files (a few ms each time, for 512 MiB).
 */
const pageMaps = new Map<string, PageMap>();

async function pageMapOf(files: ReturnType<typeof lazyMemoryFiles>): Promise<PageMap> {
  const [mapStatus, deltasStatus] = await Promise.all([stat(files.mapFile), stat(files.deltasFile).catch(() => undefined)]);
  const versionOf = (status: { ino: number; mtimeMs: number; size: number } | undefined) => (status ? `${status.ino}:${status.mtimeMs}:${status.size}` : '-');
  const version = `${versionOf(mapStatus)}/${versionOf(deltasStatus)}`;
  const cached = pageMaps.get(files.mapFile);
  if (cached?.version === version) return cached;
  const map = await readFile(files.mapFile);
  const chunkSize = map.readUInt32LE(16);
  const count = map.readUInt32LE(20);
  const chunks: (string | null)[] = [];
  for (let index = 0; index < count; index++) {
    const record = mapHeaderSize + index * recordSize;
    const id = map.toString('latin1', record + 16, record + 48);
    chunks.push(id === '\0'.repeat(32) ? null : id);
  }
  const deltaBases = await readFile(files.deltasFile, 'utf8').then(
    (text) => JSON.parse(text) as Record<string, string>,
    () => undefined,
  );
  const parsed: PageMap = { version, chunkSize, chunks, ...(deltaBases ? { deltaBases } : {}) };
  // A process that looks at many machines (a benchmark, `serve`) keeps only the latest few.
  if (pageMaps.size >= 16) pageMaps.delete(pageMaps.keys().next().value!);
  pageMaps.set(files.mapFile, parsed);
  return parsed;
}

/** Parses the page map ahead (a checkpoint does it before its pause); nothing for an eager RAM file. */
export async function loadPageMap(memoryFile: string): Promise<void> {
  await pageMapOf(lazyMemoryFiles(memoryFile)).catch(() => {});
}

/** The pager's state and error, as its status file's header says them. */
function pagerStateOf(header: Buffer): { state: LazyMemoryStatus['state']; error?: string } {
  const stateCode = header.readUInt32LE(8);
  const errorText = header.toString('utf8', 144, 512).replace(/\0[\s\S]*$/, '');
  return { state: stateCode === 1 ? 'serving' : stateCode === 2 ? 'failed' : 'waiting', ...(errorText ? { error: errorText } : {}) };
}

/**
 * Only the pager's state and error, from the status file's header: the check before a restored
 * guest runs, which must not wait for the page map to be read and parsed. Undefined: no lazy memory.
 */
export async function readPagerState(memoryFile: string): Promise<{ state: LazyMemoryStatus['state']; error?: string } | undefined> {
  let handle;
  try {
    handle = await open(lazyMemoryFiles(memoryFile).statusFile, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const header = Buffer.alloc(statusHeaderSize);
    const { bytesRead } = await handle.read(header, 0, statusHeaderSize, 0);
    if (bytesRead < statusHeaderSize) return { state: 'failed', error: 'the pager status file is truncated' };
    return pagerStateOf(header);
  } finally {
    await handle.close();
  }
}

/** The pager's view of a lazily restored RAM file; undefined when the file was restored eagerly. */
export async function readLazyMemoryStatus(memoryFile: string): Promise<LazyMemoryStatus | undefined> {
  const files = lazyMemoryFiles(memoryFile);
  let pageMap: PageMap;
  let status: Buffer;
  try {
    [pageMap, status] = await Promise.all([pageMapOf(files), readFile(files.statusFile)]);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  const { chunkSize, deltaBases } = pageMap;
  const chunks = pageMap.chunks.slice();
  const count = chunks.length;
  const counter = (index: number) => Number(status.readBigUInt64LE(16 + index * 8));
  const servedOrder = Math.min(counter(10), count);
  const orderStart = statusHeaderSize + Math.ceil(count / 8) * 8;
  const order: { chunk: number; milliseconds: number }[] = [];
  for (let position = 0; position < servedOrder; position++) {
    order.push({ chunk: status.readUInt32LE(orderStart + position * 8), milliseconds: status.readUInt32LE(orderStart + position * 8 + 4) });
  }
  const faults = counter(0);
  return {
    ...pagerStateOf(status),
    counters: {
      faults,
      zeroPages: counter(1),
      templateChunks: counter(2),
      storeChunks: counter(3),
      zeroChunks: counter(4),
      templateMismatches: counter(5),
      copiedBytes: counter(6),
      templateMs: counter(7) / 1e6,
      storeMs: counter(8) / 1e6,
      prefetchedChunks: counter(9),
      servedChunks: servedOrder,
      meanFaultMicroseconds: faults ? counter(11) / faults / 1000 : 0,
    },
    chunkSize,
    chunks,
    loaded: new Uint8Array(status.buffer, status.byteOffset + statusHeaderSize, count).slice(),
    order,
    tracking: counter(14) === 1,
    protectGeneration: counter(12),
    writeFaults: counter(13),
    dirty: new Uint8Array(status.buffer, status.byteOffset + orderStart + count * 8, count).slice(),
    copied: new Uint8Array(status.buffer, status.byteOffset + orderStart + count * 8 + Math.ceil(count / 8) * 8 * 2, count).slice(),
    ...(deltaBases ? { deltaBases } : {}),
  };
}

/** Chunks served within `milliseconds` of the start: what the next restore should prefetch. */
export function workingSet(status: LazyMemoryStatus, milliseconds = 1000): number[] {
  return status.order.filter((entry) => entry.milliseconds <= milliseconds).map((entry) => entry.chunk);
}
