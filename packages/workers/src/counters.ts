/**
 * Per-device counters in a SharedArrayBuffer: the device worker is the only
 * writer, the supervisor (metrics, live display) reads without a message.
 *
 * Values are float64 so byte counts never wrap. A float64 store is not atomic
 * in the JS memory model, so the writer publishes through a sequence lock:
 * the sequence word (Atomics) is odd while a publish is in progress and the
 * reader retries until it sees the same even value before and after copying.
 * The worker accumulates into plain numbers on the hot path and publishes
 * once per ring drain, which keeps Atomics off the per-command path.
 *
 * A device worker in a child process cannot share a SharedArrayBuffer: its
 * block is a MAP_SHARED memfd both processes map, which JS sees as a plain
 * ArrayBuffer. Atomics accept a plain ArrayBuffer too, so the same
 * sequence lock serves both; the pages are the same memory, so another
 * process sees the stores as another thread would (tested on x86-64).
 */

export const OP_CLASSES = ['read', 'write', 'flush', 'other'] as const;
export type OpClass = (typeof OP_CLASSES)[number];

/** Upper bounds of the latency buckets, in seconds (the last bucket is +Inf). */
export const LATENCY_BUCKETS_S = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
  1, 2.5, 5, 10, 30,
];
const NB = LATENCY_BUCKETS_S.length + 1;

/** Named scalar slots, then per op class: commands, bytes, errors, latency sum, buckets. */
export const Scalar = {
  IN_FLIGHT: 0,
  RING_BYTES_USED: 1,
  DATA_BYTES_IN_FLIGHT: 2,
  QFULL_REPLIES: 3,
  TIMEOUTS: 4,
  MALFORMED_ENTRIES: 5,
  TMR_SEEN: 6,
  KICKS: 7,
  WAKEUPS: 8,
  HANDLER_ERRORS: 9,
  /** Errors by sense key 0..15. */
  SENSE_KEY_BASE: 10,
  /** Commands that ran longer than tcmur_cmd_time_out (each counted once, when it passes the limit). */
  CMD_TIME_OUT_EXCEEDED: 26,
  /** The ring's geometry as the mailbox gives it, so /metrics can show usage as a fraction on every device. */
  RING_SIZE: 27,
  DATA_AREA_BYTES: 28,
} as const;
const SCALARS = Scalar.DATA_AREA_BYTES + 1;
const PER_CLASS = 4 + NB; // commands, bytes, errors, latencySum, buckets
const CLASS_BASE = SCALARS;
export const COUNTER_SLOTS = CLASS_BASE + PER_CLASS * OP_CLASSES.length;
const SEQ_BYTES = 8;

/** One device's counter block: a SharedArrayBuffer, or a shared memfd mapping for a device process. */
export type CounterBlock = SharedArrayBuffer | ArrayBuffer;

/** Size of one device's counter block. */
export const COUNTER_BYTES = SEQ_BYTES + COUNTER_SLOTS * 8;

export function createCounterBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(COUNTER_BYTES);
}

export interface ClassSnapshot {
  commands: number;
  bytes: number;
  errors: number;
  latencySumS: number;
  /** Non-cumulative counts per bucket, the last one is the overflow bucket. */
  buckets: number[];
}
export interface CounterSnapshot {
  inFlight: number;
  ringBytesUsed: number;
  /** Bytes of the command ring (0 before the worker mapped it). */
  ringSize: number;
  /** Data-area bytes named by the iovecs of commands in flight. */
  dataBytesInFlight: number;
  /** Bytes of the data area (0 before the worker mapped it). */
  dataAreaBytes: number;
  qfullReplies: number;
  timeouts: number;
  malformedEntries: number;
  tmrSeen: number;
  kicks: number;
  wakeups: number;
  handlerErrors: number;
  /** Commands that ran longer than tcmur_cmd_time_out. */
  cmdTimeOutExceeded: number;
  errorsBySenseKey: number[];
  ops: Record<OpClass, ClassSnapshot>;
}

function bucketIndex(seconds: number): number {
  // Linear scan: 20 bounds, most latencies land in the first few.
  let i = 0;
  while (i < LATENCY_BUCKETS_S.length && seconds > LATENCY_BUCKETS_S[i]) i++;
  return i;
}

/** Writer side, owned by one device worker. */
export class CounterWriter {
  private readonly seq: Int32Array;
  private readonly shared: Float64Array;
  private readonly local = new Float64Array(COUNTER_SLOTS);
  private dirty = false;

