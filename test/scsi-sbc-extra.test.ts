/**
 * The SBC commands tcmu-runner does not answer: PRE-FETCH (10/16), ORWRITE
 * (16), WRITE ATOMIC (16) where the handler promises atomic writes (ram, not
 * file), READ DEFECT DATA (10/12); through the engine and the simulator.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Handler } from '@tcmu-ts/core';
import { fileHandler, ramHandler } from '@tcmu-ts/handlers';
import { KernelSimulator, ScsiStatus, cdbInquiry, cdbRead16, cdbWrite16 } from '@tcmu-ts/ring';
import { serveDevice } from '@tcmu-ts/workers';
import { be16, be32 } from './scsi-helpers.js';

const BS = 512;
const N = 8192;
const MAX_XFER = 256;

function cdb16(op: number, lba: number, blocks: number, byte1 = 0, lengthAt = 10, lengthBytes = 4): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = op;
  c[1] = byte1;
  const v = new DataView(c.buffer);
  v.setBigUint64(2, BigInt(lba));
  if (lengthBytes === 4) v.setUint32(lengthAt, blocks);
  else v.setUint16(lengthAt, blocks);
  return c;
}
const preFetch10 = (lba: number, blocks: number, byte1 = 0) => Uint8Array.from([0x34, byte1, lba >>> 24, (lba >> 16) & 0xff, (lba >> 8) & 0xff, lba & 0xff, 0, blocks >> 8, blocks & 0xff, 0]);
const preFetch16 = (lba: number, blocks: number) => cdb16(0x90, lba, blocks);
const orWrite16 = (lba: number, blocks: number) => cdb16(0x8b, lba, blocks);
const writeAtomic16 = (lba: number, blocks: number) => cdb16(0x9c, lba, blocks, 0, 12, 2);

interface Sense { key: number; asc: number; ascq: number }
function senseOf(r: { sense?: Uint8Array }): Sense | undefined {
  const s = r.sense;
  if (!s || s.length < 14) return undefined;
  return (s[0] & 0x7f) >= 0x72 ? { key: s[1] & 0xf, asc: s[2], ascq: s[3] } : { key: s[2] & 0xf, asc: s[12], ascq: s[13] };
}

async function withDevice(handler: Handler, cfgstring: string, fn: (sim: KernelSimulator) => Promise<void>): Promise<void> {
  const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8 });
  const served = await serveDevice({ ring: sim.endpoint, handler, cfgstring, name: 'sbc-extra', blockSize: BS, numLbas: N, maxXferBlocks: MAX_XFER, log: { warn() {}, error() {} } });
  try {
    await fn(sim);
  } finally {
    await served.stop();
    await sim.close();
  }
}

const filled = (blocks: number, byte: number) => new Uint8Array(blocks * BS).fill(byte);

describe('scsi PRE-FETCH, ORWRITE, WRITE ATOMIC, READ DEFECT DATA', function () {
  this.timeout(30000);

  it('PRE-FETCH (10) and (16): GOOD in range, LBA OUT OF RANGE past the end, reserved bits refused', async () => {
    await withDevice(ramHandler, '4M', async (sim) => {
      for (const c of [preFetch10(0, 64), preFetch10(N - 1, 1), preFetch16(100, 1000), preFetch10(0, 64, 0x02)]) {
        expect((await sim.submit(c)).status).to.equal(ScsiStatus.GOOD);
      }
      const out = await sim.submit(preFetch16(N - 1, 2));
      expect(senseOf(out)).to.deep.include({ key: 5, asc: 0x21 });
      expect(senseOf(await sim.submit(preFetch10(0, 1, 0x04)))).to.deep.include({ key: 5, asc: 0x24 });
    });
  });

  it('ORWRITE (16) ORs the Data-Out into what the blocks hold', async () => {
    await withDevice(ramHandler, '4M', async (sim) => {
      expect((await sim.submit(cdbWrite16(10, 4), { dataOut: filled(4, 0x0f) })).status).to.equal(ScsiStatus.GOOD);
      const data = filled(4, 0x30);
      data[5] = 0xc0;
      expect((await sim.submit(orWrite16(10, 4), { dataOut: data })).status).to.equal(ScsiStatus.GOOD);
      const r = await sim.submit(cdbRead16(10, 4), { dataInLength: 4 * BS });
      const want = filled(4, 0x3f);
      want[5] = 0xcf;
      expect(Buffer.from(r.dataIn).equals(Buffer.from(want))).to.equal(true);
      expect(senseOf(await sim.submit(orWrite16(N - 1, 2), { dataOut: filled(2, 1) }))).to.deep.include({ key: 5, asc: 0x21 });
    });
  });

  it('WRITE ATOMIC (16) on ram: offered in Block Limits, lands, longer than the maximum refused at its field', async () => {
    await withDevice(ramHandler, '4M', async (sim) => {
      const b0 = (await sim.submit(cdbInquiry(64, 0xb0), { dataInLength: 64 })).dataIn;
      expect(be32(b0, 44), 'MAXIMUM ATOMIC TRANSFER LENGTH').to.equal(MAX_XFER);
      expect((await sim.submit(writeAtomic16(20, 16), { dataOut: filled(16, 0x5a) })).status).to.equal(ScsiStatus.GOOD);
      const r = await sim.submit(cdbRead16(20, 16), { dataInLength: 16 * BS });
      expect(Buffer.from(r.dataIn).equals(Buffer.from(filled(16, 0x5a)))).to.equal(true);
      const long = await sim.submit(writeAtomic16(0, MAX_XFER + 1), { dataOut: filled(MAX_XFER + 1, 1) });
      expect(senseOf(long)).to.deep.include({ key: 5, asc: 0x24 });
      const boundary = writeAtomic16(0, 1);
      boundary[11] = 1;
      expect(senseOf(await sim.submit(boundary, { dataOut: filled(1, 1) })), 'ATOMIC BOUNDARY').to.deep.include({ key: 5, asc: 0x24 });
    });
  });

  it('WRITE ATOMIC (16) is not offered where the handler does not promise it (file)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-atomic-'));
    const img = path.join(dir, 'img');
    fs.writeFileSync(img, Buffer.alloc(N * BS));
    try {
      await withDevice(fileHandler, img, async (sim) => {
        const b0 = (await sim.submit(cdbInquiry(64, 0xb0), { dataInLength: 64 })).dataIn;
        expect(be32(b0, 44)).to.equal(0);
        expect(senseOf(await sim.submit(writeAtomic16(0, 1), { dataOut: filled(1, 1) }))).to.deep.include({ key: 5, asc: 0x20 });
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('READ DEFECT DATA (10) and (12): no defects, the requested lists and format echoed, cut to the allocation length', async () => {
    await withDevice(ramHandler, '4M', async (sim) => {
      const r10 = await sim.submit(Uint8Array.from([0x37, 0, 0x18 | 0x05, 0, 0, 0, 0, 0, 64, 0]), { dataInLength: 64 });
      expect(r10.status).to.equal(ScsiStatus.GOOD);
      expect(Array.from(r10.dataIn)).to.deep.equal([0, 0x1d, 0, 0]);
      const r12 = await sim.submit(Uint8Array.from([0xb7, 0x08 | 0x04, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0]), { dataInLength: 64 });
      expect(Array.from(r12.dataIn)).to.deep.equal([0, 0x0c, 0, 0, 0, 0, 0, 0]);
      const cut = await sim.submit(Uint8Array.from([0xb7, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0]), { dataInLength: 64 });
      expect(cut.dataIn.length).to.equal(3);
      expect(be16(r12.dataIn, 6)).to.equal(0);
    });
  });
});
