import { expect } from 'chai';
import {
  buffersLength,
  compareAndWriteViaReadWrite,
  compareBuffers,
  copyBuffers,
  copyFromBuffers,
  copyToBuffers,
  defineHandler,
  fillPattern,
  flattenBuffers,
  isZero,
  makeBlockIo,
  makeHandlerDevice,
  parseOptions,
  parseSize,
  patternOf,
  sliceBuffers,
  splitCfgstring,
  writeSameViaWrite,
  zeroBuffers,
  configOk,
  type BlockIo,
  type DeviceHandler,
} from '@tcmu-ts/core';

/** Views at uneven offsets and lengths in one ArrayBuffer, like iovecs in a data area. */
function views(area: ArrayBuffer, ...spans: [number, number][]): Uint8Array[] {
  return spans.map(([off, len]) => new Uint8Array(area, off, len));
}

function pattern(len: number, seed = 1): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 31 + seed * 17 + (i >> 8)) & 0xff;
  return out;
}

describe('handler API helpers', () => {
  it('scatter and gather round-trip across uneven buffers, at an offset', () => {
    const area = new ArrayBuffer(8192);
    const bufs = views(area, [100, 7], [4096, 1000], [5200, 93]);
    expect(buffersLength(bufs)).to.equal(1100);
    const src = pattern(1100);
    expect(copyToBuffers(bufs, src)).to.equal(1100);
    expect(bufs[0][6]).to.equal(src[6]);
    expect(bufs[1][0]).to.equal(src[7]);
    expect(bufs[2][92]).to.equal(src[1099]);
    const back = new Uint8Array(1100);
    expect(copyFromBuffers(bufs, back)).to.equal(1100);
    expect(back).to.deep.equal(src);

    const part = new Uint8Array(20);
    expect(copyFromBuffers(bufs, part, 1000)).to.equal(20);
    expect(part).to.deep.equal(src.subarray(1000, 1020));
    // Writing past the end copies only what fits.
    expect(copyToBuffers(bufs, pattern(50, 9), 1080)).to.equal(20);
    expect(bufs[2].subarray(73)).to.deep.equal(pattern(50, 9).subarray(0, 20));
  });

  it('copies list to list, zero-fills ranges and slices without copying', () => {
    const area = new ArrayBuffer(4096);
    const a = views(area, [0, 10], [10, 30]);
    const b = views(area, [1000, 25], [2000, 15]);
    copyToBuffers(a, pattern(40));
    expect(copyBuffers(b, a)).to.equal(40);
    expect(flattenBuffers(b)).to.deep.equal(pattern(40));

    zeroBuffers(b, 20, 10);
    const flat = flattenBuffers(b);
    expect(isZero([flat.subarray(20, 30)])).to.equal(true);
    expect(flat[19]).to.equal(pattern(40)[19]);
    expect(flat[30]).to.equal(pattern(40)[30]);

    const s = sliceBuffers(b, 22, 6);
    expect(buffersLength(s)).to.equal(6);
    expect(s[0].buffer).to.equal(area);
    expect(s.map((v) => [v.byteOffset, v.byteLength])).to.deep.equal([[1022, 3], [2000, 3]]);
  });

  it('compares, fills patterns and finds all-zero data', () => {
    const area = new ArrayBuffer(2048);
    const bufs = views(area, [0, 512], [1024, 512]);
    const pat = pattern(512, 3);
    fillPattern(bufs, pat);
    expect(compareBuffers(bufs, flattenBuffers([pat, pat]))).to.equal(-1);
    const other = flattenBuffers([pat, pat]);
    other[700] ^= 1;
    expect(compareBuffers(bufs, other)).to.equal(700);
    expect(isZero(bufs)).to.equal(false);
    zeroBuffers(bufs);
    expect(isZero(bufs)).to.equal(true);
    expect(isZero([new Uint8Array(area, 3, 200)])).to.equal(true);
    expect(patternOf(bufs, 512).buffer).to.equal(area);
  });

  it('parses sizes, cfgstrings and options', () => {
    expect(parseSize('4096')).to.equal(4096);
    expect(parseSize('64k')).to.equal(65536);
    expect(parseSize('1.5G')).to.equal(1.5 * 2 ** 30);
    expect(parseSize('2TiB')).to.equal(2 * 2 ** 40);
    expect(parseSize('disk0')).to.equal(undefined);
    expect(parseSize('10x')).to.equal(undefined);
    expect(splitCfgstring('file//var/img')).to.deep.equal({ subtype: 'file', config: '/var/img' });
    expect(splitCfgstring('ram')).to.deep.equal({ subtype: 'ram', config: '' });
    const o = parseOptions('/a/b;direct;Chunk=4k');
    expect(o.main).to.equal('/a/b');
    expect([...o.options]).to.deep.equal([['direct', ''], ['chunk', '4k']]);
  });

  it('makeBlockIo checks the buffers against the block count', () => {
    const io = makeBlockIo({ lba: 3, blocks: 2, blockSize: 512, buffers: [new Uint8Array(1024)] });
    expect(io.offset).to.equal(1536);
    expect(io.length).to.equal(1024);
    expect(io.fua).to.equal(false);
    expect(() => makeBlockIo({ lba: 0, blocks: 2, blockSize: 512, buffers: [new Uint8Array(1000)] })).to.throw(
      RangeError,
      /needs 1024 bytes/,
    );
  });

  it('emulates WRITE SAME and COMPARE AND WRITE on top of read/write', async () => {
    const disk = new Uint8Array(64 * 512);
    let writes = 0;
    const dh: DeviceHandler = {
      async read(io: BlockIo) {
        copyToBuffers(io.buffers, disk.subarray(io.offset, io.offset + io.length));
      },
      async write(io: BlockIo) {
        writes++;
        copyFromBuffers(io.buffers, disk.subarray(io.offset, io.offset + io.length));
      },
      async close() {},
    };
    const pat = pattern(512, 5);
    const io = makeBlockIo({ lba: 4, blocks: 40, blockSize: 512, buffers: [new Uint8Array(40 * 512)] });
    await writeSameViaWrite(dh, io, pat, 16 * 512);
    expect(writes).to.equal(3); // 16 + 16 + 8 blocks
    for (let b = 4; b < 44; b++) expect(disk.subarray(b * 512, b * 512 + 512)).to.deep.equal(pat);
    expect(isZero([disk.subarray(0, 4 * 512), disk.subarray(44 * 512)])).to.equal(true);

    const newData = pattern(1024, 8);
    const ok = await compareAndWriteViaReadWrite(
      dh,
      { ...makeBlockIo({ lba: 4, blocks: 2, blockSize: 512, buffers: [newData] }), compare: [pat, pat] },
      512,
    );
    expect(ok).to.deep.equal({ ok: true });
    expect(disk.subarray(2048, 3072)).to.deep.equal(newData);
    const wrong = pattern(1024, 8);
    wrong[600] ^= 0xff;
    const bad = await compareAndWriteViaReadWrite(
      dh,
      { ...makeBlockIo({ lba: 4, blocks: 2, blockSize: 512, buffers: [pattern(1024, 2)] }), compare: [wrong] },
      512,
    );
    expect(bad).to.deep.equal({ ok: false, offset: 600 });
    expect(disk.subarray(2048, 3072)).to.deep.equal(newData);
  });

  it('defineHandler types a literal and makeHandlerDevice fills defaults', async () => {
    const h = defineHandler({
      name: 'null',
      subtype: 'null',
      configDescription: 'nothing',
      checkConfig: () => configOk,
      async open(dev, reopen) {
        expect(reopen).to.equal(false);
        dev.numLbas = 8;
        return { async close() {} };
      },
    });
    const dev = makeHandlerDevice({ cfgstring: 'x' });
    expect(dev.blockSize).to.equal(512);
    expect(dev.numLbas).to.equal(0);
    const dh = await h.open(dev, false);
    expect(dev.numLbas).to.equal(8);
    await dh.close();
  });
});
