/**
 * tcmu-runner parity, end to end: each emulated command through the kernel
 * simulator, a device worker and a handler (Supervisor + SimulatedBackend +
 * Initiator), including malformed CDBs and parameter lists, the COMPARE AND
 * WRITE lock under concurrent writes, FORMAT UNIT progress, EXTENDED COPY
 * between LUNs, D_SENSE, resource shortage and tcmur_cmd_time_out.
 */
import { expect } from 'chai';
import { fileURLToPath } from 'node:url';
import { Initiator, ScsiStatus, cdbRead10, type ScsiResponse } from '@tcmu-ts/ring';
import { decodeSense, type DecodedSense } from '@tcmu-ts/core';
import { Supervisor, SimulatedBackend, type DeviceSpec, type Isolation } from '@tcmu-ts/workers';

const BS = 512;
const HANDLER = fileURLToPath(new URL('./scsi-parity-handler.test.js', import.meta.url));

// ------------------------------------------------------------ CDB and parameter list builders

function be(b: Uint8Array, off: number, len: number, v: number | bigint): void {
  let x = BigInt(v);
  for (let i = len - 1; i >= 0; i--) {
    b[off + i] = Number(x & 0xffn);
    x >>= 8n;
  }
}
function cdb(len: number, op: number, fields: [off: number, len: number, v: number | bigint][] = []): Uint8Array {
  const b = new Uint8Array(len);
  b[0] = op;
  for (const [o, l, v] of fields) be(b, o, l, v);
  return b;
}
const ws10 = (lba: number, blocks: number, b1 = 0) => cdb(10, 0x41, [[1, 1, b1], [2, 4, lba], [7, 2, blocks]]);
const ws16 = (lba: number, blocks: number, b1 = 0) => cdb(16, 0x93, [[1, 1, b1], [2, 8, lba], [10, 4, blocks]]);
const unmapCdb = (len: number, b1 = 0) => cdb(10, 0x42, [[1, 1, b1], [7, 2, len]]);
const caw = (lba: number, blocks: number) => cdb(16, 0x89, [[2, 8, lba], [13, 1, blocks]]);
const verify10 = (lba: number, blocks: number, bytchk: number) => cdb(10, 0x2f, [[1, 1, bytchk << 1], [2, 4, lba], [7, 2, blocks]]);
const verify16 = (lba: number, blocks: number, bytchk: number) => cdb(16, 0x8f, [[1, 1, bytchk << 1], [2, 8, lba], [10, 4, blocks]]);
const wv10 = (lba: number, blocks: number, b1 = 0x02) => cdb(10, 0x2e, [[1, 1, b1], [2, 4, lba], [7, 2, blocks]]);
const wv16 = (lba: number, blocks: number, b1 = 0x02) => cdb(16, 0x8e, [[1, 1, b1], [2, 8, lba], [10, 4, blocks]]);
const formatUnit = (b1 = 0) => cdb(6, 0x04, [[1, 1, b1]]);
const startStop = (b4: number, b1 = 0) => cdb(6, 0x1b, [[1, 1, b1], [4, 1, b4]]);
const xcopyCdb = (len: number) => cdb(16, 0x83, [[10, 4, len]]);
const rcrCdb = (sa: number, alloc: number) => cdb(16, 0x84, [[1, 1, sa], [10, 4, alloc]]);
const requestSense = (alloc = 252, desc = false) => cdb(6, 0x03, [[1, 1, desc ? 1 : 0], [4, 1, alloc]]);

function unmapList(descs: [lba: number | bigint, blocks: number][], bddl = descs.length * 16): Uint8Array {
  const p = new Uint8Array(8 + descs.length * 16);
  be(p, 0, 2, 6 + bddl);
  be(p, 2, 2, bddl);
  descs.forEach(([lba, n], i) => {
    be(p, 8 + i * 16, 8, lba);
    be(p, 16 + i * 16, 4, n);
  });
  return p;
}

interface Seg {
  s: number;
  d: number;
  blocks: number;
  src: number;
  dst: number;
}
function xcopyList(targets: Uint8Array[], segs: Seg[], o: { usage?: number; tdType?: number; segType?: number; segLen?: number } = {}): Uint8Array {
  const tdll = targets.length * 32;
  const sdll = segs.length * 28;
  const p = new Uint8Array(16 + tdll + sdll);
  p[1] = (o.usage ?? 3) << 3;
  be(p, 2, 2, tdll);
  be(p, 8, 4, sdll);
  targets.forEach((naa, i) => {
    const t = 16 + i * 32;
    p[t] = o.tdType ?? 0xe4;
    p[t + 4] = 0x01; // binary
    p[t + 5] = 0x03; // LU, NAA
    p[t + 7] = 16;
    p.set(naa, t + 8);
    be(p, t + 29, 3, BS);
  });
  segs.forEach((sg, i) => {
    const s = 16 + tdll + i * 28;
    p[s] = o.segType ?? 0x02;
    be(p, s + 2, 2, o.segLen ?? 0x18);
    be(p, s + 4, 2, sg.s);
    be(p, s + 6, 2, sg.d);
    be(p, s + 10, 2, sg.blocks);
    be(p, s + 12, 8, sg.src);
    be(p, s + 20, 8, sg.dst);
  });
  return p;
}

/** A CSCD descriptor as libiscsi's test-tool builds it (populate_tgt_desc); `naa` is the designator it read from VPD 83h. */
interface LibiscsiTarget {
  type?: number;
  luIdType?: number;
  nul?: number;
  naa: Uint8Array;
}
/** A segment descriptor as libiscsi builds it (populate_seg_desc_b2b, or populate_seg_desc_hdr for other types). */
interface LibiscsiSeg {
  type?: number;
  s: number;
  d: number;
  blocks?: number;
  src?: number;
  dst?: number;
}
/** libiscsi's get_desc_len. */
function libiscsiDescLen(type: number): number {
  if (type === 0x00 || type === 0x01) return 0x18;
  if (type === 0x02) return 0x1c;
  if (type === 0x03) return 0x14;
  if (type === 0xea || type === 0xeb) return 64;
  return type >= 0xe0 && type <= 0xe9 ? 32 : 0;
}
/**
 * An EXTENDED COPY parameter list byte for byte as libiscsi's iscsi-test-cu
 * sends it (test-tool/iscsi-support.c: populate_param_header,
 * populate_tgt_desc with populate_ident_tgt_desc, populate_seg_desc_*).
 */
function libiscsiList(listId: number, usage: number, targets: LibiscsiTarget[], segs: LibiscsiSeg[]): Uint8Array {
  const tdl = targets.reduce((n, t) => n + libiscsiDescLen(t.type ?? 0xe4), 0);
  const sdl = segs.reduce((n, g) => n + libiscsiDescLen(g.type ?? 0x02), 0);
  const p = new Uint8Array(16 + tdl + sdl);
  p[0] = listId;
  p[1] = (usage & 3) << 3;
  be(p, 2, 2, tdl);
  be(p, 8, 4, sdl);
  let off = 16;
  for (const t of targets) {
    const type = t.type ?? 0xe4;
    p[off] = type;
    p[off + 1] = ((t.luIdType ?? 0) << 6) | ((t.nul ?? 0) << 5);
    if (type === 0xe4) {
      p[off + 4] = 0x01; // code set: binary
      p[off + 5] = 0x03; // association LU, designator type NAA
      p[off + 7] = t.naa.length;
      p.set(t.naa, off + 8);
    }
    be(p, off + 29, 3, BS);
    off += libiscsiDescLen(type);
  }
  for (const g of segs) {
    const type = g.type ?? 0x02;
    const len = libiscsiDescLen(type);
    p[off] = type;
    be(p, off + 2, 2, len - 4);
    be(p, off + 4, 2, g.s);
    be(p, off + 6, 2, g.d);
    if (type === 0x02) {
      be(p, off + 10, 2, g.blocks ?? 0);
      be(p, off + 12, 8, g.src ?? 0);
      be(p, off + 20, 8, g.dst ?? 0);
    }
    off += len;
  }
  return p;
}

