import { expect } from 'chai';
import {
  flattenBuffers,
  isZero,
  makeBlockIo,
  makeHandlerDevice,
  type BlockIo,
  type CompareAndWriteIo,
  type DeviceHandler,
  type HandlerDevice,
} from '@tcmu-ts/core';
import { ramHandler, RamDevice, RAM_DEFAULT_CHUNK } from '@tcmu-ts/handlers';

const BS = 512;

function pattern(len: number, seed = 1): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 131 + seed * 29 + (i >> 9)) & 0xff;
  return out;
}

/**
 * A stand-in for the ring's data area: IO buffers are views carved out of
 * one ArrayBuffer at scattered offsets, split the way the kernel splits a
 * command over data blocks.
 */
class DataArea {
  readonly area = new ArrayBuffer(8 << 20);
  private next = 0;

  /** `sizes` are the iovec lengths; each starts on a fresh 4 KiB "data block". */
  buffers(...sizes: number[]): Uint8Array[] {
    return sizes.map((n) => {
      if (this.next + n > this.area.byteLength) this.next = 0;
      const v = new Uint8Array(this.area, this.next, n);
      this.next += Math.ceil(n / 4096) * 4096 + 4096;
      return v;
    });
  }

  io(lba: number, sizes: number[], fill?: Uint8Array): BlockIo {
    const buffers = this.buffers(...sizes);
    let at = 0;
    for (const b of buffers) {
      if (fill) b.set(fill.subarray(at, at + b.byteLength));
      else b.fill(0xa5); // stale data: reads must overwrite every byte
      at += b.byteLength;
    }
    const total = sizes.reduce((a, b) => a + b, 0);
    return makeBlockIo({ lba, blocks: total / BS, blockSize: BS, buffers });
  }
}

async function open(cfg: string, numLbas = 1 << 20): Promise<{ dev: HandlerDevice; dh: RamDevice & DeviceHandler }> {
  const dev = makeHandlerDevice({ cfgstring: cfg, blockSize: BS, numLbas });
  const dh = (await ramHandler.open(dev, false)) as RamDevice;
  return { dev, dh };
}

