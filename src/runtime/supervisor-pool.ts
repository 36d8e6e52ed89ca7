import { spawn, type ChildProcess } from 'node:child_process';
import { removeStandbySlot, type StandbyRequest } from './standby-qemu.ts';

/**
 * Warm spare supervisors for a long-running host (`torpor serve`): a supervisor process takes
 * ~0.2 s to start, which a wake would otherwise pay before QEMU even starts. A spare waits on
 * stdin for the id of the machine it is to supervise; when the host goes away it exits.
 *
 * A spare may also hold a standby QEMU (standby-qemu.ts) for the shape of the machine the last take
 * started (`preStart`): sessions of one agent spec share one shape, so the next wake adopts it.
 */
export class SupervisorPool {
  private readonly spares: ChildProcess[] = [];
  private closed = false;
  private refill?: NodeJS.Timeout;
  /** the standby request line for new spares (the shape of the last start through this pool) */
  private standbyLine?: string;
  /** spares told to start a standby QEMU, and which */
  private readonly standbySent = new WeakMap<ChildProcess, string>();

  constructor(
    private readonly command: () => Promise<string[]>,
    private readonly environment: () => NodeJS.ProcessEnv,
    private readonly size = 1,
    /**
     * How long after a `take` the pool refills. Not at once: the new spare's start (the bundle's
     * freshness check walks the source tree on this thread, then a node process starts) would
     * compete for the CPU with the start that just took a spare (on 2 cores, with its QEMU).
     */
    private readonly refillDelayMs = 1000,
  ) {}

  private async spawnSpare(): Promise<void> {
    const child = spawn(process.execPath, [...(await this.command()), '--standby'], {
      detached: true,
      stdio: ['pipe', 'ignore', 'ignore'],
      env: this.environment(),
    });
    child.unref();
    child.stdin?.on('error', () => {});
    child.on('exit', () => {
      const index = this.spares.indexOf(child);
      if (index >= 0) this.spares.splice(index, 1);
      // A spare killed (-9) leaves its standby's files; its QEMU died with it (parent death).
      // (After an adoption they are the machine's, under the machine's names: nothing is left here.)
      if (child.pid !== undefined && this.standbySent.has(child)) void removeStandbySlot(child.pid).catch(() => {});
    });
    if (this.closed) child.stdin?.end();
    else {
      this.spares.push(child);
      this.sendStandby(child);
    }
  }

  private sendStandby(child: ChildProcess): void {
    if (!this.standbyLine || this.standbySent.has(child) || child.exitCode !== null) return;
    child.stdin?.write(this.standbyLine);
    this.standbySent.set(child, this.standbyLine);
  }

  /**
   * Spares pre-start a paused QEMU for this shape from now on (the one waiting now too, if it has
   * none yet); undefined stops that for new spares.
   */
  preStart(request: StandbyRequest | undefined): void {
    this.standbyLine = request ? `standby ${JSON.stringify(request)}\n` : undefined;
    for (const child of this.spares) this.sendStandby(child);
  }

  fill(): void {
    for (let missing = this.size - this.spares.length; missing > 0 && !this.closed; missing--) void this.spawnSpare().catch(() => {});
  }

  /** A started spare (its stdin still open), or undefined; the pool refills in the background, a little later. */
  take(): ChildProcess | undefined {
    const child = this.spares.shift();
    this.refill ??= setTimeout(() => {
      this.refill = undefined;
      this.fill();
    }, this.refillDelayMs);
    this.refill.unref();
    return child && child.exitCode === null ? child : undefined;
  }

  /**
   * Ends the spares (their stdin closes) and waits, at most `waitMs`, for them to exit: a spare
   * starting a standby QEMU finishes that start and then discards it, and whoever closes the pool
   * (a server stopping, a test removing its state directory) must not race that QEMU's files.
   */
  async close(waitMs = 5000): Promise<void> {
    this.closed = true;
    clearTimeout(this.refill);
    const spares = this.spares.splice(0);
    const exits = spares.map((child) =>
      child.exitCode !== null || child.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => child.once('exit', () => resolve())),
    );
    for (const child of spares) child.stdin?.end();
    // The timer is not unref'd: spares are (they must not keep a server alive), so only it keeps this
    // process running until they have exited.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(exits), new Promise((resolve) => (timer = setTimeout(resolve, waitMs)))]);
    clearTimeout(timer);
  }
}