/**
 * sg3_utils' sg_xcopy list (scsi_extended_copy): two identification CSCD
 * descriptors copied from the VPD 83h designator (code set and
 * association/type bytes masked, disk block length at 29), one
 * block-to-block segment from CSCD 0 to CSCD 1, PRIORITY 1.
 */
function sgXcopyList(listId: number, usage: number, naa: Uint8Array, blocks: number, src: number, dst: number): Uint8Array {
  const p = new Uint8Array(16 + 64 + 28);
  p[0] = listId;
  p[1] = (usage << 3) | 1;
  p[3] = 64;
  for (const off of [16, 48]) {
    p[off] = 0xe4;
    p[off + 4] = 0x01 & 0x0f;
    p[off + 5] = 0x03 & 0x3f;
    p[off + 7] = 16;
    p.set(naa, off + 8);
    be(p, off + 29, 3, BS);
  }
  p[80] = 0x02;
  be(p, 82, 2, 0x18);
  p[87] = 1;
  be(p, 90, 2, blocks);
  be(p, 92, 8, src);
  be(p, 100, 8, dst);
  p[11] = 28;
  return p;
}

function fill(blocks: number, seed: number): Uint8Array {
  const b = new Uint8Array(blocks * BS);
  for (let i = 0; i < b.length; i++) b[i] = (i * 7 + seed * 13 + (i >> 9)) & 0xff || 1;
  return b;
}

function sense(r: ScsiResponse): DecodedSense {
  expect(r.status, 'CHECK CONDITION').to.equal(ScsiStatus.CHECK_CONDITION);
  const d = decodeSense(r.sense);
  expect(d, 'decodable sense').to.not.equal(undefined);
  return d!;
}
function expectSense(r: ScsiResponse, key: number, asc: number, ascq = 0): DecodedSense {
  const d = sense(r);
  expect({ key: d.key, asc: d.asc, ascq: d.ascq }).to.deep.equal({ key, asc, ascq });
  return d;
}
function expectGood(r: ScsiResponse, what = 'GOOD'): void {
  const d = r.sense.length ? decodeSense(r.sense) : undefined;
  expect(r.status, `${what}${d ? ` (sense ${d.key}/${d.asc.toString(16)}/${d.ascq.toString(16)})` : ''}`).to.equal(ScsiStatus.GOOD);
}

/** The NAA designator of a LUN's VPD 83h page, as an initiator would read it. */
async function naaOf(ini: Initiator): Promise<Uint8Array> {
  const r = await ini.inquiry(255, 0x83);
  expectGood(r);
  const d = r.data;
  for (let off = 4; off + 4 <= d.length; off += 4 + d[off + 3]) {
    if ((d[off + 1] & 0x0f) === 3 && d[off + 3] === 16) return d.slice(off + 4, off + 20);
  }
  throw new Error('no NAA designator');
}

