/**
 * The zbc handler through the kernel simulator and the engine: every ZBC
 * command and zone rule as an initiator sees it (status, sense, data),
 * the image file's layout (tcmu-runner's file_zbc), and what survives a
 * close and reopen. Most tests use the geometry of the real-kernel
 * comparison (test/kernel/scsi-compare.mjs): 16 MiB, 1 MiB zones, 2
 * conventional, 4 open, 512-byte blocks.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeHandlerDevice } from '@tcmu-ts/core';
import { metaSize, parseZbcConfig, zbcHandler } from '@tcmu-ts/handlers';
import {
  KernelSimulator,
  ScsiStatus,
  cdbInquiry,
  cdbRead10,
  cdbRead16,
  cdbReadCapacity16,
  cdbSynchronizeCache10,
  cdbWrite16,
  parseSense,
  type SimResult,
} from '@tcmu-ts/ring';
import { serveDevice, type ServedDevice } from '@tcmu-ts/workers';

const MiB = 1024 * 1024;
const ZONE = 2048; // 1 MiB of 512-byte blocks
const NZONES = 16;
const SEQ0 = 2 * ZONE;
const zone = (k: number) => k * ZONE;
const CFG = 'model-HM/zsize-1/conv-2/open-4';

const TYPE = { conv: 1, swr: 2, swp: 3 };
const COND = { notWp: 0, empty: 1, impOpen: 2, expOpen: 3, closed: 4, full: 0xe };
const SA = { close: 1, finish: 2, open: 3, reset: 4 };
const ALL_ONES = 0xffffffffffffffffn;

function u64(c: Uint8Array, o: number, v: number | bigint): void {
  new DataView(c.buffer, c.byteOffset).setBigUint64(o, BigInt(v));
}

function reportZones(lba: number | bigint, alloc: number, option = 0, partial = false): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x95;
  u64(c, 2, lba);
  new DataView(c.buffer).setUint32(10, alloc);
  c[14] = (partial ? 0x80 : 0) | option;
  return c;
}

function zbcOut(sa: number, lba: number | bigint, all = false): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x94;
  c[1] = sa;
  u64(c, 2, lba);
  c[14] = all ? 1 : 0;
  return c;
}

interface ZoneDesc {
  type: number;
  cond: number;
  nonSeq: boolean;
  reset: boolean;
  len: number;
  start: number;
  wp: bigint;
}

function decodeReport(d: Uint8Array): { listLength: number; maxLba: bigint; zones: ZoneDesc[] } {
  const v = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const zones: ZoneDesc[] = [];
  const end = Math.min(d.length, 64 + v.getUint32(0));
  for (let o = 64; o + 64 <= end; o += 64) {
    zones.push({
      type: d[o] & 0x0f,
      cond: d[o + 1] >> 4,
      nonSeq: (d[o + 1] & 2) !== 0,
      reset: (d[o + 1] & 1) !== 0,
      len: Number(v.getBigUint64(o + 8)),
      start: Number(v.getBigUint64(o + 16)),
      wp: v.getBigUint64(o + 24),
    });
  }
  return { listLength: v.getUint32(0), maxLba: v.getBigUint64(8), zones };
}

/** Bytes that say which LBA they belong to and which write put them there. */
function pattern(lba: number, blocks: number, tag = 1, bs = 512): Uint8Array {
  const b = new Uint8Array(blocks * bs);
  for (let i = 0; i < blocks; i++) {
    new DataView(b.buffer, i * bs).setUint32(0, lba + i);
    b.fill((lba + i + tag) & 0xff || 1, i * bs + 4, (i + 1) * bs);
  }
  return b;
}

class Lun {
  private constructor(readonly sim: KernelSimulator, readonly served: ServedDevice, readonly bs: number) {}

  static async open(cfgstring: string, numLbas: number, bs = 512): Promise<Lun> {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8 });
    try {
      const served = await serveDevice({ ring: sim.endpoint, handler: zbcHandler, cfgstring, name: 'zbc-sim', blockSize: bs, numLbas, maxXferBlocks: 1024, log: { warn() {}, error() {} } });
      return new Lun(sim, served, bs);
    } catch (e) {
      await sim.close();
      throw e;
    }
  }

  async close(): Promise<void> {
    await this.served.stop();
    await this.sim.close();
  }

  submit(cdb: Uint8Array, opts: { dataOut?: Uint8Array; dataInLength?: number } = {}): Promise<SimResult> {
    return this.sim.submit(cdb, opts);
  }

  async good(cdb: Uint8Array, opts: { dataOut?: Uint8Array; dataInLength?: number } = {}): Promise<Uint8Array> {
    const r = await this.submit(cdb, opts);
    const s = parseSense(r.sense);
    expect(r.status, `status of ${Buffer.from(cdb).toString('hex')}${s ? ` (sense ${s.key}/${s.asc.toString(16)}h/${s.ascq.toString(16)}h)` : ''}`).to.equal(ScsiStatus.GOOD);
    return r.dataIn;
  }

  async fails(cdb: Uint8Array, key: number, asc: number, ascq: number, opts: { dataOut?: Uint8Array; dataInLength?: number } = {}): Promise<void> {
    const r = await this.submit(cdb, opts);
    expect(r.status, `status of ${Buffer.from(cdb).toString('hex')}`).to.equal(ScsiStatus.CHECK_CONDITION);
    const s = parseSense(r.sense)!;
    expect([s.key, s.asc, s.ascq], 'sense key/ASC/ASCQ').to.deep.equal([key, asc, ascq]);
  }

  write(lba: number, blocks: number, tag = 1): Promise<Uint8Array> {
    return this.good(cdbWrite16(lba, blocks), { dataOut: pattern(lba, blocks, tag, this.bs) });
  }

  read(lba: number, blocks: number): Promise<Uint8Array> {
    return this.good(cdbRead16(lba, blocks), { dataInLength: blocks * this.bs });
  }

  async zones(option = 0, lba = 0): Promise<ZoneDesc[]> {
    return decodeReport(await this.good(reportZones(lba, 64 + 64 * 256, option), { dataInLength: 64 + 64 * 256 })).zones;
  }

  async zoneAt(k: number): Promise<ZoneDesc> {
    return (await this.zones(0, zone(k)))[0];
  }
}

