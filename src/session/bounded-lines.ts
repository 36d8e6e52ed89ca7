/**
 * Splits an agent's stdout into lines without trusting it: a line longer than `maxLineBytes` is
 * dropped (counted, never held in memory beyond the limit), so a program that prints 100 MiB
 * without a newline costs the server at most `maxLineBytes` of buffer and linear time.
 * Works on bytes: a chunk boundary inside a UTF-8 character is fine.
 */
export class BoundedLineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Bytes of the line being dropped so far; undefined when not dropping. */
  private dropping?: number;

  constructor(readonly maxLineBytes: number) {}

  /** Lines completed by `data`, and the sizes of lines dropped (reported when their newline arrives, or at once if it never will). */
  push(data: Buffer): { lines: string[]; dropped: number[] } {
    const lines: string[] = [];
    const dropped: number[] = [];
    let start = 0;
    for (;;) {
      const newline = data.indexOf(0x0a, start);
      const end = newline < 0 ? data.length : newline;
      const piece = data.subarray(start, end);
      if (this.dropping !== undefined) {
        this.dropping += piece.length;
      } else if (this.pendingBytes + piece.length > this.maxLineBytes) {
        this.dropping = this.pendingBytes + piece.length;
        this.pending = [];
        this.pendingBytes = 0;
      } else if (piece.length > 0) {
        // Copy: the caller's buffer may be reused after we return.
        this.pending.push(Buffer.from(piece));
        this.pendingBytes += piece.length;
      }
      if (newline < 0) break;
      if (this.dropping !== undefined) {
        dropped.push(this.dropping);
        this.dropping = undefined;
      } else {
        lines.push(Buffer.concat(this.pending, this.pendingBytes).toString('utf8'));
        this.pending = [];
        this.pendingBytes = 0;
      }
      start = newline + 1;
    }
    return { lines, dropped };
  }

  /** True while the splitter is discarding an oversized line that has not ended yet. */
  get discarding(): boolean {
    return this.dropping !== undefined;
  }
}

/** Longest agent stdout line the host accepts (TORPOR_AGENT_MAX_LINE, bytes). Default 8 MiB. */
export function agentMaxLineBytes(environment: NodeJS.ProcessEnv = process.env): number {
  const value = Number(environment.TORPOR_AGENT_MAX_LINE);
  return Number.isSafeInteger(value) && value >= 1024 ? value : 8 * 1024 * 1024;
}
