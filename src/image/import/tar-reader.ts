import type { Readable } from 'node:stream';
import { TorporError } from '../../util/errors.ts';
import { BLOCK_SIZE, decodeName, isZeroBlock, notATar, parseHeader, tarFormatError, type TarHeader, type TarMemberNumbers } from './tar-header.ts';
import { parsePaxData, type PaxOverrides } from './pax-records.ts';
import { limitExceeded } from './import-limits.ts';

// The one tar reader: a strict, streaming parser whose members are what the layer applier
// checks AND writes (the data of a member comes from the same parse as its header), so no second
// program ever gets to interpret the archive differently.

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'character-device' | 'block-device' | 'fifo';

export interface TarEntry extends TarMemberNumbers {
  /** The member name with its one PAX or GNU long-name override applied, not normalized. */
  name: string;
  type: TarEntryType;
  linkTarget: string;
  /** Permission bits only (the header's mode masked to 0o7777). */
  mode: number;
  /** Bytes of data (regular files only; every other type must say 0). */
  size: number;
  xattrs: Map<string, Buffer>;
  /** Where its header starts in the uncompressed archive, for error messages. */
  offset: number;
}

export interface TarReaderOptions {
  /** Headers (members and PAX/long-name headers) before the reader refuses the archive. */
  maxMembers?: number;
}

/** PAX and GNU long-name data larger than this is not a name anyone needs. */
const MAX_METADATA_BYTES = 1024 * 1024;
/** Zero padding after the end-of-archive marker (blocking factors up to 2048 blocks). */
const MAX_TRAILING_BYTES = 1024 * 1024;

const memberTypes: Record<string, TarEntryType> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'character-device',
  '4': 'block-device',
  '5': 'directory',
  '6': 'fifo',
};
const unsupportedTypes: Record<string, string> = {
  S: 'a GNU sparse file',
  M: 'a multi-volume continuation',
  V: 'a volume label',
  N: 'an old GNU long-name record',
  D: 'a GNU dump directory',
};

function truncated(offset: number, what: string): TorporError {
  return new TorporError('tar-truncated', `tar archive ends at byte ${offset} ${what} (truncated?)`, { hint: 'check that the file is complete' });
}

/** A queue of chunks from an async source, read in exact lengths without copying when it can. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private length = 0;
  private ended = false;
  /** Bytes handed out so far: the position in the archive. */
  position = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  private async pull(): Promise<boolean> {
    if (this.ended) return false;
    const next = await this.source.next();
    if (next.done) {
      this.ended = true;
      return false;
    }
    const chunk = Buffer.isBuffer(next.value) ? next.value : Buffer.from(next.value as Uint8Array);
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.length += chunk.length;
    }
    return true;
  }

  /** Exactly `count` bytes, or fewer only at the end of the source. */
  async read(count: number): Promise<Buffer> {
    while (this.length < count && (await this.pull()));
    const wanted = Math.min(count, this.length);
    let result: Buffer;
    const first = this.chunks[0];
    if (first && first.length >= wanted) {
      result = first.subarray(0, wanted);
      if (first.length === wanted) this.chunks.shift();
      else this.chunks[0] = first.subarray(wanted);
    } else {
      result = Buffer.allocUnsafe(wanted);
      let filled = 0;
      while (filled < wanted) {
        const chunk = this.chunks[0]!;
        const part = Math.min(chunk.length, wanted - filled);
        chunk.copy(result, filled, 0, part);
        filled += part;
        if (part === chunk.length) this.chunks.shift();
        else this.chunks[0] = chunk.subarray(part);
      }
    }
    this.length -= wanted;
    this.position += wanted;
    return result;
  }

  /** Up to `count` bytes as they arrive (at most one source chunk at a time); empty at the end. */
  async readSome(count: number): Promise<Buffer> {
    if (this.length === 0) await this.pull();
    while (this.length === 0 && !this.ended) await this.pull();
    const first = this.chunks[0];
    if (!first) return Buffer.alloc(0);
    return this.read(Math.min(count, first.length));
  }
}

/**
 * Reads a tar stream member by member: `next()` gives the next member (skipping the unread data
 * of the previous one), `data()` streams the current member's bytes. Throws a TorporError for
 * anything malformed: bad checksums, numbers with trailing garbage, overrides that are doubled,
 * conflicting, unknown or not followed by a member, sparse and other unsupported members, data on
 * members that carry none, zero blocks in the middle, bytes after the end, truncation.
 */
