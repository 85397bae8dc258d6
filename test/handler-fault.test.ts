/**
 * The fault handler through the kernel simulator and the real engine
 * (serveDevice): injected errors come back with the right sense, rates are
 * right and reproducible with a seed, latency is at least what was asked,
 * a hung command times out in the kernel while the device keeps serving,
 * torn IO is never GOOD and leaves each block old or new, and a run-time
 * change keeps the inner handler (and its data).
 */
import { expect } from 'chai';
import { performance } from 'node:perf_hooks';
import { decodeSense, makeHandlerDevice, type Handler, type HandlerDevice } from '@tcmu-ts/core';
import { FaultDevice, faultHandler, parseFaultConfig, splitFaultConfig, RamDevice } from '@tcmu-ts/handlers';
import {
  KernelSimulator, ScsiStatus, SenseKey, cdbRead16, cdbSynchronizeCache10, cdbWrite16, type SimResult,
} from '@tcmu-ts/ring';
import { serveDevice, type ServedDevice } from '@tcmu-ts/workers';

const BS = 512;
const LBAS = 2048;

/** faultHandler, remembering the device it opened. */
function capturing(): { handler: Handler; dev: () => FaultDevice } {
  let opened: FaultDevice | undefined;
  return {
    handler: { ...faultHandler, async open(d: HandlerDevice, r: boolean) { opened = (await faultHandler.open(d, r)) as FaultDevice; return opened; } },
    dev: () => opened!,
  };
}

function pattern(lba: number, blocks: number, tag: number): Uint8Array {
  const b = new Uint8Array(blocks * BS);
  for (let i = 0; i < blocks; i++) b.fill((tag * 31 + lba + i) & 0xff || 1, i * BS, (i + 1) * BS);
  return b;
}

describe('fault handler: cfgstring', () => {
  it('splits the inner cfgstring from trailing fault options, or at ";;"', () => {
    expect(splitFaultConfig('ram/64M')).to.deep.equal({ inner: 'ram/64M', fields: [] });
    expect(splitFaultConfig('ram/64M;chunk=4k;error=EIO@0.1;latency=3')).to.deep.equal({ inner: 'ram/64M;chunk=4k', fields: ['error=EIO@0.1', 'latency=3'] });
    // The scan stops at the first non-fault field: a fault key before it belongs to the inner handler.
    expect(splitFaultConfig('ram/64M;seed=1;chunk=4k;hang=0.5')).to.deep.equal({ inner: 'ram/64M;seed=1;chunk=4k', fields: ['hang=0.5'] });
    expect(splitFaultConfig('file//img;seed=1;;hang=0.5;seed=2')).to.deep.equal({ inner: 'file//img;seed=1', fields: ['hang=0.5', 'seed=2'] });
  });

  it('parses every option and refuses bad ones with a reason', () => {
    const p = parseFaultConfig('ram/1M;latency=2-20;error=EIO@0.01;werror=ENOSPC@1;rerror=EAGAIN@0.5;hang=0.1@250;partial=0.2;lba=10-20;seed=7');
    expect(p).to.be.an('object');
    const o = (p as Exclude<typeof p, string>).options;
    expect(o).to.deep.include({ latencyMin: 2, latencyMax: 20, hang: 0.1, hangMs: 250, partial: 0.2, lbaStart: 10, lbaEnd: 20, seed: 7 });
    expect(o.errors).to.deep.equal([{ code: 'EIO', rate: 0.01, dir: 'rw' }, { code: 'ENOSPC', rate: 1, dir: 'w' }, { code: 'EAGAIN', rate: 0.5, dir: 'r' }]);
    expect(parseFaultConfig('ram/1M;error=EIO@2')).to.match(/rate "2"/);
    expect(parseFaultConfig('ram/1M;latency=5-1')).to.match(/backwards/);
    expect(parseFaultConfig('ram/1M;;bogus=1')).to.match(/unknown fault option "bogus"/);
    expect(parseFaultConfig('fault/ram/1M')).to.match(/itself/);
    expect(parseFaultConfig(';;latency=1')).to.match(/inner/);
    expect(faultHandler.checkConfig('ram/1M;chunk=3;error=EIO@0.1').ok).to.equal(false); // the inner handler's own check
    expect(faultHandler.checkConfig('nosuch/x;error=EIO@0.1').ok).to.equal(true); // a module handler: checked at open
    expect(faultHandler.checkConfig('ram/1M;chunk=4k;error=EIO@0.1').ok).to.equal(true);
  });

  it('passes the inner handler through: limits without atomic writes, lbaStatus, no faults by default', async () => {
    const dev = makeHandlerDevice({ cfgstring: 'ram/1M;chunk=4k', blockSize: BS });
    const h = (await faultHandler.open(dev, false)) as FaultDevice;
    try {
      expect(dev.numLbas).to.equal(2048); // the inner handler sized the device
      expect(h.inner).to.be.instanceOf(RamDevice);
      expect(h.limits).to.not.have.property('atomicWriteBlocks');
      expect(h.lbaStatus).to.be.a('function');
      expect(h.handleCmd).to.equal(undefined);
      // No fault: the inner handler's synchronous return, no promise.
      const buf = new Uint8Array(BS);
      expect(h.read!({ lba: 0, blocks: 1, offset: 0, length: BS, buffers: [buf], fua: false })).to.equal(undefined);
    } finally {
      await h.close();
    }
  });
});

