import { applyDelta, decodeDeltaHeader, isDelta, maximumDeltaDepth } from '../snapshot/chunk-delta.ts';
import { chunkIdOf } from '../snapshot/chunk-operations.ts';
import { SeekableDecoder, SeekableFormatError, framesCovering, parseSeekTable, type SeekTable } from '../snapshot/seekable-zstd.ts';
import type { SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { TorporError } from '../util/errors.ts';
import type { ObjectStore } from './object-store.ts';

// Single frames of a chunk straight from the object store, for a lazy restore that has not pulled
// the chunk: one ranged GET of the chunk's tail for its seek table (cached: chunks never change),
// then one ranged GET per 64 KiB frame. Frames are checked against the seek table's checksums and
// zstd's own; the whole-chunk hash cannot be checked without the whole chunk, so ranged reads catch
// damage, not a store that forges a consistent chunk (pull verifies that; architecture/object-store.md).

export interface FrameReader {
  /** the decompressed bytes of frame `frameIndex` of a chunk */
  readFrame(chunkId: string, frameIndex: number): Promise<Buffer>;
  /** bytes [offset, offset + length) of a snapshot's guest RAM, reading only the frames that hold them */
  readMemoryRange(manifest: SnapshotManifest, offset: number, length: number): Promise<Buffer>;
  /** seek tables held (one per chunk read) */
  readonly cachedTables: number;
}

/** The seek table of a 256 KiB chunk with 64 KiB frames is 65 bytes; one read of this size nearly always gets it whole. */
const firstTailBytes = 1024;
const maxTables = 65_536;

export function createFrameReader(store: ObjectStore): FrameReader {
  const tables = new Map<string, SeekTable>();
  const decoder = new SeekableDecoder();

  function damaged(chunkId: string, why: string): TorporError {
    return new TorporError('store-chunk-corrupt', `chunk ${chunkId} in ${store.url} is damaged: ${why}`, {
      hint: 'push the snapshot again from a node that has it, and check the bucket for tampering',
    });
  }

  async function seekTable(chunkId: string): Promise<SeekTable> {
    const known = tables.get(chunkId);
    if (known) return known;
    const head = await store.headChunk(chunkId);
    if (!head) throw new TorporError('object-missing', `chunk ${chunkId} is not in ${store.url}`, { hint: 'push the snapshot again from a node that has it' });
    let size = head.bytes;
    let tailBytes = Math.min(size, firstTailBytes);
    for (;;) {
      const tail = await store.getChunkRange(chunkId, { start: size - tailBytes, end: size });
      if (tail.totalBytes !== size) {
        // Replaced between the two reads: a torn upload repaired by a push. Start over once.
        size = tail.totalBytes;
        tailBytes = Math.min(size, firstTailBytes);
        continue;
      }
      try {
        const table = parseSeekTable(tail.data, size);
        if (tables.size >= maxTables) tables.delete(tables.keys().next().value!);
        tables.set(chunkId, table);
        return table;
      } catch (error) {
        const needs = error instanceof SeekableFormatError ? /needs (\d+) bytes/.exec(error.message) : null;
        if (needs && Number(needs[1]) <= size && Number(needs[1]) > tailBytes) {
          tailBytes = Number(needs[1]);
          continue;
        }
        throw damaged(chunkId, (error as Error).message);
      }
    }
  }

  async function frame(chunkId: string, table: SeekTable, frameIndex: number): Promise<Buffer> {
    const entry = table.entries[frameIndex];
    if (!entry) throw new TorporError('range-invalid', `chunk ${chunkId} has ${table.entries.length} frames, not ${frameIndex + 1}`);
    if (entry.compressedSize === 0) throw damaged(chunkId, `frame ${frameIndex} is empty`);
    const { data } = await store.getChunkRange(chunkId, { start: entry.compressedOffset, end: entry.compressedOffset + entry.compressedSize });
    try {
      return decoder.decodeFrame(entry, data);
    } catch (error) {
      throw damaged(chunkId, (error as Error).message);
    }
  }

  // A 4 KiB page delta (snapshot/chunk-delta.ts) holds only its changed pages: its frames are not
  // the chunk's. It is read whole with its bases (deltas are small) and rebuilt, and then the whole
  // chunk's hash is checked, which a frame read cannot do.
  async function wholeChunk(chunkId: string, expectedLength: number, depth = 0): Promise<Buffer> {
    const encoded = await store.getChunk(chunkId, { maxBytes: expectedLength * 2 + 64 * 1024 });
    let data: Buffer;
    try {
      if (isDelta(encoded)) {
        if (depth >= maximumDeltaDepth) throw new Error(`its chain of deltas is longer than ${maximumDeltaDepth}`);
        const header = decodeDeltaHeader(encoded);
        data = applyDelta(await wholeChunk(header.baseId, header.chunkLength, depth + 1), header, decoder.decodeAll(encoded.subarray(header.headerSize)));
      } else {
        data = decoder.decodeAll(encoded);
      }
    } catch (error) {
      if (error instanceof TorporError) throw error;
      throw damaged(chunkId, (error as Error).message);
    }
    if (data.length !== expectedLength || chunkIdOf(data) !== chunkId) throw damaged(chunkId, 'its content does not match its id');
    return data;
  }

  return {
    get cachedTables() {
      return tables.size;
    },
    async readFrame(chunkId, frameIndex) {
      return frame(chunkId, await seekTable(chunkId), frameIndex);
    },
    async readMemoryRange(manifest, offset, length) {
      const layout = manifest.memory;
      if (offset < 0 || length < 0 || offset + length > layout.size) {
        throw new TorporError('range-invalid', `range ${offset}+${length} is outside the ${layout.size}-byte memory of ${manifest.name}`);
      }
      const output = Buffer.alloc(length);
      for (let position = offset; position < offset + length; ) {
        const index = Math.floor(position / layout.chunkSize);
        const chunkStart = index * layout.chunkSize;
        const chunkEnd = Math.min(chunkStart + layout.chunkSize, layout.size, offset + length);
        const id = layout.chunks[index];
        const chunkLength = Math.min(layout.chunkSize, layout.size - chunkStart);
        const declaredDelta = id !== null && id !== undefined && layout.deltaBases?.[id] !== undefined;
        const table = id && !declaredDelta ? await seekTable(id) : undefined;
        // A delta the manifest does not declare has no seek table at its end that fits (an error
        // above), or one of fewer bytes than the chunk: read whole, its hash decides.
        if (id && (declaredDelta || table!.decompressedSize !== chunkLength)) {
          const data = await wholeChunk(id, chunkLength);
          data.copy(output, position - offset, position - chunkStart, chunkEnd - chunkStart);
        } else if (id && table) {
          for (const entry of framesCovering(table, position - chunkStart, chunkEnd - position)) {
            const data = await frame(id, table, table.entries.indexOf(entry));
            const frameStart = chunkStart + entry.decompressedOffset;
            const from = Math.max(position, frameStart);
            const to = Math.min(chunkEnd, frameStart + entry.decompressedSize);
            data.copy(output, from - offset, from - frameStart, to - frameStart);
          }
        }
        position = chunkEnd;
      }
      return output;
    },
  };
}
