/**
 * The built-in load of `npm start`: a mixed random read/write stream at a
 * fixed queue depth per LUN, issued through an initiator, verifying every
 * read against the last acknowledged write of each block.
 *
 * Concurrent commands never overlap (each IO-sized extent is taken while a
 * command on it is outstanding), so "the last acknowledged write" is always
 * well defined and any mismatch is a real lost, stale or torn write.
 */
import { fillBlocks, checkBlocks } from './verify-pattern.js';

export interface InitiatorResult {
  status: number;
  sense?: Uint8Array;
  dataIn?: Uint8Array;
}
export interface LoadTarget {
  readonly name: string;
  readonly blockSize: number;
  readonly numLbas: number;
  submit(cdb: Uint8Array, opts: { dataOut?: Uint8Array; dataInLength?: number }): Promise<InitiatorResult>;
}

export interface LoadOptions {
  queueDepth: number;
  ioBytes: number;
  readPercent: number;
  /** Every this-many writes, a SYNCHRONIZE CACHE goes out too. */
  flushEvery?: number;
}

export interface LoadStats {
  commands: number;
  errors: number;
  verifyFailures: number;
  firstProblem?: string;
}

export class VerifyingLoad {
  readonly stats: LoadStats = { commands: 0, errors: 0, verifyFailures: 0 };
  private readonly blocksPerIo: number;
  private readonly extents: number;
  private readonly busy: Uint8Array;
  /** Write generation per block; 0 = never written. */
  private readonly generation: Uint32Array;
  private nextGeneration = 1;
  private running = false;
  private loops: Promise<void>[] = [];
  private writes = 0;

  constructor(private readonly target: LoadTarget, private readonly o: LoadOptions) {
    this.blocksPerIo = Math.max(1, Math.floor(o.ioBytes / target.blockSize));
    this.extents = Math.floor(target.numLbas / this.blocksPerIo);
    if (this.extents < o.queueDepth) throw new Error(`${target.name}: too small for queue depth ${o.queueDepth}`);
    this.busy = new Uint8Array(this.extents);
    this.generation = new Uint32Array(target.numLbas);
  }

  start(): void {
    this.running = true;
    for (let i = 0; i < this.o.queueDepth; i++) this.loops.push(this.loop());
  }

  async stop(): Promise<LoadStats> {
    this.running = false;
    await Promise.all(this.loops);
    return this.stats;
  }

  private pickExtent(): number {
    for (;;) {
      const e = Math.floor(Math.random() * this.extents);
      if (!this.busy[e]) return e;
    }
  }

  private problem(msg: string): void {
    this.stats.firstProblem ??= msg;
  }

  private async loop(): Promise<void> {
    const bs = this.target.blockSize;
    const bytes = this.blocksPerIo * bs;
    const out = new Uint8Array(bytes);
    const scratch = new Uint8Array(bs);
    const genOf = (lba: number) => this.generation[lba];
    while (this.running) {
      const e = this.pickExtent();
      this.busy[e] = 1;
      const lba = e * this.blocksPerIo;
      try {
        if (Math.random() * 100 < this.o.readPercent) {
          const r = await this.target.submit(rw16(0x88, lba, this.blocksPerIo), { dataInLength: bytes });
          this.stats.commands++;
          if (r.status !== 0 || !r.dataIn) {
            this.stats.errors++;
            this.problem(`${this.target.name}: READ lba ${lba} status 0x${r.status.toString(16)}`);
            continue;
          }
          const bad = checkBlocks(r.dataIn, lba, bs, genOf, scratch);
          if (bad >= 0) {
            this.stats.verifyFailures++;
            this.problem(`${this.target.name}: block ${lba + bad} does not hold generation ${genOf(lba + bad)}`);
          }
        } else {
          const gen = this.nextGeneration++;
          fillBlocks(out, lba, bs, gen);
          const r = await this.target.submit(rw16(0x8a, lba, this.blocksPerIo), { dataOut: out });
          this.stats.commands++;
          if (r.status !== 0) {
            // Not acknowledged: the block may hold either generation now, so stop checking it.
            this.stats.errors++;
            this.problem(`${this.target.name}: WRITE lba ${lba} status 0x${r.status.toString(16)}`);
            continue;
          }
          for (let b = 0; b < this.blocksPerIo; b++) this.generation[lba + b] = gen;
          if (this.o.flushEvery && ++this.writes % this.o.flushEvery === 0) {
            const f = await this.target.submit(new Uint8Array([0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), {});
            this.stats.commands++;
            if (f.status !== 0) this.stats.errors++;
          }
        }
      } catch (err) {
        this.stats.errors++;
        this.problem(`${this.target.name}: ${err instanceof Error ? err.message : String(err)}`);
      } finally {
        this.busy[e] = 0;
      }
    }
  }
}

/** READ(16) / WRITE(16) CDB. */
export function rw16(op: number, lba: number, blocks: number): Uint8Array {
  const cdb = new Uint8Array(16);
  cdb[0] = op;
  const dv = new DataView(cdb.buffer);
  dv.setBigUint64(2, BigInt(lba));
  dv.setUint32(10, blocks);
  return cdb;
}
