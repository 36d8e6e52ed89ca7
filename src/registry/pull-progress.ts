/**
 * What a pull shows on stderr. On a terminal, one line per layer redrawn in place
 * (`sha256:ab12cd34ef56  downloading  12.3/40.1 MiB`); elsewhere (logs, CI) a plain line
 * whenever a layer changes state, so the output stays readable when captured.
 */
export interface PullReporter {
  step(message: string): void;
  layer(id: string, state: string, done?: number, total?: number): void;
  /** Stops redrawing the layer lines; later output goes below them. */
  endLayers(): void;
}

export const silentReporter: PullReporter = { step() {}, layer() {}, endLayers() {} };

const mebibytes = (bytes: number) => (bytes / 1048576).toFixed(1);

export function createPullReporter(stream: NodeJS.WriteStream = process.stderr): PullReporter {
  return stream.isTTY ? new TerminalReporter(stream) : new LineReporter(stream);
}

class LineReporter implements PullReporter {
  private readonly states = new Map<string, string>();
  constructor(private readonly stream: NodeJS.WritableStream) {}

  step(message: string): void {
    this.stream.write(`${message}\n`);
  }

  layer(id: string, state: string, done = 0, total = 0): void {
    if (this.states.get(id) === state) return;
    this.states.set(id, state);
    const size = state === 'resuming' ? ` from ${mebibytes(done)} of ${mebibytes(total)} MiB` : total ? ` (${mebibytes(total)} MiB)` : '';
    this.stream.write(`${id}: ${state}${size}\n`);
  }

  endLayers(): void {}
}

class TerminalReporter implements PullReporter {
  private readonly lines = new Map<string, string>();
  private drawn = 0;
  private lastDraw = 0;
  private timer?: NodeJS.Timeout;

  constructor(private readonly stream: NodeJS.WriteStream) {}

  step(message: string): void {
    this.endLayers();
    this.stream.write(`${message}\n`);
  }

  layer(id: string, state: string, done = 0, total = 0): void {
    const previous = this.lines.get(id);
    const amount = total ? `${mebibytes(done).padStart(7)}/${mebibytes(total)} MiB` : '';
    const line = `${id}  ${state.padEnd(11)} ${amount}`;
    this.lines.set(id, line);
    // Redraw at most ten times a second, but always on a change of state.
    if (previous?.split(/\s+/)[1] !== state || Date.now() - this.lastDraw > 100) this.draw();
    else if (!this.timer)
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.draw();
      }, 100);
  }

  private draw(): void {
    this.lastDraw = Date.now();
    let output = this.drawn > 0 ? `\x1b[${this.drawn}A` : '';
    for (const line of this.lines.values()) output += `\x1b[2K${line.slice(0, (this.stream.columns || 120) - 1)}\n`;
    this.drawn = this.lines.size;
    this.stream.write(output);
  }

  endLayers(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.lines.size > 0) this.draw();
    this.lines.clear();
    this.drawn = 0;
  }
}
