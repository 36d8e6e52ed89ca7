/** What a terminal needs from a process on the other side: exec'd processes and attached main processes alike. */
export interface RemoteProcessInput {
  write(data: Buffer): void;
  endInput(): void;
  resize(rows: number, columns: number): void;
  signal(signalNumber: number): void;
}

const signalNumbers: Partial<Record<NodeJS.Signals, number>> = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1, SIGQUIT: 3 };

/**
 * Connects this process's stdin, terminal size and signals to a remote process. With a TTY the
 * local terminal goes raw so keys (Ctrl-C too) reach the guest's terminal; without one, signals are
 * forwarded like docker's sig-proxy. Returns a function that undoes everything.
 */
export function connectTerminal(remote: RemoteProcessInput, options: { tty: boolean; interactive: boolean }): () => void {
  const cleanups: Array<() => void> = [];
  const stdin = process.stdin;
  if (options.interactive) {
    if (options.tty && stdin.isTTY) {
      stdin.setRawMode(true);
      cleanups.push(() => stdin.setRawMode(false));
    }
    const onData = (chunk: Buffer) => remote.write(chunk);
    const onEnd = () => remote.endInput();
    stdin.on('data', onData);
    stdin.on('end', onEnd);
    stdin.resume();
    cleanups.push(() => {
      stdin.off('data', onData);
      stdin.off('end', onEnd);
      stdin.pause();
    });
  }
  if (options.tty && process.stdout.isTTY) {
    const onResize = () => remote.resize(process.stdout.rows, process.stdout.columns);
    process.stdout.on('resize', onResize);
    cleanups.push(() => process.stdout.off('resize', onResize));
  }
  if (!options.tty || !stdin.isTTY) {
    for (const [name, number] of Object.entries(signalNumbers) as Array<[NodeJS.Signals, number]>) {
      const handler = () => remote.signal(number);
      process.on(name, handler);
      cleanups.push(() => process.off(name, handler));
    }
  }
  return () => cleanups.forEach((cleanup) => cleanup());
}

export function terminalSize(): { rows: number; columns: number } {
  return { rows: process.stdout.rows || 24, columns: process.stdout.columns || 80 };
}
