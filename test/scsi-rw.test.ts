import { expect } from 'chai';
import fc from 'fast-check';
import { cdbLength, cdbLengthOf, decodeSense, emulate, Opcode, SUPPORTED_OPCODES, type ScsiOutcome } from '@tcmu-ts/core';
import {
  ILLEGAL, cdb, cdbOf, expectCheck, expectData, expectGood, invalidField, invalidOpcode, lbaOutOfRange, makeDev,
} from './scsi-helpers.js';

function rw(op: number, lba: number | bigint, blocks: number, byte1 = 0): Uint8Array {
  const len = cdbLength(op)!;
  const b = new Uint8Array(len);
  b[0] = op;
  const L = BigInt(lba);
  if (len === 6) {
    b[1] = Number((L >> 16n) & 0x1fn) | byte1;
    b[2] = Number((L >> 8n) & 0xffn);
    b[3] = Number(L & 0xffn);
    b[4] = blocks & 0xff;
    return b;
  }
  b[1] = byte1;
  const dv = new DataView(b.buffer);
  if (len === 16) {
    dv.setBigUint64(2, L);
    dv.setUint32(10, blocks);
  } else {
    dv.setUint32(2, Number(L));
    if (len === 10) dv.setUint16(7, blocks);
    else dv.setUint32(6, blocks);
  }
  return b;
}

const READS = { 6: 0x08, 10: 0x28, 12: 0xa8, 16: 0x88 } as const;
const WRITES = { 6: 0x0a, 10: 0x2a, 12: 0xaa, 16: 0x8a } as const;

function expectIo(o: ScsiOutcome, kind: 'read' | 'write', lba: number, blocks: number, fua = false): void {
  expect(o).to.deep.equal({ kind, lba, blocks, fua });
}

