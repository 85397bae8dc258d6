/**
 * Latency histogram with log-spaced buckets (8 per doubling, about 9 %
 * wide), from 1 us to about 35 s. Cheap enough to record every command on
 * the load generator's hot path.
 */
const PER_OCTAVE = 8;
const BUCKETS = 1 + 25 * PER_OCTAVE;

export class LatencyHist {
  readonly counts = new Float64Array(BUCKETS);
  total = 0;
  sumUs = 0;

  record(us: number): void {
    const i = us <= 1 ? 0 : Math.min(BUCKETS - 1, 1 + Math.floor(Math.log2(us) * PER_OCTAVE));
    this.counts[i]++;
    this.total++;
    this.sumUs += us;
  }

  reset(): void {
    this.counts.fill(0);
    this.total = 0;
    this.sumUs = 0;
  }

  /** Upper bound of bucket i, in microseconds. */
  static upperUs(i: number): number {
    return i === 0 ? 1 : 2 ** (i / PER_OCTAVE);
  }

  /** The q-quantile in microseconds (geometric middle of its bucket); NaN when empty. */
  quantileUs(q: number): number {
    if (this.total === 0) return NaN;
    const rank = q * this.total;
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i];
      if (seen >= rank && this.counts[i] > 0) return i === 0 ? 1 : Math.sqrt(LatencyHist.upperUs(i - 1) * LatencyHist.upperUs(i));
    }
    return LatencyHist.upperUs(BUCKETS - 1);
  }

  meanUs(): number {
    return this.total ? this.sumUs / this.total : NaN;
  }

  /** [latency us (bucket upper bound), cumulative fraction] for every non-empty bucket. */
  cdf(): [number, number][] {
    const out: [number, number][] = [];
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      if (!this.counts[i]) continue;
      seen += this.counts[i];
      out.push([Number(LatencyHist.upperUs(i).toPrecision(4)), Number((seen / this.total).toFixed(5))]);
    }
    return out;
  }
}
