import { expect } from 'chai';
import { emulate } from '@tcmu-ts/core';
import { be32, be64, cdbOf, expectCheck, expectData, invalidField, makeDev } from './scsi-helpers.js';

const rc10 = (set: Record<number, number> = {}) => cdbOf(10, 0x25, set);
const rc16 = (alloc = 32, set: Record<number, number> = {}) =>
  cdbOf(16, 0x9e, { 1: 0x10, 10: alloc >>> 24, 11: (alloc >> 16) & 0xff, 12: (alloc >> 8) & 0xff, 13: alloc & 0xff, ...set });

describe('scsi READ CAPACITY (10)', () => {
  it('returns last LBA and block length in 8 bytes', () => {
    const d = expectData(emulate(rc10(), makeDev({ numLbas: 2048, blockSize: 512 })));
    expect(Array.from(d)).to.deep.equal([0, 0, 0x07, 0xff, 0, 0, 0x02, 0x00]);
  });

  it('reports 4096-byte blocks', () => {
    const d = expectData(emulate(rc10(), makeDev({ numLbas: 1000, blockSize: 4096 })));
    expect(be32(d, 0)).to.equal(999);
    expect(be32(d, 4)).to.equal(4096);
  });

  it('returns FFFFFFFFh when the last LBA does not fit in 32 bits', () => {
    const d = expectData(emulate(rc10(), makeDev({ numLbas: 2 ** 33 })));
    expect(be32(d, 0)).to.equal(0xffffffff);
    expect(be32(d, 4)).to.equal(512);
  });

  it('returns the exact value at the 32-bit boundary', () => {
    expect(be32(expectData(emulate(rc10(), makeDev({ numLbas: 0xffffffff }))), 0)).to.equal(0xfffffffe);
    expect(be32(expectData(emulate(rc10(), makeDev({ numLbas: 0x100000000 }))), 0)).to.equal(0xffffffff);
  });

  it('accepts PMI with an LBA and still reports the capacity', () => {
    const d = expectData(emulate(rc10({ 5: 1, 8: 1 }), makeDev()));
    expect(be32(d, 0)).to.equal(2047);
  });

  it('rejects an LBA without PMI (SBC-3)', () => {
    expectCheck(emulate(rc10({ 5: 1 }), makeDev()), invalidField(2));
  });

  it('rejects reserved bits', () => {
    expectCheck(emulate(rc10({ 1: 0x01 }), makeDev()), invalidField(1, 0));
    expectCheck(emulate(rc10({ 1: 0x20 }), makeDev()), invalidField(1, 5));
    expectCheck(emulate(rc10({ 6: 0x01 }), makeDev()), invalidField(6, 0));
    expectCheck(emulate(rc10({ 7: 0x80 }), makeDev()), invalidField(7, 7));
    expectCheck(emulate(rc10({ 8: 0x02 }), makeDev()), invalidField(8, 1));
  });

  it('rejects NACA in the control byte', () => {
    expectCheck(emulate(rc10({ 9: 0x04 }), makeDev()), invalidField(9, 2));
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(rc10().subarray(0, 9), makeDev()), invalidField(null));
  });
});

describe('scsi READ CAPACITY (16)', () => {
  it('returns last LBA, block length and zeroed protection fields in 32 bytes', () => {
    const d = expectData(emulate(rc16(), makeDev({ numLbas: 2048, blockSize: 512 })));
    expect(d.length).to.equal(32);
    expect(be64(d, 0)).to.equal(2047n);
    expect(be32(d, 8)).to.equal(512);
    expect(d[12], 'P_TYPE/PROT_EN').to.equal(0);
    expect(d[13], 'exponents').to.equal(0);
    expect(d[14], 'LBPME/LBPRZ/lowest aligned').to.equal(0);
    expect(d[15]).to.equal(0);
    expect(Array.from(d.subarray(16)).every((x) => x === 0)).to.equal(true);
  });

  it('reports capacities past 32 bits exactly', () => {
    const d = expectData(emulate(rc16(), makeDev({ numLbas: 2 ** 40 + 5, blockSize: 4096 })));
    expect(be64(d, 0)).to.equal(2n ** 40n + 4n);
    expect(be32(d, 8)).to.equal(4096);
  });

  it('sets LBPME when unmap is supported, and LBPRZ when promised', () => {
    expect(expectData(emulate(rc16(), makeDev({ lbpu: true })))[14]).to.equal(0x80);
    expect(expectData(emulate(rc16(), makeDev({ lbpws: true })))[14]).to.equal(0x80);
    expect(expectData(emulate(rc16(), makeDev({ lbpu: true, lbprz: true })))[14]).to.equal(0xc0);
  });

  it('says RC BASIS 01b (the whole medium) for a zoned disk, host managed or host aware, and 00b for a plain one', () => {
    expect(expectData(emulate(rc16(), makeDev({ peripheralType: 0x14 })))[12]).to.equal(0x10);
    expect(expectData(emulate(rc16(), makeDev({ zoned: 1 })))[12]).to.equal(0x10);
    expect(expectData(emulate(rc16(), makeDev()))[12]).to.equal(0x00);
    expect(be64(expectData(emulate(rc16(), makeDev({ peripheralType: 0x14, numLbas: 4096 }))), 0)).to.equal(4095n);
  });

  it('reports the logical blocks per physical block exponent', () => {
    expect(expectData(emulate(rc16(), makeDev({ physicalBlockExponent: 3 })))[13]).to.equal(0x03);
  });

  it('stops at the allocation length', () => {
    const d = expectData(emulate(rc16(12), makeDev()));
    expect(d.length).to.equal(12);
    expect(be64(d, 0)).to.equal(2047n);
    expect(expectData(emulate(rc16(1000), makeDev())).length).to.equal(32);
  });

  it('treats allocation length 0 as no data', () => {
    expect(expectData(emulate(rc16(0), makeDev())).length).to.equal(0);
  });

  it('rejects an LBA without PMI, accepts it with PMI', () => {
    expectCheck(emulate(rc16(32, { 9: 1 }), makeDev()), invalidField(2));
    expect(be64(expectData(emulate(rc16(32, { 2: 0x80, 14: 1 }), makeDev())), 0)).to.equal(2047n);
  });

  it('rejects reserved bits', () => {
    expectCheck(emulate(rc16(32, { 1: 0x30 }), makeDev()), invalidField(1, 5));
    expectCheck(emulate(rc16(32, { 14: 0x80 }), makeDev()), invalidField(14, 7));
    expectCheck(emulate(rc16(32, { 15: 0x01 }), makeDev()), invalidField(15, 0));
  });

  it('rejects other SERVICE ACTION IN (16) service actions with INVALID FIELD IN CDB', () => {
    for (const sa of [0x00, 0x11, 0x12, 0x13, 0x1f]) {
      expectCheck(emulate(rc16(32, { 1: sa }), makeDev()), invalidField(1, 4));
    }
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(rc16().subarray(0, 10), makeDev()), invalidField(null));
  });
});
