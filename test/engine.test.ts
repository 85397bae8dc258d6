import { expect } from 'chai';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Initiator, ScsiStatus, cdbWrite10, cdbModeSense6 } from '@tcmu-ts/ring';
import { Supervisor, SimulatedBackend, DeviceOpenError, type DeviceSpec } from '@tcmu-ts/workers';
import { fillBlocks, checkBlocks } from '@tcmu-ts/workers/demo/verify-pattern';

const BS = 512;

function spec(name: string, handlerSpec: string, subtype: string, cfgstring: string, backend: SimulatedBackend, numLbas = 8192): DeviceSpec {
  return {
    name, subtype, cfgstring, handlerSpec, blockSize: BS, numLbas, maxXferBlocks: 1024, writeCache: true,
    serial: `serial-${name}`, wwn: `wwn-${name}`, ring: backend.endpoint,
  };
}

/** Counters are published by the worker right after its kick, so the initiator can see a reply first. */
async function settled<T>(read: () => T, ok: (v: T) => boolean, ms = 2000): Promise<T> {
  const end = Date.now() + ms;
  let v = read();
  while (!ok(v) && Date.now() < end) {
    await new Promise((r) => setTimeout(r, 5));
    v = read();
  }
  return v;
}

function pattern(lba: number, blocks: number, gen: number): Uint8Array {
  const b = new Uint8Array(blocks * BS);
  fillBlocks(b, lba, BS, gen);
  return b;
}

