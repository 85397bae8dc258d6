import { expect } from 'chai';
import {
  KernelSimulator, ManualClock, ScsiStatus, TmrType, EntryOp, cdbRead10, cdbWrite10, tmrEntrySize,
  type RingEntry, type RingTmr, type SimTask,
} from '@tcmu-ts/ring';
import { RamBackend, cdbOfLength, entryAt, mbHead } from './simulator-harness.test.js';

/** Whether a promise has settled, without waiting for it. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  void p.then(() => (done = true));
  await new Promise((r) => setImmediate(r));
  return done;
}

describe('kernel simulator: task management', () => {
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

  // LUN_RESET_PRO was 8 here: a PREEMPT AND ABORT's pseudo reset (128 on the ring) was logged as
  // "type 128" and did not reset the LUN's state in the engine. Found checking TMR kinds for test/kernel/timeouts.sh.
  it('TMR types are the kernel\'s numbers (enum tcmu_tmr_type)', () => {
    expect(TmrType).to.deep.equal({
      UNKNOWN: 0, ABORT_TASK: 1, ABORT_TASK_SET: 2, CLEAR_ACA: 3, CLEAR_TASK_SET: 4, LUN_RESET: 5,
      TARGET_WARM_RESET: 6, TARGET_COLD_RESET: 7, LUN_RESET_PRO: 128,
    });
  });

  it('ABORT TASK of an in-flight command writes a TMR entry with its id and waits for userspace', async () => {
    const ts = [0, 1, 2, 3].map((i) => sim.start(cdbRead10(i, 1), { dataInLength: 512 }));
    const cmds = be.takeCommands();
    const head = mbHead(sim);
    const abort = sim.abortTask(ts[2]);
    expect(entryAt(sim, head)).to.include({ op: EntryOp.TMR, len: tmrEntrySize(1), cmdId: 0 });
    const [tmr] = be.take();
    expect(tmr).to.deep.equal({ kind: 'tmr', tmrType: TmrType.ABORT_TASK, cmdIds: [3] });
    expect(await settled(abort)).to.equal(false); // the TMR response waits for the aborted command
    // The daemon drops what it was doing and answers the aborted command.
    be.complete(3, { status: ScsiStatus.TASK_ABORTED });
    be.kick();
    sim.processKicks();
    const out = await abort;
    expect(out).to.deep.equal({ tmrType: TmrType.ABORT_TASK, found: true, cmdIds: [3], abortedQueued: 0, notified: true });
    const r3 = await ts[2].result;
    expect(r3).to.include({ aborted: true, status: ScsiStatus.TASK_ABORTED });
    // The others complete as usual; the TMR entry is stepped over when reaping.
    for (const c of cmds) if (c.cmdId !== 3) be.complete(c.cmdId, be.execute(c));
    be.kick();
    sim.processKicks();
    for (const i of [0, 1, 3]) expect(await ts[i].result).to.include({ status: 0, aborted: false });
    expect(sim.counters()).to.include({ ringBytesUsed: 0, inflight: 0, tmrEntries: 1 });
  });

  it('ABORT TASK by ring cmd_id; of a finished or expired command it finds nothing and writes nothing', async () => {
    const clock = new ManualClock();
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 100, clock, autoKicks: false });
    const b = new RamBackend(s);
    try {
      const t1 = s.start(cdbRead10(0, 1), { dataInLength: 512 });
      const t2 = s.start(cdbRead10(0, 1), { dataInLength: 512 });
      const [c1] = b.takeCommands();
      b.complete(c1.cmdId, { status: 0 });
      b.kick();
      s.processKicks();
      await t1.result;
      const head = mbHead(s);
      expect(await s.abortTask(t1)).to.include({ found: false, notified: false });
      clock.advance(100);
      expect(t2.state).to.equal('expired');
      expect(await s.abortTask(t2)).to.include({ found: false });
      expect(await s.abortTask(2)).to.include({ found: false });
      expect(mbHead(s)).to.equal(head);
      const t3 = s.start(cdbRead10(0, 1), { dataInLength: 512 });
      const p = s.abortTask(t3.cmdId);
      const es = b.take();
      expect(es.map((e) => e.kind)).to.deep.equal(['cmd', 'tmr']);
      expect((es[1] as RingTmr).cmdIds).to.deep.equal([t3.cmdId]);
      b.complete(t3.cmdId, { status: 0 });
      b.kick();
      s.processKicks();
      expect((await p).cmdIds).to.deep.equal([1]);
      expect((await t3.result).aborted).to.equal(true);
    } finally {
      b.close();
      await s.close();
    }
  });

  it('LUN RESET lists every in-flight id and answers queued commands TASK ABORTED at once', async () => {
    // Four 256 KiB writes fill the 1 MiB data area; two more wait in the qfull queue.
    const ts: SimTask[] = Array.from({ length: 6 }, (_, i) => sim.start(cdbWrite10(i * 512, 512), { dataOut: new Uint8Array(256 * 1024).fill(i) }));
    expect(ts.map((t) => t.state)).to.deep.equal(['ring', 'ring', 'ring', 'ring', 'qfull', 'qfull']);
    const cmds = be.takeCommands();
    const reset = sim.lunReset();
    for (const t of ts.slice(4)) expect(await t.result).to.include({ status: ScsiStatus.TASK_ABORTED, aborted: true, failure: 'tmr-aborted', cmdId: 0 });
    expect(sim.counters().qfullDepth).to.equal(0);
    const [tmr] = be.take() as RingEntry[];
    expect(tmr).to.deep.equal({ kind: 'tmr', tmrType: TmrType.LUN_RESET, cmdIds: [1, 2, 3, 4] });
    // A command submitted after the reset is not covered.
    const after = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    expect(after.state).to.equal('qfull'); // the data area is still full
    expect(await settled(reset)).to.equal(false);
    for (const c of cmds.slice(0, 3)) be.complete(c.cmdId, { status: ScsiStatus.TASK_ABORTED });
    be.kick();
    sim.processKicks();
    expect(await settled(reset)).to.equal(false);
    be.complete(cmds[3].cmdId, { status: ScsiStatus.GOOD });
    be.kick();
    sim.processKicks();
    expect(await reset).to.deep.equal({ tmrType: TmrType.LUN_RESET, found: true, cmdIds: [1, 2, 3, 4], abortedQueued: 2, notified: true });
    for (const t of ts.slice(0, 4)) expect((await t.result).aborted).to.equal(true);
    be.serve();
    expect(await after.result).to.include({ status: 0, aborted: false });
  });

  it('queues a TMR that does not fit and writes it before any waiting command once space frees', async () => {
    // Fill the ring so that 40 bytes remain before the end with tail at 0 (nothing fits).
    const n = Math.floor(sim.layout.cmdrSize / 376);
    const ts: SimTask[] = [];
    for (let i = 0; i < n; i++) ts.push(sim.start(cdbOfLength(260)));
    ts.push(sim.start(cdbOfLength(6)));
    const cmds = be.takeCommands();
    const waiting = sim.start(cdbOfLength(6));
    expect(waiting.state).to.equal('qfull');
    const abort = sim.abortTask(ts[5]);
    expect(sim.counters().tmrQueueDepth).to.equal(1);
    expect(sim.counters().tmrEntries).to.equal(0);
    // One answer frees the first 376 bytes: the 40-byte TMR fits the end exactly, the waiting
    // command goes to offset 0.
    be.complete(cmds[0].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(sim.counters()).to.include({ tmrQueueDepth: 0, tmrEntries: 1, qfullDepth: 0, padEntries: 0 });
    const es = be.take();
    expect(es.map((e) => e.kind)).to.deep.equal(['tmr', 'cmd']);
    expect((es[0] as RingTmr).cmdIds).to.deep.equal([6]);
    expect(waiting.state).to.equal('ring');
    expect(entryAt(sim, 0)).to.include({ op: EntryOp.CMD, cmdId: waiting.cmdId });
    for (const c of [...cmds.slice(1), ...es.filter((e) => e.kind === 'cmd')] as { cmdId: number }[]) be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect((await abort).cmdIds).to.deep.equal([6]);
    await Promise.all([...ts, waiting].map((t) => t.result));
    expect(sim.counters().ringBytesUsed).to.equal(0);
  });

  it('with tmr_notification off, writes no TMR entry but the abort still waits for the command', async () => {
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, tmrNotification: false, autoKicks: false });
    const b = new RamBackend(s);
    try {
      const t = s.start(cdbRead10(0, 1), { dataInLength: 512 });
      const head = mbHead(s);
      const p = s.abortTask(t);
      expect(mbHead(s)).to.equal(head);
      b.serve();
      expect(await p).to.include({ found: true, notified: false });
      expect((await t.result).aborted).to.equal(true);
    } finally {
      b.close();
      await s.close();
    }
  });

  it('drops the TMR on a broken ring', async () => {
    const t = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    be.takeCommands();
    be.forgeCompletion(4242, 0);
    be.kick();
    sim.processKicks();
    expect(sim.isBroken).to.equal(true);
    const head = mbHead(sim);
    const p = sim.abortTask(t);
    expect(mbHead(sim)).to.equal(head);
    sim.resetRing(1);
    expect(await p).to.include({ found: true, notified: false });
    expect((await t.result).failure).to.equal('reset');
  });

  it('an empty LUN RESET still tells userspace', async () => {
    const out = await sim.lunReset();
    expect(out).to.include({ found: true, abortedQueued: 0 });
    expect(out.cmdIds).to.deep.equal([]);
    expect(be.take()).to.deep.equal([{ kind: 'tmr', tmrType: TmrType.LUN_RESET, cmdIds: [] }]);
  });
});
