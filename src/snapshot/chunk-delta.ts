// 4 KiB page deltas (issue 11): a chunk that differs from the chunk at its place in the previous
// snapshot in a few pages is stored as those pages plus the id of that base chunk, under its own id
// (the hash of its whole content, as for every chunk), so dedup, pins and verification work as
// before. Format of such a file (native/lazy-memory.c reads it too):
//   a zstd skippable frame, magic 0x184D2A53, payload:
//     0 "TORPDLT1"   8 base chunk id (32 hex)   40 u32 chunk length   44 u32 changed page count
//     48 one bit per 4 KiB page of the chunk, set for a changed page (page 0 = bit 0 of byte 0)
//   then the changed pages, in order, as a seekable zstd file (frames + seek table)
// A plain zstd decoder skips both skippable frames and yields only the changed pages: a reader that
// does not know deltas fails on the length ("holds N bytes, expected M"), never reads them as the chunk.

export const deltaMagic = 0x184d2a53;
const deltaTag = 'TORPDLT1';
const pageSize = 4096;
/** A delta's base may itself be a delta; restoring one reads at most this many files. */
export const maximumDeltaDepth = 4;

export interface DeltaHeader {
  baseId: string;
  chunkLength: number;
  /** indices of the changed pages, ascending */
  pages: number[];
  /** bytes of the header frame: the seekable pages start here */
  headerSize: number;
}

export function isDelta(file: Uint8Array): boolean {
  return file.length >= 4 && Buffer.from(file.buffer, file.byteOffset, 4).readUInt32LE(0) === deltaMagic;
}

export function encodeDeltaHeader(baseId: string, chunkLength: number, pages: number[]): Buffer {
  const bitmapBytes = Math.ceil(chunkLength / pageSize / 8);
  const header = Buffer.alloc(8 + 48 + bitmapBytes);
  header.writeUInt32LE(deltaMagic, 0);
  header.writeUInt32LE(48 + bitmapBytes, 4);
  header.write(deltaTag, 8, 'latin1');
  header.write(baseId, 16, 'latin1');
  header.writeUInt32LE(chunkLength, 48);
  header.writeUInt32LE(pages.length, 52);
  for (const page of pages) header[56 + (page >> 3)]! |= 1 << (page & 7);
  return header;
}

/** Parses a delta file's header; throws with the reason when it is not a well-formed one. */
export function decodeDeltaHeader(file: Uint8Array): DeltaHeader {
  const view = Buffer.from(file.buffer, file.byteOffset, file.byteLength);
  if (view.length < 56 || view.readUInt32LE(0) !== deltaMagic || view.toString('latin1', 8, 16) !== deltaTag) throw new Error('not a chunk delta');
  const payload = view.readUInt32LE(4);
  const baseId = view.toString('latin1', 16, 48);
  const chunkLength = view.readUInt32LE(48);
  const count = view.readUInt32LE(52);
  const bitmapBytes = Math.ceil(chunkLength / pageSize / 8);
  if (!/^[0-9a-f]{32}$/.test(baseId)) throw new Error('chunk delta names an invalid base');
  if (chunkLength === 0 || chunkLength % pageSize !== 0 || chunkLength > 64 << 20 || payload !== 48 + bitmapBytes || view.length < 8 + payload)
    throw new Error('chunk delta has an impossible header');
  const pages: number[] = [];
  for (let page = 0; page < chunkLength / pageSize; page++) if (view[56 + (page >> 3)]! & (1 << (page & 7))) pages.push(page);
  if (pages.length !== count) throw new Error('chunk delta page count does not match its bitmap');
  return { baseId, chunkLength, pages, headerSize: 8 + payload };
}

/** The pages of `data` that differ from `base` (same length). */
export function changedPages(data: Buffer, base: Buffer): number[] {
  const pages: number[] = [];
  for (let offset = 0; offset < data.length; offset += pageSize) {
    const end = Math.min(offset + pageSize, data.length);
    if (data.compare(base, offset, end, offset, end) !== 0) pages.push(offset / pageSize);
  }
  return pages;
}

/** The changed pages of `data`, concatenated (what the delta stores). */
export function gatherPages(data: Buffer, pages: number[]): Buffer {
  const out = Buffer.allocUnsafe(pages.length * pageSize);
  pages.forEach((page, position) => data.copy(out, position * pageSize, page * pageSize, page * pageSize + pageSize));
  return out;
}

/** The chunk: `base` with the stored pages put in place. */
export function applyDelta(base: Buffer, header: DeltaHeader, pageBytes: Buffer): Buffer {
  if (base.length !== header.chunkLength) throw new Error(`chunk delta base holds ${base.length} bytes, expected ${header.chunkLength}`);
  if (pageBytes.length !== header.pages.length * pageSize) throw new Error('chunk delta holds the wrong number of page bytes');
  const data = Buffer.from(base);
  header.pages.forEach((page, position) => pageBytes.copy(data, page * pageSize, position * pageSize, position * pageSize + pageSize));
  return data;
}
