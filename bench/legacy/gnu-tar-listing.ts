// The header-only tar reader of the legacy layer applier (bench/legacy/gnu-tar-apply-layer.ts).
import type { Readable } from 'node:stream';
import { TorporError } from '../../src/util/errors.ts';

// A header-only tar reader: the listing pass needs every member's name, type, link target and
// owner, never the file bytes, so data is skipped without copying. GNU tar does the extracting.

export type TarEntryType = 'file' | 'directory' | 'symlink' | 'hardlink' | 'character-device' | 'block-device' | 'fifo' | 'other';

export interface TarEntry {
  /** The member name as stored (PAX and GNU long names applied), not normalized. */
  name: string;
  type: TarEntryType;
  linkTarget: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  xattrs: Record<string, string>;
}

const BLOCK = 512;

function typeOf(flag: string): TarEntryType {
  switch (flag) {
    case '0':
    case '\0':
    case '7':
      return 'file';
    case '1':
      return 'hardlink';
    case '2':
      return 'symlink';
    case '3':
      return 'character-device';
    case '4':
      return 'block-device';
    case '5':
      return 'directory';
    case '6':
      return 'fifo';
    default:
      return 'other';
  }
}

function readString(block: Buffer, offset: number, length: number): string {
  const field = block.subarray(offset, offset + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? length : end).toString('utf8');
}

function readNumber(block: Buffer, offset: number, length: number): number {
  const field = block.subarray(offset, offset + length);
  if (field[0]! & 0x80) {
    // GNU base-256 for values that do not fit in octal (big files, large ids).
    let value = field[0]! & 0x7f;
    for (let index = 1; index < length; index++) value = value * 256 + field[index]!;
    return value;
  }
  const text = readString(block, offset, length).trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function checksumMatches(block: Buffer): boolean {
  const stored = readNumber(block, 148, 8);
  let sum = 0;
  for (let index = 0; index < BLOCK; index++) sum += index >= 148 && index < 156 ? 32 : block[index]!;
  return sum === stored;
}

function parsePax(data: Buffer): Map<string, string> {
  const records = new Map<string, string>();
  let position = 0;
  while (position < data.length) {
    const space = data.indexOf(0x20, position);
    if (space === -1) break;
    const length = parseInt(data.subarray(position, space).toString('ascii'), 10);
    if (!Number.isFinite(length) || length <= 0) break;
    const record = data.subarray(space + 1, position + length - 1); // drop the trailing newline
    const equals = record.indexOf(0x3d);
    if (equals !== -1) records.set(record.subarray(0, equals).toString('utf8'), record.subarray(equals + 1).toString('utf8'));
    position += length;
  }
  return records;
}

const padded = (size: number) => Math.ceil(size / BLOCK) * BLOCK;

/**
 * Lists the members of an uncompressed tar stream. Consumes the stream to its end (so a hash
 * computed on the same bytes covers trailing padding too).
 */
export async function* readTarEntries(stream: Readable | AsyncIterable<Buffer>): AsyncGenerator<TarEntry> {
  let buffered: Buffer[] = [];
  let bufferedLength = 0;
  let skip = 0;
  let finished = false;
  let sawHeader = false;
  let pendingPax = new Map<string, string>();
  let globalPax = new Map<string, string>();
  let longName: string | undefined;
  let longLink: string | undefined;
  // Set while the data of a metadata member (PAX or GNU long name) is being collected.
  let collecting: { flag: string; size: number } | undefined;

  const take = (length: number): Buffer => {
    const all = buffered.length === 1 ? buffered[0]! : Buffer.concat(buffered, bufferedLength);
    const taken = all.subarray(0, length);
    const rest = all.subarray(length);
    buffered = rest.length ? [rest] : [];
    bufferedLength = rest.length;
    return taken;
  };

  for await (const raw of stream) {
    let chunk = raw as Buffer;
    if (finished) continue;
    if (skip > 0) {
      const skipped = Math.min(skip, chunk.length);
      skip -= skipped;
      chunk = chunk.subarray(skipped);
      if (chunk.length === 0) continue;
    }
    buffered.push(chunk);
    bufferedLength += chunk.length;
    while (!finished) {
      if (collecting) {
        const need = padded(collecting.size);
        if (bufferedLength < need) break;
        const data = Buffer.from(take(need).subarray(0, collecting.size));
        if (collecting.flag === 'x') for (const [key, value] of parsePax(data)) pendingPax.set(key, value);
        else if (collecting.flag === 'g') for (const [key, value] of parsePax(data)) globalPax.set(key, value);
        else if (collecting.flag === 'L') longName = data.toString('utf8').replace(/\0+$/, '');
        else if (collecting.flag === 'K') longLink = data.toString('utf8').replace(/\0+$/, '');
        collecting = undefined;
        continue;
      }
      if (bufferedLength < BLOCK) break;
      const block = take(BLOCK);
      if (block.every((byte) => byte === 0)) {
        // End of archive (two zero blocks; one is enough for us). The rest is padding.
        finished = true;
        break;
      }
      if (!checksumMatches(block)) {
        throw new TorporError('tar-invalid', sawHeader ? 'corrupt tar archive: a header checksum does not match' : 'not a tar archive', {
          hint: 'check that the file is a complete tar archive (plain, gzip or zstd)',
        });
      }
      sawHeader = true;
      const flag = String.fromCharCode(block[156]!);
      const headerSize = readNumber(block, 124, 12);
      if (flag === 'x' || flag === 'g' || flag === 'L' || flag === 'K') {
        collecting = { flag, size: headerSize };
        continue;
      }
      const pax = new Map([...globalPax, ...pendingPax]);
      pendingPax = new Map();
      const prefix = block.subarray(257, 263).toString('latin1') === 'ustar\0' ? readString(block, 345, 155) : '';
      const headerName = readString(block, 0, 100);
      const name = pax.get('path') ?? longName ?? (prefix ? `${prefix}/${headerName}` : headerName);
      const linkTarget = pax.get('linkpath') ?? longLink ?? readString(block, 157, 100);
      longName = undefined;
      longLink = undefined;
      const size = pax.has('size') ? Number(pax.get('size')) : headerSize;
      const xattrs: Record<string, string> = {};
      for (const [key, value] of pax) if (key.startsWith('SCHILY.xattr.')) xattrs[key.slice('SCHILY.xattr.'.length)] = value;
      const type = typeOf(flag);
      yield {
        name,
        type,
        linkTarget,
        mode: readNumber(block, 100, 8) & 0o7777,
        uid: pax.has('uid') ? Number(pax.get('uid')) : readNumber(block, 108, 8),
        gid: pax.has('gid') ? Number(pax.get('gid')) : readNumber(block, 116, 8),
        size,
        xattrs,
      };
      // Only regular files carry data (hard links and devices have none, whatever their size says).
      const dataSize = type === 'file' || type === 'other' ? padded(size) : 0;
      if (dataSize > 0) {
        if (bufferedLength >= dataSize) {
          take(dataSize);
        } else {
          skip = dataSize - bufferedLength;
          buffered = [];
          bufferedLength = 0;
        }
      }
    }
  }
  if (!finished && (!sawHeader || skip > 0 || collecting || bufferedLength > 0)) {
    throw new TorporError('tar-truncated', sawHeader ? 'tar archive ends in the middle of a member (truncated?)' : 'not a tar archive (empty or unreadable)', {
      hint: 'check that the file is complete',
    });
  }
}
