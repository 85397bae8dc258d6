/**
 * The per-command path of the engine, driven by hand on this thread: the
 * simulator puts a batch on the ring, the engine drains it once, and we look
 * at the ring before anything else can run. Sync callouts must be completed
 * and kicked inside that one drain, records must be reused, errors must go
 * through the one status table.
 */
import { expect } from 'chai';
import { KernelSimulator, ScsiStatus, cdbRead16, cdbWrite16, WOKEN, clearWake, closeFd, pollInSync, readEvent, wake, wakeFdCreate, type SimResult } from '@tcmu-ts/ring';
import {
  ScsiError, decodeSense, errnoError, statusForError,
  type BlockIo, type Callout, type CompareAndWriteIo, type CompareResult, type DeviceHandler,
} from '@tcmu-ts/core';
import { CounterWriter, createCounterBuffer, readCounters, type DeviceSpec } from '@tcmu-ts/workers';
import { DeviceEngine } from '@tcmu-ts/workers/engine/device-engine';
import { scsiInfoFromSpec } from '@tcmu-ts/workers/engine/scsi-info';

const BS = 512;
const LBAS = 4096;

const rw16 = (read: boolean, lba: number, blocks: number): Uint8Array => (read ? cdbRead16(lba, blocks) : cdbWrite16(lba, blocks));

/** A memory handler whose callouts finish in place (sync) or a turn later (async), and fail on demand. */
class TestHandler implements DeviceHandler {
  readonly data = new Uint8Array(LBAS * BS);
  async = false;
  failWith: unknown = undefined;
  calls = 0;
  read(io: BlockIo): Callout<void> {
    return this.run(() => {
      let at = io.offset;
      for (const b of io.buffers) {
        b.set(this.data.subarray(at, at + b.length));
        at += b.length;
      }
    });
  }
  write(io: BlockIo): Callout<void> {
    return this.run(() => {
      let at = io.offset;
      for (const b of io.buffers) {
        this.data.set(b, at);
        at += b.length;
      }
    });
  }
  compareAndWrite(io: CompareAndWriteIo): CompareResult {
    this.write(io);
    return { ok: true };
  }
  async close(): Promise<void> {}
  private run(fn: () => void): Callout<void> {
    this.calls++;
    if (this.failWith !== undefined) {
      if (this.async) return Promise.reject(this.failWith);
      throw this.failWith;
    }
    if (this.async) return new Promise<void>((r) => setImmediate(() => (fn(), r())));
    fn();
  }
}

interface EngineInternals {
  drain(): void;
}

describe('engine fast path: pooled records, in-place completion, one status table', () => {
  let sim: KernelSimulator;
  let handler: TestHandler;
  let engine: DeviceEngine;
  let counters: SharedArrayBuffer;

  beforeEach(() => {
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8, autoKicks: false });
    handler = new TestHandler();
    const spec: DeviceSpec = {
      name: 'fast', subtype: 'test', cfgstring: '', handlerSpec: 'test', blockSize: BS, numLbas: LBAS,
      maxXferBlocks: 1024, writeCache: true, serial: 'fast', wwn: 'fast', ring: sim.endpoint,
    };
    counters = createCounterBuffer();
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    engine = new DeviceEngine({
      map: sim.map, eventFd: sim.endpoint.eventFd, handler, info: scsiInfoFromSpec(spec, LBAS, handler),
      counters: new CounterWriter(counters), log: quiet, onRingBroken: (r) => { throw new Error(r); },
    });
  });
  afterEach(async () => {
    // Let a kick scheduled by an async completion run before the map goes.
    await new Promise((r) => setImmediate(r));
    await sim.close();
  });

  /** Queue `n` commands under one irq and drain once; returns their results. */
  function batch(n: number, make: (i: number) => Promise<SimResult>): Promise<SimResult>[] {
    sim.plug();
    const results = Array.from({ length: n }, (_, i) => make(i));
    sim.unplug();
    readEvent(sim.endpoint.eventFd);
    (engine as unknown as EngineInternals).drain();
    return results;
  }

  it('completes synchronous callouts inside the drain and kicks once for the batch', async () => {
    const data = new Uint8Array(8 * BS).fill(0x5a);
    const writes = batch(32, (i) => sim.submit(rw16(false, i * 8, 8), { dataOut: data }));
    // Nothing has had a chance to run since drain(): the completions and the kick are already there.
    expect(sim.processKicks()).to.equal(1);
    expect((await Promise.all(writes)).every((r) => r.status === ScsiStatus.GOOD)).to.equal(true);
    const reads = batch(32, (i) => sim.submit(rw16(true, i * 8, 8), { dataInLength: 8 * BS }));
    expect(sim.processKicks()).to.equal(1);
    for (const r of await Promise.all(reads)) {
      expect(r.status).to.equal(ScsiStatus.GOOD);
      expect(r.dataIn.length).to.equal(8 * BS);
      expect(r.dataIn.every((b) => b === 0x5a)).to.equal(true);
    }
    expect(handler.calls).to.equal(64);
  });

  for (const mode of ['sync', 'async'] as const) {
    it(`reuses command records (${mode} callouts): the pool stops growing at the deepest queue in flight`, async () => {
      handler.async = mode === 'async';
      const data = new Uint8Array(4 * BS);
      for (let round = 0; round < 20; round++) {
        const rs = batch(24, (i) => sim.submit(rw16(round % 2 === 0, i * 4, 4), round % 2 === 0 ? { dataInLength: 4 * BS } : { dataOut: data }));
        while (sim.processKicks() === 0) await new Promise((r) => setImmediate(r));
        await Promise.all(rs);
      }
      // In place, one record serves the whole batch; in flight, one per command of the batch,
      // and one more for the read that finds the ring caught up.
      expect(engine.commandRecords).to.equal(mode === 'sync' ? 1 : 25);
      expect(handler.calls).to.equal(20 * 24);
    });
  }

  it('still serves callouts that return promises', async () => {
    handler.async = true;
    const data = new Uint8Array(BS).fill(9);
    const w = batch(4, (i) => sim.submit(rw16(false, i, 1), { dataOut: data }));
    expect(sim.processKicks()).to.equal(0); // nothing is answered before the promises settle
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    expect(sim.processKicks()).to.equal(1);
    expect((await Promise.all(w)).map((r) => r.status)).to.deep.equal([0, 0, 0, 0]);
    expect(handler.data[3 * BS]).to.equal(9);
  });

  for (const mode of ['sync', 'async'] as const) {
    it(`maps a ${mode} callout failure through statusForError (EIO on a write: WRITE ERROR; ETIMEDOUT: BUSY)`, async () => {
      handler.async = mode === 'async';
      handler.failWith = errnoError('EIO', 'injected');
      const [w] = batch(1, () => sim.submit(rw16(false, 0, 1), { dataOut: new Uint8Array(BS) }));
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      sim.processKicks();
      const r = await w;
      expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
      expect(decodeSense(r.sense!)).to.include({ key: 3, asc: 0x0c, ascq: 0 });
      handler.failWith = errnoError('ETIMEDOUT', 'backend slow');
      const [rd] = batch(1, () => sim.submit(rw16(true, 0, 1), { dataInLength: BS }));
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      sim.processKicks();
      expect((await rd).status).to.equal(ScsiStatus.BUSY);
      const snap = readCounters(counters);
      expect(snap.handlerErrors).to.equal(1);
      expect(snap.qfullReplies).to.equal(1);
    });
  }
});

