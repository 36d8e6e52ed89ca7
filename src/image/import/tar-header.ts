import { TorporError } from '../../util/errors.ts';

// One 512-byte tar header, parsed strictly. Every field a parser could read two ways (a number
// with trailing bytes, a checksum computed signed or unsigned, a name with bytes after its NUL
// in the prefix) has exactly one accepted form here, and anything else is an error, so no other
// tool can read a different archive out of the same bytes than the one torpor checked and wrote.

export const BLOCK_SIZE = 512;

/** The numeric fields of a member, from its header to the reader's entry (where PAX records may override some). */
export interface TarMemberNumbers {
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: number;
  deviceMajor: number;
  deviceMinor: number;
}

export interface TarHeader extends TarMemberNumbers {
  /** The name field (joined with the ustar prefix), as stored. */
  name: string;
  linkName: string;
  typeFlag: string;
}

export function tarFormatError(offset: number, message: string): TorporError {
  return new TorporError('tar-invalid', `malformed tar header at byte ${offset}: ${message}`, {
    hint: 'the archive is damaged or crafted to be read differently by different tools; nothing was imported',
  });
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Bytes as UTF-8, refusing invalid sequences (which decoders would otherwise each replace their own way). */
export function decodeName(bytes: Uint8Array, what: string, offset: number): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw tarFormatError(offset, `${what} is not valid UTF-8`);
  }
}

function readString(block: Buffer, start: number, length: number, what: string, offset: number): string {
  const field = block.subarray(start, start + length);
  const end = field.indexOf(0);
  return decodeName(end === -1 ? field : field.subarray(0, end), what, offset);
}

const isOctalDigit = (byte: number) => byte >= 0x30 && byte <= 0x37;

/**
 * An octal field: optional leading spaces, octal digits, then only NULs and spaces to the end
 * (a field that is all digits needs no terminator). An all-blank field is 0. Or GNU base-256:
 * first byte 0x80 then a big-endian number (0xff, negative, is refused).
 */
export function readNumberField(block: Buffer, start: number, length: number, what: string, offset: number): number {
  const field = block.subarray(start, start + length);
  if (field[0] === 0x80) {
    let value = 0;
    for (let index = 1; index < length; index++) {
      value = value * 256 + field[index]!;
      if (value > Number.MAX_SAFE_INTEGER) throw tarFormatError(offset, `${what} (base-256) is too large`);
    }
    return value;
  }
  if (field[0]! & 0x80) throw tarFormatError(offset, `${what} is a negative or unknown binary number`);
  let index = 0;
  while (index < length && field[index] === 0x20) index++;
  const digitsStart = index;
  while (index < length && isOctalDigit(field[index]!)) index++;
  const digits = field.subarray(digitsStart, index).toString('latin1');
  for (; index < length; index++) {
    const byte = field[index]!;
    if (byte !== 0 && byte !== 0x20) {
      throw tarFormatError(offset, `${what} field ${JSON.stringify(field.toString('latin1'))} has a byte that is not an octal digit or a terminator`);
    }
  }
  // Digits after the terminator ("12\0 34") were refused above: only one reading exists.
  if (digits === '') {
    if (field.subarray(digitsStart).some((byte) => byte !== 0 && byte !== 0x20)) throw tarFormatError(offset, `${what} is not a number`);
    return 0;
  }
  return parseInt(digits, 8);
}

function checksumOf(block: Buffer): number {
  let sum = 0;
  for (let index = 0; index < BLOCK_SIZE; index++) sum += index >= 148 && index < 156 ? 0x20 : block[index]!;
  return sum;
}

export function isZeroBlock(block: Buffer): boolean {
  for (let index = 0; index < BLOCK_SIZE; index++) if (block[index] !== 0) return false;
  return true;
}

/** Which header layout: POSIX ustar (prefix field holds the start of long names) or old GNU (it does not). */
function formatOf(block: Buffer): 'ustar' | 'gnu' | undefined {
  const magic = block.subarray(257, 265).toString('latin1');
  if (magic === 'ustar\u000000' || magic === 'ustar\u0000\u0000\u0000') return 'ustar';
  if (magic === 'ustar  \u0000') return 'gnu';
  return undefined;
}

/**
 * Parses a header block (not a zero block). `offset` is the block's position in the archive, for
 * error messages. The checksum is the unsigned sum POSIX defines; the signed variant of some old
 * tars is refused rather than guessed.
 */
export function parseHeader(block: Buffer, offset: number, firstHeader: boolean): TarHeader {
  const storedChecksum = (() => {
    try {
      return readNumberField(block, 148, 8, 'checksum', offset);
    } catch (error) {
      if (firstHeader) throw notATar();
      throw error;
    }
  })();
  if (storedChecksum !== checksumOf(block)) {
    if (firstHeader) throw notATar();
    throw new TorporError('tar-invalid', `corrupt tar archive: the header checksum at byte ${offset} does not match`, {
      hint: 'the archive is damaged or was altered; nothing was imported',
    });
  }
  const format = formatOf(block);
  if (!format) {
    throw tarFormatError(offset, 'not a ustar, PAX or GNU header (pre-POSIX v7 archives are not accepted)');
  }
  const name = readString(block, 0, 100, 'the name', offset);
  const prefix = format === 'ustar' ? readString(block, 345, 155, 'the name prefix', offset) : '';
  return {
    name: prefix ? `${prefix}/${name}` : name,
    linkName: readString(block, 157, 100, 'the link name', offset),
    typeFlag: String.fromCharCode(block[156]!),
    mode: readNumberField(block, 100, 8, 'mode', offset),
    uid: readNumberField(block, 108, 8, 'uid', offset),
    gid: readNumberField(block, 116, 8, 'gid', offset),
    size: readNumberField(block, 124, 12, 'size', offset),
    mtime: readNumberField(block, 136, 12, 'mtime', offset),
    deviceMajor: readNumberField(block, 329, 8, 'device major', offset),
    deviceMinor: readNumberField(block, 337, 8, 'device minor', offset),
  };
}

export function notATar(): TorporError {
  return new TorporError('tar-invalid', 'not a tar archive', { hint: 'check that the file is a complete tar archive (plain, gzip or zstd)' });
}
