/**
 * The glfs handler on a real Gluster volume (glusterd + one brick started
 * by fixtures/gluster.ts on 127.0.0.1, with tcmu-runner's fencing
 * options): commands go through the kernel simulator and a device worker,
 * exactly as from a real ring, and the file as the brick stores it is the
 * referee of what landed.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { ScsiStatus, cdbUnmap as unmapCdb, cdbWriteSame16 as writeSame16, type ScsiResponse } from '@tcmu-ts/ring';
import { HandlerRegistry, makeBlockIo, makeHandlerDevice, type DeviceHandler, type HandlerDevice } from '@tcmu-ts/core';
import { GlfsVolume, glfsHandler, parseGlfsConfig, volumeTable } from '@tcmu-ts/handlers';
import { startGlusterVolume, type GlusterVolume } from './fixtures/gluster.js';
import { Gateway } from './fixtures/gateway-client.js';
import { LunHarness, aluaFailover, expectGood, randomWritesReadBack } from './fixtures/lun-tests.js';
import { rng } from './simulator-harness.test.js';
import { retryBusy } from './scsi-helpers.js';

const BS = 512;
const MiB = 1 << 20;

describe('glfs handler on a real Gluster volume', function () {
  this.timeout(60000);
  let gl: GlusterVolume;
  let vol: GlfsVolume;
  const luns = new LunHarness('GLFS_DEBUG');
  let files = 0;

  before(async function () {
    this.timeout(120000);
    gl = await startGlusterVolume();
    // The test's own client: the same glfs_t the device threads of this process get.
    vol = GlfsVolume.acquire({ transport: 'tcp', host: '127.0.0.1', port: 24007 }, gl.volume);
  });
  after(async () => {
    vol?.release();
    await gl?.stop();
  });
  function newFile(size = 16 * MiB): string {
    const name = `lun${++files}.img`;
    vol.createFile(`/${name}`, size);
    return name;
  }
  /** The file as the brick holds it. */
  const onBrick = (file: string): Uint8Array => new Uint8Array(readFileSync(gl.brickPath(file)));

  /** A LUN on `file` served by a device worker behind a simulated kernel. */
  function lun(cfgstring: string, opts: { numLbas?: number } = {}) {
    return luns.lun((n) => `glfs-${n}-${files}`, {
      subtype: 'glfs', cfgstring, handlerSpec: 'glfs', blockSize: BS, numLbas: opts.numLbas ?? (16 * MiB) / BS, maxXferBlocks: 2048, writeCache: true,
    });
  }

  describe('configuration', () => {
    it('parses tcmu-runner\'s cfgstring, ports, IPv6 and the unix socket; refuses malformed ones with the reason', () => {
      expect(parseGlfsConfig('v0@gl1/dir/a.img')).to.deep.equal({ volume: 'v0', path: '/dir/a.img', server: { transport: 'tcp', host: 'gl1', port: 24007 } });
      expect(parseGlfsConfig('v0@10.0.0.1:24010/a')).to.deep.equal({ volume: 'v0', path: '/a', server: { transport: 'tcp', host: '10.0.0.1', port: 24010 } });
      expect(parseGlfsConfig('v0@[::1]:24007/a')).to.deep.equal({ volume: 'v0', path: '/a', server: { transport: 'tcp', host: '::1', port: 24007 } });
      expect(parseGlfsConfig('v0@unix/a;socket=/run/g.socket')).to.deep.equal({ volume: 'v0', path: '/a', server: { transport: 'unix', socket: '/run/g.socket' } });
      const reason = (c: string): string => {
        const r = glfsHandler.checkConfig(c);
        expect(r.ok, c).to.equal(false);
        return (r as { reason: string }).reason;
      };
      expect(reason('')).to.match(/is not <volume>@<host>\[:port\]\/<path>/);
      expect(reason('v0/a.img')).to.match(/is not <volume>@<host>/);
      expect(reason('v0@host')).to.match(/is not <volume>@<host>/);
      expect(reason('v0@host/')).to.match(/names no file/);
      expect(reason('v0@host:99999/a')).to.match(/port "99999" is not a number/);
      expect(reason('v0@host:x/a')).to.match(/port "x"/);
      expect(reason('v 0@host/a')).to.match(/not a Gluster volume name/);
      expect(reason('v0@host/a;cache=on')).to.match(/unknown option "cache"/);
      expect(reason('v0@host/a;socket=/x')).to.match(/socket= goes with the host "unix"/);
    });

    it('probeConfig asks the server: a missing file, a missing volume and an unreachable server are refused clearly', async () => {
      const file = newFile(MiB);
      const reg = new HandlerRegistry();
      reg.register(glfsHandler);
      expect(await reg.probeConfig(`glfs/${gl.cfg(file)}`)).to.deep.equal({ ok: true });
      expect(await reg.probeConfig(`glfs/${gl.cfg('nope.img')}`)).to.deep.equal({ ok: false, reason: `file "/nope.img" does not exist on volume "${gl.volume}"` });
      const noVol = await reg.probeConfig(`glfs/novol@127.0.0.1/${file}`);
      expect((noVol as { reason: string }).reason).to.match(/cannot reach volume "novol" on 127.0.0.1:24007 .*connecting to volume "novol"/);
      const t0 = Date.now();
      const noServer = await reg.probeConfig(`glfs/${gl.volume}@127.0.0.1:1/${file}`);
      expect((noServer as { reason: string }).reason).to.match(/cannot reach volume "tcmuv" on 127.0.0.1:1/);
      expect(Date.now() - t0, 'an unreachable server is told at once').to.be.below(15000);
    });

    it('opening: a missing file, a size mismatch and an unreachable server fail the device with the reason; the unix socket serves', async () => {
      const file = newFile(8 * MiB);
      const fail = async (cfg: string, numLbas?: number): Promise<string> => {
        try {
          await lun(cfg, { numLbas });
        } catch (e) {
          return String(e);
        }
        return 'opened';
      };
      expect(await fail(gl.cfg('missing.img'))).to.match(/file "\/missing.img" does not exist on volume "tcmuv"/);
      expect(await fail(gl.cfg(file), (16 * MiB) / BS)).to.match(/is 8388608 bytes but the device is 16777216/);
      expect(await fail(`${gl.volume}@127.0.0.1:1/${file}`)).to.match(/cannot reach volume "tcmuv" on 127.0.0.1:1/);
      expect(luns.sup.devices.size).to.equal(0);
      const { ini } = await lun(`${gl.volume}@unix/${file};socket=${gl.socket}`, { numLbas: (8 * MiB) / BS });
      const data = new Uint8Array(8 * BS).fill(0x5a);
      expectGood((await retryBusy(() => ini.write(8, data))).r, 'write over the unix socket');
      expect(Buffer.compare(onBrick(file).subarray(8 * BS, 16 * BS), data)).to.equal(0);
    });

    it('two LUNs on one volume share one glfs_t across their device threads', async () => {
      const [f1, f2] = [newFile(MiB), newFile(MiB)];
      await lun(gl.cfg(f1), { numLbas: MiB / BS });
      await lun(gl.cfg(f2), { numLbas: MiB / BS });
      const entries = volumeTable().filter((e) => e.key === `tcp:127.0.0.1:24007/${gl.volume}`);
      expect(entries).to.have.length(1);
      expect(entries[0].users, 'the test client and both devices').to.equal(3);
    });
  });

  describe('data path', () => {
    it('random writes of 512 B to 1 MiB, many in flight, read back byte for byte through the LUN and on the brick', async () => {
      const file = newFile();
      const { ini } = await lun(gl.cfg(file));
      const model = new Uint8Array(16 * MiB);
      // The first write takes the file's mandatory lock (BUSY meanwhile; no ALUA here).
      expectGood((await retryBusy(() => ini.write(0, model.subarray(0, BS)))).r);
      await randomWritesReadBack(ini, model, rng(1616), BS, { rounds: 10, perRound: 12, maxGap: 2048, fuaEvery: 4 });
      expectGood(await ini.synchronizeCache(), 'SYNCHRONIZE CACHE');
      expect(Buffer.compare(onBrick(file), model), 'the brick holds what was written').to.equal(0);
    });

    it('UNMAP (discard) and WRITE SAME (pattern, zeros by zerofill, with UNMAP) change exactly their ranges', async () => {
      const file = newFile(4 * MiB);
      const { ini } = await lun(gl.cfg(file), { numLbas: (4 * MiB) / BS });
      const fill = new Uint8Array(2048 * BS).fill(0xcd);
      expectGood((await retryBusy(() => ini.write(0, fill))).r, 'fill');
      expectGood(await ini.write(2048, fill), 'fill');
      const u = unmapCdb([[3, 5], [1000, 1], [1500, 64]]);
      expectGood(await ini.send(u.cdb, { dataOut: u.data }), 'UNMAP');
      const pattern = new Uint8Array(BS).map((_, i) => (i * 7) & 0xff);
      expectGood(await ini.send(writeSame16(2000, 100), { dataOut: pattern }), 'WRITE SAME');
      expectGood(await ini.send(writeSame16(3000, 7), { dataOut: new Uint8Array(BS) }), 'WRITE SAME zeros');
      expectGood(await ini.send(writeSame16(3500, 9, true), { dataOut: new Uint8Array(BS) }), 'WRITE SAME UNMAP');
      const expected = new Uint8Array(4 * MiB);
      expected.fill(0xcd, 0, 4096 * BS);
      expected.fill(0, 3 * BS, 8 * BS);
      expected.fill(0, 1000 * BS, 1001 * BS);
      expected.fill(0, 1500 * BS, 1564 * BS);
      for (let i = 0; i < 100; i++) expected.set(pattern, (2000 + i) * BS);
      expected.fill(0, 3000 * BS, 3007 * BS);
      expected.fill(0, 3500 * BS, 3509 * BS);
      const got = onBrick(file);
      const diff = got.findIndex((x, i) => x !== expected[i]);
      expect(diff, `first difference at byte ${diff} (LBA ${Math.floor(diff / BS)}): ${got[diff]} not ${expected[diff]}`).to.equal(-1);
      for (const lba of [0, 2048]) {
        const back = await ini.read(lba, 2048);
        expectGood(back);
        expect(Buffer.compare(back.data, expected.subarray(lba * BS, (lba + 2048) * BS)), 'and through the LUN').to.equal(0);
      }
    });

    it('a live resize: dev_size following the file is taken, one that disagrees with the file is refused', async () => {
      const file = newFile(8 * MiB);
      const { ini, name } = await lun(gl.cfg(file), { numLbas: (8 * MiB) / BS });
      expectGood((await retryBusy(() => ini.write(0, new Uint8Array(BS)))).r);
      // The same client (glfs_t) as the device's, so allowed under its lock; closing this fd drops the
      // client's locks on the file (POSIX), which the device finds out and takes back (BUSY meanwhile).
      vol.createFile(`/${file}`, 16 * MiB);
      expect(await luns.sup.reconfigure(name, { numLbas: (32 * MiB) / BS })).to.not.equal(0);
      expect(await luns.sup.reconfigure(name, { numLbas: (16 * MiB) / BS })).to.equal(0);
      await ini.testUnitReady();
      const data = new Uint8Array(BS).fill(9);
      expectGood((await retryBusy(() => ini.write((16 * MiB) / BS - 1, data))).r, 'write to the new last LBA');
      expect(Buffer.compare(onBrick(file).subarray(16 * MiB - BS), data)).to.equal(0);
    });
  });

  describe('failures', () => {
    it('the brick killed -9 mid-IO: commands complete GOOD or BUSY, and after `volume start force` every acknowledged write is there', async () => {
      const file = newFile(8 * MiB);
      const { ini } = await lun(gl.cfg(file), { numLbas: (8 * MiB) / BS });
      const acked = new Map<number, number>();
      const write = async (lba: number, v: number): Promise<ScsiResponse> => {
        const res = await ini.write(lba, new Uint8Array(8 * BS).fill(v));
        if (res.status === ScsiStatus.GOOD) acked.set(lba, v);
        return res;
      };
      expectGood((await retryBusy(() => write(0, 1))).r);
      for (let i = 1; i < 16; i++) expectGood(await write(i * 8, 1 + i));
      const inFlight = Array.from({ length: 32 }, (_, i) => write(1024 + i * 8, 0x40 + i));
      gl.killBrick();
      const answers = await Promise.all(inFlight);
      for (const a of answers) expect([ScsiStatus.GOOD, ScsiStatus.BUSY], 'retryable, never an error the filesystem sees').to.include(a.status);
      const during = await write(4000, 0x77);
      expect(during.status, `a write while the brick is down: ${JSON.stringify(during.senseInfo)}`).to.equal(ScsiStatus.BUSY);
      await gl.restartBrick();
      // The test's client reconnects on its own (every few seconds); later tests create files through it.
      const end = Date.now() + 30000;
      for (;;) {
        try {
          vol.createFile('/reconnected', 0);
          break;
        } catch (e) {
          if (Date.now() > end) throw e;
          await new Promise((res) => setTimeout(res, 200));
        }
      }
      for (let i = 0; i < 32; i++) if (!acked.has(1024 + i * 8)) expectGood((await retryBusy(() => write(1024 + i * 8, 0x40 + i), 40000)).r, 'retried write');
      expectGood((await retryBusy(() => write(4000, 0x77), 40000)).r);
      const img = onBrick(file);
      expect(acked.size).to.equal(16 + 32 + 1);
      for (const [lba, v] of acked) expect(img.subarray(lba * BS, (lba + 8) * BS).every((x) => x === v), `LBA ${lba}`).to.equal(true);
    });
  });

  describe('two gateways on one file (mandatory locks)', () => {
    const block = (v: number) => new Uint8Array(BS).fill(v);
    const io = (lba: number, data: Uint8Array) => makeBlockIo({ lba, blocks: data.length / BS, blockSize: BS, buffers: [data] });

    it('taking the lock preempts the holder: its writes fail EBUSY, it reports the lock lost, nothing it sends lands', async () => {
      const file = newFile(MiB);
      const lost: string[] = [];
      // Two clients (glfs_t) in one process: A over TCP, B over glusterd's unix socket; locks belong to a client.
      const dev = (cfg: string, who: string): HandlerDevice => ({ ...makeHandlerDevice({ cfgstring: cfg, name: who, numLbas: MiB / BS }), notifyLockLost: () => lost.push(who) });
      const a: DeviceHandler = await glfsHandler.open(dev(gl.cfg(file), 'A'), false);
      const b: DeviceHandler = await glfsHandler.open(dev(`${gl.volume}@unix/${file};socket=${gl.socket}`, 'B'), false);
      try {
        await a.lock!(1);
        expect(await a.getLockState!()).to.equal('locked');
        expect(await b.getLockTag!()).to.equal(1);
        await a.write!(io(0, block(0xaa)));
        const refused = async (h: DeviceHandler, lba: number, v: number): Promise<string | undefined> => {
          try {
            await h.write!(io(lba, block(v)));
          } catch (e) {
            return (e as { code?: string }).code;
          }
          return undefined;
        };
        expect(await refused(b, 1, 0xbe), 'B without the lock').to.equal('EBUSY');
        await b.lock!(2);
        expect(await b.getLockTag!()).to.equal(2);
        expect(await refused(a, 2, 0xee), 'A was preempted').to.equal('EBUSY');
        expect(lost).to.deep.equal(['A']);
        expect(await a.getLockState!()).to.equal('unlocked');
        await b.write!(io(3, block(0xbb)));
        let img = onBrick(file);
        expect([img[0], img[BS], img[2 * BS], img[3 * BS]], 'only the holders\' writes landed').to.deep.equal([0xaa, 0, 0, 0xbb]);
        // Hand-over back: A takes the lock, B is fenced.
        await a.lock!(1);
        await a.write!(io(4, block(0xa4)));
        expect(await refused(b, 5, 0xb5)).to.equal('EBUSY');
        expect(lost).to.deep.equal(['A', 'B']);
        await a.unlock!();
        expect(await a.getLockState!()).to.equal('unlocked');
        img = onBrick(file);
        expect([img[4 * BS], img[5 * BS]]).to.deep.equal([0xa4, 0]);
      } finally {
        await a.close();
        await b.close();
      }
    });

    it('two gateway processes with ALUA implicit failover: A killed -9, B takes over with every acknowledged write; A back writes only after taking the lock, fencing B', async () => {
      const file = newFile(MiB);
      await aluaFailover((name) => new Gateway(name, gl.cfg(file), MiB / BS, 'glfs'), (offset) => onBrick(file)[offset], BS);
    });
  });
});