describe('statusForError: the one errno table', () => {
  it('answers retryable errno codes with BUSY or TASK SET FULL and no sense', () => {
    for (const code of ['EAGAIN', 'EWOULDBLOCK', 'EBUSY', 'ETIMEDOUT', 'ESTALE']) {
      expect(statusForError(errnoError(code, 'x')), code).to.deep.equal({ status: ScsiStatus.BUSY, known: true });
    }
    for (const code of ['ENOMEM', 'ENOBUFS']) {
      expect(statusForError(errnoError(code, 'x')), code).to.deep.equal({ status: ScsiStatus.TASK_SET_FULL, known: true });
    }
  });

  it('gives CHECK CONDITION with sense by direction, ScsiError as thrown, and HARDWARE ERROR for the unknown', () => {
    const key = (e: unknown, d: 'read' | 'write') => {
      const r = statusForError(e, d);
      expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
      const s = decodeSense(r.sense!)!;
      return [s.key, s.asc, s.ascq, r.known];
    };
    expect(key(errnoError('EIO', 'x'), 'read')).to.deep.equal([3, 0x11, 0, true]);
    expect(key(errnoError('EIO', 'x'), 'write')).to.deep.equal([3, 0x0c, 0, true]);
    expect(key(errnoError('EDQUOT', 'x'), 'write')).to.deep.equal([7, 0x27, 7, true]);
    expect(key(errnoError('EROFS', 'x'), 'write')).to.deep.equal([7, 0x27, 0, true]);
    expect(key(ScsiError.lbaOutOfRange(), 'read')).to.deep.equal([5, 0x21, 0, true]);
    expect(key(new Error('boom'), 'read')).to.deep.equal([4, 0x44, 0, false]);
    expect(statusForError(errnoError('EIO', 'x'), 'read', true).sense![0]).to.equal(0x72);
  });
});

describe('wake fd: a message cuts a worker poll() short', () => {
  it('pollInSync returns WOKEN at once after wake(), and sleeps again after clearWake()', () => {
    const wakeFd = wakeFdCreate();
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    try {
      const fd = sim.endpoint.eventFd;
      wake(wakeFd);
      const t0 = Date.now();
      const r = pollInSync(fd, 5000, wakeFd);
      expect(Date.now() - t0).to.be.below(1000);
      expect(r & WOKEN).to.equal(WOKEN);
      expect(r & ~WOKEN).to.equal(0);
      clearWake(wakeFd);
      expect(pollInSync(fd, 0, wakeFd)).to.equal(0);
    } finally {
      closeFd(wakeFd);
      void sim.close();
    }
  });
});
