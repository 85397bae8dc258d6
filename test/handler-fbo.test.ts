/**
 * The fbo (file-backed optical) handler through the kernel simulator and the
 * engine, as an initiator sees it: an ISO9660 image built here read back by
 * walking its own directory, every MMC command's answer checked field by
 * field, the tray (eject refused while prevented, NOT READY with the tray
 * open, the unit attention and GESN media events after a load), FORMAT UNIT
 * with its progress and then zeros on the file, ro/, bad CDB fields.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { decodeSense, makeHandlerDevice, type Handler } from '@tcmu-ts/core';
import { FEATURE_CODES, FboDevice, builtinHandlers, fboHandler, parseFboConfig } from '@tcmu-ts/handlers';
import { KernelSimulator, type SimResult } from '@tcmu-ts/ring';
import { serveDevice, type ServedDevice } from '@tcmu-ts/workers';
import { buildIso, parseDirectory } from './fixtures/iso9660.js';

const BS = 2048;

// ---------------------------------------------------------------- CDBs
const be = (v: number, n: number): number[] => Array.from({ length: n }, (_, i) => Math.floor(v / 256 ** (n - 1 - i)) & 0xff);
const tur = () => [0, 0, 0, 0, 0, 0];
const inquiry = (evpd: boolean, page: number, alloc: number) => [0x12, evpd ? 1 : 0, page, ...be(alloc, 2), 0];
const rc10 = (pmi = 0) => [0x25, 0, 0, 0, 0, 0, 0, 0, pmi, 0];
const read6 = (lba: number, n: number) => [0x08, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, n, 0];
const read10 = (lba: number, n: number) => [0x28, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const read12 = (lba: number, n: number) => [0xa8, 0, ...be(lba, 4), ...be(n, 4), 0, 0];
const read16 = (lba: number, n: number) => [0x88, 0, ...be(lba, 8), ...be(n, 4), 0, 0];
const write6 = (lba: number, n: number) => [0x0a, (lba >> 16) & 0x1f, (lba >> 8) & 0xff, lba & 0xff, n, 0];
const write10 = (lba: number, n: number) => [0x2a, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const write12 = (lba: number, n: number) => [0xaa, 0, ...be(lba, 4), ...be(n, 4), 0, 0];
const writeVerify10 = (lba: number, n: number) => [0x2e, 0x02, ...be(lba, 4), 0, ...be(n, 2), 0];
const verify10 = (lba: number, n: number) => [0x2f, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const syncCache10 = () => [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const requestSense = (alloc: number, desc = false) => [0x03, desc ? 1 : 0, 0, 0, alloc, 0];
const modeSense10 = (pageByte: number, alloc: number, dbd = true, subpage = 0) => [0x5a, dbd ? 0x08 : 0, pageByte, subpage, 0, 0, 0, ...be(alloc, 2), 0];
const modeSense6 = (pageByte: number, alloc: number) => [0x1a, 0x08, pageByte, 0, alloc, 0];
const modeSelect10 = (len: number, pf = true) => [0x55, pf ? 0x10 : 0, 0, 0, 0, 0, 0, ...be(len, 2), 0];
const getConfiguration = (rt: number, start: number, alloc: number) => [0x46, rt, ...be(start, 2), 0, 0, 0, ...be(alloc, 2), 0];
const readToc = (msf: boolean, format: number, track: number, alloc: number, control = 0) => [0x43, msf ? 2 : 0, format, 0, 0, 0, track, ...be(alloc, 2), control];
const readDiscInfo = (alloc: number, type = 0) => [0x51, type, 0, 0, 0, 0, 0, ...be(alloc, 2), 0];
const gesn = (classes: number, alloc: number, polled = true) => [0x4a, polled ? 1 : 0, 0, 0, classes, 0, 0, ...be(alloc, 2), 0];
const readDvdStructure = (format: number, alloc: number, layer = 0, mediaType = 0) => [0xad, mediaType, 0, 0, 0, 0, layer, format, ...be(alloc, 2), 0, 0];
const mechanismStatus = (alloc: number) => [0xbd, 0, 0, 0, 0, 0, 0, 0, ...be(alloc, 2), 0, 0];
const readFormatCapacities = (alloc: number) => [0x23, 0, 0, 0, 0, 0, 0, ...be(alloc, 2), 0];
const preventAllow = (prevent: number) => [0x1e, 0, 0, 0, prevent, 0];
const startStop = (loej: boolean, start: boolean, byte4extra = 0) => [0x1b, 0, 0, 0, byte4extra | (loej ? 2 : 0) | (start ? 1 : 0), 0];
const EJECT = startStop(true, false);
const LOAD = startStop(true, true);
const formatUnit = (cdb1 = 0x11) => [0x04, cdb1, 0, 0, 0, 0];
/** MMC FORMAT UNIT parameter list: header (flags), one format descriptor. */
function formatParams(o: { flags?: number; descLen?: number; blocks: number; type?: number; blockLen?: number }): Uint8Array {
  return Uint8Array.from([0, o.flags ?? 0, ...be(o.descLen ?? 8, 2), ...be(o.blocks, 4), o.type ?? 0, ...be(o.blockLen ?? BS, 3)]);
}

// ---------------------------------------------------------------- the drive

const KEY = { NO_SENSE: 0, NOT_READY: 2, ILLEGAL_REQUEST: 5, UNIT_ATTENTION: 6, DATA_PROTECT: 7 } as const;

