import { expect } from 'chai';
import { emulate, modePage, modeSenseData } from '@tcmu-ts/core';
import {
  be16, be32, be64, cdb, expectCheck, expectData, expectGood, invalidField, invalidParam, makeDev, paramListLength,
} from './scsi-helpers.js';

const sense6 = (pageByte: number, alloc = 255, { dbd = false, subpage = 0, byte1 = 0 } = {}) =>
  cdb(0x1a, (dbd ? 0x08 : 0) | byte1, pageByte, subpage, alloc, 0);
const sense10 = (pageByte: number, alloc = 0xffff, { dbd = false, llbaa = false, subpage = 0, byte1 = 0 } = {}) =>
  cdb(0x5a, (dbd ? 0x08 : 0) | (llbaa ? 0x10 : 0) | byte1, pageByte, subpage, 0, 0, 0, alloc >> 8, alloc & 0xff, 0);
const select6 = (len: number, byte1 = 0x10) => cdb(0x15, byte1, 0, 0, len, 0);
const select10 = (len: number, byte1 = 0x10) => cdb(0x55, byte1, 0, 0, 0, 0, 0, len >> 8, len & 0xff, 0);

const CACHING = [0x08, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const CACHING_WCE = [0x08, 0x12, 0x04, ...CACHING.slice(3)];
const RW_RECOVERY = [0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const CONTROL = [0x0a, 0x0a, 0x02, 0x10, 0, 0x40, 0, 0, 0xff, 0xff, 0, 0];

describe('scsi mode pages', () => {
  it('read-write error recovery (01h) is 12 bytes of zeros after its header', () => {
    expect(Array.from(modePage(0x01, makeDev())!)).to.deep.equal(RW_RECOVERY);
  });
  it('caching (08h) is 20 bytes with WCE from writeCache', () => {
    expect(Array.from(modePage(0x08, makeDev())!)).to.deep.equal(CACHING);
    expect(Array.from(modePage(0x08, makeDev({ writeCache: true }))!)).to.deep.equal(CACHING_WCE);
  });
  it('control (0Ah) is 12 bytes: GLTSD, QAM 1, TAS, busy timeout unlimited, D_SENSE from the device', () => {
    expect(Array.from(modePage(0x0a, makeDev())!)).to.deep.equal(CONTROL);
    expect(modePage(0x0a, makeDev({ dSense: true }))![2]).to.equal(0x06);
  });
  it('only WCE is changeable', () => {
    expect(Array.from(modePage(0x08, makeDev(), 'changeable')!)).to.deep.equal(CACHING_WCE);
    expect(Array.from(modePage(0x0a, makeDev(), 'changeable')!)).to.deep.equal([0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(modePage(0x01, makeDev(), 'changeable')!)).to.deep.equal(RW_RECOVERY);
  });
  it('default WCE comes from writeCacheDefault, else writeCache', () => {
    expect(modePage(0x08, makeDev({ writeCache: true }), 'default')![2]).to.equal(0x04);
    expect(modePage(0x08, makeDev({ writeCache: true, writeCacheDefault: false }), 'default')![2]).to.equal(0);
  });
  it('unknown pages are undefined', () => {
    expect(modePage(0x1c, makeDev())).to.equal(undefined);
  });
});

describe('scsi MODE SENSE (6)', () => {
  const dev = makeDev({ numLbas: 2048, blockSize: 512, writeCache: true });

  it('returns header, short block descriptor and the caching page', () => {
    const d = expectData(emulate(sense6(0x08), dev));
    expect(d.length).to.equal(4 + 8 + 20);
    expect(Array.from(d.subarray(0, 4))).to.deep.equal([31, 0, 0x10, 8]); // MODE DATA LENGTH, MEDIUM TYPE, DPOFUA, BD length
    expect(Array.from(d.subarray(4, 12))).to.deep.equal([0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    expect(Array.from(d.subarray(12))).to.deep.equal(CACHING_WCE);
  });

  it('omits block descriptors with DBD', () => {
    const d = expectData(emulate(sense6(0x08, 255, { dbd: true }), dev));
    expect(Array.from(d.subarray(0, 4))).to.deep.equal([23, 0, 0x10, 0]);
    expect(Array.from(d.subarray(4))).to.deep.equal(CACHING_WCE);
  });

  it('returns all pages in ascending order for 3Fh', () => {
    const d = expectData(emulate(sense6(0x3f, 255, { dbd: true }), dev));
    expect(d[0]).to.equal(4 + 12 + 20 + 12 - 1);
    expect(Array.from(d.subarray(4))).to.deep.equal([...RW_RECOVERY, ...CACHING_WCE, ...CONTROL]);
  });

  it('accepts subpage FFh and rejects other subpages', () => {
    expect(expectData(emulate(sense6(0x3f, 255, { subpage: 0xff }), dev)).length).to.equal(4 + 8 + 44);
    expect(expectData(emulate(sense6(0x08, 255, { subpage: 0xff }), dev)).length).to.equal(32);
    expectCheck(emulate(sense6(0x08, 255, { subpage: 0x01 }), dev), invalidField(3));
    expectCheck(emulate(sense6(0x3f, 255, { subpage: 0x10 }), dev), invalidField(3));
  });

  it('reports changeable values (PC = 1) as a mask', () => {
    const d = expectData(emulate(sense6(0x40 | 0x3f), makeDev({ writeCache: false })));
    expect(Array.from(d.subarray(4, 12)), 'block descriptor: nothing changeable').to.deep.equal([0, 0, 0, 0, 0, 0, 0, 0]);
    expect(Array.from(d.subarray(12))).to.deep.equal([
      ...RW_RECOVERY, ...CACHING_WCE, 0x0a, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
  });

  it('reports default values (PC = 2)', () => {
    const d = expectData(emulate(sense6(0x80 | 0x08, 255, { dbd: true }), makeDev({ writeCache: false, writeCacheDefault: true })));
    expect(d[4 + 2]).to.equal(0x04);
  });

  it('answers saved values (PC = 3) with SAVING PARAMETERS NOT SUPPORTED', () => {
    expectCheck(emulate(sense6(0xc0 | 0x08), dev), { key: 5, asc: 0x39 });
  });

  it('rejects unsupported pages with the pointer on PAGE CODE', () => {
    for (const p of [0x00, 0x02, 0x1a, 0x1c, 0x3e]) expectCheck(emulate(sense6(p), dev), invalidField(2, 5));
  });

  it('sets WP for a write-protected unit', () => {
    expect(expectData(emulate(sense6(0x08), makeDev({ writeProtect: true })))[2]).to.equal(0x90);
  });

  it('saturates the short block descriptor past 32 bits', () => {
    const d = expectData(emulate(sense6(0x08), makeDev({ numLbas: 2 ** 33, blockSize: 4096 })));
    expect(be32(d, 4)).to.equal(0xffffffff);
    expect(Array.from(d.subarray(9, 12))).to.deep.equal([0x00, 0x10, 0x00]);
  });

  it('stops at the allocation length, keeping MODE DATA LENGTH whole', () => {
    const d = expectData(emulate(sense6(0x3f, 4), dev));
    expect(Array.from(d)).to.deep.equal([4 + 8 + 44 - 1, 0, 0x10, 8]);
    expect(expectData(emulate(sense6(0x3f, 0), dev)).length).to.equal(0);
    expect(expectData(emulate(sense6(0x3f, 10), dev)).length).to.equal(10);
  });

  it('rejects reserved bits in byte 1 and NACA', () => {
    expectCheck(emulate(sense6(0x08, 255, { byte1: 0x10 }), dev), invalidField(1, 4));
    expectCheck(emulate(sense6(0x08, 255, { byte1: 0x01 }), dev), invalidField(1, 0));
    expectCheck(emulate(cdb(0x1a, 0, 0x08, 0, 255, 0x04), dev), invalidField(5, 2));
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(cdb(0x1a, 0, 0x08, 0, 255), dev), invalidField(null));
  });
});

describe('scsi MODE SENSE (10)', () => {
  const dev = makeDev({ numLbas: 2048, blockSize: 512 });

  it('returns an 8-byte header and short block descriptor', () => {
    const d = expectData(emulate(sense10(0x0a), dev));
    expect(d.length).to.equal(8 + 8 + 12);
    expect(Array.from(d.subarray(0, 8))).to.deep.equal([0, 26, 0, 0x10, 0, 0, 0, 8]);
    expect(Array.from(d.subarray(8, 16))).to.deep.equal([0, 0, 0x08, 0x00, 0, 0, 0x02, 0x00]);
    expect(Array.from(d.subarray(16))).to.deep.equal(CONTROL);
  });

  it('returns a long LBA block descriptor with LLBAA and sets LONGLBA', () => {
    const big = makeDev({ numLbas: 2 ** 40, blockSize: 4096 });
    const d = expectData(emulate(sense10(0x01, 0xffff, { llbaa: true }), big));
    expect(d.length).to.equal(8 + 16 + 12);
    expect(be16(d, 0)).to.equal(d.length - 2);
    expect(d[4]).to.equal(0x01);
    expect(be16(d, 6)).to.equal(16);
    expect(be64(d, 8)).to.equal(2n ** 40n);
    expect(be32(d, 16)).to.equal(0);
    expect(be32(d, 20)).to.equal(4096);
    expect(Array.from(d.subarray(24))).to.deep.equal(RW_RECOVERY);
  });

  it('omits block descriptors with DBD even with LLBAA', () => {
    const d = expectData(emulate(sense10(0x3f, 0xffff, { dbd: true, llbaa: true }), dev));
    expect(Array.from(d.subarray(0, 8))).to.deep.equal([0, 8 + 44 - 2, 0, 0x10, 0, 0, 0, 0]);
    expect(d.length).to.equal(8 + 44);
  });

  it('stops at the 16-bit allocation length', () => {
    const d = expectData(emulate(sense10(0x3f, 2), dev));
    expect(Array.from(d)).to.deep.equal([0, 8 + 8 + 44 - 2]);
  });

  it('rejects reserved bits and bytes', () => {
    expectCheck(emulate(sense10(0x08, 255, { byte1: 0x20 }), dev), invalidField(1, 5));
    expectCheck(emulate(cdb(0x5a, 0, 0x08, 0, 1, 0, 0, 0, 255, 0), dev), invalidField(4, 0));
    expectCheck(emulate(cdb(0x5a, 0, 0x08, 0, 0, 0, 0x80, 0, 255, 0), dev), invalidField(6, 7));
  });

  it('answers saved values with SAVING PARAMETERS NOT SUPPORTED', () => {
    expectCheck(emulate(sense10(0xc0 | 0x3f), dev), { key: 5, asc: 0x39 });
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(sense10(0x08).subarray(0, 9), dev), invalidField(null));
  });
});

describe('scsi MODE SELECT (6)', () => {
  const header6 = [0, 0, 0, 0];
  const list = (...parts: number[][]) => Uint8Array.from(parts.flat());

  it('turns the write cache on and off through the caching page', () => {
    const dev = makeDev({ writeCache: false });
    const on = list(header6, CACHING_WCE);
    expectGood(emulate(select6(on.length), dev, on));
    expect(dev.writeCache).to.equal(true);
    expect(expectData(emulate(sense6(0x08, 255, { dbd: true }), dev))[6]).to.equal(0x04);
    const off = list(header6, CACHING);
    expectGood(emulate(select6(off.length), dev, off));
    expect(dev.writeCache).to.equal(false);
  });

  it('accepts every page echoed back unchanged, with a block descriptor', () => {
    const dev = makeDev({ writeCache: true });
    const current = expectData(emulate(sense6(0x3f), dev));
    current[0] = 0; // MODE DATA LENGTH is reserved in MODE SELECT
    expectGood(emulate(select6(current.length), dev, current));
    expect(dev.writeCache).to.equal(true);
  });

  it('ignores PS and the WP/DPOFUA bits initiators echo back', () => {
    const dev = makeDev({ writeCache: true });
    const l = list([0, 0, 0x90, 0], [0x88, ...CACHING.slice(1)]);
    expectGood(emulate(select6(l.length), dev, l));
    expect(dev.writeCache).to.equal(false);
  });

  it('accepts an empty list (header only) and a zero PARAMETER LIST LENGTH', () => {
    const dev = makeDev({ writeCache: true });
    expectGood(emulate(select6(4), dev, Uint8Array.from(header6)));
    expectGood(emulate(select6(0), dev));
    expect(dev.writeCache).to.equal(true);
  });

  it('only reads PARAMETER LIST LENGTH bytes of the data-out buffer', () => {
    const dev = makeDev({ writeCache: true });
    const l = list(header6, CACHING, [0xde, 0xad]);
    expectGood(emulate(select6(24), dev, l));
    expect(dev.writeCache).to.equal(false);
  });

  it('rejects a change to an unchangeable caching bit, pointing at it', () => {
    const dev = makeDev({ writeCache: false });
    const l = list(header6, [0x08, 0x12, 0x05, ...CACHING.slice(3)]); // WCE + RCD
    expectCheck(emulate(select6(l.length), dev, l), invalidParam(4 + 2, 0));
    expect(dev.writeCache, 'nothing applied').to.equal(false);
  });

  it('rejects a change to D_SENSE in the control page', () => {
    const l = list(header6, [0x0a, 0x0a, 0x06, ...CONTROL.slice(3)]);
    expectCheck(emulate(select6(l.length), makeDev(), l), invalidParam(4 + 2, 2));
  });

  it('rejects a change to the busy timeout', () => {
    const c = CONTROL.slice();
    c[9] = 0xfe;
    const l = list(header6, c);
    expectCheck(emulate(select6(l.length), makeDev(), l), invalidParam(4 + 9, 0));
  });

  it('applies nothing when a later page is bad', () => {
    const dev = makeDev({ writeCache: false });
    const bad = RW_RECOVERY.slice();
    bad[2] = 0xc0; // AWRE/ARRE
    const l = list(header6, CACHING_WCE, bad);
    expectCheck(emulate(select6(l.length), dev, l), invalidParam(4 + 20 + 2, 7));
    expect(dev.writeCache).to.equal(false);
  });

  it('rejects unknown pages and subpage format', () => {
    const unknown = list(header6, [0x1c, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    expectCheck(emulate(select6(unknown.length), makeDev(), unknown), invalidParam(4, 5));
    const spf = list(header6, [0x48, 0x01, 0x00, 0x12, ...CACHING.slice(2)]);
    expectCheck(emulate(select6(spf.length), makeDev(), spf), invalidParam(4, 6));
  });

  it('rejects a wrong PAGE LENGTH', () => {
    const l = list(header6, [0x08, 0x10, ...CACHING.slice(2, 18)]);
    expectCheck(emulate(select6(l.length), makeDev(), l), invalidParam(5));
  });

  it('rejects a non-zero MEDIUM TYPE', () => {
    const l = list([0, 1, 0, 0], CACHING);
    expectCheck(emulate(select6(l.length), makeDev(), l), invalidParam(1));
  });

  it('checks the block descriptor against the unit', () => {
    const dev = makeDev({ numLbas: 2048, blockSize: 512 });
    const bd = (n: number, bs: number, density = 0) => [n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff, density, bs >> 16, (bs >> 8) & 0xff, bs & 0xff];
    const ok = list([0, 0, 0, 8], bd(2048, 512), CACHING);
    expectGood(emulate(select6(ok.length), dev, ok));
    const zero = list([0, 0, 0, 8], bd(0, 512));
    expectGood(emulate(select6(zero.length), dev, zero));
    const size = list([0, 0, 0, 8], bd(1000, 512));
    expectCheck(emulate(select6(size.length), dev, size), invalidParam(4));
    const bs = list([0, 0, 0, 8], bd(2048, 4096));
    expectCheck(emulate(select6(bs.length), dev, bs), invalidParam(9));
    const dens = list([0, 0, 0, 8], bd(2048, 512, 1));
    expectCheck(emulate(select6(dens.length), dev, dens), invalidParam(8));
    const badLen = list([0, 0, 0, 7], bd(2048, 512));
    expectCheck(emulate(select6(badLen.length), dev, badLen), invalidParam(3));
  });

  it('reports PARAMETER LIST LENGTH ERROR for truncated lists', () => {
    const dev = makeDev();
    expectCheck(emulate(select6(3), dev, Uint8Array.from([0, 0, 0])), paramListLength);
    const cut = list(header6, CACHING.slice(0, 10));
    expectCheck(emulate(select6(cut.length), dev, cut), paramListLength);
    const odd = list(header6, [0x08]);
    expectCheck(emulate(select6(odd.length), dev, odd), paramListLength);
    const bdCut = list([0, 0, 0, 8], [0, 0]);
    expectCheck(emulate(select6(bdCut.length), dev, bdCut), paramListLength);
  });

  it('reports PARAMETER LIST LENGTH ERROR when the data-out buffer is short or missing', () => {
    const l = list(header6, CACHING);
    expectCheck(emulate(select6(l.length + 4), makeDev(), l), paramListLength);
    expectCheck(emulate(select6(l.length), makeDev()), paramListLength);
  });

  it('requires PF and refuses SP', () => {
    const l = list(header6, CACHING);
    expectCheck(emulate(select6(l.length, 0x00), makeDev(), l), invalidField(1, 4));
    expectCheck(emulate(select6(l.length, 0x11), makeDev(), l), invalidField(1, 0));
  });

  it('rejects reserved CDB bits and bytes', () => {
    const l = list(header6, CACHING);
    expectCheck(emulate(select6(l.length, 0x30), makeDev(), l), invalidField(1, 5));
    expectCheck(emulate(cdb(0x15, 0x10, 1, 0, l.length, 0), makeDev(), l), invalidField(2, 0));
    expectCheck(emulate(cdb(0x15, 0x10, 0, 0, l.length, 4), makeDev(), l), invalidField(5, 2));
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(cdb(0x15, 0x10, 0, 0), makeDev()), invalidField(null));
  });
});

describe('scsi MODE SELECT (10)', () => {
  const header10 = (bdl = 0, longlba = 0) => [0, 0, 0, 0, longlba, 0, bdl >> 8, bdl & 0xff];
  const list = (...parts: number[][]) => Uint8Array.from(parts.flat());

  it('changes WCE', () => {
    const dev = makeDev({ writeCache: true });
    const l = list(header10(), CACHING);
    expectGood(emulate(select10(l.length), dev, l));
    expect(dev.writeCache).to.equal(false);
  });

  it('round-trips what MODE SENSE (10) with LLBAA returned', () => {
    const dev = makeDev({ writeCache: false, numLbas: 2 ** 36 });
    const d = expectData(emulate(sense10(0x3f, 0xffff, { llbaa: true }), dev));
    d[0] = 0; d[1] = 0;
    d[8 + 16 + 12 + 2] |= 0x04; // WCE in the caching page after the descriptor and page 01h
    expectGood(emulate(select10(d.length), dev, d));
    expect(dev.writeCache).to.equal(true);
  });

  it('checks the long block descriptor', () => {
    const dev = makeDev({ numLbas: 2048, blockSize: 512 });
    const bd = (n: number, bs: number, mid = 0) => [0, 0, 0, 0, 0, 0, n >> 8, n & 0xff, 0, 0, 0, mid, 0, 0, bs >> 8, bs & 0xff];
    const ok = list(header10(16, 1), bd(2048, 512));
    expectGood(emulate(select10(ok.length), dev, ok));
    const size = list(header10(16, 1), bd(2047, 512));
    expectCheck(emulate(select10(size.length), dev, size), invalidParam(8));
    const res = list(header10(16, 1), bd(2048, 512, 1));
    expectCheck(emulate(select10(res.length), dev, res), invalidParam(8 + 11, 0));
    const bs = list(header10(16, 1), bd(2048, 520));
    expectCheck(emulate(select10(bs.length), dev, bs), invalidParam(8 + 12));
    const shortDesc = list(header10(16, 0), bd(2048, 512));
    expectCheck(emulate(select10(shortDesc.length), dev, shortDesc), invalidParam(6));
  });

  it('rejects reserved bits of the LONGLBA byte and a non-zero MEDIUM TYPE', () => {
    const a = list([0, 0, 0, 0, 0x02, 0, 0, 0]);
    expectCheck(emulate(select10(a.length), makeDev(), a), invalidParam(4, 1));
    const b = list([0, 0, 5, 0, 0, 0, 0, 0]);
    expectCheck(emulate(select10(b.length), makeDev(), b), invalidParam(2));
  });

  it('reports PARAMETER LIST LENGTH ERROR for a list shorter than its header', () => {
    expectCheck(emulate(select10(4), makeDev(), new Uint8Array(4)), paramListLength);
  });

  it('requires PF, refuses SP, rejects reserved bytes', () => {
    const l = list(header10(), CACHING);
    expectCheck(emulate(select10(l.length, 0), makeDev(), l), invalidField(1, 4));
    expectCheck(emulate(select10(l.length, 0x11), makeDev(), l), invalidField(1, 0));
    expectCheck(emulate(cdb(0x55, 0x10, 0, 0, 0, 0, 1, 0, l.length, 0), makeDev(), l), invalidField(6, 0));
  });
});

describe('scsi modeSenseData', () => {
  it('builds the same bytes emulate returns', () => {
    const dev = makeDev({ writeCache: true });
    const a = modeSenseData(dev, { ten: false, page: 0x3f });
    const b = expectData(emulate(sense6(0x3f), dev));
    expect(Array.from(a)).to.deep.equal(Array.from(b));
  });
});