const ILLEGAL = 0x05;
const DATA_PROTECT = 0x07;

let dir: string;
let seq = 0;
const fresh = () => path.join(dir, `zbc-${++seq}.raw`);

describe('zbc handler', function () {
  this.timeout(20_000);
  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-zbc-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('cfgstring', () => {
    it('parses tcmu-runner\'s forms: options then @path, or //path alone', () => {
      expect(parseZbcConfig('model-HA/lba-4096/zsize-4/conv-3/open-8@/var/z.raw')).to.deep.equal({
        path: '/var/z.raw', model: 'HA', lbaSize: 4096, zoneMiB: 4, conv: 3, open: 8,
      });
      expect(parseZbcConfig('/var/z.raw')).to.deep.equal({ path: '/var/z.raw' });
      expect(parseZbcConfig('model-HM/@/var/z.raw')).to.deep.equal({ path: '/var/z.raw', model: 'HM' });
      expect(parseZbcConfig('@/var/z.raw')).to.deep.equal({ path: '/var/z.raw' });
      expect(parseZbcConfig('conv-0/urswrz-0@/z')).to.deep.equal({ path: '/z', conv: 0, urswrz: false });
      expect(zbcHandler.checkConfig('zsize-4@/z')).to.deep.equal({ ok: true });
    });

    const bad: [string, RegExp][] = [
      ['model-XX@/z', /model-XX: the model must be HM .* or HA/],
      ['zsize-3@/z', /zsize-3: the zone size must be a power of two/],
      ['zsize-0@/z', /zsize-0: .*power of two/],
      ['lba-1024@/z', /lba-1024: the logical block size must be 512 or 4096/],
      ['open-0@/z', /open-0: the number of open zones must be 1 or more/],
      ['conv-x@/z', /conv-x: .*whole number/],
      ['model-HM@', /no path given/],
      ['model-HM/z.raw', /no '@' before the path/],
      ['foo-1@/z', /unknown option "foo-1"/],
      ['zsize-4/zsize-8@/z', /zsize- given twice/],
    ];
    for (const [cfg, why] of bad) {
      it(`refuses "${cfg}" with a one-line reason`, () => {
        const r = zbcHandler.checkConfig(cfg);
        expect(r.ok).to.equal(false);
        const reason = (r as { reason: string }).reason;
        expect(reason).to.match(why);
        expect(reason).to.not.include('\n');
      });
    }

    it('refuses at open what needs the device: more conventional zones than zones, an lba- the device does not have, no size for a new file', async () => {
      const open = (cfg: string, numLbas: number, blockSize = 512) => zbcHandler.open(makeHandlerDevice({ cfgstring: cfg, blockSize, numLbas }), false);
      let p = fresh();
      await expectReject(open(`zsize-1/conv-16@${p}`, 16 * ZONE), /conv-16: the disk has 16 zone\(s\) of 1 MiB, and at least one must be sequential/);
      await expectReject(open(`lba-4096@${fresh()}`, 16 * ZONE), /lba-4096 but the device has 512-byte blocks/);
      await expectReject(open(`zsize-1@${fresh()}`, 0), /is new and the device has no size/);
      p = fresh();
      fs.writeFileSync(p, 'not a zoned disk');
      await expectReject(open(`zsize-1@${p}`, 16 * ZONE), /has no zbc metadata/);
      expect(fs.readFileSync(p, 'utf8'), 'the file is left alone').to.equal('not a zoned disk');
    });
  });

  describe('a host-managed disk (16 MiB, 1 MiB zones, 2 conventional, 4 open)', () => {
    let lun: Lun;
    let file: string;
    beforeEach(async () => {
      file = fresh();
      lun = await Lun.open(`${CFG}@${file}`, NZONES * ZONE);
    });
    afterEach(() => lun.close());

    it('says so in INQUIRY, VPD 00h/B1h/B6h and READ CAPACITY (16)', async () => {
      const std = await lun.good(cdbInquiry(96), { dataInLength: 96 });
      expect(std[0], 'peripheral type').to.equal(0x14);
      const v = new DataView(std.buffer, std.byteOffset);
      expect([58, 60, 62, 64].map((o) => v.getUint16(o)), 'SAM-5, SPC-4, SBC-4, ZBC').to.deep.equal([0x00a0, 0x0460, 0x0600, 0x0620]);
      const pages = await lun.good(cdbInquiry(255, 0x00), { dataInLength: 255 });
      expect(pages[0]).to.equal(0x14);
      expect(Array.from(pages.subarray(4, 4 + pages[3]))).to.deep.equal([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb6]);
      const b1 = await lun.good(cdbInquiry(64, 0xb1), { dataInLength: 64 });
      expect((b1[8] >> 4) & 3, 'ZONED: 0, the device type says host managed').to.equal(0);
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      const b6v = new DataView(b6.buffer, b6.byteOffset);
      expect([b6[0], b6[1], b6v.getUint16(2)]).to.deep.equal([0x14, 0xb6, 0x3c]);
      expect(b6[4] & 1, 'URSWRZ').to.equal(1);
      expect([b6v.getUint32(8), b6v.getUint32(12), b6v.getUint32(16)]).to.deep.equal([0, 0, 4]);
      const rc = await lun.good(cdbReadCapacity16(32), { dataInLength: 32 });
      const rcv = new DataView(rc.buffer, rc.byteOffset);
      expect(rcv.getBigUint64(0)).to.equal(BigInt(NZONES * ZONE - 1));
      expect(rcv.getUint32(8)).to.equal(512);
      expect((rc[12] >> 4) & 3, 'RC BASIS').to.equal(1);
    });

    it('REPORT ZONES, all: 2 conventional zones then 14 empty sequential write required ones', async () => {
      const d = await lun.good(reportZones(0, 64 + 64 * NZONES), { dataInLength: 64 + 64 * NZONES });
      const r = decodeReport(d);
      expect(r.listLength).to.equal(64 * NZONES);
      expect(r.maxLba).to.equal(BigInt(NZONES * ZONE - 1));
      expect(d[4] & 0x0f, 'SAME').to.equal(0);
      expect(r.zones.map((z) => z.start)).to.deep.equal(Array.from({ length: NZONES }, (_, k) => zone(k)));
      expect(r.zones.every((z) => z.len === ZONE)).to.equal(true);
      expect(r.zones.slice(0, 2).map((z) => [z.type, z.cond, z.wp])).to.deep.equal([[TYPE.conv, COND.notWp, ALL_ONES], [TYPE.conv, COND.notWp, ALL_ONES]]);
      for (const z of r.zones.slice(2)) expect([z.type, z.cond, z.wp, z.nonSeq, z.reset]).to.deep.equal([TYPE.swr, COND.empty, BigInt(z.start), false, false]);
    });

    it('REPORT ZONES picks zones by every reporting option', async () => {
      await lun.write(zone(2), 8); // implicitly open
      await lun.good(zbcOut(SA.open, zone(3))); // explicitly open
      await lun.write(zone(4), 8);
      await lun.good(zbcOut(SA.close, zone(4))); // closed
      await lun.good(zbcOut(SA.finish, zone(5))); // full
      const starts = async (option: number) => (await lun.zones(option)).map((z) => z.start);
      expect(await starts(0x00)).to.have.length(NZONES);
      expect(await starts(0x01)).to.deep.equal([6, 7, 8, 9, 10, 11, 12, 13, 14, 15].map(zone));
      expect(await starts(0x02)).to.deep.equal([zone(2)]);
      expect(await starts(0x03)).to.deep.equal([zone(3)]);
      expect(await starts(0x04)).to.deep.equal([zone(4)]);
      expect(await starts(0x05)).to.deep.equal([zone(5)]);
      for (const none of [0x06, 0x07, 0x10, 0x11]) expect(await starts(none), `option ${none.toString(16)}h`).to.deep.equal([]);
      expect(await starts(0x3f)).to.deep.equal([zone(0), zone(1)]);
      const closed = (await lun.zones(0x04))[0];
      expect(closed.wp).to.equal(BigInt(zone(4) + 8));
      const full = (await lun.zones(0x05))[0];
      expect(full.wp).to.equal(BigInt(zone(6)));
      // PARTIAL is bit 7 of the same byte: it does not change what an option picks.
      expect(decodeReport(await lun.good(reportZones(0, 64 * 20, 0x04, true), { dataInLength: 64 * 20 })).zones.map((z) => z.start)).to.deep.equal([zone(4)]);
    });

    it('REPORT ZONES returns only the data there is: header plus the zones listed, not the whole allocation', async () => {
      const r = await lun.submit(reportZones(0, 64 + 64 * NZONES, 0x3f), { dataInLength: 64 + 64 * NZONES });
      expect(r.status).to.equal(ScsiStatus.GOOD);
      expect(r.dataIn.length).to.equal(64 + 2 * 64);
      expect(r.residual).to.equal(14 * 64);
      const none = await lun.submit(reportZones(0, 512, 0x05), { dataInLength: 512 });
      expect(none.dataIn.length, 'no zone matches: the header alone').to.equal(64);
      expect(decodeReport(none.dataIn).listLength).to.equal(0);
    });

    it('REPORT ZONES with PARTIAL lists what fits; without it the list length counts every zone to the end', async () => {
      const partial = await lun.good(reportZones(0, 64 + 128, 0, true), { dataInLength: 64 + 128 });
      expect(partial.length).to.equal(192);
      expect(decodeReport(partial).listLength).to.equal(128);
      const whole = await lun.good(reportZones(0, 64 + 128), { dataInLength: 64 + 128 });
      expect(whole.length).to.equal(192);
      expect(decodeReport(whole).listLength).to.equal(64 * NZONES);
      expect(decodeReport(whole).zones.map((z) => z.start), 'the descriptors that fit').to.deep.equal([0, ZONE]);
      // The list length counts from the starting zone on, in both modes.
      expect(decodeReport(await lun.good(reportZones(zone(10), 64 + 128), { dataInLength: 192 })).listLength).to.equal(6 * 64);
      expect(decodeReport(await lun.good(reportZones(zone(10), 64 + 64 * 20, 0, true), { dataInLength: 64 + 64 * 20 })).listLength).to.equal(6 * 64);
    });

    it('REPORT ZONES cut short by the allocation length: header only, a descriptor cut in the middle', async () => {
      const head = await lun.good(reportZones(0, 64), { dataInLength: 64 });
      expect(head.length).to.equal(64);
      expect(decodeReport(head).listLength).to.equal(64 * NZONES);
      expect(decodeReport(head).maxLba).to.equal(BigInt(NZONES * ZONE - 1));
      const cut = await lun.good(reportZones(zone(2), 100), { dataInLength: 100 });
      expect(cut.length).to.equal(100);
      expect(cut[64], 'first 36 bytes of zone 2\'s descriptor').to.equal(TYPE.swr);
      expect(Number(new DataView(cut.buffer, cut.byteOffset).getBigUint64(64 + 16))).to.equal(zone(2));
      const tiny = await lun.good(reportZones(0, 16), { dataInLength: 16 });
      expect(tiny.length).to.equal(16);
      expect(new DataView(tiny.buffer, tiny.byteOffset).getUint32(0)).to.equal(64 * NZONES);
    });

    it('REPORT ZONES from an LBA inside a zone starts with that zone', async () => {
      const zs = decodeReport(await lun.good(reportZones(SEQ0 + 100, 64 + 64 * 4, 0, true), { dataInLength: 64 + 64 * 4 })).zones;
      expect(zs.map((z) => z.start)).to.deep.equal([zone(2), zone(3), zone(4), zone(5)]);
    });

    it('REPORT ZONES refuses an LBA past the end, a reserved option, another service action', async () => {
      await lun.fails(reportZones(NZONES * ZONE, 512), ILLEGAL, 0x21, 0x00, { dataInLength: 512 });
      for (const option of [0x08, 0x0f, 0x12, 0x3e]) await lun.fails(reportZones(0, 512, option), ILLEGAL, 0x24, 0x00, { dataInLength: 512 });
      const badSa = reportZones(0, 512);
      badSa[1] = 0x1f;
      await lun.fails(badSa, ILLEGAL, 0x24, 0x00, { dataInLength: 512 });
      const badOut = zbcOut(0x1f, zone(2));
      await lun.fails(badOut, ILLEGAL, 0x24, 0x00);
    });

    it('OPEN, CLOSE, FINISH, RESET WRITE POINTER on one zone', async () => {
      await lun.good(zbcOut(SA.open, zone(3)));
      expect((await lun.zoneAt(3)).cond).to.equal(COND.expOpen);
      await lun.good(zbcOut(SA.close, zone(3)));
      expect((await lun.zoneAt(3)).cond, 'closed with nothing written: empty').to.equal(COND.empty);
      await lun.write(zone(3), 16);
      expect((await lun.zoneAt(3)).cond).to.equal(COND.impOpen);
      await lun.good(zbcOut(SA.open, zone(3)));
      expect((await lun.zoneAt(3)).cond, 'implicit to explicit').to.equal(COND.expOpen);
      await lun.good(zbcOut(SA.close, zone(3)));
      expect(await lun.zoneAt(3)).to.include({ cond: COND.closed, wp: BigInt(zone(3) + 16) });
      await lun.good(zbcOut(SA.close, zone(3))); // closing a closed zone changes nothing
      await lun.good(zbcOut(SA.finish, zone(3)));
      expect(await lun.zoneAt(3)).to.include({ cond: COND.full, wp: BigInt(zone(4)) });
      await lun.good(zbcOut(SA.open, zone(3))); // a full zone stays full
      expect((await lun.zoneAt(3)).cond).to.equal(COND.full);
      await lun.good(zbcOut(SA.finish, zone(6))); // an empty zone can be finished
      expect((await lun.zoneAt(6)).cond).to.equal(COND.full);
      await lun.good(zbcOut(SA.reset, zone(3)));
      expect(await lun.zoneAt(3)).to.include({ cond: COND.empty, wp: BigInt(zone(3)) });
      expect(Buffer.from(await lun.read(zone(3), 16)).every((b) => b === 0), 'reset data reads zeros').to.equal(true);
      await lun.write(zone(3), 16, 7); // and the zone takes writes from its start again
      expect(Buffer.from(await lun.read(zone(3), 16)).equals(Buffer.from(pattern(zone(3), 16, 7)))).to.equal(true);
    });

    it('ZBC OUT on one zone refuses an LBA that is not a sequential zone\'s start, or past the end', async () => {
      for (const sa of [SA.open, SA.close, SA.finish, SA.reset]) {
        await lun.fails(zbcOut(sa, SEQ0 + 1), ILLEGAL, 0x24, 0x00);
        await lun.fails(zbcOut(sa, 0), ILLEGAL, 0x24, 0x00); // conventional
        await lun.fails(zbcOut(sa, ZONE), ILLEGAL, 0x24, 0x00);
        await lun.fails(zbcOut(sa, NZONES * ZONE), ILLEGAL, 0x21, 0x00);
        await lun.fails(zbcOut(sa, 2n ** 63n), ILLEGAL, 0x21, 0x00);
        await lun.good(zbcOut(sa, NZONES * ZONE + 5, true)); // with ALL the zone ID is ignored
      }
    });

    it('ZBC OUT with ALL: OPEN opens the closed zones, CLOSE closes the open ones, FINISH fills open and closed ones, RESET empties all', async () => {
      await lun.write(zone(2), 8);
      await lun.write(zone(3), 8);
      await lun.good(zbcOut(SA.close, zone(3)));
      await lun.good(zbcOut(SA.open, zone(4)));
      await lun.good(zbcOut(SA.open, 0, true));
      const conds = async () => (await lun.zones()).slice(2, 6).map((z) => z.cond);
      expect(await conds(), 'only the closed zone 3 was opened').to.deep.equal([COND.impOpen, COND.expOpen, COND.expOpen, COND.empty]);
      await lun.good(zbcOut(SA.close, 0, true));
      expect(await conds()).to.deep.equal([COND.closed, COND.closed, COND.empty, COND.empty]);
      await lun.write(zone(5), 8);
      await lun.good(zbcOut(SA.finish, 0, true));
      expect(await conds(), 'empty zone 4 stays empty').to.deep.equal([COND.full, COND.full, COND.empty, COND.full]);
      await lun.good(zbcOut(SA.reset, 0, true));
      expect((await lun.zones()).slice(2).every((z) => z.cond === COND.empty && z.wp === BigInt(z.start))).to.equal(true);
      expect((await lun.zones()).slice(0, 2).every((z) => z.cond === COND.notWp), 'conventional zones untouched').to.equal(true);
    });

    it('explicit opens stop at the limit with DATA PROTECT, INSUFFICIENT ZONE RESOURCES; so does a write needing a fifth open zone', async () => {
      for (const k of [4, 5, 6, 7]) await lun.good(zbcOut(SA.open, zone(k)));
      await lun.fails(zbcOut(SA.open, zone(8)), DATA_PROTECT, 0x55, 0x0e);
      await lun.fails(cdbWrite16(zone(9), 8), DATA_PROTECT, 0x55, 0x0e, { dataOut: pattern(zone(9), 8) });
      expect((await lun.zoneAt(9)).cond, 'the refused write changed nothing').to.equal(COND.empty);
      await lun.write(zone(4), 8); // an open zone can still be written
      await lun.good(zbcOut(SA.close, zone(7)));
      await lun.good(zbcOut(SA.open, zone(8)));
    });

    it('OPEN ALL refuses, and opens nothing, when the closed zones would pass the limit', async () => {
      for (const k of [2, 3, 4]) {
        await lun.write(zone(k), 1);
        await lun.good(zbcOut(SA.close, zone(k)));
      }
      await lun.good(zbcOut(SA.open, zone(5)));
      await lun.good(zbcOut(SA.open, zone(6)));
      await lun.fails(zbcOut(SA.open, 0, true), DATA_PROTECT, 0x55, 0x0e);
      expect((await lun.zones(0x04)).length, 'all three still closed').to.equal(3);
    });

    it('implicit opens past the limit close the implicitly open zone written longest ago', async () => {
      for (const k of [2, 3, 4, 5]) await lun.write(zone(k), 8);
      await lun.write(zone(2) + 8, 8); // zone 2 is now the most recently used
      await lun.write(zone(6), 8);
      const open = (await lun.zones(0x02)).map((z) => z.start);
      expect(open, 'zone 3, the least recently written, was closed').to.deep.equal([zone(2), zone(4), zone(5), zone(6)]);
      expect(await lun.zoneAt(3)).to.include({ cond: COND.closed, wp: BigInt(zone(3) + 8) });
      // An explicit open at the limit closes an implicitly open zone too: the LRU one, zone 4.
      await lun.good(zbcOut(SA.open, zone(7)));
      expect((await lun.zones(0x02)).map((z) => z.start)).to.deep.equal([zone(2), zone(5), zone(6)]);
      // A closed zone is written again: it reopens implicitly, at its write pointer.
      await lun.write(zone(3) + 8, 8);
      expect((await lun.zoneAt(3)).cond).to.equal(COND.impOpen);
    });

    it('a zone written to its end is full and gives its open resource back', async () => {
      for (let at = 0; at < ZONE; at += 512) await lun.write(zone(2) + at, 512);
      expect(await lun.zoneAt(2)).to.include({ cond: COND.full, wp: BigInt(zone(3)) });
      for (const k of [3, 4, 5, 6]) await lun.good(zbcOut(SA.open, zone(k)));
    });

    it('write pointer rules: unaligned, across a zone end, conventional into sequential, into a full zone', async () => {
      await lun.write(SEQ0, 8);
      await lun.fails(cdbWrite16(SEQ0 + 100, 8), ILLEGAL, 0x21, 0x04, { dataOut: pattern(SEQ0 + 100, 8) });
      await lun.fails(cdbWrite16(SEQ0, 8), ILLEGAL, 0x21, 0x04, { dataOut: pattern(SEQ0, 8) }); // below the write pointer
      for (let at = 8; at < ZONE - 120; at += 120) await lun.write(SEQ0 + at, 120);
      const wp = Number((await lun.zoneAt(2)).wp);
      expect(wp).to.equal(SEQ0 + 1928);
      await lun.fails(cdbWrite16(wp, 128), ILLEGAL, 0x21, 0x05, { dataOut: pattern(wp, 128) });
      // A write both off the write pointer and across the zone end is a boundary violation first (ZBC, libzbc 093).
      await lun.fails(cdbWrite16(wp + 8, 128), ILLEGAL, 0x21, 0x05, { dataOut: pattern(wp + 8, 128) });
      await lun.fails(cdbWrite16(SEQ0 - 8, 16), ILLEGAL, 0x21, 0x05, { dataOut: pattern(SEQ0 - 8, 16) });
      await lun.good(zbcOut(SA.finish, zone(3)));
      await lun.fails(cdbWrite16(zone(3), 8), ILLEGAL, 0x24, 0x00, { dataOut: pattern(zone(3), 8) });
      await lun.fails(cdbWrite16(zone(4) - 8, 16), ILLEGAL, 0x21, 0x05, { dataOut: pattern(zone(4) - 8, 16) }); // full -> empty
      expect((await lun.zoneAt(2)).wp, 'no refused write moved the write pointer').to.equal(BigInt(wp));
      expect((await lun.zoneAt(4)).cond).to.equal(COND.empty);
    });

    it('reads: below the write pointer the data, past it zeros (URSWRZ), across sequential zones allowed, across zone types refused', async () => {
      await lun.write(SEQ0, 8, 3);
      const d = await lun.read(SEQ0, 16);
      expect(Buffer.from(d.subarray(0, 8 * 512)).equals(Buffer.from(pattern(SEQ0, 8, 3)))).to.equal(true);
      expect(d.subarray(8 * 512).every((b) => b === 0)).to.equal(true);
      const across = await lun.read(zone(3) - 4, 8);
      expect(across.every((b) => b === 0)).to.equal(true);
      await lun.fails(cdbRead16(SEQ0 - 4, 8), ILLEGAL, 0x21, 0x06, { dataInLength: 8 * 512 });
      await lun.fails(cdbRead10(SEQ0 - 1, 2), ILLEGAL, 0x21, 0x06, { dataInLength: 2 * 512 });
      await lun.fails(cdbRead16(NZONES * ZONE, 1), ILLEGAL, 0x21, 0x00, { dataInLength: 512 });
    });

    it('conventional zones take writes anywhere, in any order, across their own boundary', async () => {
      const writes: [number, number][] = [[100, 8], [3, 1], [ZONE - 4, 8], [50, 60], [0, 2], [2 * ZONE - 1, 1]];
      const model = new Uint8Array(2 * ZONE * 512);
      for (const [lba, n] of writes) {
        const p = pattern(lba, n, lba);
        await lun.good(cdbWrite16(lba, n), { dataOut: p });
        model.set(p, lba * 512);
      }
      const back = Buffer.concat(await Promise.all([0, 1, 2, 3].map((k) => lun.read(k * 1024, 1024))));
      expect(back.equals(Buffer.from(model))).to.equal(true);
      expect((await lun.zones()).slice(0, 2).map((z) => z.wp)).to.deep.equal([ALL_ONES, ALL_ONES]);
    });
  });

  it('restricted reads (urswrz-0): past the write pointer ATTEMPT TO READ INVALID DATA, across zones READ BOUNDARY VIOLATION', async () => {
    const lun = await Lun.open(`${CFG}/urswrz-0@${fresh()}`, NZONES * ZONE);
    try {
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      expect(b6[4] & 1).to.equal(0);
      await lun.write(SEQ0, 8);
      await lun.read(SEQ0, 8);
      await lun.fails(cdbRead16(SEQ0 + 4, 8), ILLEGAL, 0x21, 0x06, { dataInLength: 8 * 512 });
      await lun.fails(cdbRead16(zone(5), 1), ILLEGAL, 0x21, 0x06, { dataInLength: 512 });
      await lun.good(zbcOut(SA.finish, zone(2)));
      await lun.good(zbcOut(SA.finish, zone(3)));
      await lun.read(zone(3) - 4, 4);
      await lun.fails(cdbRead16(zone(3) - 4, 8), ILLEGAL, 0x21, 0x07, { dataInLength: 8 * 512 });
      await lun.fails(cdbRead16(zone(4) - 4, 8), ILLEGAL, 0x21, 0x06, { dataInLength: 8 * 512 }); // full -> empty: no data
    } finally {
      await lun.close();
    }
  });

  it('persists zones and data in tcmu-runner\'s layout across close and reopen; open zones come back closed', async () => {
    const file = fresh();
    let lun = await Lun.open(`${CFG}@${file}`, NZONES * ZONE);
    await lun.write(100, 8, 5); // conventional
    await lun.write(zone(2), 24, 6); // implicitly open, wp +24
    await lun.good(zbcOut(SA.open, zone(3))); // explicitly open, nothing written
    await lun.write(zone(4), 8, 7);
    await lun.good(zbcOut(SA.open, zone(4))); // explicitly open with data
    await lun.good(zbcOut(SA.finish, zone(5)));
    await lun.good(cdbSynchronizeCache10());
    await lun.close();

    // The file: header, one 64-byte record per zone, data from the next 4 KiB.
    const raw = fs.readFileSync(file);
    expect(metaSize(NZONES)).to.equal(4096);
    expect(raw.length).to.equal(4096 + NZONES * MiB);
    expect(raw.readUInt32LE(0)).to.equal(0x555a4243);
    expect([raw.readUInt32LE(4), Number(raw.readBigUInt64LE(8)), raw.readUInt32LE(16), raw.readUInt32LE(20), raw.readUInt32LE(24), raw.readUInt32LE(28), raw.readUInt32LE(32)])
      .to.deep.equal([0x14, NZONES * ZONE, 512, ZONE, NZONES, 2, 4]);
    const rec = (k: number) => 48 + 64 * k;
    expect(raw.readBigUInt64LE(rec(0) + 16), 'conventional write pointer').to.equal(ALL_ONES);
    expect([raw[rec(0) + 24], raw[rec(0) + 25]]).to.deep.equal([TYPE.conv, COND.notWp]);
    expect([Number(raw.readBigUInt64LE(rec(2))), Number(raw.readBigUInt64LE(rec(2) + 8)), Number(raw.readBigUInt64LE(rec(2) + 16)), raw[rec(2) + 24], raw[rec(2) + 25]])
      .to.deep.equal([zone(2), ZONE, zone(2) + 24, TYPE.swr, COND.impOpen]);
    expect(raw[rec(5) + 25]).to.equal(COND.full);
    expect(raw.subarray(4096 + zone(2) * 512, 4096 + (zone(2) + 24) * 512).equals(Buffer.from(pattern(zone(2), 24, 6)))).to.equal(true);

    lun = await Lun.open(`${CFG}@${file}`, NZONES * ZONE);
    try {
      const zs = await lun.zones();
      expect(zs.slice(2, 7).map((z) => [z.cond, Number(z.wp)])).to.deep.equal([
        [COND.closed, zone(2) + 24],
        [COND.empty, zone(3)],
        [COND.closed, zone(4) + 8],
        [COND.full, zone(6)],
        [COND.empty, zone(6)],
      ]);
      expect(Buffer.from(await lun.read(100, 8)).equals(Buffer.from(pattern(100, 8, 5)))).to.equal(true);
      expect(Buffer.from(await lun.read(zone(2), 24)).equals(Buffer.from(pattern(zone(2), 24, 6)))).to.equal(true);
      await lun.write(zone(2) + 24, 8); // the write pointer carried over
      for (const k of [6, 7, 8]) await lun.good(zbcOut(SA.open, zone(k))); // and no open zone leaked
    } finally {
      await lun.close();
    }
    // No options: the file says what it is.
    lun = await Lun.open(file, 0);
    try {
      expect(lun.served.numLbas).to.equal(NZONES * ZONE);
      expect((await lun.zoneAt(2)).wp).to.equal(BigInt(zone(2) + 32));
    } finally {
      await lun.close();
    }
  });

  it('refuses an image whose size or geometry differs from the device or the options, and leaves it as it was', async () => {
    const file = fresh();
    const lun = await Lun.open(`${CFG}@${file}`, NZONES * ZONE);
    await lun.write(zone(2), 8);
    await lun.close();
    const before = fs.readFileSync(file);
    await expectReject(Lun.open(`${CFG}@${file}`, 32 * ZONE), /holds a zoned disk of 16777216 bytes, the device is 33554432 bytes/);
    await expectReject(Lun.open(`model-HM/zsize-4@${file}`, NZONES * ZONE), /zone size \(MiB\) 1, the cfgstring asks for 4/);
    await expectReject(Lun.open(`model-HA@${file}`, NZONES * ZONE), /model HM, the cfgstring asks for HA/);
    await expectReject(Lun.open(`conv-3@${file}`, NZONES * ZONE), /conventional zone count 2, the cfgstring asks for 3/);
    await expectReject(Lun.open(file, NZONES * ZONE / 8, 4096), /512-byte blocks, the device has 4096-byte blocks/);
    expect(fs.readFileSync(file).equals(before)).to.equal(true);
  });

  it('a host-aware disk: type 00h with ZONED 01b, sequential write preferred zones that take any write', async () => {
    const lun = await Lun.open(`model-HA/zsize-1/conv-2/open-4@${fresh()}`, NZONES * ZONE);
    try {
      expect((await lun.good(cdbInquiry(96), { dataInLength: 96 }))[0]).to.equal(0x00);
      expect(((await lun.good(cdbInquiry(64, 0xb1), { dataInLength: 64 }))[8] >> 4) & 3).to.equal(1);
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      const v = new DataView(b6.buffer, b6.byteOffset);
      expect([v.getUint32(8), v.getUint32(12), v.getUint32(16)]).to.deep.equal([4, 4, 0]);
      expect(((await lun.good(cdbReadCapacity16(32), { dataInLength: 32 }))[12] >> 4) & 3).to.equal(1);
      expect((await lun.zones()).slice(2).every((z) => z.type === TYPE.swp)).to.equal(true);

      await lun.write(zone(2), 8);
      await lun.write(zone(2) + 100, 8); // off the write pointer
      expect(await lun.zoneAt(2)).to.include({ cond: COND.impOpen, wp: BigInt(zone(2) + 108), nonSeq: true });
      expect((await lun.zones(0x11)).map((z) => z.start)).to.deep.equal([zone(2)]);
      await lun.write(zone(2) + 50, 8); // below it: the write pointer stays
      expect((await lun.zoneAt(2)).wp).to.equal(BigInt(zone(2) + 108));
      await lun.write(zone(3) - 4, 8); // across a zone end
      await lun.write(SEQ0 - 4, 8); // conventional into sequential
      const d = await lun.read(SEQ0 - 4, 112); // and reads across zone types
      expect(Buffer.from(d.subarray(0, 8 * 512)).equals(Buffer.from(pattern(SEQ0 - 4, 8)))).to.equal(true);
      expect(Buffer.from(d.subarray(8 * 512, 12 * 512)).equals(Buffer.from(pattern(SEQ0 + 4, 4))), 'the first write\'s tail').to.equal(true);
      expect(d.subarray(12 * 512, 54 * 512).every((b) => b === 0), 'never written: zeros').to.equal(true);
      await lun.good(zbcOut(SA.finish, zone(5)));
      await lun.write(zone(5) + 10, 8); // a full zone takes writes too
      expect((await lun.zoneAt(5)).cond).to.equal(COND.full);
      // Open counts are a hint: explicit opens go past it.
      for (const k of [6, 7, 8, 9, 10, 11]) await lun.good(zbcOut(SA.open, zone(k)));
      await lun.write(zone(12), 8);
      // A reset makes the zone read zeros even where a later write does not reach.
      await lun.good(zbcOut(SA.reset, zone(2)));
      await lun.write(zone(2) + 200, 8);
      expect((await lun.read(zone(2), 200)).every((b) => b === 0)).to.equal(true);
      expect(await lun.zoneAt(2)).to.include({ wp: BigInt(zone(2) + 208), nonSeq: true });
      await lun.good(zbcOut(SA.reset, 0, true));
      expect((await lun.zones(0x11)).length, 'RESET clears NON_SEQ').to.equal(0);
    } finally {
      await lun.close();
    }
  });

  it('4096-byte logical blocks (lba-4096): zones of 256 blocks, the same rules', async () => {
    const BS4 = 4096;
    const Z4 = MiB / BS4;
    const file = fresh();
    const lun = await Lun.open(`model-HM/lba-4096/zsize-1/conv-1/open-2@${file}`, 8 * Z4, BS4);
    try {
      const rc = await lun.good(cdbReadCapacity16(32), { dataInLength: 32 });
      const v = new DataView(rc.buffer, rc.byteOffset);
      expect([Number(v.getBigUint64(0)), v.getUint32(8)]).to.deep.equal([8 * Z4 - 1, BS4]);
      const zs = await lun.zones();
      expect(zs.map((z) => [z.start, z.len])).to.deep.equal(Array.from({ length: 8 }, (_, k) => [k * Z4, Z4]));
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      expect(new DataView(b6.buffer, b6.byteOffset).getUint32(16)).to.equal(2);
      await lun.write(Z4, 4);
      expect(Buffer.from(await lun.read(Z4, 4)).equals(Buffer.from(pattern(Z4, 4, 1, BS4)))).to.equal(true);
      await lun.fails(cdbWrite16(Z4 + 8, 1), ILLEGAL, 0x21, 0x04, { dataOut: pattern(Z4 + 8, 1, 1, BS4) });
      await lun.fails(cdbWrite16(Z4 - 2, 4), ILLEGAL, 0x21, 0x05, { dataOut: pattern(Z4 - 2, 4, 1, BS4) });
    } finally {
      await lun.close();
    }
    expect(fs.readFileSync(file).readUInt32LE(16)).to.equal(4096);
  });

  it('a capacity that is not a whole number of zones ends with a shorter zone', async () => {
    const lun = await Lun.open(`zsize-1/conv-1@${fresh()}`, 3 * ZONE + 100);
    try {
      const zs = await lun.zones();
      expect(zs.map((z) => [z.start, z.len, z.type])).to.deep.equal([[0, ZONE, TYPE.conv], [ZONE, ZONE, TYPE.swr], [2 * ZONE, ZONE, TYPE.swr], [3 * ZONE, 100, TYPE.swr]]);
      await lun.write(3 * ZONE, 100);
      expect((await lun.zoneAt(3)).cond).to.equal(COND.full);
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      expect(new DataView(b6.buffer, b6.byteOffset).getUint32(16), 'open limit: at most half the 3 sequential zones').to.equal(1);
    } finally {
      await lun.close();
    }
  });

  it('defaults as tcmu-runner: host managed, 256 MiB zones, 1% (at least one) conventional, open limit capped at half the sequential zones', async () => {
    const file = fresh();
    const lun = await Lun.open(file, (2048 * MiB) / 512);
    try {
      const zs = await lun.zones();
      expect(zs.map((z) => z.type)).to.deep.equal([TYPE.conv, ...new Array(7).fill(TYPE.swr)]);
      expect(zs[0].len).to.equal((256 * MiB) / 512);
      const b6 = await lun.good(cdbInquiry(64, 0xb6), { dataInLength: 64 });
      expect(new DataView(b6.buffer, b6.byteOffset).getUint32(16)).to.equal(3);
    } finally {
      await lun.close();
    }
  });
});

async function expectReject(p: Promise<unknown>, why: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect((e as Error).message).to.match(why);
    return;
  }
  expect.fail(`expected a rejection matching ${why}`);
}