describe('ram handler', () => {
  const mem = new DataArea();

  it('writes and reads back across chunk boundaries with scatter/gather buffers', async () => {
    const { dh } = await open('scratch;chunk=4k');
    expect(dh.chunkSize).to.equal(4096);
    // 40 blocks starting 3 blocks before a chunk boundary, so the IO spans 6 chunks.
    const data = pattern(40 * BS, 7);
    await dh.write(mem.io(5, [1536, 4096, 8192, 512, 6144], data));
    const r = mem.io(5, [4096, 4096, 4096, 4096, 4096]);
    await dh.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(data);
    // Reading a window that starts mid-write sees the same bytes.
    const w = mem.io(12, [512, 1024]);
    await dh.read(w);
    expect(flattenBuffers(w.buffers)).to.deep.equal(data.subarray(7 * BS, 10 * BS));
    await dh.close();
  });

  it('crosses the default 1 MiB chunk boundary', async () => {
    const { dh } = await open('disk0');
    expect(dh.chunkSize).to.equal(RAM_DEFAULT_CHUNK);
    const lba = RAM_DEFAULT_CHUNK / BS - 4;
    const data = pattern(8 * BS, 3);
    await dh.write(mem.io(lba, [1024, 3072], data));
    const r = mem.io(lba, [4096]);
    await dh.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(data);
    expect(dh.allocatedBytes).to.equal(2 * RAM_DEFAULT_CHUNK);
    await dh.close();
  });

  it('is sparse: unwritten reads are zeros and nothing is allocated until non-zero data arrives', async () => {
    const { dh } = await open('x;chunk=64k');
    const r = mem.io(1000, [4096, 512]);
    await dh.read(r);
    expect(isZero(r.buffers)).to.equal(true);
    expect(dh.allocatedBytes).to.equal(0);

    await dh.write(mem.io(0, [65536 * 2], new Uint8Array(65536 * 2)));
    expect(dh.allocatedBytes).to.equal(0);

    await dh.write(mem.io(129, [512], pattern(512)));
    expect(dh.allocatedBytes).to.equal(65536);
    // Blocks next to the written one in the same chunk still read as zeros.
    const n = mem.io(128, [512]);
    await dh.read(n);
    expect(isZero(n.buffers)).to.equal(true);
    await dh.close();
  });

  it('unmap frees whole chunks, zeroes partial ones, and leaves neighbours alone', async () => {
    const { dh } = await open('x;chunk=4k');
    const data = pattern(64 * BS, 11);
    await dh.write(mem.io(0, [64 * BS], data));
    expect(dh.allocatedBytes).to.equal(8 * 4096);

    // Blocks 4..27: half of chunk 0, chunks 1 and 2 whole, half of chunk 3.
    await dh.unmap([{ lba: 4, blocks: 24 }, { lba: 40, blocks: 8 }]);
    expect(dh.allocatedBytes).to.equal(5 * 4096);

    const r = mem.io(0, [64 * BS]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    const want = data.slice();
    want.fill(0, 4 * BS, 28 * BS);
    want.fill(0, 40 * BS, 48 * BS);
    expect(got).to.deep.equal(want);
    await dh.close();
  });

  it('flush is a no-op that resolves', async () => {
    const { dh } = await open('x');
    await dh.flush();
    await dh.close();
  });

  it('WRITE SAME repeats the pattern; an all-zero pattern deallocates', async () => {
    const { dh } = await open('x;chunk=4k');
    const pat = pattern(BS, 4);
    await dh.writeSame(mem.io(6, [20 * BS]), pat);
    const r = mem.io(5, [22 * BS]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    expect(isZero([got.subarray(0, BS), got.subarray(21 * BS)])).to.equal(true);
    for (let b = 1; b <= 20; b++) expect(got.subarray(b * BS, (b + 1) * BS)).to.deep.equal(pat);

    await dh.writeSame(mem.io(0, [32 * BS]), new Uint8Array(BS));
    expect(dh.allocatedBytes).to.equal(0);
    await dh.close();
  });

  it('COMPARE AND WRITE writes only when the data matches and reports the first mismatch', async () => {
    const { dh } = await open('x');
    const old = pattern(2 * BS, 1);
    await dh.write(mem.io(10, [2 * BS], old));
    const next = pattern(2 * BS, 2);

    const wrong = old.slice();
    wrong[777] ^= 0x40;
    const bad: CompareAndWriteIo = { ...mem.io(10, [2 * BS], next), compare: [wrong.subarray(0, 512), wrong.subarray(512)] };
    expect(await dh.compareAndWrite(bad)).to.deep.equal({ ok: false, offset: 777 });
    let r = mem.io(10, [2 * BS]);
    await dh.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(old);

    const good: CompareAndWriteIo = { ...mem.io(10, [BS, BS], next), compare: [old] };
    expect(await dh.compareAndWrite(good)).to.deep.equal({ ok: true });
    r = mem.io(10, [2 * BS]);
    await dh.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(next);
    await dh.close();
  });

  it('takes its size from the cfgstring only when the device has none', async () => {
    const a = await open('1G', 0);
    expect(a.dev.numLbas).to.equal(2 ** 30 / BS);
    const b = await open('1G', 100);
    expect(b.dev.numLbas).to.equal(100);
    await a.dh.close();
    await b.dh.close();
  });

  it('after shrinking and growing again, the cut-off range reads as zeros', async () => {
    const { dev, dh } = await open('x;chunk=4k', 64);
    await dh.write(mem.io(40, [8 * BS], pattern(8 * BS)));
    await dh.reconfig({ kind: 'size', numLbas: 42, devSize: 42 * BS });
    expect(dev.numLbas).to.equal(42);
    await dh.reconfig({ kind: 'size', numLbas: 64, devSize: 64 * BS });
    const r = mem.io(40, [8 * BS]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    expect(got.subarray(0, 2 * BS)).to.deep.equal(pattern(8 * BS).subarray(0, 2 * BS));
    expect(isZero([got.subarray(2 * BS)])).to.equal(true);
    await dh.close();
  });

  it('checkConfig accepts names and sizes and explains bad options', () => {
    expect(ramHandler.checkConfig('')).to.deep.equal({ ok: true });
    expect(ramHandler.checkConfig('4G')).to.deep.equal({ ok: true });
    expect(ramHandler.checkConfig('anything;chunk=64k')).to.deep.equal({ ok: true });
    const badChunk = ramHandler.checkConfig('x;chunk=1000');
    expect(badChunk.ok).to.equal(false);
    expect(!badChunk.ok && badChunk.reason).to.match(/power of two/);
    const unknown = ramHandler.checkConfig('x;compress');
    expect(!unknown.ok && unknown.reason).to.match(/unknown option "compress"/);
  });

  it('open rejects a chunk smaller than the block size', async () => {
    const dev = makeHandlerDevice({ cfgstring: 'x;chunk=512', blockSize: 4096, numLbas: 10 });
    let err: unknown;
    try {
      await ramHandler.open(dev, false);
    } catch (e) {
      err = e;
    }
    expect((err as NodeJS.ErrnoException).code).to.equal('EINVAL');
  });
});
