import { TorporError } from '../../util/errors.ts';
import { decodeName } from './tar-header.ts';

// PAX extended headers ('x' for the next member, 'g' global), parsed strictly: every record is
// "<length> <key>=<value>\n" with the length covering the record exactly, no key twice, no bytes
// left over, and only keys torpor knows. Keys that change how a member is read (path, size…) are
// applied by the reader to the next member only.

export interface PaxOverrides {
  path?: string;
  linkPath?: string;
  size?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  xattrs: Map<string, Buffer>;
}

function paxError(offset: number, message: string): TorporError {
  return new TorporError('tar-invalid', `malformed PAX header at byte ${offset}: ${message}`, {
    hint: 'the archive is damaged or crafted to be read differently by different tools; nothing was imported',
  });
}

function unsupported(offset: number, message: string): TorporError {
  return new TorporError('layer-unsupported-member', `PAX header at byte ${offset}: ${message}`, {
    hint: 'torpor reads PAX headers as written by GNU tar, Go (docker, buildkit) and Python; this one is refused rather than guessed at',
  });
}

/** Keys that carry nothing torpor applies (names of owners: owners are numeric; times other than mtime). */
const ignoredKeys = new Set(['uname', 'gname', 'atime', 'ctime', 'comment', 'charset', 'hdrcharset', 'SCHILY.dev', 'SCHILY.ino', 'SCHILY.nlink']);
/** In a global header only these may appear: anything that changes members would apply to all of them. */
const globalKeys = new Set(['comment', 'charset', 'hdrcharset']);

const decimal = /^(0|[1-9][0-9]*)$/;
const MAX_ID = 2 ** 32 - 2;

function* records(data: Buffer, offset: number): Generator<{ key: string; value: Buffer }> {
  let position = 0;
  while (position < data.length) {
    const space = data.indexOf(0x20, position);
    if (space === -1 || space - position > 20) throw paxError(offset, `record at ${position} has no length`);
    const lengthText = data.subarray(position, space).toString('latin1');
    if (!decimal.test(lengthText)) throw paxError(offset, `record length ${JSON.stringify(lengthText)} is not a decimal number`);
    const length = Number(lengthText);
    const end = position + length;
    if (length <= space - position + 1 || end > data.length)
      throw paxError(offset, `record at ${position} says it is ${length} bytes long, which does not fit`);
    if (data[end - 1] !== 0x0a) throw paxError(offset, `record at ${position} does not end with a newline where its length says`);
    const record = data.subarray(space + 1, end - 1);
    const equals = record.indexOf(0x3d);
    if (equals <= 0) throw paxError(offset, `record at ${position} has no key=value`);
    const key = decodeName(record.subarray(0, equals), 'a PAX key', offset);
    if (key.includes('\0')) throw paxError(offset, 'a PAX key contains NUL');
    yield { key, value: record.subarray(equals + 1) };
    position = end;
  }
}

function text(value: Buffer, key: string, offset: number): string {
  const decoded = decodeName(value, `PAX ${key}`, offset);
  if (decoded.includes('\0')) throw paxError(offset, `${key} contains a NUL byte`);
  if (decoded === '') throw paxError(offset, `${key} is empty`);
  return decoded;
}

function number(value: Buffer, key: string, offset: number, maximum: number): number {
  const raw = value.toString('latin1');
  if (!decimal.test(raw) || Number(raw) > maximum)
    throw paxError(offset, `${key} ${JSON.stringify(raw.slice(0, 40))} is not a decimal number up to ${maximum}`);
  return Number(raw);
}

/** libarchive writes xattr names percent-encoded and values in base64. */
function libarchiveXattr(name: string, value: Buffer, offset: number): [string, Buffer] {
  let decodedName: string;
  try {
    decodedName = decodeURIComponent(name);
  } catch {
    throw paxError(offset, `xattr name ${JSON.stringify(name)} is not percent-encoded correctly`);
  }
  const base64 = value.toString('latin1');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(base64)) throw paxError(offset, `xattr ${decodedName} is not base64`);
  return [decodedName, Buffer.from(base64, 'base64')];
}

/** Parses the data of an 'x' (extended) or 'g' (global) header. */
export function parsePaxData(data: Buffer, offset: number, kind: 'x' | 'g'): PaxOverrides {
  const overrides: PaxOverrides = { xattrs: new Map() };
  const seen = new Set<string>();
  for (const { key, value } of records(data, offset)) {
    if (seen.has(key)) throw paxError(offset, `${key} appears twice`);
    seen.add(key);
    if (key.startsWith('GNU.sparse.')) throw unsupported(offset, 'sparse files are not accepted (GNU.sparse records)');
    if (kind === 'g') {
      if (!globalKeys.has(key)) throw unsupported(offset, `a global header sets ${key}, which would apply to every later member`);
      continue;
    }
    if (ignoredKeys.has(key)) continue;
    switch (key) {
      case 'path':
        overrides.path = text(value, key, offset);
        break;
      case 'linkpath':
        overrides.linkPath = text(value, key, offset);
        break;
      case 'size':
        overrides.size = number(value, key, offset, Number.MAX_SAFE_INTEGER);
        break;
      case 'uid':
        overrides.uid = number(value, key, offset, MAX_ID);
        break;
      case 'gid':
        overrides.gid = number(value, key, offset, MAX_ID);
        break;
      case 'mtime': {
        const raw = value.toString('latin1');
        if (!/^-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,9})?$/.test(raw)) throw paxError(offset, `mtime ${JSON.stringify(raw.slice(0, 40))} is not a time`);
        overrides.mtime = Number(raw);
        break;
      }
      default: {
        let xattr: [string, Buffer] | undefined;
        if (key.startsWith('SCHILY.xattr.')) xattr = [key.slice('SCHILY.xattr.'.length), Buffer.from(value)];
        else if (key.startsWith('LIBARCHIVE.xattr.')) xattr = libarchiveXattr(key.slice('LIBARCHIVE.xattr.'.length), value, offset);
        if (!xattr) throw unsupported(offset, `unknown record ${JSON.stringify(key.slice(0, 60))}`);
        if (overrides.xattrs.has(xattr[0])) throw paxError(offset, `xattr ${xattr[0]} appears twice`);
        overrides.xattrs.set(xattr[0], xattr[1]);
      }
    }
  }
  return overrides;
}
