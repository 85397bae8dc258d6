import { expect } from 'chai';
import {
  KernelSimulator, ManualClock, ScsiStatus, SenseKey, EntryHdr, EntryOp, Mailbox, cmdEntrySize, cdbRead10, cdbWrite10,
  lenOp, parseSense,
} from '@tcmu-ts/ring';
import { RamBackend, entryAt, mbHead, mbTail } from './simulator-harness.test.js';

const BLK = 4096;

describe('kernel simulator: cmd_time_out', () => {
  let clock: ManualClock;
  let sim: KernelSimulator;
  let be: RamBackend;
  beforeEach(() => {
    clock = new ManualClock();
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 1000, clock, autoKicks: false });
    be = new RamBackend(sim, { blockSize: 512, blocks: 256 });
  });
  afterEach(async () => {
    be.close();
    await sim.close();
  });

  it('fails an unanswered command at its deadline, then ignores its late completion except to free its blocks', async () => {
    const a = sim.start(cdbRead10(0, 16), { dataInLength: 2 * BLK });
    clock.advance(400);
    const b = sim.start(cdbRead10(0, 8), { dataInLength: BLK });
    clock.advance(599);
    expect(a.state).to.equal('ring');
    clock.advance(1);
    expect([a.state, b.state]).to.deep.equal(['expired', 'ring']);
    const ra = await a.result;
    expect(ra).to.include({ status: ScsiStatus.CHECK_CONDITION, timedOut: true, failure: 'cmd-timeout', cmdId: 1 });
    expect(parseSense(ra.sense)).to.include({ key: SenseKey.NOT_READY, asc: 0x08, ascq: 0 });
    // The expired command still holds its id, ring entry and data blocks.
    const entry = cmdEntrySize(1, 10);
    expect(sim.counters()).to.include({ cmdTimeouts: 1, inflight: 1, idsInUse: 2, dataBlocksUsed: 3, ringBytesUsed: 2 * entry });
    clock.advance(400);
    expect(b.state).to.equal('expired');
    expect(sim.counters().cmdTimeouts).to.equal(2);

    // A new command cannot reuse those ids.
    const c = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    expect(c.cmdId).to.equal(3);

    // Userspace finally answers A (with data) and C; A's answer changes nothing for the initiator.
    const [ca, , cc] = be.takeCommands();
    be.scatter(ca, new Uint8Array(2 * BLK).fill(0xee));
    be.complete(ca.cmdId, { status: ScsiStatus.GOOD });
    be.complete(cc.cmdId, { status: ScsiStatus.GOOD });
    be.kick();
    sim.processKicks();
    expect(sim.counters()).to.include({ lateCompletions: 1, idsInUse: 1, dataBlocksUsed: 1, ringBytesUsed: entry, completed: 1 });
    expect(a.state).to.equal('done');
    expect(await a.result).to.equal(ra);
    expect((await c.result).status).to.equal(ScsiStatus.GOOD);
    // Id 1 is free again, id 2 still held by the expired B.
    const d = sim.start(cdbRead10(0, 1));
    expect(d.cmdId).to.equal(1);
    clock.advance(5000);
    expect(sim.counters().cmdTimeouts).to.equal(3);
  });

  it('answered commands never time out, and the timer follows the oldest one in flight', async () => {
    const a = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    clock.advance(500);
    const b = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    be.serve(); // answers both at t=500
    clock.advance(10_000);
    expect((await a.result).timedOut).to.equal(false);
    expect((await b.result).timedOut).to.equal(false);
    expect(sim.counters().cmdTimeouts).to.equal(0);
    expect(clock.pending).to.equal(0); // nothing in flight: no timer armed
  });

  it('with cmd_time_out 0 nothing expires', async () => {
    const c2 = new ManualClock();
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutSec: 0, clock: c2, autoKicks: false });
    try {
      const t = s.start(cdbRead10(0, 1), { dataInLength: 512 });
      c2.advance(3_600_000);
      expect(t.state).to.equal('ring');
      expect(c2.pending).to.equal(0);
    } finally {
      await s.close();
    }
  });

  it('times out on the real clock too (short timeout)', async () => {
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 30 });
    try {
      const t0 = performance.now();
      const r = await s.submit(cdbRead10(0, 1), { dataInLength: 512 });
      const took = performance.now() - t0;
      expect(r.timedOut).to.equal(true);
      expect(took).to.be.at.least(29).and.below(2000);
    } finally {
      await s.close();
    }
  });
});

