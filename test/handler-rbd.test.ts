/**
 * The rbd handler on a real Ceph cluster (mon + OSD started by
 * fixtures/ceph.ts on 127.0.0.1): commands go through the kernel
 * simulator and a device worker, exactly as from a real ring, and the
 * image is checked with the rbd CLI (`rbd export`) as the referee.
 */
import { expect } from 'chai';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Initiator, ScsiStatus, cdbCompareAndWrite as caw, cdbGetLbaStatus, cdbUnmap as unmapCdb, cdbWriteSame16 as writeSame16, type ScsiResponse } from '@tcmu-ts/ring';
import { HandlerRegistry, decodeSense, makeBlockIo, makeHandlerDevice, type DeviceHandler, type HandlerDevice } from '@tcmu-ts/core';
import { LBA_STATUS_MAX_OBJECTS, rbdHandler } from '@tcmu-ts/handlers';
import { SimulatedBackend } from '@tcmu-ts/workers';
import { Gateway } from './fixtures/gateway-client.js';
import { startCephCluster, type CephCluster } from './fixtures/ceph.js';
import { LunHarness, aluaFailover, expectGood, randomWritesReadBack } from './fixtures/lun-tests.js';
import { rng } from './simulator-harness.test.js';
import { be32, be64, retryBusy } from './scsi-helpers.js';

const BS = 512;
const MiB = 1 << 20;

function isAllZero(b: Uint8Array): boolean {
  return b.every((x) => x === 0);
}

