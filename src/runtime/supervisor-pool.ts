import { spawn, type ChildProcess } from 'node:child_process';
import { stat } from 'node:fs/promises';
import { removeStandbySlot, standbySlot, type StandbyRequest } from './standby-qemu.ts';
import { exitOf, hasExited } from '../util/child-exit.ts';

/** How many spares a pool keeps and how many of them may hold a standby QEMU. */
export interface SupervisorPoolLimits {
  /** spare supervisor processes at most (one is kept; more while learned shapes ask for standbys) */
  spares: number;
  /** of those, how many may hold a paused standby QEMU (its TCG translation buffer and page tables: see the README) */
  standbys: number;
}

/**
 * Warm spare supervisors for a long-running host (`torpor serve`): a supervisor process takes
 * ~0.2 s to start, which a wake or a fork's child would otherwise pay before QEMU even starts. A
 * spare waits on stdin for the id of the machine it is to supervise; when the host goes away it exits.
 *
 * A spare may also hold a standby QEMU (standby-qemu.ts) for a machine *shape*: a restore of that
 * shape adopts it instead of starting QEMU. The pool learns which shapes it needs from what it served
 * (`want`): the shape of the last restore started through it (the next wake of a session of the same
 * agent spec has it), and the shape of the last fork, as many times as it had children. The standbys
 * are bounded (`limits.standbys`): a newer shape's demand pushes out the oldest one's.
 */
export class SupervisorPool {
  private readonly spares: ChildProcess[] = [];
  private closed = false;
  private refill?: NodeJS.Timeout;
  /** how many standbys of each shape (keyed by its request line) the pool keeps, the newest demand last */
  private readonly demand = new Map<string, number>();
  /** the shape of the last single start (a wake): what `take()` without a shape prefers */
  private startLine?: string;
  /** spares told to start a standby QEMU, and which */
  private readonly standbySent = new WeakMap<ChildProcess, string>();
  /** spares being spawned (counted against `spares`, so two fills do not both start one) */
  private spawning = 0;
  /** spares ended to make room for another shape, still exiting: `close` waits for them too */
  private readonly retiring = new Set<ChildProcess>();
  readonly limits: SupervisorPoolLimits;

  constructor(
    private readonly command: () => Promise<string[]>,
    private readonly environment: () => NodeJS.ProcessEnv,
    limits: number | SupervisorPoolLimits = 1,
    /**
     * How long after a `take` the pool refills. Not at once: the new spare's start (the bundle's
     * freshness check walks the source tree on this thread, then a node process starts) would
     * compete for the CPU with the start that just took a spare (on 2 cores, with its QEMU).
     */
    private readonly refillDelayMs = 1000,
  ) {
    this.limits = typeof limits === 'number' ? { spares: limits, standbys: limits } : { ...limits };
    this.limits.standbys = Math.min(this.limits.standbys, this.limits.spares);
  }