async function until(ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('tcmu-runner parity: emulated commands end to end', function () {
  this.timeout(30000);
  let sup: Supervisor;
  let logs: string[];
  const backends: SimulatedBackend[] = [];

  beforeEach(() => {
    logs = [];
    sup = new Supervisor({ log: (level, dev, msg) => logs.push(`${level} ${dev}: ${msg}`) });
  });
  afterEach(async () => {
    await sup.stop();
    for (const b of backends.splice(0)) await b.close();
  });

  async function lun(name: string, cfg = '4M', extra: Partial<DeviceSpec> = {}, numLbas = 8192, isolation: Isolation = 'thread'): Promise<Initiator> {
    const b = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 20 });
    backends.push(b);
    const blockSize = extra.blockSize ?? BS;
    await sup.addDevice({
      name, subtype: 'parity', cfgstring: cfg, handlerSpec: HANDLER, blockSize, numLbas, maxXferBlocks: 1024,
      writeCache: true, serial: `6001405-${name}-serial`, wwn: `0a1b2c3d-4e5f-${name.length}${name.charCodeAt(0).toString(16)}-serial-${name}`,
      ring: b.endpoint, ...extra,
    }, b, { isolation });
    return new Initiator(b.sim, { blockSize });
  }

  describe('UNMAP (42h)', () => {
    it('unmaps every listed range, which then reads as zeros; VPD B0h/B2h and READ CAPACITY (16) advertise it', async () => {
      const ini = await lun('u');
      expectGood(await ini.write(0, fill(64, 1)));
      const list = unmapList([[8, 8], [32, 16]]);
      expectGood(await ini.send(unmapCdb(list.length), { dataOut: list }));
      const r = await ini.read(0, 64);
      const z = (from: number, n: number) => r.data.subarray(from * BS, (from + n) * BS).every((x) => x === 0);
      expect(z(8, 8) && z(32, 16), 'unmapped ranges are zeros').to.equal(true);
      expect(z(0, 8) || z(16, 16) || z(48, 16), 'the rest kept').to.equal(false);
      expect(Buffer.compare(r.data.subarray(0, 8 * BS), fill(64, 1).subarray(0, 8 * BS))).to.equal(0);

      const b0 = (await ini.inquiry(64, 0xb0)).data;
      const u32 = (b: Uint8Array, o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
      expect(u32(b0, 20), 'MAXIMUM UNMAP LBA COUNT').to.equal(1024 * 1024);
      expect(u32(b0, 24), 'MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT').to.equal(4);
      expect(u32(b0, 28), 'OPTIMAL UNMAP GRANULARITY').to.equal(1024);
      expect(b0[32] & 0x80, 'UGAVALID').to.equal(0x80);
      expect(b0[5], 'MAXIMUM COMPARE AND WRITE LENGTH').to.equal(1);
      expect(u32(b0, 40), 'MAXIMUM WRITE SAME LENGTH').to.equal(0xffffffff);
      const b2 = (await ini.inquiry(8, 0xb2)).data;
      expect(b2[5], 'LBPU | LBPWS | LBPWS10 | LBPRZ').to.equal(0xe4);
      const rc = await ini.send(cdb(16, 0x9e, [[1, 1, 0x10], [13, 1, 32]]), { dataInLength: 32 });
      expect(rc.data[14] & 0xc0, 'LBPME | LBPRZ').to.equal(0xc0);
    });

    it('advertises a MAXIMUM UNMAP LBA COUNT of at most 1 Mi blocks (libiscsi Inquiry.BlockLimits) and enforces that one', async () => {
      const ini = await lun('ulim');
      const b0 = (await ini.inquiry(64, 0xb0)).data;
      const max = ((b0[20] << 24) | (b0[21] << 16) | (b0[22] << 8) | b0[23]) >>> 0;
      expect(max, 'MAXIMUM UNMAP LBA COUNT').to.be.greaterThan(0).and.at.most(1024 * 1024);
      // One block over the limit: INVALID FIELD IN PARAMETER LIST at its NUMBER OF LOGICAL BLOCKS; at the
      // limit the descriptor is taken and only the range check (8192 blocks here) refuses it.
      const over = unmapList([[0, max + 1]]);
      expect(expectSense(await ini.send(unmapCdb(over.length), { dataOut: over }), 5, 0x26).fieldPointer).to.deep.include({ byte: 16 });
      const at = unmapList([[0, max]]);
      expectSense(await ini.send(unmapCdb(at.length), { dataOut: at }), 5, 0x21);
    });

    it('rejects malformed lists: short list PARAMETER LIST LENGTH ERROR, bad descriptors INVALID FIELD IN PARAMETER LIST', async () => {
      const ini = await lun('u2');
      // PARAMETER LIST LENGTH 1..7.
      expectSense(await ini.send(unmapCdb(6), { dataOut: new Uint8Array(6) }), 5, 0x1a);
      // The CDB promises more than the Data-Out Buffer holds.
      const one = unmapList([[0, 1]]);
      expectSense(await ini.send(unmapCdb(40), { dataOut: one }), 5, 0x1a);
      // More descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (4): pointer at BDDL.
      const five = unmapList([[0, 1], [1, 1], [2, 1], [3, 1], [4, 1]]);
      const d5 = expectSense(await ini.send(unmapCdb(five.length), { dataOut: five }), 5, 0x26);
      expect(d5.fieldPointer).to.deep.include({ byte: 2, cdb: false });
      // A descriptor over MAXIMUM UNMAP LBA COUNT: pointer at its NUMBER OF LOGICAL BLOCKS.
      const big = unmapList([[0, 1], [0, 32 * 1024 * 1024 + 1]]);
      const db = expectSense(await ini.send(unmapCdb(big.length), { dataOut: big }), 5, 0x26);
      expect(db.fieldPointer).to.deep.include({ byte: 8 + 16 + 8, cdb: false });
      // Past the end of the medium.
      const past = unmapList([[8190, 4]]);
      expectSense(await ini.send(unmapCdb(past.length), { dataOut: past }), 5, 0x21);
      // ANCHOR: not supported.
      expectSense(await ini.send(unmapCdb(one.length, 0x01), { dataOut: one }), 5, 0x24);
      // Nothing was unmapped by any of the refused lists.
      expectGood(await ini.write(0, fill(8, 3)));
      const partial = unmapList([[0, 2], [4, 2]], 16 + 8); // BDDL 24: the second descriptor is incomplete, ignored
      expectGood(await ini.send(unmapCdb(partial.length), { dataOut: partial }));
      const r = await ini.read(0, 8);
      expect(r.data.subarray(0, 2 * BS).every((x) => x === 0)).to.equal(true);
      expect(r.data.subarray(4 * BS, 6 * BS).every((x) => x === 0), 'incomplete descriptor ignored').to.equal(false);
      // PARAMETER LIST LENGTH 0: nothing to do.
      expectGood(await ini.send(unmapCdb(0)));
    });

    it('is INVALID COMMAND OPERATION CODE when the handler has no unmap callout, which VPD B2h shows', async () => {
      const ini = await lun('nu', '4M;nounmap');
      const list = unmapList([[0, 1]]);
      expectSense(await ini.send(unmapCdb(list.length), { dataOut: list }), 5, 0x20);
      expect((await ini.inquiry(8, 0xb2)).data[5]).to.equal(0);
    });
  });

  describe('WRITE SAME (41h, 93h)', () => {
    for (const cb of ['', 'nows'] as const) {
      it(`repeats the block over the range (${cb ? 'emulated through write()' : "the handler's writeSame"})`, async () => {
        const ini = await lun(`ws${cb}`, cb ? `4M;${cb}` : '4M');
        const block = fill(1, 9);
        expectGood(await ini.send(ws10(100, 3000), { dataOut: block }), 'WRITE SAME (10)');
        expectGood(await ini.send(ws16(5000, 7), { dataOut: fill(1, 4) }), 'WRITE SAME (16)');
        for (let part = 0; part < 3; part++) {
          const r = await ini.read(100 + part * 1000, 1000); // MAXIMUM TRANSFER LENGTH is 1024
          expectGood(r);
          for (let i = 0; i < 1000; i++) expect(Buffer.compare(r.data.subarray(i * BS, (i + 1) * BS), block), `block ${part * 1000 + i}`).to.equal(0);
        }
        expect((await ini.read(99, 1)).data.every((x) => x === 0)).to.equal(true);
        expect((await ini.read(3100, 1)).data.every((x) => x === 0)).to.equal(true);
        const r2 = await ini.read(5000, 7);
        expect(Buffer.compare(r2.data.subarray(6 * BS), fill(1, 4))).to.equal(0);
      });
    }

    it('UNMAP bit: a zero block unmaps, any other block is written (never lost); NDOB writes zeros', async () => {
      const ini = await lun('wsu');
      expectGood(await ini.write(0, fill(16, 2)));
      expectGood(await ini.send(ws16(0, 4, 0x08), { dataOut: new Uint8Array(BS) }));
      expectGood(await ini.send(ws16(4, 4, 0x08), { dataOut: fill(1, 5) }));
      expectGood(await ini.send(ws16(8, 4, 0x01)), 'NDOB'); // no Data-Out Buffer
      expectGood(await ini.send(ws16(12, 4, 0x09)), 'NDOB + UNMAP');
      const r = await ini.read(0, 16);
      expect(r.data.subarray(0, 4 * BS).every((x) => x === 0)).to.equal(true);
      for (let i = 4; i < 8; i++) expect(Buffer.compare(r.data.subarray(i * BS, (i + 1) * BS), fill(1, 5))).to.equal(0);
      expect(r.data.subarray(8 * BS).every((x) => x === 0)).to.equal(true);
    });

    it('refuses ANCHOR, PBDATA/LBDATA, 0 blocks (WSNZ), NDOB in (10), a Data-Out that is not one block, and out-of-range LBAs', async () => {
      const ini = await lun('wsx');
      const blk = fill(1, 1);
      expect(expectSense(await ini.send(ws16(0, 1, 0x18), { dataOut: blk }), 5, 0x24).fieldPointer).to.deep.include({ byte: 1, bit: 4 });
      expectSense(await ini.send(ws10(0, 1, 0x04), { dataOut: blk }), 5, 0x24);
      expectSense(await ini.send(ws10(0, 1, 0x02), { dataOut: blk }), 5, 0x24);
      expect(expectSense(await ini.send(ws10(0, 0), { dataOut: blk }), 5, 0x24).fieldPointer).to.deep.include({ byte: 7 });
      expect(expectSense(await ini.send(ws16(0, 0), { dataOut: blk }), 5, 0x24).fieldPointer).to.deep.include({ byte: 10 });
      expectSense(await ini.send(ws10(0, 1, 0x01), { dataOut: blk }), 5, 0x24);
      expectSense(await ini.send(ws10(0, 2), { dataOut: fill(2, 1) }), 5, 0x24);
      expectSense(await ini.send(ws16(8190, 3), { dataOut: blk }), 5, 0x21);
    });
  });

  describe('COMPARE AND WRITE (89h)', () => {
    for (const cb of ['', 'nocaw'] as const) {
      it(`writes on a match; MISCOMPARE with the offset in INFORMATION otherwise (${cb ? 'emulated through read/write' : "the handler's compareAndWrite"})`, async () => {
        const ini = await lun(`caw${cb}`, cb ? `4M;${cb}` : '4M');
        const a = fill(1, 1);
        const b = fill(1, 2);
        expectGood(await ini.write(10, a));
        const ok = new Uint8Array(2 * BS);
        ok.set(a);
        ok.set(b, BS);
        expectGood(await ini.send(caw(10, 1), { dataOut: ok }));
        expect(Buffer.compare((await ini.read(10, 1)).data, b)).to.equal(0);
        // The medium now holds b; compare against a copy of b differing at byte 300.
        const bad = new Uint8Array(2 * BS);
        bad.set(b);
        bad[300] ^= 0xff;
        bad.set(a, BS);
        const d = expectSense(await ini.send(caw(10, 1), { dataOut: bad }), 0x0e, 0x1d);
        expect(d.information, 'offset of the first differing byte').to.equal(300n);
        expect(Buffer.compare((await ini.read(10, 1)).data, b), 'not written').to.equal(0);
        // NUMBER OF LOGICAL BLOCKS 0: nothing, no error. More than 1 (MAXIMUM COMPARE AND WRITE LENGTH): refused.
        expectGood(await ini.send(caw(10, 0)));
        expect(expectSense(await ini.send(caw(10, 2), { dataOut: new Uint8Array(4 * BS) }), 5, 0x24).fieldPointer).to.deep.include({ byte: 13 });
        expectSense(await ini.send(caw(8192, 1), { dataOut: ok }), 5, 0x21);
      });
    }

    it('refuses a Data-Out Buffer other than 2 x NUMBER OF LOGICAL BLOCKS blocks, 0 blocks included (libiscsi 1.19 CompareAndWrite.Simple/Miscompare)', async () => {
      // libiscsi 1.19 tries 1..256 blocks; 256 does not fit the one-byte field and goes out as 0, with
      // 2 x 256 blocks of Data-Out, and the test expects INVALID FIELD IN CDB as for any count above the maximum.
      const ini = await lun('cawlen');
      const a = fill(1, 3);
      expectGood(await ini.write(0, a));
      const wrapped = caw(0, 256); // the field keeps 256 & 0xff = 0
      expect(wrapped[13]).to.equal(0);
      const big = new Uint8Array(2 * 256 * BS).fill(0x41);
      expect(expectSense(await ini.send(wrapped, { dataOut: big }), 5, 0x24).fieldPointer).to.deep.include({ byte: 13, cdb: true });
      // 1 block with 2 blocks' worth too much or too little (libiscsi's InvalidDataOutSize): refused, nothing written.
      const two = new Uint8Array(2 * BS);
      two.set(a);
      two.fill(0x5a, BS);
      expectSense(await ini.send(caw(0, 1), { dataOut: new Uint8Array(4 * BS).fill(0x5a) }), 5, 0x24);
      expectSense(await ini.send(caw(0, 1), { dataOut: two.subarray(0, BS) }), 5, 0x24);
      expect(Buffer.compare((await ini.read(0, 1)).data, a), 'not written').to.equal(0);
      // The right length still works, and 0 blocks with no data is still GOOD.
      expectGood(await ini.send(caw(0, 1), { dataOut: two }));
      expect((await ini.read(0, 1)).data.every((x) => x === 0x5a)).to.equal(true);
      expectGood(await ini.send(caw(0, 0)));
    });

    /**
     * The handler's read keeps its data, then stalls 150 ms, so a WRITE sent
     * right after the COMPARE AND WRITE lands between its read and its write.
     * Serially, either the COMPARE AND WRITE goes first (the WRITE's data
     * ends on the medium) or the WRITE does (the compare fails): in both the
     * medium ends with the WRITE's data. Without the lock it ends with the
     * COMPARE AND WRITE's, a lost update.
     */
    async function raceWriteIntoCaw(unsafe: boolean): Promise<{ final: Uint8Array; caw: ScsiResponse; writeMs: number }> {
      const ini = await lun(unsafe ? 'race-unsafe' : 'race', '4M;nocaw;slowread=150', unsafe ? { unsafeNoCawLock: true } : {});
      const [a, b, c] = [fill(1, 1), fill(1, 2), fill(1, 3)];
      expectGood(await ini.write(20, a));
      const data = new Uint8Array(2 * BS);
      data.set(a);
      data.set(b, BS);
      const cawP = ini.send(caw(20, 1), { dataOut: data });
      await new Promise((r) => setTimeout(r, 30)); // the COMPARE AND WRITE is reading now
      const sent = Date.now();
      const wP = ini.write(20, c).then((r) => ({ r, ms: Date.now() - sent }));
      const [cr, w] = await Promise.all([cawP, wP]);
      expectGood(w.r);
      return { final: (await ini.read(20, 1)).data, caw: cr, writeMs: w.ms };
    }

    it('is atomic against a WRITE to the same LBA sent while it runs: the WRITE waits for it', async () => {
      const { final, caw: cr, writeMs } = await raceWriteIntoCaw(false);
      expectGood(cr);
      expect(writeMs, 'the WRITE waited for the COMPARE AND WRITE to finish').to.be.greaterThan(90);
      expect(Buffer.compare(final, fill(1, 3)), "the later WRITE's data is on the medium").to.equal(0);
    });

    it('without the LBA range lock the same race loses the WRITE (what the lock prevents)', async () => {
      const { final, caw: cr, writeMs } = await raceWriteIntoCaw(true);
      expectGood(cr);
      expect(writeMs, 'the WRITE did not wait').to.be.lessThan(90);
      expect(Buffer.compare(final, fill(1, 2)), 'lost update: the COMPARE AND WRITE overwrote a WRITE it never compared').to.equal(0);
    });

    it('waits for a WRITE already in flight on its LBA, and then compares against that WRITE', async () => {
      for (const unsafe of [false, true]) {
        const ini = await lun(`inflight${unsafe ? '-unsafe' : ''}`, '4M;nocaw;slowwrite=150', unsafe ? { unsafeNoCawLock: true } : {});
        const [a, b, c] = [fill(1, 1), fill(1, 2), fill(1, 3)];
        expectGood(await ini.write(30, a));
        const wP = ini.write(30, c); // stalls 150 ms before it stores
        await new Promise((r) => setTimeout(r, 30));
        const data = new Uint8Array(2 * BS);
        data.set(a);
        data.set(b, BS);
        const cr = await ini.send(caw(30, 1), { dataOut: data });
        expectGood(await wP);
        const final = (await ini.read(30, 1)).data;
        if (!unsafe) {
          expectSense(cr, 0x0e, 0x1d); // it saw c, not a
          expect(Buffer.compare(final, c)).to.equal(0);
        } else {
          expectGood(cr); // compared against a stale a...
          expect(Buffer.compare(final, b), '...and overwrote c').to.equal(0);
        }
      }
    });

    it('of two concurrent COMPARE AND WRITEs expecting the same data exactly one succeeds', async () => {
      const ini = await lun('caw2', '4M;nocaw;slowread=60');
      const a = fill(1, 1);
      expectGood(await ini.write(40, a));
      const mk = (seed: number) => {
        const d = new Uint8Array(2 * BS);
        d.set(a);
        d.set(fill(1, seed), BS);
        return d;
      };
      const rs = await Promise.all([ini.send(caw(40, 1), { dataOut: mk(7) }), ini.send(caw(40, 1), { dataOut: mk(8) })]);
      const good = rs.filter((r) => r.status === ScsiStatus.GOOD);
      expect(good.length).to.equal(1);
      expectSense(rs.find((r) => r.status !== ScsiStatus.GOOD)!, 0x0e, 0x1d);
      const winner = rs[0].status === ScsiStatus.GOOD ? 7 : 8;
      expect(Buffer.compare((await ini.read(40, 1)).data, fill(1, winner))).to.equal(0);
    });
  });

  describe('VERIFY (2Fh, AFh, 8Fh)', () => {
    it('BYTCHK 0 reads the medium back; 1 compares with the Data-Out; 3 compares each block with one; MISCOMPARE carries the offset', async () => {
      const ini = await lun('v', '4M;eioread=900');
      const data = fill(8, 6);
      expectGood(await ini.write(50, data));
      expectGood(await ini.send(verify10(50, 8, 0)));
      expectGood(await ini.send(verify10(50, 8, 1), { dataOut: data }));
      expectGood(await ini.send(verify16(50, 8, 1), { dataOut: data }));
      expectGood(await ini.send(cdb(12, 0xaf, [[1, 1, 0x02], [2, 4, 50], [6, 4, 8]]), { dataOut: data }), 'VERIFY (12)');
      const bad = data.slice();
      bad[3 * BS + 17] ^= 1;
      expect(expectSense(await ini.send(verify10(50, 8, 1), { dataOut: bad }), 0x0e, 0x1d).information).to.equal(BigInt(3 * BS + 17));
      // BYTCHK 11b: one block against every block of the range.
      const same = fill(1, 4);
      expectGood(await ini.send(ws10(200, 5), { dataOut: same }));
      expectGood(await ini.send(verify16(200, 5, 3), { dataOut: same }));
      expectGood(await ini.write(203, fill(1, 5)));
      const d3 = expectSense(await ini.send(verify16(200, 5, 3), { dataOut: same }), 0x0e, 0x1d);
      expect(Number(d3.information) >= 3 * BS && Number(d3.information) < 4 * BS, 'in the fourth block').to.equal(true);
      // A block that cannot be read: MEDIUM ERROR, UNRECOVERED READ ERROR.
      expectSense(await ini.send(verify10(896, 8, 0)), 3, 0x11);
      // BYTCHK 10b is reserved; VRPROTECT is not offered; length 0 is no error; out of range.
      expectSense(await ini.send(verify10(50, 1, 2)), 5, 0x24);
      expectSense(await ini.send(cdb(10, 0x2f, [[1, 1, 0x20], [7, 2, 1]])), 5, 0x24);
      expectGood(await ini.send(verify10(50, 0, 0)));
      expectSense(await ini.send(verify16(8190, 3, 0)), 5, 0x21);
    });
  });

  describe('WRITE AND VERIFY (2Eh, AEh, 8Eh)', () => {
    it('writes, reads back and compares; refuses WRPROTECT and out-of-range LBAs', async () => {
      const ini = await lun('wv');
      const d1 = fill(4, 11);
      const d2 = fill(2, 12);
      expectGood(await ini.send(wv10(60, 4), { dataOut: d1 }));
      expectGood(await ini.send(wv16(70, 2, 0), { dataOut: d2 }));
      expectGood(await ini.send(cdb(12, 0xae, [[1, 1, 0x02], [2, 4, 80], [6, 4, 2]]), { dataOut: d2 }), 'WRITE AND VERIFY (12)');
      expect(Buffer.compare((await ini.read(60, 4)).data, d1)).to.equal(0);
      expect(Buffer.compare((await ini.read(70, 2)).data, d2)).to.equal(0);
      expect(Buffer.compare((await ini.read(80, 2)).data, d2)).to.equal(0);
      expectSense(await ini.send(wv10(60, 1, 0x22), { dataOut: fill(1, 1) }), 5, 0x24);
      expectSense(await ini.send(wv16(8191, 2), { dataOut: fill(2, 1) }), 5, 0x21);
    });
  });

  describe('FORMAT UNIT (04h)', () => {
    it('with IMMED: GOOD at once, progress through REQUEST SENSE, NOT READY FORMAT IN PROGRESS for other commands, then zeros', async () => {
      const ini = await lun('fmt', '4M;nows;slowwrite=40', {}, 16384); // 8 MiB: 8 writes of 1 MiB
      expectGood(await ini.write(0, fill(4, 1)));
      expectGood(await ini.write(16000, fill(4, 2)));
      const header = new Uint8Array([0, 0x02, 0, 0]); // IMMED
      expectGood(await ini.send(formatUnit(0x10), { dataOut: header }));
      const rs = await ini.send(requestSense(), { dataInLength: 252 });
      expectGood(rs, 'REQUEST SENSE');
      const pending = decodeSense(rs.data)!;
      expect({ key: pending.key, asc: pending.asc, ascq: pending.ascq }).to.deep.equal({ key: 2, asc: 0x04, ascq: 0x04 });
      expect(pending.progress, 'progress indication').to.be.a('number');
      const rd = await ini.read(0, 1);
      const d = expectSense(rd, 2, 0x04, 0x04);
      expect(d.progress).to.be.a('number');
      expectGood(await ini.inquiry(), 'INQUIRY is answered while formatting');
      expectSense(await ini.send(formatUnit()), 2, 0x04, 0x04);
      const seen = new Set<number>();
      await until(async () => {
        const r = await ini.send(requestSense(), { dataInLength: 252 });
        const s = decodeSense(r.data)!;
        if (s.key === 2) seen.add(s.progress ?? -1);
        return s.key === 0;
      });
      expect(Math.max(...seen), 'progress moved').to.be.greaterThan(0);
      expect((await ini.read(0, 4)).data.every((x) => x === 0)).to.equal(true);
      expect((await ini.read(16000, 4)).data.every((x) => x === 0)).to.equal(true);
    });

    it('without IMMED completes when the medium is zeroed; commands arriving meanwhile get NOT READY', async () => {
      const ini = await lun('fmt2', '4M;nows;slowwrite=30', {}, 8192);
      expectGood(await ini.write(100, fill(4, 1)));
      const f = ini.send(formatUnit());
      await new Promise((r) => setTimeout(r, 20));
      expectSense(await ini.send(cdbRead10(0, 1), { dataInLength: BS }), 2, 0x04, 0x04);
      expectGood(await f);
      expect((await ini.read(100, 4)).data.every((x) => x === 0)).to.equal(true);
      expectGood(await ini.read(0, 1));
    });

    it('refuses protection information, a short parameter list, defect lists and initialization patterns', async () => {
      const ini = await lun('fmtx');
      expectSense(await ini.send(formatUnit(0x40)), 5, 0x24); // FMTPINFO
      expectSense(await ini.send(formatUnit(0x10), { dataOut: new Uint8Array(2) }), 5, 0x1a); // short header
      expectSense(await ini.send(formatUnit(0x30), { dataOut: new Uint8Array(4) }), 5, 0x1a); // long header needs 8
      expect(expectSense(await ini.send(formatUnit(0x10), { dataOut: new Uint8Array([0, 0, 0, 8]) }), 5, 0x26).fieldPointer).to.deep.include({ byte: 2 });
      expectSense(await ini.send(formatUnit(0x10), { dataOut: new Uint8Array([0, 0x88, 0, 0]) }), 5, 0x26); // FOV + IP
      expectSense(await ini.send(formatUnit(0x10), { dataOut: new Uint8Array([0, 0x20, 0, 0]) }), 5, 0x26); // DCRT without FOV
      expectGood(await ini.read(0, 1), 'no format was started');
    });
  });

  describe('EXTENDED COPY (83h) and RECEIVE COPY RESULTS (84h)', () => {
    it('reports the copy manager: 3PC in INQUIRY, OPERATING PARAMETERS with the limits the parser enforces', async () => {
      const ini = await lun('rcr');
      expect((await ini.inquiry(36)).data[5] & 0x08, '3PC').to.equal(0x08);
      const r = await ini.send(rcrCdb(0x03, 64), { dataInLength: 64 });
      expectGood(r);
      const d = r.data;
      const u16 = (o: number) => (d[o] << 8) | d[o + 1];
      const u32 = (o: number) => ((d[o] << 24) | (d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3]) >>> 0;
      expect(u32(0), 'AVAILABLE DATA').to.equal(42);
      expect(d[4] & 1, 'SNLID').to.equal(1);
      expect([u16(8), u16(10), u32(12), u32(16)]).to.deep.equal([2, 1, 1024, 16 * 1024 * 1024]);
      expect([d[43], d[44], d[45]]).to.deep.equal([2, 0x02, 0xe4]);
      // No inline or held data; copies are never refused for their number; segments move whole 512-byte blocks.
      expect([u32(20), u32(24), u32(28)], 'MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE').to.deep.equal([0, 0, 0]);
      expect([u16(34), d[36], d[37]], 'TOTAL / MAXIMUM CONCURRENT COPIES, DATA SEGMENT GRANULARITY').to.deep.equal([0xffff, 0xff, 9]);
      expectSense(await ini.send(rcrCdb(0x00, 64), { dataInLength: 64 }), 5, 0x24); // COPY STATUS: nothing is held
    });

    it('copies blocks within one LUN, overlapping ranges included', async () => {
      const ini = await lun('xc1');
      const naa = await naaOf(ini);
      const data = fill(40, 21);
      expectGood(await ini.write(0, data));
      const p = xcopyList([naa], [{ s: 0, d: 0, blocks: 40, src: 0, dst: 1000 }]);
      expectGood(await ini.send(xcopyCdb(p.length), { dataOut: p }));
      expect(Buffer.compare((await ini.read(1000, 40)).data, data)).to.equal(0);
      // Destination overlapping the source, further along.
      const o = xcopyList([naa], [{ s: 0, d: 0, blocks: 40, src: 0, dst: 10 }]);
      expectGood(await ini.send(xcopyCdb(o.length), { dataOut: o }));
      expect(Buffer.compare((await ini.read(10, 40)).data, data)).to.equal(0);
    });

    /** 300 blocks written on a, copied to b by a command sent to a (push), 100 of them back by one sent to b (pull). */
    async function copyBothWays(a: Initiator, b: Initiator, seed: number): Promise<void> {
      const [na, nb] = [await naaOf(a), await naaOf(b)];
      expect(Buffer.compare(na, nb)).to.not.equal(0);
      const data = fill(300, seed);
      for (let i = 0; i < 300; i += 60) expectGood(await a.write(i, data.subarray(i * BS, (i + 60) * BS)));
      const push = xcopyList([na, nb], [{ s: 0, d: 1, blocks: 300, src: 0, dst: 500 }]);
      expectGood(await a.send(xcopyCdb(push.length), { dataOut: push }));
      for (let i = 0; i < 300; i += 100) expect(Buffer.compare((await b.read(500 + i, 100)).data, data.subarray(i * BS, (i + 100) * BS))).to.equal(0);
      const pull = xcopyList([nb, na], [{ s: 1, d: 0, blocks: 100, src: 100, dst: 2000 }]);
      expectGood(await b.send(xcopyCdb(pull.length), { dataOut: pull }));
      expect(Buffer.compare((await b.read(2000, 100)).data, data.subarray(100 * BS, 200 * BS))).to.equal(0);
    }

    it('copies between two LUNs on different worker threads, whichever end receives the command', async () => {
      const a = await lun('xa', '4M', { maxXferBlocks: 64 });
      const b = await lun('xb', '4M;slowwrite=5', { maxXferBlocks: 128 });
      await copyBothWays(a, b, 31);
      expect(a.target).to.not.equal(b.target);
    });

    for (const [ia, ib] of [['process', 'thread'], ['thread', 'process'], ['process', 'process']] as const) {
      it(`copies between a LUN in a ${ia === 'process' ? 'device process' : 'worker thread'} and one in a ${ib === 'process' ? 'device process' : 'worker thread'} (the blocks cross in messages)`, async () => {
        const a = await lun('pa', '4M', { maxXferBlocks: 64 }, 8192, ia);
        const b = await lun('pb', '4M', { maxXferBlocks: 128 }, 8192, ib);
        await copyBothWays(a, b, 47);
      });
    }

    it('refuses what it cannot copy: unknown or unrelated targets, LUNs gone, out-of-range LBAs', async () => {
      // Two LUNs per test: every idle worker and simulator holds one of the 4 libuv pool threads in poll().
      const a = await lun('ya');
      const b = await lun('yb');
      const [na, nb] = [await naaOf(a), await naaOf(b)];
      const send = (ini: Initiator, p: Uint8Array) => ini.send(xcopyCdb(p.length), { dataOut: p });
      const stranger = na.slice();
      stranger[15] ^= 0x5a;
      expectSense(await send(a, xcopyList([na, stranger], [{ s: 0, d: 1, blocks: 1, src: 0, dst: 0 }])), 0x0a, 0x0d, 0x02);
      // Neither end is the LUN the command came to.
      expectSense(await send(a, xcopyList([nb], [{ s: 0, d: 0, blocks: 1, src: 0, dst: 8 }])), 0x0a, 0x0d, 0x02);
      // Blocks past the end of either LU: COPY ABORTED (found while processing the segment), segment 0, pointer at the LBA.
      const srcEnd = expectSense(await send(a, xcopyList([na, nb], [{ s: 0, d: 1, blocks: 8, src: 8190, dst: 0 }])), 0x0a, 0, 0);
      expect(srcEnd.commandSpecific ?? 0n, 'segment number').to.equal(0n);
      expect(srcEnd.fieldPointer).to.deep.include({ byte: 12, segmentDescriptor: true });
      const dstEnd = expectSense(await send(a, xcopyList([na, nb], [{ s: 0, d: 1, blocks: 8, src: 0, dst: 8190 }])), 0x0a, 0, 0);
      expect(dstEnd.fieldPointer).to.deep.include({ byte: 20, segmentDescriptor: true });
      // 0 blocks, and an empty parameter list: nothing to do.
      expectGood(await send(a, xcopyList([na, nb], [{ s: 0, d: 1, blocks: 0, src: 0, dst: 0 }])));
      expectGood(await a.send(xcopyCdb(0)));
      // The other LUN gone: not reachable.
      await sup.removeDevice('yb');
      expectSense(await send(a, xcopyList([na, nb], [{ s: 0, d: 1, blocks: 1, src: 0, dst: 0 }])), 0x0a, 0x0d, 0x02);
    });

    it('refuses a copy between LUNs of different block sizes (INCORRECT COPY TARGET DEVICE TYPE)', async () => {
      const a = await lun('za');
      const big = await lun('zbig', '4M', { blockSize: 4096 }, 1024);
      const p = xcopyList([await naaOf(a), await naaOf(big)], [{ s: 0, d: 1, blocks: 1, src: 0, dst: 0 }]);
      expectSense(await a.send(xcopyCdb(p.length), { dataOut: p }), 0x0a, 0x0d, 0x03);
    });

    it("takes libiscsi's parameter lists (ExtendedCopy.Simple, ValidTgtDescr): LIST ID USAGE 10b and 00b, LU ID TYPE ignored", async () => {
      const ini = await lun('lx1');
      const naa = await naaOf(ini);
      const data = fill(64, 5);
      expectGood(await ini.write(0, data));
      // Simple: list id 1, LIST ID USAGE 10b (discard), from the start of the LU to its end.
      const simple = libiscsiList(1, 2, [{ naa }], [{ s: 0, d: 0, blocks: 64, src: 0, dst: 8192 - 64 }]);
      expectGood(await ini.send(xcopyCdb(simple.length), { dataOut: simple }));
      expect(Buffer.compare((await ini.read(8192 - 64, 64)).data, data)).to.equal(0);
      // ValidTgtDescr: LIST ID USAGE 00b (hold), LU ID TYPE 10b (reserved in SPC-3, to be ignored in SPC-4).
      const held = libiscsiList(1, 0, [{ naa, luIdType: 2 }], [{ s: 0, d: 0, blocks: 64, src: 0, dst: 4096 }]);
      expectGood(await ini.send(xcopyCdb(held.length), { dataOut: held }));
      expect(Buffer.compare((await ini.read(4096, 64)).data, data)).to.equal(0);
      // ParamHdr: a PARAMETER LIST LENGTH of 0 does nothing.
      expectGood(await ini.send(xcopyCdb(0)));
    });

    it("answers libiscsi's malformed lists with its expected sense (ParamHdr, DescrLimits, DescrType, ValidSegDescr)", async () => {
      const ini = await lun('lx2');
      const naa = await naaOf(ini);
      const send = (p: Uint8Array, len = p.length) => ini.send(xcopyCdb(len), { dataOut: p.subarray(0, len) });
      const seg = { s: 0, d: 0, blocks: 2048, src: 0, dst: 8192 - 2048 };
      // ParamHdr: the list cut inside the CSCD descriptor, then inside the segment descriptor.
      const whole = libiscsiList(1, 0, [{ naa }], [seg]);
      expectSense(await send(whole, 16 + 32 - 1), 5, 0x1a);
      expectSense(await send(whole, 16 + 32 + 28 - 1), 5, 0x1a);
      // DescrLimits, after OPERATING PARAMETERS: one CSCD descriptor too many, one segment descriptor too many,
      // then descriptors past MAXIMUM DESCRIPTOR LIST LENGTH.
      const op = (await ini.send(rcrCdb(0x03, 1024), { dataInLength: 1024 })).data;
      const maxTgt = (op[8] << 8) | op[9];
      const maxSeg = (op[10] << 8) | op[11];
      const maxList = ((op[12] << 24) | (op[13] << 16) | (op[14] << 8) | op[15]) >>> 0;
      const tgts = (n: number) => Array.from({ length: n }, () => ({ naa }));
      expectSense(await send(libiscsiList(1, 0, tgts(maxTgt + 1), [seg])), 5, 0x26, 0x06);
      expectSense(await send(libiscsiList(2, 0, tgts(1), Array.from({ length: maxSeg + 1 }, () => seg))), 5, 0x26, 0x08);
      const fillSegs = Math.floor((Math.max(16 + (maxTgt + 1) * 32 + (maxSeg + 1) * 28, 16 + maxList + 28) - 16 - (maxTgt + 1) * 32) / 28);
      expectSense(await send(libiscsiList(3, 0, tgts(maxTgt + 1), Array.from({ length: fillSegs }, () => seg))), 5, 0x1a);
      // DescrType: a Fibre Channel N_Port_Name CSCD descriptor (E0h); a stream-to-stream segment (03h, 20 bytes).
      expectSense(await send(libiscsiList(1, 0, [{ type: 0xe0, naa }], [seg])), 5, 0x26, 0x07);
      expectSense(await send(libiscsiList(1, 0, [{ naa }], [{ type: 0x03, s: 0, d: 0 }])), 5, 0x26, 0x09);
      // ValidSegDescr: a destination CSCD index with no descriptor; blocks past the end. Both COPY ABORTED.
      const noDst = expectSense(await send(libiscsiList(1, 0, [{ naa }], [{ ...seg, d: 1 }])), 0x0a, 0x0d, 0x02);
      expect(noDst.fieldPointer).to.deep.include({ byte: 6, segmentDescriptor: true });
      const pastEnd = expectSense(await send(libiscsiList(1, 0, [{ naa }], [{ ...seg, dst: 8192 - 1 }])), 0x0a, 0, 0);
      expect(pastEnd.fieldPointer).to.deep.include({ byte: 20, segmentDescriptor: true });
    });

    it('holds COPY STATUS for LIST ID USAGE 00b until it is read (libiscsi ReceiveCopyResults.CopyStatus)', async () => {
      const ini = await lun('lx3', '4M;slowwrite=100');
      const naa = await naaOf(ini);
      const status = (id: number, alloc = 1024) => ini.send(rcrCdb(0x00, alloc).fill(id, 2, 3), { dataInLength: alloc });
      // No copy with that list identifier: INVALID FIELD IN CDB.
      expect(expectSense(await status(1), 5, 0x24).fieldPointer).to.deep.include({ byte: 2, cdb: true });
      const list = libiscsiList(1, 0, [{ naa }], [{ s: 0, d: 0, blocks: 2048, src: 0, dst: 8192 - 2048 }]);
      const copy = ini.send(xcopyCdb(list.length), { dataOut: list });
      // While it runs (every write of the copy waits 100 ms): in progress.
      await until(async () => {
        const r = await status(1);
        return r.status === ScsiStatus.GOOD && r.data[4] === 0x00;
      });
      expectGood(await copy);
      const r = await status(1);
      expectGood(r);
      const u32 = (o: number) => ((r.data[o] << 24) | (r.data[o + 1] << 16) | (r.data[o + 2] << 8) | r.data[o + 3]) >>> 0;
      expect(u32(0), 'AVAILABLE DATA').to.equal(8);
      expect(r.data[4], 'HDD 0, COPY MANAGER STATUS completed').to.equal(0x01);
      expect((r.data[5] << 8) | r.data[6], 'SEGMENTS PROCESSED').to.equal(1);
      expect(r.data[7], 'TRANSFER COUNT UNITS: bytes').to.equal(0);
      expect(u32(8), 'TRANSFER COUNT').to.equal(2048 * BS);
      // Read once, it is discarded.
      expectSense(await status(1), 5, 0x24);
      // 10b and 11b hold nothing; a failed copy holds nothing and drops what its list identifier held.
      const small = (id: number, usage: number, dst = 100) => libiscsiList(id, usage, [{ naa }], [{ s: 0, d: 0, blocks: 1, src: 0, dst }]);
      expectGood(await ini.send(xcopyCdb(small(2, 2).length), { dataOut: small(2, 2) }));
      expectSense(await status(2), 5, 0x24);
      expectGood(await ini.send(xcopyCdb(small(3, 0).length), { dataOut: small(3, 0) }));
      expectSense(await ini.send(xcopyCdb(small(3, 0, 8192).length), { dataOut: small(3, 0, 8192) }), 0x0a, 0, 0);
      expectSense(await status(3), 5, 0x24);
      // ALLOCATION LENGTH 0 discards too.
      expectGood(await ini.send(xcopyCdb(small(4, 0).length), { dataOut: small(4, 0) }));
      expectGood(await status(4, 0));
      expectSense(await status(4), 5, 0x24);
    });

    it("copies with sg_xcopy's parameter list, its default LIST ID USAGE 10b (no held data) and 11b", async () => {
      const ini = await lun('sgx');
      const naa = await naaOf(ini);
      // sg_xcopy picks LIST ID USAGE 10b when HELD DATA LIMIT is 0, 00b otherwise.
      const op = (await ini.send(rcrCdb(0x03, 256), { dataInLength: 256 })).data;
      expect(((op[24] << 24) | (op[25] << 16) | (op[26] << 8) | op[27]) >>> 0, 'HELD DATA LIMIT').to.equal(0);
      const data = fill(16, 9);
      expectGood(await ini.write(0, data));
      for (const [usage, listId, dst] of [[2, 1, 1024], [3, 0, 2048]] as const) {
        const p = sgXcopyList(listId, usage, naa, 16, 0, dst);
        expectGood(await ini.send(xcopyCdb(p.length), { dataOut: p }), `LIST ID USAGE ${usage}`);
        expect(Buffer.compare((await ini.read(dst, 16)).data, data)).to.equal(0);
      }
    });

    it('rejects malformed parameter lists with the sense SPC-4 names for each', async () => {
      const ini = await lun('xm');
      const naa = await naaOf(ini);
      const seg: Seg = { s: 0, d: 0, blocks: 1, src: 0, dst: 1 };
      const send = (p: Uint8Array, len = p.length) => ini.send(xcopyCdb(len), { dataOut: p });
      // Shorter than the header, than header + descriptors, or than the CDB says.
      expectSense(await send(new Uint8Array(8)), 5, 0x1a);
      const good = xcopyList([naa], [seg]);
      expectSense(await send(good.subarray(0, good.length - 4)), 5, 0x1a);
      expectSense(await send(good, good.length + 16), 5, 0x1a);
      // LIST ID USAGE 01b (reserved); 11b (no list identifier) with a LIST IDENTIFIER.
      expect(expectSense(await send(xcopyList([naa], [seg], { usage: 1 })), 5, 0x26).fieldPointer).to.deep.include({ byte: 1, bit: 4 });
      const withId = good.slice();
      withId[0] = 7;
      expect(expectSense(await send(withId), 5, 0x26).fieldPointer).to.deep.include({ byte: 0 });
      // Descriptor list lengths that are not whole descriptors.
      const odd = good.slice();
      odd[3] = 31;
      expect(expectSense(await send(odd), 5, 0x26).fieldPointer).to.deep.include({ byte: 2 });
      const oddSeg = good.slice();
      oddSeg[11] = 27;
      expect(expectSense(await send(oddSeg), 5, 0x26).fieldPointer).to.deep.include({ byte: 8 });
      // A segment DESCRIPTOR LENGTH other than 18h.
      expect(expectSense(await send(xcopyList([naa], [seg], { segLen: 0x14 })), 5, 0x26).fieldPointer).to.deep.include({ byte: 16 + 32 + 2 });
      // A CSCD index past the list: found while processing the segment, COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE.
      expect(expectSense(await send(xcopyList([naa], [{ ...seg, d: 1 }])), 0x0a, 0x0d, 0x02).fieldPointer).to.deep.include({ byte: 6, segmentDescriptor: true });
      // Unsupported descriptor types, too many descriptors.
      expectSense(await send(xcopyList([naa], [seg], { tdType: 0xe5 })), 5, 0x26, 0x07);
      expectSense(await send(xcopyList([naa], [seg], { segType: 0x01 })), 5, 0x26, 0x09);
      expectSense(await send(xcopyList([naa, naa, naa], [seg])), 5, 0x26, 0x06);
      expectSense(await send(xcopyList([naa], [seg, seg])), 5, 0x26, 0x08);
      // A designator that is not a 16-byte binary NAA 6 for the LU.
      const notNaa = good.slice();
      notNaa[16 + 5] = 0x02; // EUI-64
      expectSense(await send(notNaa), 5, 0x26);
      // LID4 (service action 01h) is not offered.
      const lid4 = xcopyCdb(good.length);
      lid4[1] = 0x01;
      expectSense(await ini.send(lid4, { dataOut: good }), 5, 0x24);
      expectGood(await send(good));
    });
  });

  describe('START STOP UNIT (1Bh)', () => {
    it('accepts START, refuses stopping and power conditions, as tcmu-runner does', async () => {
      const ini = await lun('ssu');
      expectGood(await ini.send(startStop(0x01)));
      expectGood(await ini.send(startStop(0x03, 0x01)), 'IMMED, LOEJ');
      expect(expectSense(await ini.send(startStop(0x00)), 5, 0x24).fieldPointer).to.deep.include({ byte: 4, bit: 0 });
      expect(expectSense(await ini.send(startStop(0x11)), 5, 0x24).fieldPointer).to.deep.include({ byte: 4, bit: 7 });
    });
  });

  describe('descriptor sense (D_SENSE)', () => {
    it('MODE SELECT may set D_SENSE; sense is then in descriptor format, and fixed again once cleared', async () => {
      const ini = await lun('ds');
      const ch = await ini.send(cdb(6, 0x1a, [[1, 1, 0x08], [2, 1, 0x4a], [4, 1, 0xff]]), { dataInLength: 0xff });
      expect(ch.data[4 + 2] & 0x04, 'D_SENSE is changeable').to.equal(0x04);
      const cur = await ini.send(cdb(6, 0x1a, [[1, 1, 0x08], [2, 1, 0x0a], [4, 1, 0xff]]), { dataInLength: 0xff });
      const page = cur.data.slice(4, 4 + 12);
      const select = (dsense: boolean) => {
        const p = page.slice();
        p[2] = dsense ? p[2] | 0x04 : p[2] & ~0x04;
        const list = new Uint8Array(4 + 12);
        list.set(p, 4);
        return ini.send(cdb(6, 0x15, [[1, 1, 0x10], [4, 1, list.length]]), { dataOut: list });
      };
      expect(sense(await ini.read(8192, 1)).descriptor).to.equal(false);
      expectGood(await select(true));
      const d = sense(await ini.read(8192, 1));
      expect(d.descriptor).to.equal(true);
      expect(d.responseCode).to.equal(0x72);
      // MISCOMPARE's offset travels in an information descriptor.
      const blk = fill(1, 1);
      expectGood(await ini.write(5, blk));
      const bad = new Uint8Array(2 * BS);
      bad[0] = blk[0] ^ 1;
      const m = expectSense(await ini.send(caw(5, 1), { dataOut: bad }), 0x0e, 0x1d);
      expect([m.descriptor, m.information]).to.deep.equal([true, 0n]);
      // Still not changeable: another bit of the control page.
      const p = page.slice();
      p[2] |= 0x04;
      p[3] ^= 0x10;
      const list = new Uint8Array(16);
      list.set(p, 4);
      expect(sense(await ini.send(cdb(6, 0x15, [[1, 1, 0x10], [4, 1, 16]]), { dataOut: list })).key).to.equal(5);
      expectGood(await select(false));
      expect(sense(await ini.read(8192, 1)).descriptor).to.equal(false);
    });
  });

  describe('resource shortage and command time-out', () => {
    it('answers TASK SET FULL for ENOMEM and BUSY for EAGAIN, and counts them', async () => {
      const ini = await lun('qf');
      expect((await ini.send(cdb(6, 0xc1))).status).to.equal(ScsiStatus.TASK_SET_FULL);
      expect((await ini.send(cdb(6, 0xc2))).status).to.equal(ScsiStatus.BUSY);
      await until(() => (sup.snapshot('qf')?.qfullReplies ?? 0) >= 2);
      expectGood(await ini.testUnitReady());
    });

    it('tells the handler tcmur_cmd_time_out and logs a command that exceeds it, then its late completion', async () => {
      const ini = await lun('tmo', '4M', { cmdTimeOut: 0.2 });
      const info = await ini.send(cdb(6, 0xc4), { dataInLength: 64 });
      expectGood(info);
      expect(JSON.parse(Buffer.from(info.data).toString('utf8'))).to.deep.equal({ cmdTimeOut: 0.2 });
      expectGood(await ini.send(cdb(6, 0xc3, [[2, 1, 5]])), 'a 500 ms command');
      await until(() => logs.some((l) => /completed after/.test(l)));
      expect(logs.some((l) => /info tmo: command \d+ SCSI CDB 0xc3 .* timed out/.test(l)), logs.join('\n')).to.equal(true);
      const late = logs.map((l) => /timed out command id \d+ completed after (\d+\.\d+) seconds with status 0/.exec(l)).find(Boolean);
      expect(Number(late![1]), 'logged with how long it took').to.be.at.least(0.45);
      // A quick command is not reported.
      const before = logs.length;
      expectGood(await ini.testUnitReady());
      await new Promise((r) => setTimeout(r, 300));
      expect(logs.slice(before).some((l) => /timed out/.test(l))).to.equal(false);
    });
  });
});