function expectGood(r: SimResult, what = 'status'): Uint8Array {
  if (r.status !== 0) {
    const s = decodeSense(r.sense);
    throw new Error(`${what}: status ${r.status}, sense ${s ? `${s.key}/${s.asc.toString(16)}/${s.ascq.toString(16)}` : 'none'}`);
  }
  return r.dataIn;
}

function expectSense(r: SimResult, key: number, asc: number, ascq: number): ReturnType<typeof decodeSense> {
  expect(r.status, 'CHECK CONDITION').to.equal(2);
  const s = decodeSense(r.sense)!;
  expect([s.key, s.asc, s.ascq], 'sense key/ASC/ASCQ').to.deep.equal([key, asc, ascq]);
  return s;
}

const u16 = (d: Uint8Array, o: number) => (d[o] << 8) | d[o + 1];
const u32 = (d: Uint8Array, o: number) => ((d[o] << 24) >>> 0) + ((d[o + 1] << 16) | (d[o + 2] << 8) | d[o + 3]);
const hex = (d: Uint8Array) => Buffer.from(d).toString('hex');

function textured(len: number, seed: number): Uint8Array {
  const d = new Uint8Array(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    d[i] = x & 0xff;
  }
  return d;
}

interface Drive {
  sim: KernelSimulator;
  served: ServedDevice;
  dev: FboDevice;
  file: string;
  run(cdb: number[], opts?: { in?: number; out?: Uint8Array }): Promise<SimResult>;
  close(): Promise<void>;
}

let dir: string;
let fileNo = 0;

async function openDrive(o: { image?: Uint8Array; ro?: boolean; numLbas?: number; file?: string } = {}): Promise<Drive> {
  const file = o.file ?? path.join(dir, `disc-${fileNo++}.iso`);
  if (o.image) fs.writeFileSync(file, o.image);
  let dev: FboDevice | undefined;
  const handler: Handler = {
    ...fboHandler,
    async open(d, reopen) {
      const h = await fboHandler.open(d, reopen);
      dev = h as FboDevice;
      return h;
    },
  };
  const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 16 });
  const served = await serveDevice({
    ring: sim.endpoint, handler, cfgstring: `${o.ro ? 'ro/' : ''}${file}`, name: 'fbo-sim',
    blockSize: BS, numLbas: o.numLbas ?? 0, maxXferBlocks: 64, log: { warn() {}, error() {}, info() {} },
  });
  return {
    sim, served, dev: dev!, file,
    run: (cdb, opts = {}) => sim.submit(Uint8Array.from(cdb), { ...(opts.in ? { dataInLength: opts.in } : {}), ...(opts.out ? { dataOut: opts.out } : {}) }),
    async close() {
      await served.stop();
      await sim.close();
    },
  };
}

const README = Buffer.from('tcmu-ts optical test\n');
const RANDOM = textured(3 * BS + 123, 7);
const iso = () => buildIso('TCMUTS', [{ name: 'README.TXT', data: README }, { name: 'RANDOM.BIN', data: RANDOM }]);

