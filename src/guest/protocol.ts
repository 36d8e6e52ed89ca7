// The host<->guest wire protocol, defined once. The C agent (guest/agent.c) mirrors these numbers;
// `protocolVersion` is checked in the hello exchange so a mismatched initramfs is caught at boot.
//
// Frame: a 16-byte little-endian header followed by `length` payload bytes.
//   magic u32 | type u8 | flags u8 | reserved u16 | stream u32 | length u32
// The magic lets the guest resynchronise on a fresh boot, where the first bytes the host sends
// can be lost before the guest opened its port.

export const protocolVersion = 1;
export const frameMagic = 0x31525054; // "TPR1"
export const frameHeaderSize = 16;
export const maximumPayloadSize = 1 << 20;

export const FrameType = {
  hello: 1,
  ping: 2,
  pong: 3,
  configure: 4,
  ok: 5,
  error: 6,
  resumed: 7,
  shutdown: 8,
  exec: 10,
  started: 11,
  stdin: 12,
  stdout: 13,
  stderr: 14,
  exit: 15,
  signal: 16,
  resize: 17,
  fileWrite: 20,
  fileData: 21,
  fileRead: 22,
  fileStat: 23,
  makeDirectory: 24,
  listDirectory: 25,
  directoryEntry: 26,
  // Between the CLI and a machine's supervisor only; the guest never sees these.
  control: 40,
  controlReply: 41,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const ExecFlag = {
  tty: 1,
  stdin: 2,
} as const;

export interface Frame {
  type: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

export function encodeFrame(type: number, stream: number, payload: Buffer = Buffer.alloc(0), flags = 0): Buffer {
  if (payload.length > maximumPayloadSize) throw new RangeError(`frame payload of ${payload.length} bytes exceeds ${maximumPayloadSize}`);
  const header = Buffer.alloc(frameHeaderSize);
  header.writeUInt32LE(frameMagic, 0);
  header.writeUInt8(type, 4);
  header.writeUInt8(flags, 5);
  header.writeUInt32LE(stream, 8);
  header.writeUInt32LE(payload.length, 12);
  return Buffer.concat([header, payload]);
}

/** Splits a byte stream into frames. Bytes before a valid magic are skipped (boot-time noise). */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const frames: Frame[] = [];
    for (;;) {
      if (this.pending.length < frameHeaderSize) break;
      if (this.pending.readUInt32LE(0) !== frameMagic) {
        const next = this.pending.indexOf(Buffer.from([0x54, 0x50, 0x52, 0x31]), 1);
        this.pending = next < 0 ? this.pending.subarray(this.pending.length - 3) : this.pending.subarray(next);
        continue;
      }
      const length = this.pending.readUInt32LE(12);
      if (length > maximumPayloadSize) {
        this.pending = this.pending.subarray(1);
        continue;
      }
      if (this.pending.length < frameHeaderSize + length) break;
      frames.push({
        type: this.pending.readUInt8(4),
        flags: this.pending.readUInt8(5),
        stream: this.pending.readUInt32LE(8),
        payload: Buffer.from(this.pending.subarray(frameHeaderSize, frameHeaderSize + length)),
      });
      this.pending = this.pending.subarray(frameHeaderSize + length);
    }
    return frames;
  }
}

export interface ExecRequest {
  argv: string[];
  env: string[];
  workingDirectory: string;
  user: string;
  tty: boolean;
  stdin: boolean;
  rows?: number;
  columns?: number;
}

const nul = Buffer.from([0]);

function strings(values: string[]): Buffer[] {
  return values.flatMap((value) => {
    if (value.includes('\0')) throw new TypeError(`argument contains a NUL byte: ${JSON.stringify(value)}`);
    return [Buffer.from(value), nul];
  });
}

export function encodeExecRequest(request: ExecRequest): Buffer {
  const fixed = Buffer.alloc(16);
  fixed.writeUInt32LE((request.tty ? ExecFlag.tty : 0) | (request.stdin ? ExecFlag.stdin : 0), 0);
  fixed.writeUInt16LE(request.rows ?? 24, 4);
  fixed.writeUInt16LE(request.columns ?? 80, 6);
  fixed.writeUInt32LE(request.argv.length, 8);
  fixed.writeUInt32LE(request.env.length, 12);
  return Buffer.concat([fixed, ...strings([request.workingDirectory, request.user, ...request.argv, ...request.env])]);
}

export function decodeExecRequest(payload: Buffer): ExecRequest {
  const flags = payload.readUInt32LE(0);
  const argc = payload.readUInt32LE(8);
  const envc = payload.readUInt32LE(12);
  const parts = payload.subarray(16).toString().split('\0');
  return {
    tty: (flags & ExecFlag.tty) !== 0,
    stdin: (flags & ExecFlag.stdin) !== 0,
    rows: payload.readUInt16LE(4),
    columns: payload.readUInt16LE(6),
    workingDirectory: parts[0]!,
    user: parts[1]!,
    argv: parts.slice(2, 2 + argc),
    env: parts.slice(2 + argc, 2 + argc + envc),
  };
}

/** key=value pairs, NUL-separated: hostname, time, nameserver... */
export function encodeSettings(settings: Record<string, string>): Buffer {
  return Buffer.concat(strings(Object.entries(settings).map(([key, value]) => `${key}=${value}`)));
}

export function encodePath(mode: number, path: string): Buffer {
  const fixed = Buffer.alloc(4);
  fixed.writeUInt32LE(mode, 0);
  return Buffer.concat([fixed, ...strings([path])]);
}

export function encodeExit(code: number, signal: number): Buffer {
  const payload = Buffer.alloc(8);
  payload.writeInt32LE(code, 0);
  payload.writeInt32LE(signal, 4);
  return payload;
}

export function decodeExit(payload: Buffer): { code: number; signal: number } {
  return { code: payload.readInt32LE(0), signal: payload.readInt32LE(4) };
}

export function decodeError(payload: Buffer): { errno: number; message: string } {
  return { errno: payload.readInt32LE(0), message: payload.subarray(4).toString() };
}

export function encodeError(errno: number, message: string): Buffer {
  const fixed = Buffer.alloc(4);
  fixed.writeInt32LE(errno, 0);
  return Buffer.concat([fixed, Buffer.from(message)]);
}

/** fileStat and directoryEntry: mode u32, size u64, mtime seconds u64, then the name. */
export interface FileStat {
  mode: number;
  size: number;
  modifiedSeconds: number;
  name: string;
}

export function decodeFileStat(payload: Buffer): FileStat {
  return {
    mode: payload.readUInt32LE(0),
    size: Number(payload.readBigUInt64LE(4)),
    modifiedSeconds: Number(payload.readBigUInt64LE(12)),
    name: payload.subarray(20).toString().replace(/\0$/, ''),
  };
}