  private async spawnSpare(): Promise<void> {
    this.spawning++;
    let child: ChildProcess;
    try {
      child = spawn(process.execPath, [...(await this.command()), '--standby'], {
        detached: true,
        stdio: ['pipe', 'ignore', 'ignore'],
        env: this.environment(),
      });
    } finally {
      this.spawning--;
    }
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
      this.assignStandbys();
    }
  }

  /** The spares alive now, with the shape of the standby each was told to start ('' for none). */
  private live(): Array<{ child: ChildProcess; line: string }> {
    return this.spares.filter((child) => !hasExited(child)).map((child) => ({ child, line: this.standbySent.get(child) ?? '' }));
  }

  /**
   * Tells spares without a standby to start one for a shape still short of its demand, newest demand
   * first, up to `limits.standbys`. A spare holding a shape no longer wanted (or more of one than
   * wanted) is ended when a wanted shape has no spare left to take it: a spare starts one standby in
   * its life, and the refill brings a fresh one.
   */
  private assignStandbys(): void {
    if (this.closed) return;
    const spares = this.live();
    const held = new Map<string, number>();
    for (const { line } of spares) if (line) held.set(line, (held.get(line) ?? 0) + 1);
    let standbys = spares.filter(({ line }) => line).length;
    let retired = false;
    for (const [line, wanted] of [...this.demand].reverse()) {
      while ((held.get(line) ?? 0) < wanted) {
        let spare = spares.find((entry) => !entry.line);
        if (spare && standbys >= this.limits.standbys) spare = undefined;
        if (!spare) {
          // A standby of a shape wanted less (or not at all) makes room for this one.
          const stale = spares.find((entry) => entry.line && entry.line !== line && (held.get(entry.line) ?? 0) > (this.demand.get(entry.line) ?? 0));
          if (!stale) break;
          held.set(stale.line, held.get(stale.line)! - 1);
          this.retiring.add(stale.child);
          stale.child.once('exit', () => this.retiring.delete(stale.child));
          stale.child.stdin?.end();
          spares.splice(spares.indexOf(stale), 1);
          this.spares.splice(this.spares.indexOf(stale.child), 1);
          standbys--;
          retired = true;
          continue;
        }
        spare.child.stdin?.write(line);
        this.standbySent.set(spare.child, line);
        spare.line = line;
        held.set(line, (held.get(line) ?? 0) + 1);
        standbys++;
      }
    }
    if (retired) this.scheduleRefill();
  }

  /**
   * The pool keeps `count` standby QEMUs of `request`'s shape from now on (the newest demand; older
   * shapes give way beyond `limits.standbys`). Spares waiting without one start theirs now.
   */
  want(request: StandbyRequest | undefined, count = 1): void {
    if (request) {
      const line = standbyLine(request);
      this.demand.delete(line);
      this.demand.set(line, Math.min(count, this.limits.standbys));
      let total = 0;
      for (const [key, wanted] of [...this.demand].reverse()) {
        const kept = Math.max(0, Math.min(wanted, this.limits.standbys - total));
        total += kept;
        if (kept === 0) this.demand.delete(key);
        else this.demand.set(key, kept);
      }
      this.assignStandbys();
    }
    // Spares taken (a fork's take waits for this) or more wanted: brought in with the refill, not now.
    if (this.spares.length + this.spawning < this.target()) this.scheduleRefill();
  }

  /**
   * The shape of a machine just started through this pool (a wake): one standby of it is kept, and
   * `take()` without a shape prefers it. undefined: the start had no shape a standby can take.
   */
  preStart(request: StandbyRequest | undefined): void {
    this.startLine = request ? standbyLine(request) : undefined;
    this.want(request, 1);
  }

  /**
   * How many spares to keep: one (a wake's), or as many standbys as the shapes learned ask for (a
   * fork of 4 keeps 4), at most `limits.spares`. An idle server that never forked keeps one.
   */
  private target(): number {
    const standbys = [...this.demand.values()].reduce((sum, count) => sum + count, 0);
    return Math.min(this.limits.spares, Math.max(1, standbys));
  }

  fill(): void {
    // A spare that could not start (the bundle being rebuilt, no memory for a process) is tried again later.
    for (let missing = this.target() - this.spares.length - this.spawning; missing > 0 && !this.closed; missing--)
      void this.spawnSpare().catch(() => this.scheduleRefill());
  }

  private scheduleRefill(): void {
    if (this.closed) return;
    this.refill ??= setTimeout(() => {
      this.refill = undefined;
      this.fill();
    }, this.refillDelayMs);
    this.refill.unref();
  }

  /**
   * A started spare (its stdin still open), or undefined; the pool refills in the background, a
   * little later (`refill: false`: at the next `want`). With a shape: a spare holding a standby of it if there is one (`standby` says so),
   * else one without a standby, else any. Without: the last start's shape is preferred.
   */
  takeFor(request?: StandbyRequest, options: { refill?: boolean } = {}): { supervisor?: ChildProcess; standby: boolean } {
    const line = request ? standbyLine(request) : this.startLine;
    const spares = this.live();
    const chosen = spares.find((entry) => line !== undefined && entry.line === line) ?? spares.find((entry) => !entry.line) ?? spares[0];
    // A fork refills once its children run (its `want`): 4 spares and their QEMUs starting a second
    // after the take landed on the children's last steps.
    if (options.refill !== false) this.scheduleRefill();
    if (!chosen) return { standby: false };
    this.spares.splice(this.spares.indexOf(chosen.child), 1);
    return { supervisor: chosen.child, standby: line !== undefined && chosen.line === line };
  }

  /** A started spare (see `takeFor`), or undefined. */
  take(): ChildProcess | undefined {
    return this.takeFor().supervisor;
  }

  /** How many spares wait now, and how many of them hold a standby QEMU of `request`'s shape. */
  count(request?: StandbyRequest): { spares: number; standbys: number } {
    const line = request ? standbyLine(request) : undefined;
    const spares = this.live();
    return { spares: spares.length, standbys: spares.filter((entry) => entry.line && (line === undefined || entry.line === line)).length };
  }

  /**
   * Resolves once the pool is full and every standby its spares were told to start has its QEMU
   * up (its pager's socket exists: QEMU mapped the RAM), or after `timeoutMs`. A benchmark measures
   * a fork from this steady state, as a server's pool is between forks.
   */
  async settled(timeoutMs = 60_000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const spares = this.live();
      if (spares.length >= this.target() && this.refill === undefined) {
        const ready = await Promise.all(
          spares.map(({ child, line }) =>
            !line || child.pid === undefined
              ? true
              : stat(standbySlot(child.pid).pagerSocket).then(
                  () => true,
                  () => false,
                ),
          ),
        );
        if (ready.every(Boolean)) return true;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return false;
  }

  /**
   * Ends the spares (their stdin closes) and waits, at most `waitMs`, for them to exit: a spare
   * starting a standby QEMU finishes that start and then discards it, and whoever closes the pool
   * (a server stopping, a test removing its state directory) must not race that QEMU's files.
   */
  async close(waitMs = 5000): Promise<void> {
    this.closed = true;
    clearTimeout(this.refill);
    this.refill = undefined;
    const spares = [...this.spares.splice(0), ...this.retiring];
    for (const child of spares) child.stdin?.end();
    // exitOf's timer is not unref'd: spares are (they must not keep a server alive), so only it keeps
    // this process running until they have exited.
    await Promise.all(spares.map((child) => exitOf(child, waitMs)));
  }
}

/** The line a spare reads to start a standby of this shape; the same request gives the same line (it keys the demand). */
function standbyLine(request: StandbyRequest): string {
  return `standby ${JSON.stringify(request)}\n`;
}