describe('fbo handler (file-backed optical drive)', function () {
  this.timeout(10000);

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fbo-test-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  describe('configuration', () => {
    it('parses fbo/<path> and fbo/ro/<path> as tcmu-runner does, and refuses what it cannot use with a reason', () => {
      expect(parseFboConfig('/srv/disc.iso')).to.deep.equal({ path: '/srv/disc.iso', readOnly: false });
      expect(parseFboConfig('ro//srv/disc.iso')).to.deep.equal({ path: '/srv/disc.iso', readOnly: true });
      expect(parseFboConfig('RO//srv/disc.iso')).to.deep.equal({ path: '/srv/disc.iso', readOnly: true });
      expect(parseFboConfig('disc.iso')).to.match(/no absolute path in "disc.iso"/);
      expect(parseFboConfig('rw//srv/disc.iso')).to.match(/unknown option "rw"/);
      expect(parseFboConfig('')).to.match(/no path given/);
      expect(parseFboConfig('ro/')).to.match(/no path given/);
      expect(fboHandler.checkConfig('ro//srv/disc.iso')).to.deep.equal({ ok: true });
      const bad = fboHandler.checkConfig('disc.iso');
      expect(bad.ok).to.equal(false);
      if (!bad.ok) expect(bad.reason).to.not.include('\n');
      expect(builtinHandlers.map((h) => h.subtype)).to.include('fbo');
    });

    it('open: needs 2048-byte blocks; a missing file is created at the device size (0600), else the file sets the size', async () => {
      const file = path.join(dir, 'opened.iso');
      const dev512 = makeHandlerDevice({ cfgstring: file, blockSize: 512, numLbas: 8 });
      await fboHandler.open(dev512, false).then(() => expect.fail('opened with 512-byte blocks'), (e: Error) => expect(e.message).to.match(/hw_block_size=2048.*512/));
      await fboHandler.open(makeHandlerDevice({ cfgstring: file, blockSize: BS, numLbas: 0 }), false)
        .then(() => expect.fail('created with no size'), (e: Error) => expect(e.message).to.match(/does not exist.*dev_size/));
      const h = await fboHandler.open(makeHandlerDevice({ cfgstring: file, blockSize: BS, numLbas: 40 }), false);
      const st = fs.statSync(file);
      expect(st.size).to.equal(40 * BS);
      expect(st.mode & 0o777).to.equal(0o600);
      await h.close();
      const sized = makeHandlerDevice({ cfgstring: `ro/${file}`, blockSize: BS, numLbas: 0 });
      const h2 = await fboHandler.open(sized, false);
      expect(sized.numLbas).to.equal(40);
      expect(h2.limits?.writeProtect).to.equal(true);
      expect(h2.identity).to.deep.include({ peripheralType: 5, removable: true });
      await h2.close();
    });
  });

  describe('a writable disc holding an ISO9660 image', () => {
    let d: Drive;
    const img = iso();
    const numLbas = img.image.length / BS;
    before(async () => {
      d = await openDrive({ image: img.image });
    });
    after(async () => d.close());

    it('INQUIRY: peripheral type 05h, removable, MMC-6 version descriptor, no block VPD pages', async () => {
      const q = expectGood(await d.run(inquiry(false, 0, 96), { in: 96 }));
      expect(q[0]).to.equal(0x05);
      expect(q[1]).to.equal(0x80);
      expect([u16(q, 58), u16(q, 60), u16(q, 62)]).to.deep.equal([0x00a0, 0x0460, 0x04e0]);
      const pages = expectGood(await d.run(inquiry(true, 0, 255), { in: 255 }));
      expect(hex(pages)).to.equal('0500000300' + '8083');
      expectSense(await d.run(inquiry(true, 0xb0, 255), { in: 255 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('TEST UNIT READY is GOOD; READ CAPACITY says the last LBA and 2048; RELADR and PMI are refused', async () => {
      expectGood(await d.run(tur()));
      const rc = expectGood(await d.run(rc10(), { in: 8 }));
      expect([u32(rc, 0), u32(rc, 4)]).to.deep.equal([numLbas - 1, BS]);
      expectSense(await d.run(rc10(1), { in: 8 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run([0x25, 1, 0, 0, 0, 0, 0, 0, 0, 0], { in: 8 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('the files come back by walking the image: primary volume descriptor, root directory, file extents (READ 6/10/12)', async () => {
      const pvd = expectGood(await d.run(read10(16, 1), { in: BS }));
      expect(Buffer.from(pvd.subarray(1, 6)).toString()).to.equal('CD001');
      expect(Buffer.from(pvd.subarray(40, 46)).toString()).to.equal('TCMUTS');
      const rootExtent = pvd[156 + 2] | (pvd[156 + 3] << 8);
      const entries = parseDirectory(expectGood(await d.run(read10(rootExtent, 1), { in: BS })));
      expect(entries.map((e) => e.name)).to.deep.equal(['.', '..', 'README.TXT', 'RANDOM.BIN']);
      const readme = entries[2];
      const r6 = expectGood(await d.run(read6(readme.extent, 1), { in: BS }));
      expect(Buffer.from(r6.subarray(0, readme.size)).equals(README)).to.equal(true);
      const rnd = entries[3];
      const blocks = Math.ceil(rnd.size / BS);
      const r12 = expectGood(await d.run(read12(rnd.extent, blocks), { in: blocks * BS }));
      expect(Buffer.from(r12.subarray(0, rnd.size)).equals(Buffer.from(RANDOM))).to.equal(true);
      const all = expectGood(await d.run(read10(0, numLbas), { in: numLbas * BS }));
      expect(Buffer.from(all).equals(img.image)).to.equal(true);
    });

    it('reads past the capacity are LBA OUT OF RANGE; the SBC-only commands are not MMC ones (INVALID OPERATION CODE)', async () => {
      expectSense(await d.run(read10(numLbas, 1), { in: BS }), KEY.ILLEGAL_REQUEST, 0x21, 0);
      expectSense(await d.run(read10(numLbas - 1, 2), { in: 2 * BS }), KEY.ILLEGAL_REQUEST, 0x21, 0);
      expectSense(await d.run(read12(0xffffff, 1), { in: BS }), KEY.ILLEGAL_REQUEST, 0x21, 0);
      expectSense(await d.run(write10(numLbas, 1), { out: new Uint8Array(BS) }), KEY.ILLEGAL_REQUEST, 0x21, 0);
      for (const cdb of [read16(0, 1), [0x9e, 0x10, ...new Array(14).fill(0)], [0x93, ...new Array(15).fill(0)], [0xa3, 0x0c, ...new Array(10).fill(0)], [0xbe, ...new Array(11).fill(0)]]) {
        expectSense(await d.run(cdb, { in: BS }), KEY.ILLEGAL_REQUEST, 0x20, 0);
      }
      // INQUIRY's 3PC bit promises the copy manager: it answers.
      expect(expectGood(await d.run(inquiry(false, 0, 36), { in: 36 }))[5] & 0x08).to.equal(0x08);
      expectGood(await d.run([0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2c, 0, 0], { in: 44 }));
    });

    it('GET CONFIGURATION RT 0: every feature from the start, the current profile DVD-RAM (12h), lengths that count all', async () => {
      const g = expectGood(await d.run(getConfiguration(0, 0, 2048), { in: 2048 }));
      expect(u32(g, 0)).to.equal(g.length - 4);
      expect(u16(g, 6)).to.equal(0x12);
      const feats = new Map<number, Uint8Array>();
      const order: number[] = [];
      for (let o = 8; o < g.length; o += 4 + g[o + 3]) {
        order.push(u16(g, o));
        feats.set(u16(g, o), g.subarray(o, o + 4 + g[o + 3]));
      }
      expect(order).to.deep.equal([...FEATURE_CODES]);
      expect(order).to.deep.equal([0x0, 0x1, 0x2, 0x3, 0x10, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x23, 0x24, 0x26, 0x2d, 0x105]);
      expect(hex(feats.get(0x0)!)).to.equal('00000310' + '00120100' + '00100000' + '000a0000' + '00080000');
      expect(hex(feats.get(0x1)!)).to.equal('00010708' + '00000001' + '01000000');
      expect(hex(feats.get(0x2)!)).to.equal('00020704' + '02000000');
      expect(hex(feats.get(0x3)!)).to.equal('00030304' + '29000000');
      expect(hex(feats.get(0x10)!)).to.equal('00100108' + '00000800' + '00100100');
      expect(hex(feats.get(0x1d)!)).to.equal('001d0000');
      expect(hex(feats.get(0x1e)!)).to.equal('001e0804' + '00000000');
      expect(hex(feats.get(0x1f)!)).to.equal('001f0100');
      expect(hex(feats.get(0x20)!)).to.equal('0020050c' + hex(Uint8Array.from(be(numLbas - 1, 4))) + '00000800' + '00100100');
      expect(hex(feats.get(0x23)!)).to.equal('00230100');
      expect(hex(feats.get(0x24)!)).to.equal('00240504' + '00000000');
      expect(hex(feats.get(0x105)!)).to.equal('01050504' + '00000000');
    });

    it('GET CONFIGURATION RT 1 (current only), RT 2 (one feature), a starting feature, a short allocation, RT 3 refused', async () => {
      const codes = (g: Uint8Array) => {
        const out: number[] = [];
        for (let o = 8; o + 4 <= g.length; o += 4 + g[o + 3]) out.push(u16(g, o));
        return out;
      };
      const cur = expectGood(await d.run(getConfiguration(1, 0, 2048), { in: 2048 }));
      expect(codes(cur)).to.deep.equal([0x0, 0x1, 0x2, 0x3, 0x10, 0x1f, 0x20, 0x23, 0x24, 0x105]);
      const core = expectGood(await d.run(getConfiguration(2, 1, 256), { in: 256 }));
      expect(core.length).to.equal(20);
      expect(codes(core)).to.deep.equal([1]);
      expect(u32(core, 0)).to.equal(16);
      const notCurrent = expectGood(await d.run(getConfiguration(2, 0x1e, 256), { in: 256 }));
      expect(codes(notCurrent)).to.deep.equal([0x1e]);
      const unknown = expectGood(await d.run(getConfiguration(2, 0x99, 256), { in: 256 }));
      expect(hex(unknown)).to.equal('00000004' + '00000012');
      expect(codes(expectGood(await d.run(getConfiguration(0, 0x20, 2048), { in: 2048 })))).to.deep.equal([0x20, 0x21, 0x23, 0x24, 0x26, 0x2d, 0x105]);
      const header = expectGood(await d.run(getConfiguration(0, 0, 8), { in: 8 }));
      expect(header.length).to.equal(8);
      const full = expectGood(await d.run(getConfiguration(0, 0, 2048), { in: 2048 }));
      expect(u32(header, 0), 'DATA LENGTH counts every feature, not the 8 bytes sent').to.equal(full.length - 4);
      expect(u16(header, 6)).to.equal(0x12);
      expectSense(await d.run(getConfiguration(3, 0, 256), { in: 256 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('READ TOC format 0: track 1 at 0 and the lead-out (AAh) at the capacity, in LBA and MSF form; AAh alone; a bad track refused', async () => {
      const lba = expectGood(await d.run(readToc(false, 0, 0, 804), { in: 804 }));
      expect(hex(lba)).to.equal('00120101' + '00140100' + '00000000' + '0017aa00' + hex(Uint8Array.from(be(numLbas, 4))));
      const msf = expectGood(await d.run(readToc(true, 0, 1, 804), { in: 804 }));
      const f = numLbas + 150;
      expect(hex(msf)).to.equal('00120101' + '00140100' + '00000200' + '0017aa00' + hex(Uint8Array.of(0, Math.floor(f / 4500), Math.floor(f / 75) % 60, f % 75)));
      const leadOut = expectGood(await d.run(readToc(false, 0, 0xaa, 804), { in: 804 }));
      expect(hex(leadOut)).to.equal('000a0101' + '0017aa00' + hex(Uint8Array.from(be(numLbas, 4))));
      const short = expectGood(await d.run(readToc(false, 0, 0, 4), { in: 4 }));
      expect(hex(short)).to.equal('00120101');
      expectSense(await d.run(readToc(false, 0, 2, 804), { in: 804 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(readToc(false, 2, 0, 804), { in: 804 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('READ TOC format 1 (session info), also when asked the pre-MMC way (control byte 40h, as Linux sr does)', async () => {
      expect(hex(expectGood(await d.run(readToc(false, 1, 0, 12), { in: 12 })))).to.equal('000a0101' + '00140100' + '00000000');
      expect(hex(expectGood(await d.run(readToc(true, 1, 0, 12), { in: 12 })))).to.equal('000a0101' + '00140100' + '00000200');
      expect(hex(expectGood(await d.run(readToc(false, 0, 0, 12, 0x40), { in: 12 })))).to.equal('000a0101' + '00140100' + '00000000');
    });

    it('READ DISC INFORMATION: erasable, one complete session and track, disc status "others"; other data types refused', async () => {
      const di = expectGood(await d.run(readDiscInfo(34), { in: 34 }));
      expect(hex(di)).to.equal('00201f01' + '01010120' + '00'.repeat(26));
      expect(expectGood(await d.run(readDiscInfo(8), { in: 8 })).length).to.equal(8);
      expectSense(await d.run(readDiscInfo(34, 1), { in: 34 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('READ DVD STRUCTURE: physical format (DVD-RAM, rewritable, data area from 31000h), copyright, manufacturer, DVD-RAM status, the list', async () => {
      const pf = expectGood(await d.run(readDvdStructure(0, 2052), { in: 2052 }));
      expect(pf.length).to.equal(2052);
      expect(u16(pf, 0)).to.equal(2050);
      expect(hex(pf.subarray(4, 21))).to.equal('120f0400' + '00031000' + '00' + hex(Uint8Array.from(be(0x31000 + numLbas - 1, 3))) + '00000000' + '00');
      expect(hex(expectGood(await d.run(readDvdStructure(1, 8), { in: 8 })))).to.equal('00060000' + '00000000');
      const mi = expectGood(await d.run(readDvdStructure(4, 2052), { in: 2052 }));
      expect(u16(mi, 0)).to.equal(2050);
      expect(Buffer.from(mi.subarray(4, 18)).toString()).to.equal('VIRTUAL FB OPT');
      expect(hex(expectGood(await d.run(readDvdStructure(9, 8), { in: 8 })))).to.equal('00060000' + '00100000');
      const list = expectGood(await d.run(readDvdStructure(0xff, 64), { in: 64 }));
      expect(hex(list)).to.equal('00120000' + '00400804' + '01400008' + '04400804' + '09400008');
      expectSense(await d.run(readDvdStructure(0, 2052, 1), { in: 2052 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(readDvdStructure(0, 2052, 0, 1), { in: 2052 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(readDvdStructure(0x30, 64), { in: 64 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('MECHANISM STATUS (idle, tray closed) and READ FORMAT CAPACITIES (formatted, and the one full format offered)', async () => {
      expect(hex(expectGood(await d.run(mechanismStatus(8), { in: 8 })))).to.equal('00'.repeat(8));
      const fc = expectGood(await d.run(readFormatCapacities(252), { in: 252 }));
      const n = hex(Uint8Array.from(be(numLbas, 4)));
      expect(hex(fc)).to.equal('00000010' + n + '02000800' + n + '00000800');
      const short = expectGood(await d.run(readFormatCapacities(12), { in: 12 }));
      expect(short.length).to.equal(12);
      expect(short[3]).to.equal(16);
    });

    it('GET EVENT STATUS NOTIFICATION: the operational change pending since open once, media "no change", NEA, polled only', async () => {
      expectSense(await d.run(gesn(0x10, 8, false), { in: 8 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      // A 4-byte allocation gets the header and leaves the event pending.
      expect(hex(expectGood(await d.run(gesn(0x02, 4), { in: 4 })))).to.equal('00040152');
      expect(hex(expectGood(await d.run(gesn(0x02, 8), { in: 8 })))).to.equal('00040152' + '02000001');
      expect(hex(expectGood(await d.run(gesn(0x02, 8), { in: 8 })))).to.equal('00040152' + '00000000');
      expect(hex(expectGood(await d.run(gesn(0x10, 8), { in: 8 })))).to.equal('00040452' + '00020000');
      expect(hex(expectGood(await d.run(gesn(0x00, 8), { in: 8 })))).to.equal('00008052');
      expect(hex(expectGood(await d.run(gesn(0x40, 8), { in: 8 })))).to.equal('00040652' + '00000000');
    });

    it('MODE SENSE: page 2Ah says DVD reader and DVD-RAM writer with an ejectable, lockable tray; all pages in order; no block descriptors', async () => {
      const m = expectGood(await d.run(modeSense10(0x2a, 255), { in: 255 }));
      expect(u16(m, 0)).to.equal(m.length - 2);
      expect(hex(m.subarray(2, 8))).to.equal('000000000000');
      const p = m.subarray(8);
      expect([p[0], p[1], p.length]).to.deep.equal([0x2a, 34, 36]);
      expect(p[2] & 0x08, 'DVD-ROM read').to.equal(0x08);
      expect(p[3], 'DVD-RAM write').to.equal(0x20);
      expect(p[6], 'tray, eject, lock').to.equal(0x29);
      expect([u16(p, 8), u16(p, 28), u16(p, 30), u16(p, 34)]).to.deep.equal([1385, 1385, 1, 1385]);
      // Block descriptors asked for: still none (MMC), and the same page.
      const noDbd = expectGood(await d.run(modeSense10(0x2a, 255, false), { in: 255 }));
      expect(hex(noDbd)).to.equal(hex(m));
      const all = expectGood(await d.run(modeSense10(0x3f, 1024), { in: 1024 }));
      const pages: string[] = [];
      for (let o = 8; o < all.length; o += 2 + all[o + 1]) pages.push(hex(all.subarray(o, o + 2 + all[o + 1])));
      expect(pages.map((x) => x.slice(0, 2))).to.deep.equal(['01', '08', '1d', '2a']);
      expect(pages.slice(0, 3)).to.deep.equal(['010a0005000000000500' + '0000', '080a0400000000000000' + '0000', '1d0800000000ffffffff']);
      const six = expectGood(await d.run(modeSense6(0x01, 255), { in: 255 }));
      expect(hex(six)).to.equal('0f000000' + '010a0005000000000500' + '0000');
      const changeable = expectGood(await d.run(modeSense10(0x40 | 0x01, 255), { in: 255 }));
      expect(hex(changeable.subarray(8))).to.equal('010a' + '00'.repeat(10));
      const cut = expectGood(await d.run(modeSense10(0x3f, 12), { in: 12 }));
      expect(cut.length).to.equal(12);
      expect(u16(cut, 0)).to.equal(all.length - 2);
      expectSense(await d.run(modeSense10(0xc0 | 0x2a, 255), { in: 255 }), KEY.ILLEGAL_REQUEST, 0x39, 0);
      expectSense(await d.run(modeSense10(0x1c, 255), { in: 255 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(modeSense10(0x2a, 255, true, 1), { in: 255 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
    });

    it('MODE SELECT takes the current values back and refuses any change, a missing PF, an unknown page', async () => {
      const page01 = Uint8Array.from([0x01, 0x0a, 0x00, 0x05, 0, 0, 0, 0, 0x05, 0, 0, 0]);
      const list = (page: Uint8Array) => Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, ...page]);
      expectGood(await d.run(modeSelect10(20), { out: list(page01) }));
      const changed = page01.slice();
      changed[3] = 9;
      const bad = expectSense(await d.run(modeSelect10(20), { out: list(changed) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
      expect(bad!.fieldPointer).to.deep.equal({ byte: 11, cdb: false });
      expectSense(await d.run(modeSelect10(20, false), { out: list(page01) }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(modeSelect10(12), { out: list(Uint8Array.of(0x1c, 2, 0, 0)) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
    });

    it('writes land in the file (WRITE 6/10/12, WRITE AND VERIFY), VERIFY and SYNCHRONIZE CACHE are GOOD', async () => {
      const base = numLbas - 6;
      const a = textured(BS, 11), b = textured(2 * BS, 12), c = textured(BS, 13), v = textured(2 * BS, 14);
      expectGood(await d.run(write6(base, 1), { out: a }));
      expectGood(await d.run(write10(base + 1, 2), { out: b }));
      expectGood(await d.run(write12(base + 3, 1), { out: c }));
      expectGood(await d.run(writeVerify10(base + 4, 2), { out: v }));
      expectGood(await d.run(syncCache10()));
      expectGood(await d.run(verify10(0, numLbas)));
      const onDisk = fs.readFileSync(d.file).subarray(base * BS);
      expect(Buffer.from(onDisk).equals(Buffer.concat([a, b, c, v]))).to.equal(true);
      const back = expectGood(await d.run(read10(base, 6), { in: 6 * BS }));
      expect(Buffer.from(back).equals(Buffer.concat([a, b, c, v]))).to.equal(true);
    });
  });

  describe('the tray: prevent, eject, load', () => {
    let d: Drive;
    const img = iso();
    before(async () => {
      d = await openDrive({ image: img.image });
      expectGood(await d.run(gesn(0x02, 8), { in: 8 })); // the operational change from open, out of the way
    });
    after(async () => d.close());

    it('eject is refused while removal is prevented (ILLEGAL REQUEST, MEDIUM REMOVAL PREVENTED); page 2Ah shows the lock', async () => {
      expectGood(await d.run(preventAllow(1)));
      expect(expectGood(await d.run(modeSense10(0x2a, 255), { in: 255 }))[8 + 6]).to.equal(0x2b);
      expectSense(await d.run(EJECT), KEY.ILLEGAL_REQUEST, 0x53, 0x02);
      expectGood(await d.run(tur()));
      expectSense(await d.run(preventAllow(4)), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectGood(await d.run(preventAllow(0)));
      expect(expectGood(await d.run(modeSense10(0x2a, 255), { in: 255 }))[8 + 6]).to.equal(0x29);
    });

    it('after eject: NOT READY, MEDIUM NOT PRESENT - TRAY OPEN for media access; the rest of the drive answers without a disc', async () => {
      expectGood(await d.run(EJECT));
      expectGood(await d.run(EJECT)); // already open: nothing changes
      expectSense(await d.run(tur()), KEY.NOT_READY, 0x3a, 0x02);
      expectSense(await d.run(read10(16, 1), { in: BS }), KEY.NOT_READY, 0x3a, 0x02);
      expectSense(await d.run(rc10(), { in: 8 }), KEY.NOT_READY, 0x3a, 0x02);
      expectSense(await d.run(readToc(false, 0, 0, 804), { in: 804 }), KEY.NOT_READY, 0x3a, 0x02);
      expectSense(await d.run(readDvdStructure(0, 2052), { in: 2052 }), KEY.NOT_READY, 0x3a, 0x02);
      expectGood(await d.run(readDvdStructure(0xff, 64), { in: 64 }));
      const rs = expectGood(await d.run(requestSense(18), { in: 18 }));
      expect([rs[0], rs[2], rs[12], rs[13]]).to.deep.equal([0x70, 2, 0x3a, 0x02]);
      const rsd = expectGood(await d.run(requestSense(18, true), { in: 18 }));
      expect([rsd[0], rsd[1], rsd[2], rsd[3]]).to.deep.equal([0x72, 2, 0x3a, 0x02]);
      const g = expectGood(await d.run(getConfiguration(0, 0, 2048), { in: 2048 }));
      expect(u16(g, 6), 'no current profile').to.equal(0);
      expect([g[8 + 6], g[8 + 10], g[8 + 14], g[8 + 18]], 'no CurrentP').to.deep.equal([0, 0, 0, 0]);
      const cur = expectGood(await d.run(getConfiguration(1, 0, 2048), { in: 2048 }));
      const codes: number[] = [];
      for (let o = 8; o < cur.length; o += 4 + cur[o + 3]) codes.push(u16(cur, o));
      expect(codes).to.deep.equal([0x0, 0x1, 0x2, 0x3, 0x105]);
      expect(hex(expectGood(await d.run(mechanismStatus(8), { in: 8 })))).to.equal('0010000000000000');
      const fc = expectGood(await d.run(readFormatCapacities(252), { in: 252 }));
      expect([fc[3], fc[8]]).to.deep.equal([8, 0x03]);
      expectGood(await d.run(inquiry(false, 0, 36), { in: 36 }));
    });

    it('GESN media class: MediaRemoval with the tray open once, then no change', async () => {
      expect(hex(expectGood(await d.run(gesn(0x10, 8), { in: 8 })))).to.equal('00040452' + '03010000');
      expect(hex(expectGood(await d.run(gesn(0x10, 8), { in: 8 })))).to.equal('00040452' + '00010000');
    });

    it('load: NOT READY TO READY CHANGE once (GET CONFIGURATION, GESN, INQUIRY do not take it), NewMedia, the disc reads again', async () => {
      expectGood(await d.run(LOAD));
      expect(u16(expectGood(await d.run(getConfiguration(0, 0, 8), { in: 8 })), 6)).to.equal(0x12);
      expect(hex(expectGood(await d.run(gesn(0x12, 8), { in: 8 })))).to.equal('00040452' + '02020000');
      expectGood(await d.run(inquiry(false, 0, 36), { in: 36 }));
      expectSense(await d.run(tur()), KEY.UNIT_ATTENTION, 0x28, 0x00);
      expectGood(await d.run(tur()));
      expectGood(await d.run(LOAD)); // already loaded: no new attention
      expectGood(await d.run(tur()));
      const pvd = expectGood(await d.run(read10(16, 1), { in: BS }));
      expect(Buffer.from(pvd).equals(img.image.subarray(16 * BS, 17 * BS))).to.equal(true);
    });

    it('REQUEST SENSE reports the unit attention after a load and clears it; READ gets it when it comes first', async () => {
      expectGood(await d.run(EJECT));
      expectGood(await d.run(LOAD));
      const rs = expectGood(await d.run(requestSense(18), { in: 18 }));
      expect([rs[2], rs[12], rs[13]]).to.deep.equal([6, 0x28, 0]);
      expectGood(await d.run(tur()));
      expectGood(await d.run(EJECT));
      expectGood(await d.run(LOAD));
      expectSense(await d.run(read10(16, 1), { in: BS }), KEY.UNIT_ATTENTION, 0x28, 0);
      expectGood(await d.run(read10(16, 1), { in: BS }));
    });

    it('START STOP UNIT without LOEJ changes nothing; power conditions, FL and reserved bits are refused', async () => {
      expectGood(await d.run(startStop(false, false)));
      expectGood(await d.run(tur()));
      expectGood(await d.run(startStop(false, true)));
      expectSense(await d.run(startStop(false, true, 0x20)), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run(startStop(true, false, 0x04)), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectSense(await d.run([0x1b, 0x02, 0, 0, 1, 0]), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expectGood(await d.run(tur()));
    });
  });

  describe('FORMAT UNIT', () => {
    const LBAS = 64;

    it('refuses a bad CDB or parameter list, each with its own reason', async () => {
      const d = await openDrive({ image: textured(LBAS * BS, 3) });
      try {
        const good = formatParams({ blocks: LBAS });
        expectSense(await d.run(formatUnit(0x01), { out: good }), KEY.ILLEGAL_REQUEST, 0x24, 0); // no FMTDATA
        expectSense(await d.run(formatUnit(0x10), { out: good }), KEY.ILLEGAL_REQUEST, 0x24, 0); // format code 0
        expectSense(await d.run([0x04, 0x11, 0, 1, 0, 0], { out: good }), KEY.ILLEGAL_REQUEST, 0x24, 0); // interleave
        expectSense(await d.run(formatUnit(), { out: good.subarray(0, 8) }), KEY.ILLEGAL_REQUEST, 0x1a, 0);
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, descLen: 16 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, type: 0x04 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS - 1 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, blockLen: 512 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0);
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, flags: 0x08 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0); // IP without FOV
        expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, flags: 0x88 }) }), KEY.ILLEGAL_REQUEST, 0x26, 0); // IP
        // DCRT without CMPLIST: any block count is taken (tcmu-runner's rule).
        expect(Buffer.from(fs.readFileSync(d.file)).equals(Buffer.from(textured(LBAS * BS, 3)))).to.equal(true);
        expectGood(await d.run(formatUnit(), { out: formatParams({ blocks: 5, flags: 0xa0 }) }));
        expect(fs.readFileSync(d.file).every((x) => x === 0)).to.equal(true);
      } finally {
        await d.close();
      }
    });

    it('without IMMED completes when every block is zero', async () => {
      const d = await openDrive({ image: textured(LBAS * BS, 4) });
      try {
        d.dev.formatChunkBlocks = 8;
        expectGood(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS }) }));
        expect(fs.readFileSync(d.file).every((x) => x === 0)).to.equal(true);
        expectGood(await d.run(tur()));
        const back = expectGood(await d.run(read10(0, LBAS), { in: LBAS * BS }));
        expect(back.every((x) => x === 0)).to.equal(true);
      } finally {
        await d.close();
      }
    });

    it('with IMMED: GOOD at once, then NOT READY / FORMAT IN PROGRESS with the progress in TUR sense and REQUEST SENSE data, busy events, then ready and zeros', async () => {
      const d = await openDrive({ image: textured(LBAS * BS, 5) });
      try {
        const waiting: (() => void)[] = [];
        d.dev.formatChunkBlocks = 16;
        d.dev.formatGate = () => new Promise<void>((r) => waiting.push(r));
        const until = async (cond: () => boolean) => {
          for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2));
          expect(cond(), 'waited for the format').to.equal(true);
        };
        expectGood(await d.run(gesn(0x02, 8), { in: 8 }));
        expectGood(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, flags: 0x02 }) }));
        const seen: number[] = [];
        for (let chunk = 0; chunk < 4; chunk++) {
          await until(() => waiting.length === 1);
          const want = chunk * 0x4000;
          const t = expectSense(await d.run(tur()), KEY.NOT_READY, 0x04, 0x04);
          expect(t!.progress).to.equal(want);
          const rs = expectGood(await d.run(requestSense(18), { in: 18 }));
          expect([rs[2], rs[12], rs[13], rs[15]]).to.deep.equal([2, 4, 4, 0x80]);
          seen.push(u16(rs, 16));
          expectSense(await d.run(read10(0, 1), { in: BS }), KEY.NOT_READY, 0x04, 0x04);
          expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: LBAS, flags: 0x02 }) }), KEY.NOT_READY, 0x04, 0x04);
          expectGood(await d.run(inquiry(false, 0, 36), { in: 36 }));
          expectGood(await d.run(getConfiguration(0, 0, 8), { in: 8 }));
          // Device busy class: the change to busy once, busy while it runs.
          expect(hex(expectGood(await d.run(gesn(0x40, 8), { in: 8 })))).to.equal('00040652' + (chunk === 0 ? '01' : '00') + '010000');
          waiting.shift()!();
        }
        expect(seen).to.deep.equal([0, 0x4000, 0x8000, 0xc000]);
        await d.dev.formatDone;
        expectGood(await d.run(tur()));
        expect(hex(expectGood(await d.run(gesn(0x40, 8), { in: 8 })))).to.equal('00040652' + '01000000');
        const rs = expectGood(await d.run(requestSense(18), { in: 18 }));
        expect([rs[2], rs[12], rs[13]]).to.deep.equal([0, 0, 0]);
        expect(fs.readFileSync(d.file).every((x) => x === 0)).to.equal(true);
      } finally {
        await d.close();
      }
    });
  });

  describe('ro/: a read-only DVD-ROM', () => {
    let d: Drive;
    const img = iso();
    const numLbas = img.image.length / BS;
    before(async () => {
      d = await openDrive({ image: img.image, ro: true });
    });
    after(async () => d.close());

    it('writes and FORMAT UNIT are DATA PROTECT / WRITE PROTECTED and the file is untouched; reads and VERIFY work', async () => {
      expectSense(await d.run(write10(20, 1), { out: textured(BS, 1) }), KEY.DATA_PROTECT, 0x27, 0);
      expectSense(await d.run(write6(20, 1), { out: textured(BS, 1) }), KEY.DATA_PROTECT, 0x27, 0);
      expectSense(await d.run(writeVerify10(20, 1), { out: textured(BS, 1) }), KEY.DATA_PROTECT, 0x27, 0);
      expectSense(await d.run(formatUnit(), { out: formatParams({ blocks: numLbas }) }), KEY.DATA_PROTECT, 0x27, 0);
      expect(Buffer.from(fs.readFileSync(d.file)).equals(img.image)).to.equal(true);
      expect(Buffer.from(expectGood(await d.run(read10(0, numLbas), { in: numLbas * BS }))).equals(img.image)).to.equal(true);
      expectGood(await d.run(verify10(0, numLbas)));
    });

    it('profile DVD-ROM (10h) current; no random writable, formattable or defect management among current features', async () => {
      const g = expectGood(await d.run(getConfiguration(0, 0, 2048), { in: 2048 }));
      expect(u16(g, 6)).to.equal(0x10);
      expect(hex(g.subarray(8, 28))).to.equal('00000310' + '00120000' + '00100100' + '000a0000' + '00080000');
      const cur = expectGood(await d.run(getConfiguration(1, 0, 2048), { in: 2048 }));
      const codes: number[] = [];
      for (let o = 8; o < cur.length; o += 4 + cur[o + 3]) codes.push(u16(cur, o));
      expect(codes).to.deep.equal([0x0, 0x1, 0x2, 0x3, 0x10, 0x1f, 0x105]);
      const rw = expectGood(await d.run(getConfiguration(2, 0x20, 64), { in: 64 }));
      expect(rw[8 + 2], 'random writable: version 1, not current').to.equal(0x04);
    });

    it('disc information "complete", the DVD-ROM physical format, no DVD-RAM status, one capacity, no write speeds', async () => {
      expect(hex(expectGood(await d.run(readDiscInfo(8), { in: 8 })))).to.equal('00200e01' + '01010120');
      const pf = expectGood(await d.run(readDvdStructure(0, 24), { in: 24 }));
      expect(hex(pf.subarray(4, 16))).to.equal('020f0100' + '00030000' + '00' + hex(Uint8Array.from(be(0x30000 + numLbas - 1, 3))));
      expectSense(await d.run(readDvdStructure(9, 8), { in: 8 }), KEY.ILLEGAL_REQUEST, 0x24, 0);
      expect(hex(expectGood(await d.run(readDvdStructure(0xff, 64), { in: 64 })))).to.equal('000e0000' + '00400804' + '01400008' + '04400804');
      expect(expectGood(await d.run(readFormatCapacities(252), { in: 252 }))[3]).to.equal(8);
      expect(hex(expectGood(await d.run(readToc(false, 0, 0xaa, 12), { in: 12 })).subarray(4, 6))).to.equal('0014');
      const m = expectGood(await d.run(modeSense10(0x2a, 255), { in: 255 }));
      expect([m[8 + 1], m[8 + 3], u16(m, 8 + 18), u16(m, 8 + 30)]).to.deep.equal([30, 0, 0, 0]);
    });
  });
});