describe('fault handler: through the simulator and the engine', function () {
  this.timeout(20000);
  let sim: KernelSimulator;
  let served: ServedDevice | undefined;
  let fault: () => FaultDevice;

  async function start(cfg: string, simOpts: ConstructorParameters<typeof KernelSimulator>[0] = {}): Promise<void> {
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 4, ...simOpts });
    const c = capturing();
    fault = c.dev;
    served = await serveDevice({ ring: sim.endpoint, handler: c.handler, cfgstring: cfg, name: 'fault0', blockSize: BS, numLbas: LBAS, log: { warn() {}, error() {} } });
  }
  afterEach(async () => {
    fault?.()?.releaseHeld();
    await served?.stop();
    served = undefined;
    await sim?.close();
  });

  const read = (lba: number, blocks = 1): Promise<SimResult> => sim.submit(cdbRead16(lba, blocks), { dataInLength: blocks * BS });
  const write = (lba: number, data: Uint8Array): Promise<SimResult> => sim.submit(cdbWrite16(lba, data.length / BS), { dataOut: data });
  const sense = (r: SimResult) => decodeSense(r.sense)!;

  it('EIO answers MEDIUM ERROR with the read or the write sense', async () => {
    await start('ram/1M;error=EIO@1');
    const r = await read(5);
    expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect(sense(r)).to.include({ key: SenseKey.MEDIUM_ERROR, asc: 0x11, ascq: 0 }); // UNRECOVERED READ ERROR
    const w = await write(5, pattern(5, 2, 1));
    expect(w.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect(sense(w)).to.include({ key: SenseKey.MEDIUM_ERROR, asc: 0x0c, ascq: 0 }); // WRITE ERROR
  });

  it('ENOSPC answers SPACE ALLOCATION FAILED; werror= leaves reads alone', async () => {
    await start('ram/1M;werror=ENOSPC@1');
    const w = await write(0, pattern(0, 1, 1));
    expect(sense(w)).to.include({ key: SenseKey.DATA_PROTECT, asc: 0x27, ascq: 0x07 });
    expect((await read(0)).status).to.equal(ScsiStatus.GOOD);
    expect((await sim.submit(cdbSynchronizeCache10())).status).to.equal(ScsiStatus.CHECK_CONDITION); // flush counts as a write
  });

  it('injects at the configured rate, the same commands failing for the same seed', async () => {
    const failures = async (seed: number): Promise<number[]> => {
      await start(`ram/1M;error=EIO@0.1;seed=${seed}`);
      // One batch: the ring order (and so the order of the draws) is the submission order.
      sim.plug();
      const all = Array.from({ length: 1000 }, (_, i) => read(i % LBAS));
      sim.unplug();
      const failed: number[] = [];
      (await Promise.all(all)).forEach((r, i) => r.status !== ScsiStatus.GOOD && failed.push(i));
      expect(fault().stats.errors).to.equal(failed.length);
      await served!.stop();
      served = undefined;
      await sim.close();
      return failed;
    };
    const a = await failures(42);
    const b = await failures(42);
    const c = await failures(43);
    expect(a).to.deep.equal(b);
    expect(a).to.not.deep.equal(c);
    // Binomial(1000, 0.1): mean 100, sd 9.5; 5 sd either side.
    expect(a.length).to.be.within(52, 148);
    expect(c.length).to.be.within(52, 148);
  });

  it('lba= limits the faults to a range', async () => {
    await start('ram/1M;error=EIO@1;lba=100-199');
    expect((await read(99)).status).to.equal(ScsiStatus.GOOD);
    expect((await read(98, 2)).status).to.equal(ScsiStatus.GOOD);
    expect((await read(99, 2)).status).to.equal(ScsiStatus.CHECK_CONDITION); // touches 100
    expect((await read(150)).status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect((await read(200)).status).to.equal(ScsiStatus.GOOD);
  });

  it('adds at least the configured latency, within the range', async () => {
    await start('ram/1M;latency=30-40;seed=1');
    for (let i = 0; i < 5; i++) {
      const t0 = performance.now();
      expect((await read(i)).status).to.equal(ScsiStatus.GOOD);
      expect(performance.now() - t0).to.be.at.least(29.5);
    }
    expect(fault().stats.delayed).to.equal(5);
  });

  it('hang: the kernel times the command out, the device keeps serving, the late completion is dropped', async () => {
    await start('ram/1M;hang=1;lba=0-0', { cmdTimeOutMs: 150 });
    await write(8, pattern(8, 1, 3));
    const t0 = performance.now();
    const hung = sim.start(cdbRead16(0, 1), { dataInLength: BS });
    // Meanwhile other commands are served normally.
    for (let i = 1; i < 20; i++) expect((await read(i)).status).to.equal(ScsiStatus.GOOD);
    expect(hung.state).to.equal('ring');
    expect(fault().heldCommands).to.equal(1);
    const r = await hung.result;
    expect(performance.now() - t0).to.be.at.least(149);
    expect(r).to.include({ timedOut: true, failure: 'cmd-timeout', status: ScsiStatus.CHECK_CONDITION });
    expect(sense(r)).to.include({ key: SenseKey.NOT_READY, asc: 0x08 }); // LOGICAL UNIT COMMUNICATION FAILURE
    // Release it: the engine completes it late and the kernel drops that completion.
    fault().releaseHeld();
    const deadline = performance.now() + 2000;
    while (sim.counters().lateCompletions === 0 && performance.now() < deadline) await new Promise((res) => setTimeout(res, 5));
    expect(sim.counters()).to.include({ lateCompletions: 1, cmdTimeouts: 1 });
    const after = await read(8);
    expect(after.status).to.equal(ScsiStatus.GOOD);
    expect(Buffer.from(after.dataIn).equals(Buffer.from(pattern(8, 1, 3)))).to.equal(true);
  });

  it('hang=<rate>@<ms> releases the command by itself', async () => {
    await start('ram/1M;hang=1@50', { cmdTimeOutMs: 5000 });
    const t0 = performance.now();
    const r = await read(0);
    expect(r.status).to.equal(ScsiStatus.GOOD);
    expect(performance.now() - t0).to.be.at.least(49);
    expect(fault().stats).to.include({ hangs: 1, released: 1 });
  });

  it('partial: never GOOD, and every block afterwards holds its old or its new data, whole', async () => {
    await start('ram/1M;partial=1;seed=9');
    const blocks = 16;
    fault().setOptions({ ...fault().options, partial: 0 });
    const old = pattern(0, blocks * 8, 1);
    expect((await write(0, old)).status).to.equal(ScsiStatus.GOOD);
    fault().setOptions({ ...fault().options, partial: 1 });
    const torn: number[] = [];
    for (let k = 0; k < 8; k++) {
      const lba = k * blocks;
      const neu = pattern(lba, blocks, 2);
      const w = await write(lba, neu);
      expect(w.status).to.equal(ScsiStatus.CHECK_CONDITION);
      expect(sense(w)).to.include({ key: SenseKey.MEDIUM_ERROR, asc: 0x0c });
      // A torn read too: CHECK CONDITION, never GOOD.
      expect((await read(lba, blocks)).status).to.equal(ScsiStatus.CHECK_CONDITION);
      fault().setOptions({ ...fault().options, partial: 0 });
      const now = (await read(lba, blocks)).dataIn;
      fault().setOptions({ ...fault().options, partial: 1 });
      let stored = 0;
      for (let i = 0; i < blocks; i++) {
        const got = Buffer.from(now.subarray(i * BS, (i + 1) * BS));
        const wasNew = got.equals(Buffer.from(neu.subarray(i * BS, (i + 1) * BS)));
        const wasOld = got.equals(Buffer.from(old.subarray((lba + i) * BS, (lba + i + 1) * BS)));
        expect(wasNew || wasOld, `block ${lba + i}`).to.equal(true);
        // A prefix is stored: new blocks come first, then old ones.
        if (wasNew && !wasOld) {
          expect(stored, `block ${lba + i} new after an old one`).to.equal(i);
          stored++;
        }
      }
      torn.push(stored);
    }
    expect(fault().stats.partials).to.equal(16);
    expect(torn.some((n) => n > 0)).to.equal(true);
  });

  it('a run-time change swaps the faults in place: the inner handler stays open, its data intact', async () => {
    await start('ram/1M;chunk=4k');
    const data = pattern(40, 8, 5);
    expect((await write(40, data)).status).to.equal(ScsiStatus.GOOD);
    const inner = fault().inner;
    await fault().reconfig({ kind: 'config', cfgstring: 'ram/1M;chunk=4k;error=EIO@1' });
    expect(fault().inner).to.equal(inner);
    expect((await read(40, 8)).status).to.equal(ScsiStatus.CHECK_CONDITION);
    await fault().reconfig({ kind: 'config', cfgstring: 'ram/1M;chunk=4k' });
    const r = await read(40, 8);
    expect(r.status).to.equal(ScsiStatus.GOOD);
    expect(Buffer.from(r.dataIn).equals(Buffer.from(data))).to.equal(true);
    // Another inner cfgstring needs a reopen: refused in place.
    let code: string | undefined;
    await fault().reconfig({ kind: 'config', cfgstring: 'ram/2M;error=EIO@1' }).catch((e) => (code = e.code));
    expect(code).to.equal('EOPNOTSUPP');
    expect((await read(40, 8)).status).to.equal(ScsiStatus.GOOD);
  });

  it('a run-time change releases held commands', async () => {
    await start('ram/1M;hang=1', { cmdTimeOutMs: 10000 });
    const t = sim.start(cdbRead16(3, 1), { dataInLength: BS });
    while (fault().heldCommands === 0) await new Promise((res) => setTimeout(res, 2));
    await fault().reconfig({ kind: 'config', cfgstring: 'ram/1M' });
    expect((await t.result).status).to.equal(ScsiStatus.GOOD);
  });
});
