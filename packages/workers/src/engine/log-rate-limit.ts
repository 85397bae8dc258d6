/**
 * A device's info, warning and error lines, at most `burst` per window.
 *
 * A handler failing every command logs every failure: thousands of lines a
 * second, each a message to the supervisor and a line in the journal. That
 * costs CPU the other LUNs need and buries the first line, which says what
 * went wrong. Past the budget lines are only counted, and one line says how
 * many were left out when the window ends. The counters (`tcmu_handler_errors_total`
 * and the rest) still count every command.
 *
 * Only the failing path pays: a line within the budget costs a clock read,
 * and a timer runs only for a window that dropped lines. CDB tracing
 * (`scsi`) and `debug` pass through untouched: an admin turned them on.
 */
import { performance } from 'node:perf_hooks';

export type LimitedLevel = 'info' | 'warn' | 'error';

export interface LogRateLimitOptions {
  /** Lines let through per window (default 20). */
  burst?: number;
  /** The window in ms (default 1000). */
  windowMs?: number;
  /** The clock (tests); performance.now by default. */
  now?: () => number;
}

export class LogRateLimit {
  private readonly burst: number;
  private readonly windowMs: number;
  private readonly now: () => number;
  private windowStart = -Infinity;
  private sent = 0;
  private dropped = 0;
  private flushTimer: NodeJS.Timeout | undefined;

  constructor(private readonly emit: (level: LimitedLevel, msg: string) => void, opts: LogRateLimitOptions = {}) {
    this.burst = opts.burst ?? 20;
    this.windowMs = opts.windowMs ?? 1000;
    this.now = opts.now ?? (() => performance.now());
  }

  log(level: LimitedLevel, msg: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      this.flush();
      this.windowStart = t;
    }
    if (this.sent < this.burst) {
      this.sent++;
      this.emit(level, msg);
      return;
    }
    if (this.dropped++ === 0) {
      // Said at the window's end even if nothing more is logged then.
      this.flushTimer = setTimeout(() => this.flush(), Math.max(0, this.windowStart + this.windowMs - t));
      this.flushTimer.unref();
    }
  }

  /** Say how many lines were left out, if any, and start a new window (also at stop, so no count is lost). */
  flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.dropped > 0) {
      const n = this.dropped;
      this.dropped = 0;
      this.emit('warn', `${n} more log line(s) left out in ${(this.windowMs / 1000).toFixed(1)} s (at most ${this.burst} per ${(this.windowMs / 1000).toFixed(1)} s per device; the metrics count every command)`);
    }
    this.sent = 0;
    this.windowStart = -Infinity;
  }
}
