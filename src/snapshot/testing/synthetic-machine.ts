import { closeSync, ftruncateSync, openSync, readSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

// Stand-ins for a guest's RAM file and disk layer, for tests and benchmarks without a VM: sparse
// files whose live pages come in runs (the way a kernel and a heap fill memory), part random bytes
// (compressed or encrypted data, code), part JSON text (a node heap's strings and objects).

export const pageSize = 4096;

/** Small, seeded generator: positions must be reproducible, the bytes need not be. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state >>>= 0;
    state ^= state >>> 17;
    state ^= state << 5;
    state >>>= 0;
    return state / 0x100000000;
  };
}

const words = (
  'session agent tool call result message user assistant content model token stream ' +
  'context file read write error retry timeout status value request response index name id'
).split(' ');

/** One page of JSON-looking text: compresses about 3-4x with zstd, like real heap strings. */
export function textPage(random: () => number): Buffer {
  let text = '';
  while (text.length < pageSize) {
    const word = () => words[Math.floor(random() * words.length)];
    text += `{"${word()}":${Math.floor(random() * 1e9)},"${word()}":"${word()} ${word()} ${Math.floor(random() * 1e6).toString(36)}","${word()}":${(random() * 1000).toFixed(3)}},`;
  }
  return Buffer.from(text.slice(0, pageSize));
}

export function livePage(random: () => number, randomShare: number): Buffer {
  return random() < randomShare ? randomBytes(pageSize) : textPage(random);
}

export interface PageRun {
  page: number;
  count: number;
}

export interface SyntheticFile {
  path: string;
  size: number;
  runs: PageRun[];
  livePages: number;
}

/**
 * A sparse file of `size` bytes with about `liveBytes` of non-zero pages in runs of 1..maxRun pages
 * at random places. `randomShare` of the pages are incompressible.
 */
export function writeSyntheticFile(
  path: string,
  options: { size: number; liveBytes: number; randomShare: number; seed: number; maxRun?: number },
): SyntheticFile {
  const random = seededRandom(options.seed);
  const totalPages = Math.floor(options.size / pageSize);
  const maxRun = options.maxRun ?? 256;
  const fd = openSync(path, 'w', 0o600);
  const runs: PageRun[] = [];
  let livePages = 0;
  try {
    ftruncateSync(fd, options.size);
    const wanted = Math.floor(options.liveBytes / pageSize);
    const used = new Uint8Array(totalPages);
    while (livePages < wanted) {
      const count = Math.min(1 + Math.floor(random() * random() * maxRun), wanted - livePages);
      const page = Math.floor(random() * (totalPages - count));
      let fresh = 0;
      for (let index = page; index < page + count; index++) if (!used[index]) fresh++;
      if (fresh < count) continue; // keep runs apart so the live byte count is exact
      const buffer = Buffer.allocUnsafe(count * pageSize);
      for (let index = 0; index < count; index++) {
        livePage(random, options.randomShare).copy(buffer, index * pageSize);
        used[page + index] = 1;
      }
      writeSync(fd, buffer, 0, buffer.length, page * pageSize);
      runs.push({ page, count });
      livePages += count;
    }
  } finally {
    closeSync(fd);
  }
  return { path, size: options.size, runs, livePages };
}

/**
 * Rewrites about `share` of a file's pages the way a running guest does between two snapshots:
 * runs of up to `maxRun` pages, most inside live data (heap updates), some in free memory (new
 * allocations). Returns the byte ranges written.
 */
export function changePages(
  file: SyntheticFile,
  options: { share: number; seed: number; maxRun: number; insideLive?: number; randomShare: number },
): PageRun[] {
  const random = seededRandom(options.seed);
  const totalPages = Math.floor(file.size / pageSize);
  const wanted = Math.max(1, Math.floor(totalPages * options.share));
  const insideLive = options.insideLive ?? 0.8;
  const changed: PageRun[] = [];
  const fd = openSync(file.path, 'r+');
  try {
    let done = 0;
    while (done < wanted) {
      const count = Math.min(1 + Math.floor(random() * options.maxRun), wanted - done);
      let page: number;
      if (random() < insideLive && file.runs.length > 0) {
        const run = file.runs[Math.floor(random() * file.runs.length)];
        page = run.page + Math.floor(random() * run.count);
      } else {
        page = Math.floor(random() * totalPages);
      }
      page = Math.min(page, totalPages - count);
      const buffer = Buffer.allocUnsafe(count * pageSize);
      for (let index = 0; index < count; index++) livePage(random, options.randomShare).copy(buffer, index * pageSize);
      writeSync(fd, buffer, 0, buffer.length, page * pageSize);
      changed.push({ page, count });
      done += count;
    }
  } finally {
    closeSync(fd);
  }
  return changed;
}

/** Chunk indices that a set of page runs touches. */
export function chunksTouched(runs: PageRun[], chunkSize: number): Set<number> {
  const chunks = new Set<number>();
  for (const run of runs) {
    const first = Math.floor((run.page * pageSize) / chunkSize);
    const last = Math.floor(((run.page + run.count) * pageSize - 1) / chunkSize);
    for (let index = first; index <= last; index++) chunks.add(index);
  }
  return chunks;
}

/** Byte-for-byte equality of two files, read in 8 MiB pieces (RAM files are too large to load whole). */
export function sameFileContent(a: string, b: string): boolean {
  const size = statSync(a).size;
  if (size !== statSync(b).size) return false;
  const [fa, fb] = [openSync(a, 'r'), openSync(b, 'r')];
  const [ba, bb] = [Buffer.allocUnsafe(8 * 1024 * 1024), Buffer.allocUnsafe(8 * 1024 * 1024)];
  try {
    for (let offset = 0; offset < size; offset += ba.length) {
      const na = readSync(fa, ba, 0, ba.length, offset);
      const nb = readSync(fb, bb, 0, bb.length, offset);
      if (na !== nb || !ba.subarray(0, na).equals(bb.subarray(0, nb))) return false;
    }
  } finally {
    closeSync(fa);
    closeSync(fb);
  }
  return true;
}