describe('kernel simulator: KEEP_BUF and free_kept_buf', () => {
  let sim: KernelSimulator;
  let be: RamBackend;
  beforeEach(() => {
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    be = new RamBackend(sim, { blockSize: 512, blocks: 4096 });
  });
  afterEach(async () => {
    be.close();
    await sim.close();
  });

  it('keeps the data blocks and the id of a command answered with KEEP_BUF until free_kept_buf', async () => {
    const data = new Uint8Array(3 * BLK).fill(0x3c);
    const t = sim.start(cdbWrite10(0, 24), { dataOut: data });
    const [c] = be.takeCommands();
    be.complete(c.cmdId, { status: ScsiStatus.GOOD, opts: { keepBuf: true } });
    be.kick();
    sim.processKicks();
    const r = await t.result;
    expect(r.status).to.equal(ScsiStatus.GOOD);
    expect(t.state).to.equal('kept');
    expect(sim.counters()).to.include({ keptBuffers: 1, dataBlocksUsed: 3, idsInUse: 1, inflight: 0, ringBytesUsed: 0 });
    // The buffer is still there for userspace, and nobody else gets it.
    expect(be.consumer.view(c.iovs[0]).every((x) => x === 0x3c)).to.equal(true);
    const other = sim.start(cdbRead10(0, 1), { dataInLength: BLK });
    expect(other.cmdId).to.equal(2);
    const [oc] = be.takeCommands();
    expect(oc.iovs[0].offset).to.equal(sim.layout.dataOff + 3 * BLK);
    be.complete(oc.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    await other.result;

    expect(() => sim.freeKeptBuf(77)).to.throw(/not found/);
    sim.freeKeptBuf(c.cmdId);
    expect(t.state).to.equal('done');
    expect(sim.counters()).to.include({ keptBuffers: 0, dataBlocksUsed: 0, idsInUse: 0 });
    expect(() => sim.freeKeptBuf(c.cmdId)).to.throw(/not found/);
  });

  it('refuses free_kept_buf for a command still in flight', () => {
    const t = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    expect(() => sim.freeKeptBuf(t.cmdId)).to.throw(/not completed with KEEP_BUF/);
    be.serve();
  });

  it('runs the qfull queue when free_kept_buf releases data space', async () => {
    // Pin the whole 1 MiB data area in two kept buffers, then queue a read.
    const ts = [0, 1].map(() => sim.start(cdbWrite10(0, 1024), { dataOut: new Uint8Array(512 * 1024) }));
    for (const c of be.takeCommands()) be.complete(c.cmdId, { status: 0, opts: { keepBuf: true } });
    be.kick();
    sim.processKicks();
    await Promise.all(ts.map((t) => t.result));
    const q = sim.start(cdbRead10(0, 8), { dataInLength: BLK });
    expect(q.state).to.equal('qfull');
    sim.freeKeptBuf(2);
    expect(q.state).to.equal('ring');
    const [c] = be.takeCommands();
    expect(c.iovs[0].offset).to.equal(sim.layout.dataOff + 512 * 1024); // the second buffer's first block
    be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect((await q.result).status).to.equal(0);
  });

  it('breaks the ring on a second completion of a kept command', async () => {
    const t = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    const u = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    const [c1, c2] = be.takeCommands();
    be.complete(c1.cmdId, { status: 0, opts: { keepBuf: true } });
    be.kick();
    sim.processKicks();
    await t.result;
    // Userspace answers the kept id again in the slot of the other command.
    be.forgeCompletion(c1.cmdId, 0);
    be.kick();
    sim.processKicks();
    expect(sim.isBroken).to.equal(true);
    expect(u.state).to.equal('ring');
    void c2;
    const r = await sim.submit(cdbRead10(0, 1), { dataInLength: 512 });
    expect(r).to.include({ status: ScsiStatus.CHECK_CONDITION, failure: 'broken' });
    expect(parseSense(r.sense)).to.include({ key: SenseKey.NOT_READY, asc: 0x08 });
  });

  it('frees kept buffers when the consumer closes the uio device', async () => {
    const t = sim.start(cdbRead10(0, 8), { dataInLength: BLK });
    const [c] = be.takeCommands();
    be.complete(c.cmdId, { status: 0, opts: { keepBuf: true } });
    be.kick();
    sim.processKicks();
    await t.result;
    expect(sim.counters().keptBuffers).to.equal(1);
    sim.releaseUio();
    expect(sim.counters()).to.include({ keptBuffers: 0, dataBlocksUsed: 0, idsInUse: 0 });
  });

  it('lets an expired command that is answered late with KEEP_BUF keep its buffer', async () => {
    const clock = new ManualClock();
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 100, clock, autoKicks: false });
    const b = new RamBackend(s);
    try {
      const t = s.start(cdbRead10(0, 8), { dataInLength: BLK });
      clock.advance(100);
      expect((await t.result).timedOut).to.equal(true);
      const [c] = b.takeCommands();
      b.complete(c.cmdId, { status: 0, opts: { keepBuf: true } });
      b.kick();
      s.processKicks();
      expect(t.state).to.equal('kept');
      expect(s.counters()).to.include({ keptBuffers: 1, dataBlocksUsed: 1, lateCompletions: 1 });
      s.freeKeptBuf(c.cmdId);
      expect(s.counters()).to.include({ keptBuffers: 0, dataBlocksUsed: 0 });
    } finally {
      b.close();
      await s.close();
    }
  });
});