export class TarReader {
  private readonly bytes: ByteQueue;
  private readonly maxMembers: number;
  private headers = 0;
  private remainingData = 0;
  private remainingPadding = 0;
  private finished = false;
  private sawHeader = false;

  constructor(source: AsyncIterable<Buffer> | Readable, options: TarReaderOptions = {}) {
    this.bytes = new ByteQueue((source as AsyncIterable<Buffer>)[Symbol.asyncIterator]());
    this.maxMembers = options.maxMembers ?? Number.MAX_SAFE_INTEGER;
  }

  get position(): number {
    return this.bytes.position;
  }

  private async readBlock(): Promise<Buffer | undefined> {
    const block = await this.bytes.read(BLOCK_SIZE);
    if (block.length === 0) return undefined;
    if (block.length < BLOCK_SIZE) throw truncated(this.bytes.position, 'in the middle of a header');
    return block;
  }

  private async skip(count: number, what: string): Promise<void> {
    while (count > 0) {
      const chunk = await this.bytes.readSome(Math.min(count, 1024 * 1024));
      if (chunk.length === 0) throw truncated(this.bytes.position, what);
      count -= chunk.length;
    }
  }

  /** The current member's data, in chunks as they arrive; then its padding is skipped. */
  async *data(): AsyncGenerator<Buffer> {
    while (this.remainingData > 0) {
      const chunk = await this.bytes.readSome(this.remainingData);
      if (chunk.length === 0) throw truncated(this.bytes.position, "in the middle of a member's data");
      this.remainingData -= chunk.length;
      yield chunk;
    }
  }

  private async readMetadata(header: TarHeader, offset: number): Promise<Buffer> {
    if (header.size > MAX_METADATA_BYTES)
      throw tarFormatError(offset, `a ${header.typeFlag} header carries ${header.size} bytes of metadata (at most ${MAX_METADATA_BYTES})`);
    const data = await this.bytes.read(header.size);
    if (data.length < header.size) throw truncated(this.bytes.position, 'in the middle of an extended header');
    await this.skip((BLOCK_SIZE - (header.size % BLOCK_SIZE)) % BLOCK_SIZE, 'in the padding of an extended header');
    return Buffer.from(data);
  }

  /** A GNU long name or link: the name, then only NULs. */
  private longName(data: Buffer, offset: number, what: string): string {
    const end = data.indexOf(0);
    if (end !== -1 && data.subarray(end).some((byte) => byte !== 0)) throw tarFormatError(offset, `${what} has bytes after its terminating NUL`);
    const name = decodeName(end === -1 ? data : data.subarray(0, end), what, offset);
    if (name === '') throw tarFormatError(offset, `${what} is empty`);
    return name;
  }

  private async finish(): Promise<void> {
    // Whatever follows the end-of-archive marker must be padding: a second archive appended
    // there would be invisible to us and visible to a tool that reads on (tar -i).
    let trailing = 0;
    for (;;) {
      const chunk = await this.bytes.readSome(64 * 1024);
      if (chunk.length === 0) break;
      trailing += chunk.length;
      if (trailing > MAX_TRAILING_BYTES) throw tarFormatError(this.bytes.position, `more than ${MAX_TRAILING_BYTES} bytes follow the end of the archive`);
      if (chunk.some((byte) => byte !== 0)) throw tarFormatError(this.bytes.position - chunk.length, 'data follows the end-of-archive marker');
    }
    this.finished = true;
  }