  constructor(sab: CounterBlock) {
    this.seq = new Int32Array(sab, 0, 2);
    this.shared = new Float64Array(sab, SEQ_BYTES, COUNTER_SLOTS);
    this.local.set(this.shared); // a restarted worker continues where the last one stopped
  }

  add(slot: number, n = 1): void {
    this.local[slot] += n;
    this.dirty = true;
  }
  set(slot: number, v: number): void {
    if (this.local[slot] !== v) {
      this.local[slot] = v;
      this.dirty = true;
    }
  }

  /** One finished command of class `cls` (index into OP_CLASSES). */
  command(cls: number, bytes: number, latencyS: number, senseKey: number): void {
    const base = CLASS_BASE + cls * PER_CLASS;
    const l = this.local;
    l[base] += 1;
    l[base + 1] += bytes;
    l[base + 3] += latencyS;
    l[base + 4 + bucketIndex(latencyS)] += 1;
    if (senseKey >= 0) {
      l[base + 2] += 1;
      l[Scalar.SENSE_KEY_BASE + (senseKey & 15)] += 1;
    }
    this.dirty = true;
  }

  publish(): void {
    if (!this.dirty) return;
    Atomics.add(this.seq, 0, 1);
    this.shared.set(this.local);
    Atomics.add(this.seq, 0, 1);
    this.dirty = false;
  }
}

/** Reader side: a consistent copy of everything one worker published. */
export function readCounters(sab: CounterBlock): CounterSnapshot {
  const seq = new Int32Array(sab, 0, 2);
  const shared = new Float64Array(sab, SEQ_BYTES, COUNTER_SLOTS);
  const copy = new Float64Array(COUNTER_SLOTS);
  for (let tries = 0; ; tries++) {
    const before = Atomics.load(seq, 0);
    if ((before & 1) === 0 || tries > 1000) {
      copy.set(shared);
      if (Atomics.load(seq, 0) === before || tries > 1000) break;
    }
  }
  const ops = {} as Record<OpClass, ClassSnapshot>;
  OP_CLASSES.forEach((name, cls) => {
    const b = CLASS_BASE + cls * PER_CLASS;
    ops[name] = {
      commands: copy[b],
      bytes: copy[b + 1],
      errors: copy[b + 2],
      latencySumS: copy[b + 3],
      buckets: Array.from(copy.subarray(b + 4, b + 4 + NB)),
    };
  });
  return {
    inFlight: copy[Scalar.IN_FLIGHT],
    ringBytesUsed: copy[Scalar.RING_BYTES_USED],
    ringSize: copy[Scalar.RING_SIZE],
    dataBytesInFlight: copy[Scalar.DATA_BYTES_IN_FLIGHT],
    dataAreaBytes: copy[Scalar.DATA_AREA_BYTES],
    qfullReplies: copy[Scalar.QFULL_REPLIES],
    timeouts: copy[Scalar.TIMEOUTS],
    malformedEntries: copy[Scalar.MALFORMED_ENTRIES],
    tmrSeen: copy[Scalar.TMR_SEEN],
    kicks: copy[Scalar.KICKS],
    wakeups: copy[Scalar.WAKEUPS],
    handlerErrors: copy[Scalar.HANDLER_ERRORS],
    cmdTimeOutExceeded: copy[Scalar.CMD_TIME_OUT_EXCEEDED],
    errorsBySenseKey: Array.from(copy.subarray(Scalar.SENSE_KEY_BASE, Scalar.SENSE_KEY_BASE + 16)),
    ops,
  };
}

/**
 * Quantile from bucket counts (interpolated inside the bucket, as Prometheus'
 * histogram_quantile does). Returns seconds; NaN with no samples.
 */
export function quantileFromBuckets(buckets: number[], q: number): number {
  const total = buckets.reduce((a, b) => a + b, 0);
  if (total === 0) return NaN;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < buckets.length; i++) {
    if (seen + buckets[i] >= rank && buckets[i] > 0) {
      const lo = i === 0 ? 0 : LATENCY_BUCKETS_S[i - 1];
      const hi = i < LATENCY_BUCKETS_S.length ? LATENCY_BUCKETS_S[i] : lo;
      return lo + (hi - lo) * ((rank - seen) / buckets[i]);
    }
    seen += buckets[i];
  }
  return LATENCY_BUCKETS_S[LATENCY_BUCKETS_S.length - 1];
}

/** Element-wise b - a, for rates and windowed quantiles. */
export function diffBuckets(a: number[], b: number[]): number[] {
  return b.map((v, i) => v - (a[i] ?? 0));
}