describe('rbd handler on a real Ceph cluster', function () {
  this.timeout(120000);
  let ceph: CephCluster;
  const luns = new LunHarness('RBD_DEBUG');
  let images = 0;

  before(async function () {
    this.timeout(180000);
    ceph = await startCephCluster();
  });
  after(async () => {
    await ceph?.stop();
  });
  function newImage(size = 64 * MiB): string {
    const name = `img${++images}`;
    ceph.createImage(name, size);
    return name;
  }
  const cfg = (image: string, extra = ''): string => `${ceph.pool}/${image};conf=${ceph.confPath}${extra}`;

  /** A LUN on `image` served by a device worker behind a simulated kernel. */
  function lun(image: string, opts: { numLbas?: number; extra?: string; maxDataAreaMb?: number } = {}) {
    return luns.lun((n) => `rbd-${image}-${n}`, {
      subtype: 'rbd', cfgstring: cfg(image, opts.extra), handlerSpec: 'rbd', blockSize: BS,
      numLbas: opts.numLbas ?? (64 * MiB) / BS, maxXferBlocks: 2048, writeCache: false,
    }, opts.maxDataAreaMb);
  }

  /** The whole image through the rbd CLI: what any other Ceph client would read. */
  function exportImage(image: string): Uint8Array {
    const out = join(ceph.dir, `${image}.export`);
    rmSync(out, { force: true });
    ceph.rbd(['export', `${ceph.pool}/${image}`, out]);
    const data = new Uint8Array(readFileSync(out));
    rmSync(out, { force: true });
    return data;
  }

  describe('configuration', () => {
    it('checkConfig refuses malformed cfgstrings with the reason', () => {
      const reason = (c: string): string => {
        const r = rbdHandler.checkConfig(c);
        expect(r.ok, c).to.equal(false);
        return (r as { reason: string }).reason;
      };
      expect(reason('')).to.match(/is not <pool>\/<image>/);
      expect(reason('poolonly')).to.match(/is not <pool>\/<image>/);
      expect(reason('a/b/c')).to.match(/is not <pool>\/<image>/);
      expect(reason('p/i;osd_op_timeout=soon')).to.match(/osd_op_timeout=soon must be a positive number/);
      expect(reason('p/i;conf=')).to.match(/conf= needs a value/);
      expect(reason('p/i;cache=on')).to.match(/unknown option "cache"/);
      expect(rbdHandler.checkConfig('p/i@snap;osd_op_timeout=30;conf=/etc/ceph/ceph.conf;id=admin')).to.deep.equal({ ok: true });
    });

    it('probeConfig asks the cluster: a missing pool, image or snapshot is refused clearly, an existing image passes', async () => {
      const image = newImage(8 * MiB);
      const reg = new HandlerRegistry();
      reg.register(rbdHandler);
      expect(await reg.probeConfig(`rbd/${cfg(image)}`)).to.deep.equal({ ok: true });
      expect(await reg.probeConfig(`rbd/nopool/${image};conf=${ceph.confPath}`)).to.deep.equal({ ok: false, reason: 'pool "nopool" does not exist' });
      expect(await reg.probeConfig(`rbd/${cfg('missing')}`)).to.deep.equal({ ok: false, reason: `image "${ceph.pool}/missing" does not exist` });
      expect((await reg.probeConfig(`rbd/${ceph.pool}/${image}@nosnap;conf=${ceph.confPath}`)).ok).to.equal(false);
      const bad = await reg.probeConfig(`rbd/${ceph.pool}/${image};conf=${join(ceph.dir, 'no-such.conf')}`);
      expect(bad.ok).to.equal(false);
      expect((bad as { reason: string }).reason).to.match(/reading ceph config .*no-such\.conf/);
    });

    it('a missing image or a size that does not match the image fails the device with the reason, and nothing is served', async () => {
      const image = newImage(8 * MiB);
      let err: unknown;
      try {
        await lun('missing');
      } catch (e) {
        err = e;
      }
      expect(String(err)).to.match(/opening image missing failed/);
      err = undefined;
      try {
        await lun(image, { numLbas: (16 * MiB) / BS });
      } catch (e) {
        err = e;
      }
      expect(String(err)).to.match(/is 8388608 bytes but the device is 16777216/);
      expect(luns.sup.devices.size).to.equal(0);
    });
  });

  describe('data path', () => {
    it('random writes of 512 B to 1 MiB read back byte for byte, through the LUN and through rbd export', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      const model = new Uint8Array(64 * MiB);
      await randomWritesReadBack(ini, model, rng(1313), BS, { rounds: 12, perRound: 8, maxGap: 4096 });
      expectGood(await ini.synchronizeCache(), 'SYNCHRONIZE CACHE');
      expect(Buffer.compare(exportImage(image), model), 'rbd export equals what was written').to.equal(0);
    });

    it('UNMAP and WRITE SAME (pattern, zeros, with UNMAP) change exactly their ranges, also inside an object', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      const fill = new Uint8Array(4096 * BS).fill(0xcd);
      expectGood(await ini.write(0, fill.subarray(0, 2048 * BS)), 'fill');
      expectGood(await ini.write(2048, fill.subarray(0, 2048 * BS)), 'fill');
      const u = unmapCdb([[3, 5], [1000, 1]]);
      expectGood(await ini.send(u.cdb, { dataOut: u.data }), 'UNMAP');
      const pattern = new Uint8Array(BS).map((_, i) => i & 0xff);
      expectGood(await ini.send(writeSame16(2000, 100), { dataOut: pattern }), 'WRITE SAME');
      expectGood(await ini.send(writeSame16(3000, 7), { dataOut: new Uint8Array(BS) }), 'WRITE SAME zeros');
      expectGood(await ini.send(writeSame16(3500, 9, true), { dataOut: new Uint8Array(BS) }), 'WRITE SAME UNMAP');
      const expected = new Uint8Array(4096 * BS).fill(0xcd);
      expected.fill(0, 3 * BS, 8 * BS);
      expected.fill(0, 1000 * BS, 1001 * BS);
      for (let i = 0; i < 100; i++) expected.set(pattern, (2000 + i) * BS);
      expected.fill(0, 3000 * BS, 3007 * BS);
      expected.fill(0, 3500 * BS, 3509 * BS);
      const got = exportImage(image).subarray(0, expected.length);
      expect(Buffer.compare(got, expected)).to.equal(0);
    });

    it('COMPARE AND WRITE (librbd\'s own, one sector) writes on a match and reports the first differing byte on a miscompare, also past the first object', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      for (const [lba, blocks] of [[10, 1], [8193, 1]] as const) {
        const old = new Uint8Array(blocks * BS).fill(0x21);
        expectGood(await ini.write(lba, old));
        const next = new Uint8Array(blocks * BS).fill(0x42);
        const ok = new Uint8Array(2 * blocks * BS);
        ok.set(old, 0);
        ok.set(next, blocks * BS);
        expectGood(await ini.send(caw(lba, blocks), { dataOut: ok }), `COMPARE AND WRITE at ${lba}`);
        expect(Buffer.compare((await ini.read(lba, blocks)).data, next)).to.equal(0);
        const wrong = ok.slice();
        wrong.set(next, 0);
        const at = blocks * BS - 7;
        wrong[at] ^= 0xff; // compare half = next except one byte near the end
        const r = await ini.send(caw(lba, blocks), { dataOut: wrong });
        expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
        const s = decodeSense(r.sense)!;
        expect({ key: s.key, asc: s.asc, info: Number(s.information) }).to.deep.equal({ key: 0x0e, asc: 0x1d, info: at });
        expect(Buffer.compare((await ini.read(lba, blocks)).data, next), 'nothing written on a miscompare').to.equal(0);
      }
    });

    it('COMPARE AND WRITE of more than one sector (a 4 KiB-block LUN, emulated by read, compare and write) reports the miscompare offset', async () => {
      const image = newImage(8 * MiB);
      const h = await rbdHandler.open(makeHandlerDevice({ cfgstring: cfg(image), blockSize: 4096, numLbas: (8 * MiB) / 4096 }), false);
      try {
        const old = new Uint8Array(4096).fill(0x31);
        await h.write!(makeBlockIo({ lba: 3, blocks: 1, blockSize: 4096, buffers: [old] }));
        const next = new Uint8Array(4096).fill(0x32);
        const io = (compare: Uint8Array) => ({ ...makeBlockIo({ lba: 3, blocks: 1, blockSize: 4096, buffers: [next] }), compare: [compare] });
        const wrong = old.slice();
        wrong[3000] = 0;
        expect(await h.compareAndWrite!(io(wrong))).to.deep.equal({ ok: false, offset: 3000 });
        expect(exportImage(image)[3 * 4096]).to.equal(0x31);
        expect(await h.compareAndWrite!(io(old))).to.deep.equal({ ok: true });
        expect(exportImage(image)[3 * 4096 + 4095]).to.equal(0x32);
      } finally {
        await h.close();
      }
    });

    it('Block Limits come from the image: four objects per UNMAP, the discard granularity', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      const r = await ini.inquiry(64, 0xb0);
      expectGood(r);
      const objectSize = 4 * MiB;
      expect(be32(r.data, 20), 'MAXIMUM UNMAP LBA COUNT').to.equal((4 * objectSize) / BS);
      expect(be32(r.data, 28), 'OPTIMAL UNMAP GRANULARITY (rbd_discard_granularity_bytes 64 KiB)').to.equal(65536 / BS);
    });

    it('a live resize: dev_size following `rbd resize` is taken, one that disagrees with the image is refused', async () => {
      const image = newImage(8 * MiB);
      const { ini, name } = await lun(image, { numLbas: (8 * MiB) / BS });
      ceph.rbd(['resize', '--size', '16M', `${ceph.pool}/${image}`]);
      expect(await luns.sup.reconfigure(name, { numLbas: (32 * MiB) / BS })).to.not.equal(0);
      expect(await luns.sup.reconfigure(name, { numLbas: (16 * MiB) / BS })).to.equal(0);
      const data = new Uint8Array(BS).fill(9);
      // The first command after a capacity change reports it (unit attention), then the new LBAs work.
      await ini.testUnitReady();
      expectGood(await ini.write((16 * MiB) / BS - 1, data), 'write to the new last LBA');
      expect(Buffer.compare(exportImage(image).subarray(16 * MiB - BS), data)).to.equal(0);
    });
  });

  describe('GET LBA STATUS (rbd_diff_iterate2)', () => {
    const OBJ = (4 * MiB) / BS; // blocks per 4 MiB object
    const N = (64 * MiB) / BS;
    const MAPPED = 0;
    const DEALLOCATED = 1;
    type Extent = [lba: number, blocks: number, status: number];

    async function lbaStatus(ini: Initiator, lba: number, alloc = 4096): Promise<Extent[]> {
      const r = await ini.send(cdbGetLbaStatus(lba, alloc), { dataInLength: alloc });
      expectGood(r, 'GET LBA STATUS');
      const out: Extent[] = [];
      const end = Math.min(r.data.length, 4 + be32(r.data, 0));
      for (let o = 8; o + 16 <= end; o += 16) out.push([Number(be64(r.data, o)), be32(r.data, o + 8), r.data[o + 12] & 0x0f]);
      return out;
    }

    /** The referee: `rbd diff` (whole_object off, parent included, as the handler asks) as mapped block extents. */
    function rbdDiff(image: string): Extent[] {
      const d = JSON.parse(ceph.rbd(['diff', '--format', 'json', `${ceph.pool}/${image}`])) as { offset: number; length: number; exists: string }[];
      const out: Extent[] = [];
      for (const e of d) {
        if (e.exists !== 'true') continue;
        const last = out[out.length - 1];
        // rbd diff lists per object: join what touches, as GET LBA STATUS does.
        if (last && last[0] + last[1] === e.offset / BS) last[1] += Math.ceil(e.length / BS);
        else out.push([e.offset / BS, Math.ceil(e.length / BS), MAPPED]);
      }
      return out;
    }
    const mappedOf = (xs: Extent[]): Extent[] => xs.filter((x) => x[2] === MAPPED);

    it('a fresh image is all deallocated; Logical Block Provisioning (LBPME, LBPRZ, thin) agrees', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      expect(await lbaStatus(ini, 0)).to.deep.equal([[0, N, DEALLOCATED]]);
      expect(await lbaStatus(ini, N - 1)).to.deep.equal([[N - 1, 1, DEALLOCATED]]);
      const cap = await ini.readCapacity();
      expectGood(cap);
      expect(cap.data[14] & 0xc0, 'READ CAPACITY(16) LBPME and LBPRZ').to.equal(0xc0);
      const b2 = await ini.inquiry(64, 0xb2);
      expectGood(b2);
      expect(b2.data[5] & 0xe4, 'VPD B2h LBPU, LBPWS, LBPWS10, LBPRZ').to.equal(0xe4);
      expect(b2.data[6] & 0x07, 'VPD B2h PROVISIONING TYPE thin').to.equal(0x02);
    });

    it('writes map their objects from the object start to the end of the data (what RADOS lists), as `rbd diff` says; a start inside an extent, the descriptor cut, and UNMAP of a whole object deallocating it', async () => {
      const image = newImage();
      const { ini } = await lun(image);
      const data = (blocks: number) => new Uint8Array(blocks * BS).fill(0x5a);
      expectGood(await ini.write(8, data(8)));
      expectGood(await ini.write(5 * OBJ + 1000, data(1)));
      expectGood(await ini.write(12 * OBJ - 8, data(16))); // the last 8 blocks of object 11, the first 8 of object 12
      const all = await lbaStatus(ini, 0);
      expect(all).to.deep.equal([
        [0, 16, MAPPED], // object 0 from its start: blocks 0-7 were never written but RADOS lists no hole inside an object
        [16, 5 * OBJ - 16, DEALLOCATED],
        [5 * OBJ, 1001, MAPPED],
        [5 * OBJ + 1001, 6 * OBJ - 1001, DEALLOCATED],
        [11 * OBJ, OBJ + 8, MAPPED],
        [12 * OBJ + 8, N - 12 * OBJ - 8, DEALLOCATED],
      ]);
      expect(mappedOf(all), 'the same as rbd diff').to.deep.equal(rbdDiff(image));
      // Never-written blocks reported mapped read zeros all the same; deallocated ones must.
      expect(isAllZero((await ini.read(0, 8)).data)).to.equal(true);
      expect(await lbaStatus(ini, 5 * OBJ + 500), 'from inside an extent').to.deep.equal([
        [5 * OBJ + 500, 501, MAPPED], [5 * OBJ + 1001, 6 * OBJ - 1001, DEALLOCATED], [11 * OBJ, OBJ + 8, MAPPED], [12 * OBJ + 8, N - 12 * OBJ - 8, DEALLOCATED],
      ]);
      expect(await lbaStatus(ini, 0, 8 + 2 * 16), 'two descriptors fit').to.deep.equal([[0, 16, MAPPED], [16, 5 * OBJ - 16, DEALLOCATED]]);

      const u = unmapCdb([[5 * OBJ, OBJ]]);
      expectGood(await ini.send(u.cdb, { dataOut: u.data }), 'UNMAP object 5');
      expect(await lbaStatus(ini, 0)).to.deep.equal([
        [0, 16, MAPPED], [16, 11 * OBJ - 16, DEALLOCATED], [11 * OBJ, OBJ + 8, MAPPED], [12 * OBJ + 8, N - 12 * OBJ - 8, DEALLOCATED],
      ]);
      expect(isAllZero((await ini.read(5 * OBJ + 1000, 1)).data), 'the unmapped object reads zeros').to.equal(true);
      expect(mappedOf(await lbaStatus(ini, 0)), 'the same as rbd diff').to.deep.equal(rbdDiff(image));
      // Zeros (WRITE SAME with UNMAP) over all of object 12's data, though not to the object's end: the OSD
      // truncates a zeroed tail, the object lists nothing and object 12 is deallocated (and reads zeros).
      expectGood(await ini.send(writeSame16(12 * OBJ, 8, true), { dataOut: new Uint8Array(BS) }), 'WRITE SAME UNMAP');
      expect(await lbaStatus(ini, 11 * OBJ)).to.deep.equal([[11 * OBJ, OBJ, MAPPED], [12 * OBJ, N - 12 * OBJ, DEALLOCATED]]);
      expect(isAllZero((await ini.read(12 * OBJ, 16)).data)).to.equal(true);
      expect(mappedOf(await lbaStatus(ini, 0)), 'the same as rbd diff').to.deep.equal(rbdDiff(image));
    });

    it('a clone: the parent\'s data counts as mapped, its own writes map; after a whole-object UNMAP (reads zeros) librbd still lists the parent extent', async () => {
      const parent = newImage();
      const p = await lun(parent);
      expectGood(await p.ini.write(2 * OBJ, new Uint8Array(64 * BS).fill(0x77)));
      await luns.restart(); // the parent's LUN closed before it is snapshotted and cloned
      ceph.rbd(['snap', 'create', `${ceph.pool}/${parent}@base`]);
      ceph.rbd(['snap', 'protect', `${ceph.pool}/${parent}@base`]);
      const child = `${parent}-clone`;
      ceph.rbd(['clone', `${ceph.pool}/${parent}@base`, `${ceph.pool}/${child}`]);
      const { ini } = await lun(child);
      expect(await lbaStatus(ini, 0)).to.deep.equal([[0, 2 * OBJ, DEALLOCATED], [2 * OBJ, 64, MAPPED], [2 * OBJ + 64, N - 2 * OBJ - 64, DEALLOCATED]]);
      expectGood(await ini.write(7 * OBJ, new Uint8Array(8 * BS).fill(0x33)));
      const u = unmapCdb([[2 * OBJ, OBJ]]);
      expectGood(await ini.send(u.cdb, { dataOut: u.data }), 'UNMAP object 2');
      expect(isAllZero((await ini.read(2 * OBJ, 64)).data), 'the parent\'s data is gone from the clone').to.equal(true);
      // librbd 16 (and so `rbd diff`) still lists the parent's extent for the clone's object 2, though the UNMAP left
      // it there truncated to nothing and it reads zeros: mapped is the safe side of the contract, so be it.
      expect(await lbaStatus(ini, 0)).to.deep.equal([
        [0, 2 * OBJ, DEALLOCATED], [2 * OBJ, 64, MAPPED], [2 * OBJ + 64, 5 * OBJ - 64, DEALLOCATED], [7 * OBJ, 8, MAPPED], [7 * OBJ + 8, N - 7 * OBJ - 8, DEALLOCATED],
      ]);
      expect(mappedOf(await lbaStatus(ini, 0)), 'the same as rbd diff').to.deep.equal(rbdDiff(child));
    });

    it(`a large image is answered ${LBA_STATUS_MAX_OBJECTS} objects at a time, each answer quickly; the initiator walks on from where one ends`, async () => {
      const size = 4096 * 4 * MiB; // 16 GiB, 4096 objects, thin
      const image = newImage(size);
      const { ini } = await lun(image, { numLbas: size / BS });
      expectGood(await ini.write(300 * OBJ + 4, new Uint8Array(4 * BS).fill(1)));
      const seen: Extent[] = [];
      const times: number[] = [];
      for (let lba = 0; lba < size / BS;) {
        const t0 = performance.now();
        const xs = await lbaStatus(ini, lba);
        times.push(performance.now() - t0);
        expect(xs[0][0]).to.equal(lba);
        for (const x of xs) seen.push(x);
        lba = xs[xs.length - 1][0] + xs[xs.length - 1][1];
      }
      expect(times.length).to.equal(4096 / LBA_STATUS_MAX_OBJECTS);
      expect(mappedOf(seen)).to.deep.equal([[300 * OBJ, 8, MAPPED]]);
      expect(seen.reduce((n, x) => n + x[1], 0)).to.equal(size / BS);
      times.sort((a, b) => a - b);
      console.log(`      GET LBA STATUS over ${LBA_STATUS_MAX_OBJECTS} objects: median ${times[times.length >> 1].toFixed(1)} ms, max ${times[times.length - 1].toFixed(1)} ms`);
      expect(times[times.length - 1], 'ms for one answer').to.be.below(1000);
    });
  });

  describe('failures', () => {
    it('a cluster that stops answering fails commands BUSY after osd_op_timeout, and every acknowledged write is there once it is back', async () => {
      const image = newImage();
      const { ini } = await lun(image, { extra: ';osd_op_timeout=2' });
      const acked = new Map<number, Uint8Array>();
      const write = async (lba: number): Promise<ScsiResponse> => {
        const data = new Uint8Array(8 * BS).fill((lba / 8) & 0xff);
        const r = await ini.write(lba, data);
        if (r.status === ScsiStatus.GOOD) acked.set(lba, data);
        return r;
      };
      for (let i = 0; i < 16; i++) expectGood(await write(i * 8));
      // librbd lets one write per object wait at a time (each waits out its own timeout): one per object keeps this short.
      const paused = [1, 2, 3].map((obj) => obj * ((4 * MiB) / BS) + 64);
      await ceph.pauseOsd();
      const pausedAt = performance.now();
      const seen: string[] = [];
      let answers: ScsiResponse[];
      try {
        answers = await Promise.all(paused.map(async (lba) => {
          const r = await write(lba);
          seen.push(`write ${lba}: status ${r.status} after ${(performance.now() - pausedAt).toFixed(0)} ms`);
          return r;
        }));
      } finally {
        ceph.resumeOsd();
      }
      const story = () => `${seen.join('\n')}\n--- daemon log:\n${luns.logTail(40)}\n${ceph.diagnose()}`;
      // Retryable, not an error the filesystem sees; and with every OSD thread stopped before they were sent, none can have succeeded.
      for (const a of answers) expect(a.status, `commands to a stopped cluster fail BUSY\n${story()}`).to.equal(ScsiStatus.BUSY);
      // The initiator retries; the handler reconnects and the writes go through once the cluster answers again.
      await ceph.waitAnswering();
      for (const lba of paused) {
        const { r } = await retryBusy(() => write(lba));
        if (r.status !== ScsiStatus.GOOD) expect.fail(`write ${lba} after the cluster came back: status ${r.status}\n${story()}`);
      }
      const img = exportImage(image);
      for (const [lba, data] of acked) expect(Buffer.compare(img.subarray(lba * BS, lba * BS + data.length), data), `LBA ${lba}`).to.equal(0);
    });
  });

  describe('two gateways on one image (exclusive lock)', () => {
    function gatewayDev(image: string, lost: string[], who: string): HandlerDevice {
      return { ...makeHandlerDevice({ cfgstring: cfg(image), name: who, numLbas: (16 * MiB) / BS }), notifyLockLost: () => lost.push(who) };
    }
    const block = (v: number) => new Uint8Array(BS).fill(v);
    /** The OSD blocklist's addresses (`ceph osd blocklist ls`). */
    const blocklist = (): string[] => ceph.ceph(['osd', 'blocklist', 'ls']).split('\n').map((l) => l.trim().split(/\s+/)[0]).filter((a) => /\d+\.\d+\.\d+\.\d+:\d+\/\d+/.test(a));
    const io = (lba: number, data: Uint8Array) => makeBlockIo({ lba, blocks: data.length / BS, blockSize: BS, buffers: [data] });

    it('taking the lock fences the old holder: its writes fail BUSY and reach nothing until it takes the lock back', async () => {
      const image = newImage(16 * MiB);
      const lost: string[] = [];
      const a: DeviceHandler = await rbdHandler.open(gatewayDev(image, lost, 'A'), false);
      const b: DeviceHandler = await rbdHandler.open(gatewayDev(image, lost, 'B'), false);
      try {
        await a.lock!(1);
        expect(await a.getLockState!()).to.equal('locked');
        expect(await b.getLockTag!()).to.equal(1);
        await a.write!(io(0, block(0xaa)));
        await b.lock!(2); // A is blocklisted by the break
        expect(await b.getLockTag!()).to.equal(2);
        expect(await a.getLockState!()).to.equal('unlocked');
        let err: unknown;
        try {
          await a.write!(io(0, block(0xee)));
        } catch (e) {
          err = e;
        }
        expect((err as { code?: string }).code, String(err)).to.equal('EBUSY');
        expect(lost).to.include('A');
        await b.write!(io(1, block(0xbb)));
        const img = exportImage(image);
        expect(img[0], 'the fenced write did not land').to.equal(0xaa);
        expect(img[BS]).to.equal(0xbb);
        const blocklisted = blocklist();
        expect(blocklisted.length, 'breaking the lock blocklisted A').to.be.greaterThan(0);
        // A takes the lock again with a new client, removing its old client's entry; now B is the fenced one.
        await a.lock!(1);
        const after = blocklist();
        for (const e of blocklisted) expect(after, 'the stale entry of A\'s old client is removed').to.not.include(e);
        await a.write!(io(2, block(0xa2)));
        err = undefined;
        try {
          await b.write!(io(3, block(0xb3)));
        } catch (e) {
          err = e;
        }
        expect((err as { code?: string }).code, String(err)).to.equal('EBUSY');
        const img2 = exportImage(image);
        expect([img2[2 * BS], img2[3 * BS]]).to.deep.equal([0xa2, 0]);
      } finally {
        await a.close();
        await b.close();
      }
    });
  });
  describe('two gateway daemons on one image (ALUA implicit failover)', () => {
    it('A is killed -9, the initiator moves to B, B takes the lock and every write A acknowledged is there; A restarted writes only after taking the lock back', async () => {
      const image = newImage(16 * MiB);
      // B breaks the dead holder's lock, blocklisting it.
      await aluaFailover((name) => new Gateway(name, cfg(image), (16 * MiB) / BS, 'rbd'), (offset) => exportImage(image)[offset], BS);
    });
  });

  describe('the OSD killed -9 mid-IO (bluestore, so it comes back with its data)', () => {
    let durable: CephCluster;
    before(async function () {
      this.timeout(180000);
      durable = await startCephCluster({ persistent: true });
    });
    after(async () => {
      await durable?.stop();
    });

    it('commands in flight complete GOOD or fail BUSY, none is lost: every acknowledged write is on the image after the restart', async () => {
      durable.createImage('kill', 16 * MiB);
      const b = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 60 });
      luns.backends.push(b);
      await luns.sup.addDevice({
        name: 'rbd-kill', subtype: 'rbd', cfgstring: `${durable.pool}/kill;conf=${durable.confPath};osd_op_timeout=2`, handlerSpec: 'rbd',
        blockSize: BS, numLbas: (16 * MiB) / BS, maxXferBlocks: 1024, writeCache: false, serial: 'kill', wwn: 'kill', ring: b.endpoint,
      }, b);
      const ini = new Initiator(b.sim, { blockSize: BS });
      const acked = new Map<number, number>();
      const write = async (lba: number, v: number): Promise<ScsiResponse> => {
        const r = await ini.write(lba, new Uint8Array(8 * BS).fill(v));
        if (r.status === ScsiStatus.GOOD) acked.set(lba, v);
        return r;
      };
      for (let i = 0; i < 16; i++) expectGood(await write(i * 8, 1 + i));
      // Writes in flight while the OSD dies (librbd lets them time out one after another, so a few).
      const inFlight = Array.from({ length: 4 }, (_, i) => write(1024 + i * 8, 0x40 + i));
      await durable.stopOsd();
      const answers = await Promise.all(inFlight);
      for (const a of answers) expect([ScsiStatus.GOOD, ScsiStatus.BUSY], 'retryable, never an error the filesystem sees').to.include(a.status);
      await durable.startOsd();
      for (let i = 0; i < 4; i++) if (!acked.has(1024 + i * 8)) expectGood((await retryBusy(() => write(1024 + i * 8, 0x40 + i), 60000)).r, 'retried write');
      const out = join(durable.dir, 'kill.export');
      durable.rbd(['export', `${durable.pool}/kill`, out]);
      const img = new Uint8Array(readFileSync(out));
      expect(acked.size).to.equal(20);
      for (const [lba, v] of acked) expect(img.subarray(lba * BS, (lba + 8) * BS).every((x) => x === v), `LBA ${lba}`).to.equal(true);
    });
  });
});
