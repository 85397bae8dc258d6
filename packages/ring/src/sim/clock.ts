/**
 * Time as the kernel simulator sees it. The simulator never reads the wall
 * clock directly, so tests can swap in a ManualClock and step through
 * cmd_time_out / qfull_time_out deterministically instead of sleeping.
 */

export interface SimClock {
  /** Milliseconds, monotonic; only differences matter. */
  now(): number;
  /** Run `fn` once, `delayMs` from now. */
  setTimer(fn: () => void, delayMs: number): unknown;
  clearTimer(handle: unknown): void;
}

/** Real time on the event loop. */
export const systemClock: SimClock = {
  now: () => performance.now(),
  setTimer: (fn, delayMs) => setTimeout(fn, Math.max(0, delayMs)),
  clearTimer: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

interface ManualTimer {
  due: number;
  seq: number;
  fn: () => void;
}

/** A clock that only moves when told to; due timers fire synchronously inside advance(). */
export class ManualClock implements SimClock {
  private t: number;
  private seq = 0;
  private readonly timers = new Map<number, ManualTimer>();

  constructor(start = 0) {
    this.t = start;
  }

  now(): number {
    return this.t;
  }

  setTimer(fn: () => void, delayMs: number): unknown {
    const id = ++this.seq;
    this.timers.set(id, { due: this.t + Math.max(0, delayMs), seq: id, fn });
    return id;
  }

  clearTimer(handle: unknown): void {
    this.timers.delete(handle as number);
  }

  /** Timers not yet fired. */
  get pending(): number {
    return this.timers.size;
  }

  /**
   * Move time forward by `ms`, firing every timer that falls due on the way in
   * due order (ties in the order they were set). A timer set by a firing timer
   * also fires if it falls due before the end of the step.
   */
  advance(ms: number): void {
    const end = this.t + Math.max(0, ms);
    for (;;) {
      let next: [number, ManualTimer] | undefined;
      for (const e of this.timers) {
        if (e[1].due > end) continue;
        if (!next || e[1].due < next[1].due || (e[1].due === next[1].due && e[1].seq < next[1].seq)) next = e;
      }
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].due);
      next[1].fn();
    }
    this.t = end;
  }
}