  /** The next member, or undefined after the end-of-archive marker (two zero blocks). */
  async next(): Promise<TarEntry | undefined> {
    if (this.finished) return undefined;
    await this.skip(this.remainingData + this.remainingPadding, "in the middle of a member's data");
    this.remainingData = 0;
    this.remainingPadding = 0;
    let pax: PaxOverrides | undefined;
    let paxOffset = 0;
    let longName: string | undefined;
    let longLink: string | undefined;
    for (;;) {
      const offset = this.bytes.position;
      const block = await this.readBlock();
      if (!block) {
        if (!this.sawHeader) throw new TorporError('tar-truncated', 'not a tar archive (empty)', { hint: 'check that the file is complete' });
        throw truncated(offset, pax || longName || longLink ? 'after an extended header, before its member' : 'without the end-of-archive marker');
      }
      if (isZeroBlock(block)) {
        if (pax || longName !== undefined || longLink !== undefined)
          throw tarFormatError(offset, 'an extended header is followed by the end of the archive, not by a member');
        const second = await this.readBlock();
        if (!second) throw truncated(this.bytes.position, 'after a single zero block (the end-of-archive marker is two)');
        if (!isZeroBlock(second)) throw tarFormatError(offset, 'a zero block in the middle of the archive (the end-of-archive marker is two zero blocks)');
        this.sawHeader = true;
        await this.finish();
        return undefined;
      }
      const header = parseHeader(block, offset, !this.sawHeader);
      this.sawHeader = true;
      if (++this.headers > this.maxMembers) {
        throw limitExceeded("the archive's member count", 'maxLayerMembers', this.maxMembers);
      }
      switch (header.typeFlag) {
        case 'x':
          if (pax) throw tarFormatError(offset, 'two PAX extended headers for one member');
          pax = parsePaxData(await this.readMetadata(header, offset), offset, 'x');
          paxOffset = offset;
          continue;
        case 'g':
          parsePaxData(await this.readMetadata(header, offset), offset, 'g');
          continue;
        case 'L':
          if (longName !== undefined) throw tarFormatError(offset, 'two GNU long names for one member');
          longName = this.longName(await this.readMetadata(header, offset), offset, 'the GNU long name');
          continue;
        case 'K':
          if (longLink !== undefined) throw tarFormatError(offset, 'two GNU long link names for one member');
          longLink = this.longName(await this.readMetadata(header, offset), offset, 'the GNU long link name');
          continue;
      }
      const type = memberTypes[header.typeFlag];
      if (!type) {
        const what = unsupportedTypes[header.typeFlag] ?? `a member of unknown type ${JSON.stringify(header.typeFlag)}`;
        throw new TorporError('layer-unsupported-member', `member ${JSON.stringify(header.name)} at byte ${offset} is ${what}`, {
          hint: 'image layers hold files, directories, links, devices and fifos only; recreate the archive without it',
        });
      }
      if (pax?.path !== undefined && longName !== undefined) throw tarFormatError(offset, 'both a PAX path and a GNU long name for one member');
      if (pax?.linkPath !== undefined && longLink !== undefined) throw tarFormatError(offset, 'both a PAX linkpath and a GNU long link name for one member');
      if (pax?.size !== undefined && header.size !== 0 && header.size !== pax.size && header.size !== 0o77777777777) {
        // A writer puts the real size in PAX only when the header cannot hold it.
        throw tarFormatError(paxOffset, `the PAX size ${pax.size} contradicts the header's size ${header.size}`);
      }
      const size = pax?.size ?? header.size;
      const name = pax?.path ?? longName ?? header.name;
      const linkTarget = pax?.linkPath ?? longLink ?? header.linkName;
      if (name === '') throw tarFormatError(offset, 'a member has an empty name');
      if (type !== 'file' && size !== 0) {
        // Whether such data is skipped or read as the next header differs between tools.
        throw tarFormatError(offset, `the ${type} ${JSON.stringify(name)} says it carries ${size} bytes of data`);
      }
      if ((type === 'symlink' || type === 'hardlink') && linkTarget === '') throw tarFormatError(offset, `the ${type} ${JSON.stringify(name)} has no target`);
      if (type !== 'symlink' && type !== 'hardlink' && linkTarget !== '') {
        // Harmless in itself, but an honest writer leaves it empty: refuse rather than ignore.
        throw tarFormatError(offset, `the ${type} ${JSON.stringify(name)} has a link target`);
      }
      this.remainingData = size;
      this.remainingPadding = (BLOCK_SIZE - (size % BLOCK_SIZE)) % BLOCK_SIZE;
      return {
        name,
        type,
        linkTarget,
        mode: header.mode & 0o7777,
        uid: pax?.uid ?? header.uid,
        gid: pax?.gid ?? header.gid,
        size,
        mtime: pax?.mtime ?? header.mtime,
        deviceMajor: header.deviceMajor,
        deviceMinor: header.deviceMinor,
        xattrs: pax?.xattrs ?? new Map(),
        offset,
      };
    }
  }
}

/** Lists the members of an uncompressed tar stream, skipping their data, to its end. */
export async function* readTarEntries(stream: Readable | AsyncIterable<Buffer>, options: TarReaderOptions = {}): AsyncGenerator<TarEntry> {
  const reader = new TarReader(stream, options);
  for (let entry = await reader.next(); entry; entry = await reader.next()) yield entry;
}

export { notATar };