describe('kernel simulator: broken ring and reset_ring', () => {
  let clock: ManualClock;
  let sim: KernelSimulator;
  let be: RamBackend;
  beforeEach(() => {
    clock = new ManualClock();
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 1000, clock, autoKicks: false });
    be = new RamBackend(sim, { blockSize: 512, blocks: 256 });
  });
  afterEach(async () => {
    be.close();
    await sim.close();
  });

  it('marks the ring broken on a completion for an unknown id and stops reaping', async () => {
    const ts = [0, 1, 2].map((i) => sim.start(cdbRead10(i, 1), { dataInLength: 512 }));
    const cmds = be.takeCommands();
    be.forgeCompletion(999, 0);
    be.complete(cmds[1].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(sim.isBroken).to.equal(true);
    expect(sim.counters().broken).to.equal(true);
    // Nothing after the bad entry was reaped, and nothing will be.
    expect(ts.map((t) => t.state)).to.deep.equal(['ring', 'ring', 'ring']);
    be.complete(cmds[2].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(ts[2].state).to.equal('ring');
    // New commands are refused; the stuck ones run into cmd_time_out.
    expect(await sim.submit(cdbRead10(0, 1))).to.include({ status: ScsiStatus.CHECK_CONDITION, failure: 'broken' });
    clock.advance(1000);
    for (const t of ts) expect((await t.result).failure).to.equal('cmd-timeout');
    // reset_ring clears the state and the ring starts over at 0 with id 1.
    sim.resetRing(1);
    expect(sim.isBroken).to.equal(false);
    expect([mbHead(sim), mbTail(sim)]).to.deep.equal([0, 0]);
    expect(sim.counters()).to.include({ idsInUse: 0, dataBlocksUsed: 0, ringBytesUsed: 0 });
    be.consumer.resync();
    const again = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    expect(again.cmdId).to.equal(1);
    expect(entryAt(sim, 0)).to.include({ op: EntryOp.CMD, cmdId: 1 });
    be.serve();
    expect((await again.result).status).to.equal(0);
  });

  it('calls a ring broken rather than spinning on a zero-length entry at the tail', () => {
    sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    const dv = new DataView(sim.map);
    dv.setUint32(sim.layout.cmdrOff + EntryHdr.LEN_OP, lenOp(0, EntryOp.PAD), true);
    dv.setUint32(Mailbox.CMD_TAIL, 8, true);
    be.kick();
    sim.processKicks();
    expect(sim.isBroken).to.equal(true);
  });

  it('reset_ring 1 answers BUSY and 2 CHECK CONDITION; expired and kept commands just go', async () => {
    for (const level of [1, 2] as const) {
      const expired = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
      clock.advance(1000);
      const kept = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
      const live = sim.start(cdbWrite10(0, 1), { dataOut: new Uint8Array(512) });
      const cmds = be.takeCommands();
      be.complete(cmds[1].cmdId, { status: 0, opts: { keepBuf: true } });
      be.kick();
      sim.processKicks();
      // kept's answer went into the first slot at the tail (out of order); the expired one never gets one.
      await kept.result;
      expect(sim.counters()).to.include({ idsInUse: 3, keptBuffers: 1, inflight: 1 });
      sim.resetRing(level);
      const r = await live.result;
      if (level === 1) expect(r).to.include({ status: ScsiStatus.BUSY, failure: 'reset' });
      else {
        expect(r).to.include({ status: ScsiStatus.CHECK_CONDITION, failure: 'reset' });
        expect(parseSense(r.sense)).to.include({ key: SenseKey.NOT_READY, asc: 0x08 });
      }
      expect((await expired.result).failure).to.equal('cmd-timeout');
      expect([expired.state, kept.state, live.state]).to.deep.equal(['done', 'done', 'done']);
      expect(sim.counters()).to.include({ idsInUse: 0, keptBuffers: 0, inflight: 0, dataBlocksUsed: 0, ringBytesUsed: 0 });
      be.consumer.resync();
    }
  });
});