for (const [kind, table] of [['read', READS], ['write', WRITES]] as const) {
  describe(`scsi ${kind.toUpperCase()} (6)`, () => {
    const op = table[6];
    it('decodes the 21-bit LBA and transfer length', () => {
      expectIo(emulate(rw(op, 0x1_0203, 8), makeDev({ numLbas: 0x20000 })), kind, 0x10203, 8);
    });
    it('treats transfer length 0 as 256 blocks', () => {
      expectIo(emulate(rw(op, 0, 0), makeDev({ maxXferBlocks: 256 })), kind, 0, 256);
    });
    it('checks 256 blocks against capacity and max transfer', () => {
      expectCheck(emulate(rw(op, 0, 0), makeDev({ numLbas: 255, maxXferBlocks: 1024 })), lbaOutOfRange);
      expectCheck(emulate(rw(op, 0, 0), makeDev({ maxXferBlocks: 128 })), invalidField(4));
    });
    it('rejects reserved bits 7:5 of byte 1', () => {
      expectCheck(emulate(rw(op, 0, 1, 0x20), makeDev()), invalidField(1, 5));
    });
    it('range-checks the end of the transfer', () => {
      expectIo(emulate(rw(op, 2040, 8), makeDev()), kind, 2040, 8);
      expectCheck(emulate(rw(op, 2041, 8), makeDev()), lbaOutOfRange);
    });
    it('rejects a short CDB', () => {
      expectCheck(emulate(rw(op, 0, 1).subarray(0, 5), makeDev()), invalidField(null));
    });
  });

  for (const size of [10, 12, 16] as const) {
    const op = table[size];
    const lenByte = size === 10 ? 7 : size === 12 ? 6 : 10;
    const groupByte = size === 10 ? 6 : size === 12 ? 10 : 14;
    describe(`scsi ${kind.toUpperCase()} (${size})`, () => {
      it('decodes LBA and transfer length', () => {
        expectIo(emulate(rw(op, 100, 16), makeDev()), kind, 100, 16);
      });
      it('passes FUA through and accepts DPO and FUA_NV', () => {
        expectIo(emulate(rw(op, 0, 1, 0x08), makeDev()), kind, 0, 1, true);
        expectIo(emulate(rw(op, 0, 1, 0x10), makeDev()), kind, 0, 1, false);
        expectIo(emulate(rw(op, 0, 1, 0x1a), makeDev()), kind, 0, 1, true);
      });
      it('completes 0 blocks with GOOD and no data', () => {
        expect(expectGood(emulate(rw(op, 5, 0), makeDev()))).to.equal(undefined);
        expect(expectGood(emulate(rw(op, 2048, 0), makeDev()))).to.equal(undefined);
      });
      it('still range-checks the LBA of a 0-block transfer', () => {
        expectCheck(emulate(rw(op, 2049, 0), makeDev()), lbaOutOfRange);
      });
      it('allows the last block and rejects one past it', () => {
        expectIo(emulate(rw(op, 2047, 1), makeDev()), kind, 2047, 1);
        expectCheck(emulate(rw(op, 2047, 2), makeDev()), lbaOutOfRange);
        expectCheck(emulate(rw(op, 2048, 1), makeDev()), lbaOutOfRange);
      });
      it('rejects transfers longer than maxXferBlocks, pointing at TRANSFER LENGTH', () => {
        expectIo(emulate(rw(op, 0, 128), makeDev({ maxXferBlocks: 128 })), kind, 0, 128);
        expectCheck(emulate(rw(op, 0, 129), makeDev({ maxXferBlocks: 128 })), invalidField(lenByte));
      });
      it('checks the transfer length before the range', () => {
        expectCheck(emulate(rw(op, 2047, 200), makeDev({ maxXferBlocks: 128 })), invalidField(lenByte));
      });
      it('rejects a non-zero protection field (no protection information)', () => {
        for (const p of [0x20, 0x40, 0xe0]) expectCheck(emulate(rw(op, 0, 1, p), makeDev()), invalidField(1, 7));
      });
      it('rejects reserved bits 2 and 0 of byte 1', () => {
        expectCheck(emulate(rw(op, 0, 1, 0x04), makeDev()), invalidField(1, 2));
        expectCheck(emulate(rw(op, 0, 1, 0x01), makeDev()), invalidField(1, 0));
      });
      it('accepts a group number and rejects the reserved bits above it', () => {
        const c = rw(op, 0, 1);
        c[groupByte] = 0x1f;
        expectIo(emulate(c, makeDev()), kind, 0, 1);
        c[groupByte] = 0x20;
        expectCheck(emulate(c, makeDev()), invalidField(groupByte, 5));
      });
      it('rejects NACA and LINK', () => {
        const c = rw(op, 0, 1);
        c[size - 1] = 0x04;
        expectCheck(emulate(c, makeDev()), invalidField(size - 1, 2));
        c[size - 1] = 0x01;
        expectCheck(emulate(c, makeDev()), invalidField(size - 1, 0));
      });
      it('rejects a short CDB', () => {
        expectCheck(emulate(rw(op, 0, 1).subarray(0, size - 1), makeDev()), invalidField(null));
      });
      it('handles capacities past 32 bits', () => {
        if (size !== 16) return;
        const dev = makeDev({ numLbas: 2 ** 40 });
        expectIo(emulate(rw(op, 2 ** 40 - 8, 8), dev), kind, 2 ** 40 - 8, 8);
        expectCheck(emulate(rw(op, 2 ** 40 - 7, 8), dev), lbaOutOfRange);
      });
      it('rejects 64-bit LBAs beyond capacity without losing precision', () => {
        if (size !== 16) return;
        const dev = makeDev({ numLbas: 2 ** 53 });
        expectCheck(emulate(rw(op, 2n ** 53n, 1), dev), lbaOutOfRange);
        expectCheck(emulate(rw(op, 0xffff_ffff_ffff_ffffn, 1), dev), lbaOutOfRange);
        expectCheck(emulate(rw(op, 0xffff_ffff_ffff_fff0n, 0x10), dev), lbaOutOfRange); // would wrap in 64 bits
      });
    });
  }
}

describe('scsi WRITE on a write-protected unit', () => {
  it('fails every write with DATA PROTECT, WRITE PROTECTED; reads still work', () => {
    const dev = makeDev({ writeProtect: true });
    for (const op of Object.values(WRITES)) expectCheck(emulate(rw(op, 0, 1), dev), { key: 7, asc: 0x27 });
    expectIo(emulate(rw(0x28, 0, 1), dev), 'read', 0, 1);
  });
});

