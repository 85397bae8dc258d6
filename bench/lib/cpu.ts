/**
 * CPU time per thread or process from /proc (clock ticks, 10 ms at
 * USER_HZ 100, so only windows of a second or more say much), to tell the
 * load generator's cost (the main thread) from the consumer's.
 */
import { readdirSync, readFileSync } from 'node:fs';

const TICK_S = 0.01;

function statTimes(path: string): number {
  try {
    const s = readFileSync(path, 'utf8');
    const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
    // Fields after the name start at 3 (state); utime is 14, stime 15.
    return (Number(f[11]) + Number(f[12])) * TICK_S;
  } catch {
    return 0;
  }
}

/** Seconds of CPU: this process's main thread, every thread of it, and the given child processes. */
export interface CpuSample {
  mainS: number;
  processS: number;
  childrenS: number;
}

export function sampleCpu(children: number[] = []): CpuSample {
  const u = process.cpuUsage();
  return {
    mainS: statTimes(`/proc/self/task/${process.pid}/stat`),
    processS: (u.user + u.system) / 1e6,
    childrenS: children.reduce((a, pid) => a + statTimes(`/proc/${pid}/stat`), 0),
  };
}

export function cpuDelta(a: CpuSample, b: CpuSample): CpuSample {
  return { mainS: b.mainS - a.mainS, processS: b.processS - a.processS, childrenS: b.childrenS - a.childrenS };
}

/** CPU seconds of every thread of this process, by thread id. */
export function sampleThreads(): Map<number, number> {
  const m = new Map<number, number>();
  try {
    for (const t of readdirSync('/proc/self/task')) m.set(Number(t), statTimes(`/proc/self/task/${t}/stat`));
  } catch {
    // not Linux: no per-thread figures
  }
  return m;
}

/**
 * Cores used per thread over a window, busiest first, the main thread
 * excluded (it is reported on its own); threads under 1 % are left out.
 */
export function threadCores(a: Map<number, number>, b: Map<number, number>, secs: number): number[] {
  const out: number[] = [];
  for (const [tid, s] of b) {
    if (tid === process.pid) continue;
    const c = (s - (a.get(tid) ?? 0)) / secs;
    if (c >= 0.01) out.push(Number(c.toFixed(2)));
  }
  return out.sort((x, y) => y - x);
}

/** Threads of this process, for the record. */
export function threadCount(): number {
  try {
    return readdirSync('/proc/self/task').length;
  } catch {
    return 0;
  }
}
