/**
 * Sparse RAM backstore: memory is taken a chunk at a time, only when a chunk
 * first receives non-zero data, so a large device that is mostly empty (the
 * usual test and benchmark case) costs little. Nothing survives close().
 */
import {
  configError,
  configOk,
  defineHandler,
  errnoError,
  isZeroRange,
  mergeExtents,
  parseOptions,
  parseSize,
  type BlockIo,
  type CompareAndWriteIo,
  type CompareResult,
  type ConfigCheck,
  type DeviceHandler,
  type DeviceLimits,
  type HandlerDevice,
  type LbaProvisioning,
  type LbaRange,
  type LbaStatusExtent,
  type ReconfigChange,
} from '@tcmu-ts/core';

export const RAM_DEFAULT_CHUNK = 1 << 20;

// Every callout finishes in place and returns its result, not a promise:
// the engine then completes the command without a promise or microtask.
const MATCH: CompareResult = Object.freeze({ ok: true });

export interface RamConfig {
  /** Capacity from the cfgstring, when it was a size. */
  size?: number;
  chunkSize: number;
}

/** Parse "ram/<name or size>[;chunk=<size>]" (the part after "ram/"). */
export function parseRamConfig(cfg: string): RamConfig | string {
  const { main, options } = parseOptions(cfg);
  let chunkSize = RAM_DEFAULT_CHUNK;
  for (const [key, value] of options) {
    if (key !== 'chunk') return `unknown option "${key}" (ram accepts only chunk=<size>)`;
    const n = parseSize(value);
    if (n === undefined || n < 512 || (n & (n - 1)) !== 0 || n > 2 ** 30) {
      return `chunk=${value} must be a power of two between 512 and 1G`;
    }
    chunkSize = n;
  }
  const size = parseSize(main);
  return size === undefined ? { chunkSize } : { size, chunkSize };
}

export class RamDevice implements DeviceHandler {
  /** Chunk index -> its memory. A Map, because devices may be far larger than what is ever touched. */
  private readonly chunks = new Map<number, Uint8Array>();

  /**
   * A write is one copy on the device thread: no command sees it half
   * done, and a crash loses the whole store anyway, so every write is atomic.
   */
  readonly limits: DeviceLimits;

  constructor(
    private readonly dev: HandlerDevice,
    readonly chunkSize: number,
  ) {
    this.limits = { atomicWriteBlocks: dev.maxXferBlocks };
  }

