/**
 * The bench's initiator: keeps `queueDepth` READ(16)/WRITE(16) commands
 * outstanding on each simulated LUN, random aligned LBAs, a given read share,
 * no verification (the demo's VerifyingLoad checks data; this one is about
 * speed). It runs on the main thread together with the simulator, so the
 * two together are the "kernel" side of every figure, and can be the
 * bottleneck: the null consumer measures how fast they go on their own.
 *
 * Batching: with `plug`, the commands that replace those completed in one
 * simulator pass are queued under one plug/unplug, so they share one irq (as
 * the LIO core batches submissions); without it every command raises its own.
 */
import { performance } from 'node:perf_hooks';
import type { KernelSimulator, SimResult } from '@tcmu-ts/ring';
import { LatencyHist } from './hist.js';

export interface LoadSpec {
  ioBytes: number;
  queueDepth: number;
  /** 0..100 */
  readPercent: number;
  blockSize: number;
  numLbas: number;
  plug: boolean;
}

export interface LoadWindow {
  commands: number;
  bytes: number;
  errors: number;
  /** First failure seen (status / simulator reason), for the report. */
  firstError?: string;
}

interface Lun {
  sim: KernelSimulator;
  out: Uint8Array;
  pending: number;
}

export class LoadDriver {
  readonly hist = new LatencyHist();
  private readonly luns: Lun[];
  private readonly blocksPerIo: number;
  private readonly extents: number;
  private running = false;
  private outstanding = 0;
  private idle?: () => void;
  private commands = 0;
  private bytes = 0;
  private errors = 0;
  private firstError?: string;
  private queue: Lun[] = [];
  private flushScheduled = false;

  constructor(sims: KernelSimulator[], private readonly s: LoadSpec) {
    this.blocksPerIo = Math.max(1, Math.floor(s.ioBytes / s.blockSize));
    this.extents = Math.max(1, Math.floor(s.numLbas / this.blocksPerIo));
    this.luns = sims.map((sim) => {
      const out = new Uint8Array(this.blocksPerIo * s.blockSize);
      for (let i = 0; i < out.length; i += 4096) out[i] = (i >>> 12) & 0xff;
      return { sim, out, pending: 0 };
    });
  }

  start(): void {
    this.running = true;
    for (const l of this.luns) {
      l.sim.plug();
      for (let i = 0; i < this.s.queueDepth; i++) this.submit(l);
      l.sim.unplug();
    }
  }

  /** Counters since the last reset (and reset them). */
  take(): LoadWindow {
    const w = { commands: this.commands, bytes: this.bytes, errors: this.errors, firstError: this.firstError };
    this.commands = 0;
    this.bytes = 0;
    this.errors = 0;
    this.hist.reset();
    return w;
  }

  /** Stop issuing; resolves once every outstanding command has completed. */
  stop(): Promise<void> {
    this.running = false;
    if (this.outstanding === 0) return Promise.resolve();
    return new Promise((r) => (this.idle = r));
  }

  private submit(l: Lun): void {
    const lba = Math.floor(Math.random() * this.extents) * this.blocksPerIo;
    const read = Math.random() * 100 < this.s.readPercent;
    const cdb = new Uint8Array(16);
    cdb[0] = read ? 0x88 : 0x8a;
    // LBA (big-endian 64-bit; ours fit in 32) and transfer length.
    cdb[6] = lba >>> 24; cdb[7] = lba >>> 16; cdb[8] = lba >>> 8; cdb[9] = lba;
    const n = this.blocksPerIo;
    cdb[10] = n >>> 24; cdb[11] = n >>> 16; cdb[12] = n >>> 8; cdb[13] = n;
    const t0 = performance.now();
    this.outstanding++;
    l.pending++;
    const p = read ? l.sim.submit(cdb, { dataInLength: l.out.length }) : l.sim.submit(cdb, { dataOut: l.out });
    p.then((r) => this.done(l, t0, r), (e: unknown) => this.done(l, t0, undefined, e));
  }

  private done(l: Lun, t0: number, r: SimResult | undefined, e?: unknown): void {
    this.hist.record((performance.now() - t0) * 1000);
    this.outstanding--;
    l.pending--;
    this.commands++;
    if (r && r.status === 0) this.bytes += l.out.length;
    else {
      this.errors++;
      this.firstError ??= r ? `status 0x${r.status.toString(16)}${r.failure ? ` (${r.failure})` : ''}` : String(e);
    }
    if (!this.running) {
      if (this.outstanding === 0) this.idle?.();
      return;
    }
    if (!this.s.plug) {
      this.submit(l);
      return;
    }
    // Every completion of one simulator pass settles in the same microtask checkpoint: refill them together.
    this.queue.push(l);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      queueMicrotask(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    const q = this.queue;
    this.queue = [];
    if (!this.running) return;
    if (this.luns.length === 1) {
      const l = this.luns[0];
      l.sim.plug();
      for (let i = 0; i < q.length; i++) this.submit(l);
      l.sim.unplug();
      return;
    }
    for (const l of this.luns) {
      let k = 0;
      for (const x of q) if (x === l) k++;
      if (!k) continue;
      l.sim.plug();
      for (let i = 0; i < k; i++) this.submit(l);
      l.sim.unplug();
    }
  }
}

/** Write the whole LUN once (1 MiB at a time, 4 in flight), so reads copy real data and no page is first touched while measuring. */
export async function prefill(sim: KernelSimulator, numLbas: number, blockSize: number, chunkBytes = 1 << 20): Promise<void> {
  const per = Math.max(1, Math.floor(chunkBytes / blockSize));
  const data = new Uint8Array(per * blockSize).fill(0xa5);
  let next = 0;
  const worker = async () => {
    while (next < numLbas) {
      const lba = next;
      const n = Math.min(per, numLbas - lba);
      next += n;
      const cdb = new Uint8Array(16);
      cdb[0] = 0x8a;
      new DataView(cdb.buffer).setUint32(6, lba);
      new DataView(cdb.buffer).setUint32(10, n);
      const r = await sim.submit(cdb, { dataOut: n === per ? data : data.subarray(0, n * blockSize) });
      if (r.status !== 0) throw new Error(`prefill write at ${lba} failed: status 0x${r.status.toString(16)} ${r.failure ?? ''}`);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}
