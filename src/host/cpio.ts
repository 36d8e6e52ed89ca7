// A writer for the "newc" cpio format the kernel unpacks as an initramfs. Small enough to own,
// and it makes the archive byte-for-byte reproducible (fixed mtimes, sorted entries).

export interface CpioEntry {
  path: string;
  mode: number; // full st_mode, type bits included
  data?: Buffer;
  target?: string; // for symlinks
}

function header(fields: number[], name: string, size: number): Buffer {
  const hex = (value: number) => value.toString(16).padStart(8, '0');
  const nameBytes = Buffer.from(name + '\0');
  const text = '070701' + [fields[0]!, fields[1]!, 0, 0, fields[2]!, 0, size, 0, 0, 0, 0, nameBytes.length, 0].map(hex).join('');
  const head = Buffer.concat([Buffer.from(text), nameBytes]);
  return Buffer.concat([head, Buffer.alloc((4 - (head.length % 4)) % 4)]);
}

function padded(data: Buffer): Buffer {
  return Buffer.concat([data, Buffer.alloc((4 - (data.length % 4)) % 4)]);
}

export function writeCpio(entries: CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let inode = 1;
  for (const entry of [...entries].sort((a, b) => a.path.localeCompare(b.path))) {
    const body = entry.target !== undefined ? Buffer.from(entry.target) : (entry.data ?? Buffer.alloc(0));
    parts.push(header([inode++, entry.mode, 1], entry.path.replace(/^\/+/, ''), body.length), padded(body));
  }
  parts.push(header([0, 0, 1], 'TRAILER!!!', 0));
  return Buffer.concat(parts);
}