  /** Bytes of memory currently held, for tests and stats. */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize;
  }

  read(io: BlockIo): void {
    const cs = this.chunkSize;
    const chunks = this.chunks;
    let pos = io.offset;
    const bufs = io.buffers;
    for (let i = 0; i < bufs.length; i++) {
      const b = bufs[i];
      let off = 0;
      while (off < b.byteLength) {
        const ci = Math.floor(pos / cs);
        const co = pos - ci * cs;
        const n = Math.min(cs - co, b.byteLength - off);
        const c = chunks.get(ci);
        if (c === undefined) b.fill(0, off, off + n);
        else b.set(c.subarray(co, co + n), off);
        off += n;
        pos += n;
      }
    }
  }

  write(io: BlockIo): void {
    const cs = this.chunkSize;
    const chunks = this.chunks;
    let pos = io.offset;
    const bufs = io.buffers;
    for (let i = 0; i < bufs.length; i++) {
      const b = bufs[i];
      let off = 0;
      while (off < b.byteLength) {
        const ci = Math.floor(pos / cs);
        const co = pos - ci * cs;
        const n = Math.min(cs - co, b.byteLength - off);
        let c = chunks.get(ci);
        if (c === undefined) {
          // Zeros into a hole are already there; mkfs and zeroing tools
          // write a lot of them and should not make the store dense.
          if (isZeroRange(b, off, off + n)) {
            off += n;
            pos += n;
            continue;
          }
          c = new Uint8Array(cs);
          chunks.set(ci, c);
        }
        c.set(off === 0 && n === b.byteLength ? b : b.subarray(off, off + n), co);
        off += n;
        pos += n;
      }
    }
  }

  flush(): void {
  }

  /** A chunk never written with data, or zeroed since, is deallocated. */
  lbaStatus(lba: number, blocks: number, maxExtents: number): readonly LbaStatusExtent[] {
    const perChunk = this.chunkSize / this.dev.blockSize;
    const chunks = this.chunks;
    function* runs(): Generator<[number, number, LbaProvisioning]> {
      for (let at = lba, end = lba + blocks; at < end;) {
        const ci = Math.floor(at / perChunk);
        const next = Math.min(end, (ci + 1) * perChunk);
        yield [at, next - at, chunks.has(ci) ? 'mapped' : 'deallocated'];
        at = next;
      }
    }
    return mergeExtents(runs(), maxExtents);
  }

  unmap(ranges: readonly LbaRange[]): void {
    const bs = this.dev.blockSize;
    for (let i = 0; i < ranges.length; i++) {
      const start = ranges[i].lba * bs;
      this.zeroBytes(start, start + ranges[i].blocks * bs);
    }
  }

  writeSame(io: BlockIo, pattern: Uint8Array): void {
    if (isZeroRange(pattern, 0, pattern.byteLength)) {
      this.zeroBytes(io.offset, io.offset + io.length);
      return;
    }
    const cs = this.chunkSize;
    const ps = pattern.byteLength;
    // Block size divides the chunk size (both powers of two, chunk >= 512
    // and block size <= chunk in practice), so a block never straddles chunks.
    for (let pos = io.offset, end = io.offset + io.length; pos < end; pos += ps) {
      const ci = Math.floor(pos / cs);
      let c = this.chunks.get(ci);
      if (c === undefined) {
        c = new Uint8Array(cs);
        this.chunks.set(ci, c);
      }
      c.set(pattern, pos - ci * cs);
    }
  }

  compareAndWrite(io: CompareAndWriteIo): CompareResult {
    // Compare and write run in one synchronous step, which is what makes
    // this atomic against other commands without any lock.
    const cs = this.chunkSize;
    let pos = io.offset;
    let rel = 0;
    const cmp = io.compare;
    for (let i = 0; i < cmp.length; i++) {
      const b = cmp[i];
      for (let j = 0; j < b.byteLength; j++, pos++, rel++) {
        const ci = Math.floor(pos / cs);
        const c = this.chunks.get(ci);
        const have = c === undefined ? 0 : c[pos - ci * cs];
        if (have !== b[j]) return { ok: false, offset: rel };
      }
    }
    this.write(io);
    return MATCH;
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    if (change.kind === 'size') {
      const old = this.dev.numLbas;
      this.dev.numLbas = change.numLbas;
      // Data past a shrunken end must not reappear if the device grows again.
      if (change.numLbas < old) this.zeroBytes(change.numLbas * this.dev.blockSize, old * this.dev.blockSize);
    }
    // A new cfgstring (chunk size) needs a reopen, which empties the store.
    if (change.kind === 'config') throw errnoError('EOPNOTSUPP', 'ram: a new cfgstring needs the device reopened');
    // A write-cache change needs nothing: RAM has no cache to drain.
  }

  async close(): Promise<void> {
    this.chunks.clear();
  }

  /** Make [start, end) read as zeros, giving whole chunks back to the GC. */
  private zeroBytes(start: number, end: number): void {
    const cs = this.chunkSize;
    let pos = start;
    while (pos < end) {
      const ci = Math.floor(pos / cs);
      const co = pos - ci * cs;
      const n = Math.min(cs - co, end - pos);
      const c = this.chunks.get(ci);
      if (c !== undefined) {
        if (n === cs) this.chunks.delete(ci);
        else c.fill(0, co, co + n);
      }
      pos += n;
    }
  }
}

export const ramHandler = defineHandler({
  name: 'Sparse RAM handler',
  subtype: 'ram',
  configDescription:
    'ram/<name or size>[;chunk=<size>]. Contents live in memory and are lost on close. ' +
    'A size (e.g. 1G, 512M) sets the capacity when the kernel gave none; anything else is just a label. ' +
    'Memory is taken per chunk (default 1M) on first non-zero write; UNMAP gives it back.',
  checkConfig(cfgstring: string): ConfigCheck {
    const parsed = parseRamConfig(cfgstring);
    return typeof parsed === 'string' ? configError(parsed) : configOk;
  },
  async open(dev: HandlerDevice): Promise<DeviceHandler> {
    const cfg = parseRamConfig(dev.cfgstring);
    if (typeof cfg === 'string') throw Object.assign(new Error(`ram: ${cfg}`), { code: 'EINVAL' });
    if (cfg.chunkSize < dev.blockSize) {
      throw Object.assign(new Error(`ram: chunk ${cfg.chunkSize} is smaller than the block size ${dev.blockSize}`), {
        code: 'EINVAL',
      });
    }
    if (cfg.size !== undefined) {
      const lbas = Math.floor(cfg.size / dev.blockSize);
      if (dev.numLbas === 0) dev.numLbas = lbas;
      else if (dev.numLbas !== lbas) {
        dev.log.warn(`ram: cfgstring size ${cfg.size} differs from the device size; using the device size`);
      }
    }
    return new RamDevice(dev, cfg.chunkSize);
  },
});