describe('engine end to end through the simulator', function () {
  this.timeout(30000);
  let dir: string;
  let sup: Supervisor;
  const backends: SimulatedBackend[] = [];
  const logs: string[] = [];

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'tcmu-engine-'));
    sup = new Supervisor({ log: (level, dev, msg) => logs.push(`${level} ${dev}: ${msg}`) });
  });
  afterEach(async () => {
    await sup.stop();
    for (const b of backends.splice(0)) await b.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function backend(): SimulatedBackend {
    const b = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 10 });
    backends.push(b);
    return b;
  }

  for (const kind of ['ram', 'file'] as const) {
    describe(`${kind} handler`, () => {
      let ini: Initiator;
      let b: SimulatedBackend;
      beforeEach(async () => {
        b = backend();
        const cfg = kind === 'ram' ? '4M' : join(dir, 'lun.img');
        await sup.addDevice(spec(kind, kind, kind, cfg, b), b);
        ini = new Initiator(b.sim, { blockSize: BS });
      });

      it('writes patterns and reads them back, 64 commands in flight', async () => {
        const writes = [];
        for (let i = 0; i < 64; i++) writes.push(ini.write(i * 16, pattern(i * 16, 16, i + 1)));
        const w = await Promise.all(writes);
        expect(w.every((r) => r.status === ScsiStatus.GOOD)).to.equal(true);
        const reads = await Promise.all(Array.from({ length: 64 }, (_, i) => ini.read(i * 16, 16)));
        const scratch = new Uint8Array(BS);
        reads.forEach((r, i) => {
          expect(r.status).to.equal(ScsiStatus.GOOD);
          expect(checkBlocks(r.data, i * 16, BS, () => i + 1, scratch)).to.equal(-1);
        });
        // Never-written blocks read as zeros.
        const z = await ini.read(5000, 8);
        expect(z.data.every((x) => x === 0)).to.equal(true);
        const snap = await settled(() => sup.snapshot(kind)!, (x) => x.ops.read.commands >= 65);
        expect(snap.ops.write.commands).to.equal(64);
        expect(snap.ops.read.commands).to.equal(65);
        expect(snap.ops.read.bytes).to.equal(64 * 16 * BS + 8 * BS);
      });

      it('answers SYNCHRONIZE CACHE, INQUIRY and READ CAPACITY', async () => {
        expect((await ini.synchronizeCache()).status).to.equal(ScsiStatus.GOOD);
        const inq = await ini.inquiry(96);
        expect(inq.status).to.equal(ScsiStatus.GOOD);
        expect(Buffer.from(inq.data.subarray(8, 16)).toString('latin1')).to.equal('LIO-ORG ');
        const cap = await ini.readCapacity();
        expect(cap.capacity).to.deep.equal({ lastLba: 8191n, blockSize: BS });
        if (kind === 'file') expect(statSync(join(dir, 'lun.img')).size).to.equal(8192 * BS);
      });

      it('rejects an out-of-range LBA with LBA OUT OF RANGE and an unknown opcode with INVALID COMMAND OPERATION CODE', async () => {
        const r = await ini.read(8190, 4);
        expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
        expect(r.senseInfo).to.include({ key: 5, asc: 0x21, ascq: 0 });
        const w = await ini.send(cdbWrite10(8192, 1), { dataOut: new Uint8Array(BS) });
        expect(w.senseInfo).to.include({ key: 5, asc: 0x21 });
        const u = await ini.send(new Uint8Array([0xd3, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
        expect(u.status).to.equal(ScsiStatus.CHECK_CONDITION);
        expect(u.senseInfo).to.include({ key: 5, asc: 0x20, ascq: 0 });
        const snap = await settled(() => sup.snapshot(kind)!, (x) => x.errorsBySenseKey[5] >= 3);
        expect(snap.errorsBySenseKey[5]).to.equal(3);
      });
    });
  }

  it('serves two LUNs on two worker threads at once', async () => {
    const b1 = backend();
    const b2 = backend();
    const d1 = await sup.addDevice(spec('a', 'ram', 'ram', '4M', b1), b1);
    const d2 = await sup.addDevice(spec('b', 'file', 'file', join(dir, 'b.img'), b2), b2);
    expect(d1.worker!.id).to.not.equal(d2.worker!.id);
    const i1 = new Initiator(b1.sim, { blockSize: BS });
    const i2 = new Initiator(b2.sim, { blockSize: BS });
    const jobs = [];
    for (let i = 0; i < 32; i++) {
      jobs.push(i1.write(i * 8, pattern(i * 8, 8, 100 + i)), i2.write(i * 8, pattern(i * 8, 8, 200 + i)));
    }
    await Promise.all(jobs);
    const scratch = new Uint8Array(BS);
    for (let i = 0; i < 32; i++) {
      const [r1, r2] = await Promise.all([i1.read(i * 8, 8), i2.read(i * 8, 8)]);
      expect(checkBlocks(r1.data, i * 8, BS, () => 100 + i, scratch)).to.equal(-1);
      expect(checkBlocks(r2.data, i * 8, BS, () => 200 + i, scratch)).to.equal(-1);
    }
    expect((await settled(() => sup.snapshot('a')!, (x) => x.ops.read.commands >= 32)).ops.write.commands).to.equal(32);
    expect((await settled(() => sup.snapshot('b')!, (x) => x.ops.read.commands >= 32)).ops.write.commands).to.equal(32);
  });

  it('restarts a crashed worker on a reset ring and loses no acknowledged write', async () => {
    const b = backend();
    const handlerPath = fileURLToPath(new URL('./fixtures/crashing-file-handler.js', import.meta.url));
    const dev = await sup.addDevice(spec('crashy', handlerPath, 'crashfile', join(dir, 'c.img'), b), b);
    const ini = new Initiator(b.sim, { blockSize: BS });
    const calls: string[] = [];
    for (const m of ['block', 'resetRing', 'unblock'] as const) {
      const orig = b[m].bind(b);
      b[m] = () => { calls.push(m); orig(); };
    }
    const acked = await Promise.all(Array.from({ length: 40 }, (_, i) => ini.write(i * 4, pattern(i * 4, 4, 7 + i))));
    expect(acked.every((r) => r.ok)).to.equal(true);
    const firstThread = dev.worker!.id;
    const restarted = new Promise((r) => sup.once('device-restarted', r));
    // Commands in flight when the worker dies are failed by the ring reset (BUSY, so initiators retry).
    const inFlight = Promise.all(Array.from({ length: 8 }, (_, i) => ini.write(1000 + i, pattern(1000 + i, 1, 99))));
    const crash = ini.send(new Uint8Array([0xc0, 0, 0, 0, 0, 0]));
    expect((await crash).status).to.equal(ScsiStatus.BUSY);
    await restarted;
    for (const r of await inFlight) expect([ScsiStatus.GOOD, ScsiStatus.BUSY]).to.include(r.status);
    expect(dev.restarts).to.equal(1);
    expect(sup.workerRestarts).to.equal(1);
    // The new worker starts on a reset ring, with the device blocked meanwhile.
    expect(calls).to.deep.equal(['block', 'resetRing', 'unblock']);
    expect(b.sim.counters()).to.include({ broken: false, blocked: false });
    expect(dev.worker!.id).to.not.equal(firstThread);
    expect(logs.some((l) => l.includes('deliberate crash'))).to.equal(true);
    const scratch = new Uint8Array(BS);
    for (let i = 0; i < 40; i++) {
      const r = await ini.read(i * 4, 4);
      expect(r.status).to.equal(ScsiStatus.GOOD);
      expect(checkBlocks(r.data, i * 4, BS, () => 7 + i, scratch), `blocks at ${i * 4}`).to.equal(-1);
    }
    // The device keeps serving new writes after the restart.
    expect((await ini.write(2000, pattern(2000, 2, 5))).ok).to.equal(true);
  });

  it('reports a handler open failure with its reason and errno, and keeps the daemon up', async () => {
    const b = backend();
    const err = await sup.addDevice(spec('bad', 'file', 'file', join(dir, 'missing-dir', 'x.img'), b), b).then(() => null, (e) => e);
    expect(err).to.be.instanceOf(DeviceOpenError);
    expect((err as DeviceOpenError).errno).to.be.greaterThan(0);
    expect((err as DeviceOpenError).reason).to.match(/missing-dir|ENOENT|directory/i);
    expect(sup.devices.has('bad')).to.equal(false);
    // Another device still starts fine.
    const b2 = backend();
    await sup.addDevice(spec('good', 'ram', 'ram', '1M', b2), b2);
    expect((await new Initiator(b2.sim).testUnitReady()).ok).to.equal(true);
  });

  it('answers every command already on the ring before a device stops', async () => {
    const b = backend();
    await sup.addDevice(spec('drain', 'file', 'file', join(dir, 'd.img'), b), b);
    const ini = new Initiator(b.sim, { blockSize: BS });
    const writes = Array.from({ length: 32 }, (_, i) => ini.write(i * 8, pattern(i * 8, 8, 3)));
    expect(b.sim.counters().inflight).to.equal(32);
    await sup.removeDevice('drain');
    const results = await Promise.all(writes);
    expect(results.map((r) => r.status)).to.deep.equal(new Array(32).fill(ScsiStatus.GOOD));
    expect(b.sim.counters().inflight).to.equal(0);
  });

  describe('reconfiguration', () => {
    it('a dev_size change gives CAPACITY DATA HAS CHANGED once, then the new READ CAPACITY', async () => {
      const b = backend();
      await sup.addDevice(spec('grow', 'file', 'file', join(dir, 'g.img'), b), b);
      const ini = new Initiator(b.sim, { blockSize: BS });
      expect((await ini.readCapacity()).capacity!.lastLba).to.equal(8191n);
      expect(await sup.reconfigure('grow', { numLbas: 16384 })).to.equal(0);
      const ua = await ini.read(0, 1);
      expect(ua.status).to.equal(ScsiStatus.CHECK_CONDITION);
      expect(ua.senseInfo).to.include({ key: 6, asc: 0x2a, ascq: 0x09 });
      // INQUIRY would not have consumed it; the unit attention is reported once.
      expect((await ini.read(0, 1)).ok).to.equal(true);
      expect((await ini.readCapacity()).capacity!.lastLba).to.equal(16383n);
      expect(statSync(join(dir, 'g.img')).size).to.equal(16384 * BS);
      expect((await ini.write(16000, pattern(16000, 8, 1))).ok).to.equal(true);
    });

    it('INQUIRY does not consume a pending unit attention', async () => {
      const b = backend();
      await sup.addDevice(spec('ua', 'ram', 'ram', '4M', b), b);
      const ini = new Initiator(b.sim, { blockSize: BS });
      await sup.reconfigure('ua', { numLbas: 4096 });
      expect((await ini.inquiry()).ok).to.equal(true);
      expect((await ini.testUnitReady()).senseInfo).to.include({ key: 6, asc: 0x2a, ascq: 0x09 });
      expect((await ini.testUnitReady()).ok).to.equal(true);
    });

    it('a write-cache change shows in the caching mode page', async () => {
      const b = backend();
      await sup.addDevice(spec('wc', 'ram', 'ram', '4M', b), b);
      const ini = new Initiator(b.sim, { blockSize: BS });
      const wce = async () => {
        const r = await ini.send(cdbModeSense6(0x08), { dataInLength: 0xff });
        expect(r.ok, 'MODE SENSE').to.equal(true);
        const bdl = r.data[3];
        return (r.data[4 + bdl + 2] & 0x04) !== 0;
      };
      expect(await wce()).to.equal(true);
      expect(await sup.reconfigure('wc', { writeCache: false })).to.equal(0);
      await ini.testUnitReady(); // takes the MODE PARAMETERS CHANGED unit attention
      expect(await wce()).to.equal(false);
    });

    it('a dev_config change reopens the handler on the new backing file', async () => {
      const b = backend();
      await sup.addDevice(spec('re', 'file', 'file', join(dir, 'one.img'), b), b);
      const ini = new Initiator(b.sim, { blockSize: BS });
      expect((await ini.write(0, pattern(0, 4, 11))).ok).to.equal(true);
      await sup.reopen('re', { subtype: 'file', cfgstring: join(dir, 'two.img') });
      const r = await ini.read(0, 4);
      expect(r.data.every((x) => x === 0), 'the new file is empty').to.equal(true);
      expect(statSync(join(dir, 'two.img')).size).to.equal(8192 * BS);
      await sup.reopen('re', { subtype: 'file', cfgstring: join(dir, 'one.img') });
      expect(checkBlocks((await ini.read(0, 4)).data, 0, BS, () => 11, new Uint8Array(BS))).to.equal(-1);
    });
  });
});