describe('scsi SYNCHRONIZE CACHE (10)/(16)', () => {
  const sync10 = (lba: number, n: number, byte1 = 0) => {
    const b = cdbOf(10, 0x35, { 1: byte1 });
    new DataView(b.buffer).setUint32(2, lba);
    new DataView(b.buffer).setUint16(7, n);
    return b;
  };
  const sync16 = (lba: bigint, n: number, byte1 = 0) => {
    const b = cdbOf(16, 0x91, { 1: byte1 });
    new DataView(b.buffer).setBigUint64(2, lba);
    new DataView(b.buffer).setUint32(10, n);
    return b;
  };

  it('flushes the given range', () => {
    expect(emulate(sync10(10, 20), makeDev())).to.deep.equal({ kind: 'flush', lba: 10, blocks: 20 });
    expect(emulate(sync16(10n, 20), makeDev())).to.deep.equal({ kind: 'flush', lba: 10, blocks: 20 });
  });

  it('resolves NUMBER OF LOGICAL BLOCKS 0 to the end of the medium', () => {
    expect(emulate(sync10(0, 0), makeDev())).to.deep.equal({ kind: 'flush', lba: 0, blocks: 2048 });
    expect(emulate(sync16(2000n, 0), makeDev())).to.deep.equal({ kind: 'flush', lba: 2000, blocks: 48 });
  });

  it('is not limited by maxXferBlocks', () => {
    expect(emulate(sync10(0, 2048), makeDev({ maxXferBlocks: 8 }))).to.deep.equal({ kind: 'flush', lba: 0, blocks: 2048 });
  });

  it('accepts IMMED and SYNC_NV', () => {
    expect(emulate(sync10(0, 1, 0x02), makeDev()).kind).to.equal('flush');
    expect(emulate(sync16(0n, 1, 0x06), makeDev()).kind).to.equal('flush');
  });

  it('range-checks the LBA and count', () => {
    expectCheck(emulate(sync10(2048, 1), makeDev()), lbaOutOfRange);
    expectCheck(emulate(sync10(2049, 0), makeDev()), lbaOutOfRange);
    expectCheck(emulate(sync16(1n << 63n, 1), makeDev()), lbaOutOfRange);
  });

  it('rejects reserved bits', () => {
    expectCheck(emulate(sync10(0, 1, 0x01), makeDev()), invalidField(1, 0));
    expectCheck(emulate(sync10(0, 1, 0x80), makeDev()), invalidField(1, 7));
    const c = sync16(0n, 1);
    c[14] = 0x40;
    expectCheck(emulate(c, makeDev()), invalidField(14, 6));
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(sync16(0n, 1).subarray(0, 15), makeDev()), invalidField(null));
  });
});

describe('scsi TEST UNIT READY', () => {
  it('answers GOOD with no data', () => {
    expect(emulate(cdb(0, 0, 0, 0, 0, 0), makeDev())).to.deep.equal({ kind: 'done', status: 0 });
  });
  it('rejects reserved bytes and NACA', () => {
    expectCheck(emulate(cdb(0, 0, 0, 1, 0, 0), makeDev()), invalidField(3, 0));
    expectCheck(emulate(cdb(0, 0, 0, 0, 0, 4), makeDev()), invalidField(5, 2));
  });
  it('rejects a short CDB', () => {
    expectCheck(emulate(cdb(0, 0, 0), makeDev()), invalidField(null));
  });
});

describe('scsi REQUEST SENSE', () => {
  it('returns fixed-format NO SENSE by default', () => {
    const d = expectData(emulate(cdb(0x03, 0, 0, 0, 252, 0), makeDev()));
    const want = new Uint8Array(18);
    want[0] = 0x70; want[7] = 10;
    expect(Array.from(d)).to.deep.equal(Array.from(want));
  });
  it('returns descriptor format when DESC is set', () => {
    expect(Array.from(expectData(emulate(cdb(0x03, 1, 0, 0, 252, 0), makeDev())))).to.deep.equal([0x72, 0, 0, 0, 0, 0, 0, 0]);
  });
  it('stops at the allocation length', () => {
    expect(expectData(emulate(cdb(0x03, 0, 0, 0, 8, 0), makeDev())).length).to.equal(8);
    expect(expectData(emulate(cdb(0x03, 0, 0, 0, 0, 0), makeDev())).length).to.equal(0);
  });
  it('rejects reserved bits', () => {
    expectCheck(emulate(cdb(0x03, 2, 0, 0, 18, 0), makeDev()), invalidField(1, 1));
    expectCheck(emulate(cdb(0x03, 0, 1, 0, 18, 0), makeDev()), invalidField(2, 0));
  });
});

