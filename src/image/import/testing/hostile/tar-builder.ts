// Tar archives written byte by byte, so that a test can produce exactly the malformed header
// it means to (GNU tar and every library refuse to write most of these).

export const BLOCK = 512;

export interface RawMember {
  name: string;
  /** Type flag character; '0' (file) by default. */
  flag?: string;
  content?: Buffer | string;
  linkTarget?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  deviceMajor?: number;
  deviceMinor?: number;
  /** The size field exactly as stored (12 bytes), instead of the content's length in octal. */
  rawSize?: Buffer;
  /** Bytes written over the header (offset → bytes) before the checksum is computed. */
  patch?: Record<number, Buffer | string>;
  /** 'bad' stores a wrong checksum. */
  checksum?: 'bad';
  /** ustar (POSIX, default), gnu ("ustar  \0") or v7 (no magic). */
  magic?: 'ustar' | 'gnu' | 'v7';
}

const octal = (value: number, length: number) => value.toString(8).padStart(length - 1, '0') + '\0';

export function headerBlock(member: RawMember, size: number): Buffer {
  const header = Buffer.alloc(BLOCK);
  header.write(member.name, 0, 100, 'utf8');
  header.write(octal(member.mode ?? (member.flag === '5' ? 0o755 : 0o644), 8), 100, 'ascii');
  header.write(octal(member.uid ?? 0, 8), 108, 'ascii');
  header.write(octal(member.gid ?? 0, 8), 116, 'ascii');
  if (member.rawSize) member.rawSize.copy(header, 124, 0, 12);
  else header.write(octal(size, 12), 124, 'ascii');
  header.write(octal(1_700_000_000, 12), 136, 'ascii');
  header.write(member.flag ?? '0', 156, 'latin1');
  header.write(member.linkTarget ?? '', 157, 100, 'utf8');
  if (member.magic === 'gnu') header.write('ustar  \0', 257, 'latin1');
  else if (member.magic !== 'v7') header.write('ustar\u000000', 257, 'latin1');
  header.write(octal(member.deviceMajor ?? 0, 8), 329, 'ascii');
  header.write(octal(member.deviceMinor ?? 0, 8), 337, 'ascii');
  for (const [offset, bytes] of Object.entries(member.patch ?? {})) {
    (typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes).copy(header, Number(offset));
  }
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  if (member.checksum === 'bad') sum += 1;
  header.write(octal(sum, 7) + ' ', 148, 'ascii');
  return header;
}

const padding = (length: number) => Buffer.alloc((BLOCK - (length % BLOCK)) % BLOCK);

/** A member: its header, then its content padded to a block. */
export function member(spec: RawMember): Buffer {
  const content = typeof spec.content === 'string' ? Buffer.from(spec.content) : (spec.content ?? Buffer.alloc(0));
  return Buffer.concat([headerBlock(spec, content.length), content, padding(content.length)]);
}

/** A PAX record with its correct length prefix. */
export function paxRecord(key: string, value: string | Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

/** An 'x' (or 'g') header whose data is the given records (or raw bytes). */
export function pax(records: Array<[string, string | Buffer]> | Buffer, flag: 'x' | 'g' = 'x'): Buffer {
  const data = Buffer.isBuffer(records) ? records : Buffer.concat(records.map(([key, value]) => paxRecord(key, value)));
  return member({ name: 'PaxHeaders/entry', flag, content: data });
}

/** A GNU long name ('L') or long link ('K') header. */
export function gnuLong(flag: 'L' | 'K', name: string): Buffer {
  return member({ name: '././@LongLink', flag, content: Buffer.concat([Buffer.from(name), Buffer.from([0])]), magic: 'gnu' });
}

export const endOfArchive = () => Buffer.alloc(2 * BLOCK);

/** Members then the end-of-archive marker. */
export function archive(...parts: Buffer[]): Buffer {
  return Buffer.concat([...parts, endOfArchive()]);
}

/** A size field in GNU base-256. */
export function base256(value: number, length = 12): Buffer {
  const field = Buffer.alloc(length);
  let rest = value;
  for (let index = length - 1; index > 0; index--) {
    field[index] = rest % 256;
    rest = Math.floor(rest / 256);
  }
  field[0] = 0x80;
  return field;
}
