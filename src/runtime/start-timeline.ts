/**
 * Where a start's (or a session wake's) time goes: named steps, each stamped when it ended, in
 * milliseconds since the epoch. Epoch time, not a process's own clock, so that the steps of the
 * session manager, the runtime and the machine's supervisor (another process) line up in one list.
 * Benchmarks print it (bench/wake.ts); nothing decides anything from it.
 */
export interface TimelineStep {
  step: string;
  /** ms since the epoch, with fractions */
  at: number;
}

/** Now, in ms since the epoch with sub-millisecond precision (Date.now() has whole ms only). */
export const epochNow = (): number => performance.timeOrigin + performance.now();

export class StartTimeline {
  readonly steps: TimelineStep[] = [];

  mark(step: string, at = epochNow()): void {
    this.steps.push({ step, at });
  }

  /**
   * Adds a supervisor's `startTimings` (ms since that process's start, plus `processStartedAt`,
   * its start in epoch ms): the steps it took inside its own process.
   */
  addSupervisorTimings(timings: Record<string, number> | undefined, prefix = 'supervisor: '): void {
    const origin = timings?.processStartedAt;
    if (!timings || origin === undefined) return;
    for (const [step, value] of Object.entries(timings)) if (step !== 'processStartedAt') this.mark(`${prefix}${step}`, origin + value);
  }

  /** The steps in time order, each with its duration since the step before (the first: since `from`). */
  breakdown(from = this.steps[0]?.at ?? 0): Array<{ step: string; sinceStartMs: number; stepMs: number }> {
    const sorted = [...this.steps].sort((a, b) => a.at - b.at);
    let previous = from;
    return sorted.map(({ step, at }) => {
      const row = { step, sinceStartMs: at - from, stepMs: at - previous };
      previous = at;
      return row;
    });
  }
}