describe('scsi CDB lengths', () => {
  it('follows the group code', () => {
    expect(cdbLength(0x00)).to.equal(6);
    expect(cdbLength(0x1f)).to.equal(6);
    expect(cdbLength(0x28)).to.equal(10);
    expect(cdbLength(0x5a)).to.equal(10);
    expect(cdbLength(0x7e)).to.equal(undefined);
    expect(cdbLength(0x7f)).to.equal(undefined);
    expect(cdbLength(0x88)).to.equal(16);
    expect(cdbLength(0x9e)).to.equal(16);
    expect(cdbLength(0xa0)).to.equal(12);
    expect(cdbLength(0xc0)).to.equal(undefined);
    expect(cdbLength(0xff)).to.equal(undefined);
  });
  it('reads the variable-length CDB length from byte 7', () => {
    expect(cdbLengthOf(cdbOf(32, 0x7f, { 7: 0x18 }))).to.equal(32);
    expect(cdbLengthOf(cdb(0x7f, 0))).to.equal(undefined);
    expect(cdbLengthOf(new Uint8Array(0))).to.equal(undefined);
    expect(cdbLengthOf(cdb(0x28))).to.equal(10);
  });
  it('names the opcodes with their SPC/SBC values', () => {
    expect(Opcode).to.include({ INQUIRY: 0x12, READ_CAPACITY_10: 0x25, SERVICE_ACTION_IN_16: 0x9e, MODE_SENSE_10: 0x5a, UNMAP: 0x42 });
  });
});

describe('scsi unsupported commands', () => {
  it('answers INVALID COMMAND OPERATION CODE for commands not handled here', () => {
    const ops = [0x04, 0x1b, 0x1e, 0x2f, 0x41, 0x42, 0x5e, 0x5f, 0x7f, 0x83, 0x84, 0x89, 0x93, 0xa0, 0xa3, 0xc0, 0xff];
    for (const op of ops) expectCheck(emulate(cdbOf(cdbLength(op) ?? 16, op), makeDev()), { ...invalidOpcode, byte: null });
  });
  it('answers INVALID COMMAND OPERATION CODE for an empty CDB', () => {
    expectCheck(emulate(new Uint8Array(0), makeDev()), invalidOpcode);
  });
  it('lists what it supports', () => {
    expect(SUPPORTED_OPCODES).to.deep.equal([0x00, 0x03, 0x08, 0x0a, 0x12, 0x15, 0x1a, 0x25, 0x28, 0x2a, 0x34, 0x35, 0x37, 0x55, 0x5a, 0x88, 0x8a, 0x90, 0x91, 0x9e, 0xa8, 0xaa, 0xb7]);
  });
  it('uses descriptor sense when the device has D_SENSE', () => {
    const o = emulate(cdb(0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0), makeDev({ dSense: true }));
    if (o.kind !== 'done') throw new Error();
    expect(Array.from(o.sense!)).to.deep.equal([0x72, ILLEGAL, 0x20, 0, 0, 0, 0, 0]);
  });
});

describe('scsi emulate robustness (fast-check)', () => {
  it('never throws and always answers a well-formed outcome for random CDBs', () => {
    const dev = makeDev({ numLbas: 4096, lbpu: true, maxUnmapLbaCount: 1024, maxUnmapDescriptors: 8, optimalUnmapGranularity: 8 });
    const opcode = fc.oneof(fc.constantFrom(...SUPPORTED_OPCODES), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(opcode, fc.uint8Array({ maxLength: 20 }), fc.option(fc.uint8Array({ maxLength: 64 }), { nil: undefined }), (op, rest, out) => {
        const c = new Uint8Array(1 + rest.length);
        c[0] = op;
        c.set(rest, 1);
        const before = dev.writeCache;
        const o = emulate(c, dev, out);
        dev.writeCache = before;
        switch (o.kind) {
          case 'done':
            expect([0, 2]).to.include(o.status);
            if (o.status === 2) expect(decodeSense(o.sense!)).to.not.equal(undefined);
            else expect(o.sense).to.equal(undefined);
            break;
          case 'read':
          case 'write':
          case 'flush':
            expect(Number.isSafeInteger(o.lba)).to.equal(true);
            expect(o.blocks).to.be.greaterThan(0);
            expect(o.lba + o.blocks).to.be.at.most(dev.numLbas);
            if (o.kind !== 'flush') expect(o.blocks).to.be.at.most(dev.maxXferBlocks);
            break;
          default:
            expect.fail(`unexpected outcome ${(o as { kind: string }).kind}`);
        }
      }),
      { numRuns: 5000 },
    );
  });
});
