import { Compressor, Decompressor } from 'zstd-napi';
import { xxh64 } from '@node-rs/xxhash';

// The zstd seekable format (facebook/zstd contrib/seekable_format, v0.1.0): independent zstd frames
// followed by a skippable frame holding the seek table. Any range can be decompressed by reading
// only the frames that cover it, and a plain `zstd -d` still reads the file (it skips the table).

const skippableMagic = 0x184d2a5e;
const seekableMagic = 0x8f92eab1;
const footerSize = 9;
const entrySizeWithChecksum = 12;
const checksumFlag = 0x80;
const reservedBits = 0x7c;

export interface SeekTableEntry {
  compressedOffset: number;
  compressedSize: number;
  decompressedOffset: number;
  decompressedSize: number;
  /** low 32 bits of XXH64 of the frame's decompressed bytes, when the table carries checksums */
  checksum?: number;
}

export interface SeekTable {
  entries: SeekTableEntry[];
  /** bytes of zstd frames before the seek table */
  framesSize: number;
  decompressedSize: number;
  /** size of the whole seek table frame (header, entries, footer) */
  tableFrameSize: number;
}

/** A file that is not a valid zstd seekable-format file (bad frame, seek table or sizes). */
export class SeekableFormatError extends Error {}

function frameChecksum(data: Uint8Array): number {
  return Number(xxh64(data) & 0xffffffffn);
}

/** One compressor per thread: zstd contexts are expensive to create and not thread-safe. */
export class SeekableEncoder {
  private readonly compressor = new Compressor();

  constructor(
    readonly frameSize: number,
    level: number,
  ) {
    // The frame checksum lets zstd itself (and `zstd -d`) catch a corrupted frame on a range read.
    this.compressor.setParameters({ compressionLevel: level, checksumFlag: true, contentSizeFlag: true });
  }

  encode(data: Uint8Array): Buffer {
    const frames: Buffer[] = [];
    const table = Buffer.alloc(8 + Math.ceil(data.length / this.frameSize) * entrySizeWithChecksum + footerSize);
    let position = 8;
    let count = 0;
    for (let offset = 0; offset < data.length; offset += this.frameSize) {
      const slice = data.subarray(offset, Math.min(offset + this.frameSize, data.length));
      const frame = this.compressor.compress(slice);
      frames.push(frame);
      table.writeUInt32LE(frame.length, position);
      table.writeUInt32LE(slice.length, position + 4);
      table.writeUInt32LE(frameChecksum(slice), position + 8);
      position += entrySizeWithChecksum;
      count++;
    }
    table.writeUInt32LE(skippableMagic, 0);
    table.writeUInt32LE(table.length - 8, 4);
    table.writeUInt32LE(count, position);
    table.writeUInt8(checksumFlag, position + 4);
    table.writeUInt32LE(seekableMagic, position + 5);
    frames.push(table);
    return Buffer.concat(frames);
  }
}

/**
 * Parses the seek table from the end of a seekable file. `tail` must hold the file's last bytes
 * (at least the whole table: read `footerSize` first, or just read generously); `fileSize` is the
 * total compressed size, so offsets can be checked against it.
 */
export function parseSeekTable(tail: Uint8Array, fileSize: number): SeekTable {
  const view = Buffer.from(tail.buffer, tail.byteOffset, tail.byteLength);
  if (view.length < footerSize + 8) throw new SeekableFormatError('file too short for a seek table');
  const footer = view.length - footerSize;
  if (view.readUInt32LE(footer + 5) !== seekableMagic) throw new SeekableFormatError('no seekable magic number at the end');
  const count = view.readUInt32LE(footer);
  const descriptor = view.readUInt8(footer + 4);
  if (descriptor & reservedBits) throw new SeekableFormatError('reserved seek table bits set');
  const entrySize = descriptor & checksumFlag ? 12 : 8;
  const tableFrameSize = 8 + count * entrySize + footerSize;
  if (tableFrameSize > view.length) throw new SeekableFormatError(`seek table needs ${tableFrameSize} bytes, got ${view.length}`);
  const start = view.length - tableFrameSize;
  if (view.readUInt32LE(start) !== skippableMagic || view.readUInt32LE(start + 4) !== tableFrameSize - 8) {
    throw new SeekableFormatError('seek table frame header does not match its footer');
  }
  const entries: SeekTableEntry[] = [];
  let compressedOffset = 0;
  let decompressedOffset = 0;
  for (let index = 0; index < count; index++) {
    const position = start + 8 + index * entrySize;
    const entry: SeekTableEntry = {
      compressedOffset,
      compressedSize: view.readUInt32LE(position),
      decompressedOffset,
      decompressedSize: view.readUInt32LE(position + 4),
    };
    if (entrySize === 12) entry.checksum = view.readUInt32LE(position + 8);
    entries.push(entry);
    compressedOffset += entry.compressedSize;
    decompressedOffset += entry.decompressedSize;
  }
  if (compressedOffset + tableFrameSize !== fileSize) {
    throw new SeekableFormatError(`frames (${compressedOffset} bytes) and seek table (${tableFrameSize}) do not add up to the file size ${fileSize}`);
  }
  return { entries, framesSize: compressedOffset, decompressedSize: decompressedOffset, tableFrameSize };
}

/** Random access into a seekable zstd file: decompresses only the frames a read touches. */
export class SeekableDecoder {
  private readonly decompressor = new Decompressor();

  /** Decompresses one frame and checks it against its seek table entry. */
  decodeFrame(entry: SeekTableEntry, compressed: Uint8Array): Buffer {
    let data: Buffer;
    try {
      data = this.decompressor.decompress(compressed);
    } catch (error) {
      throw new SeekableFormatError(`frame at ${entry.compressedOffset}: ${(error as Error).message}`);
    }
    if (data.length !== entry.decompressedSize) {
      throw new SeekableFormatError(`frame at ${entry.compressedOffset} decompressed to ${data.length} bytes, seek table says ${entry.decompressedSize}`);
    }
    if (entry.checksum !== undefined && frameChecksum(data) !== entry.checksum) {
      throw new SeekableFormatError(`frame at ${entry.compressedOffset} fails its seek table checksum`);
    }
    return data;
  }

  /** Decompresses a whole seekable file held in memory. */
  decodeAll(file: Uint8Array): Buffer {
    const table = parseSeekTable(file, file.length);
    const output = Buffer.allocUnsafe(table.decompressedSize);
    for (const entry of table.entries) {
      const data = this.decodeFrame(entry, file.subarray(entry.compressedOffset, entry.compressedOffset + entry.compressedSize));
      data.copy(output, entry.decompressedOffset);
    }
    return output;
  }
}

/** The frames that hold bytes [offset, offset + length) of the decompressed data. */
export function framesCovering(table: SeekTable, offset: number, length: number): SeekTableEntry[] {
  const end = offset + length;
  return table.entries.filter((entry) => entry.decompressedOffset < end && entry.decompressedOffset + entry.decompressedSize > offset);
}

export const seekTableFooterSize = footerSize;
