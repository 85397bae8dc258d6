import { expect } from 'chai';
import {
  KernelSimulator, ManualClock, ScsiStatus, SenseKey, cmdEntrySize, cdbRead10, cdbWrite10, parseSense, type SimTask,
} from '@tcmu-ts/ring';
import { RamBackend, cdbOfLength, mbHead, rng, randomBytes } from './simulator-harness.test.js';

const KIB = 1024;

/**
 * Fill a 1 MiB ring (tail at 0) so that no entry fits any more: 2788 entries of 376 bytes and
 * one of 120 leave 40 bytes before the end, and a 120-byte entry would need 160 with its PAD.
 */
function fillRing(sim: KernelSimulator): SimTask[] {
  const n = Math.floor(sim.layout.cmdrSize / 376);
  const tasks: SimTask[] = [];
  for (let i = 0; i < n; i++) tasks.push(sim.start(cdbOfLength(260)));
  tasks.push(sim.start(cdbOfLength(6)));
  expect(tasks.every((t) => t.state === 'ring')).to.equal(true);
  expect(sim.layout.cmdrSize - mbHead(sim)).to.equal(40);
  return tasks;
}

describe('kernel simulator: qfull queue', () => {
  it('queues commands while the ring is full and runs them in order as completions come', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    const be = new RamBackend(sim, { blocks: 256 });
    try {
      const ringed = fillRing(sim);
      const first = be.takeCommands();
      const waiting = Array.from({ length: 5 }, (_, i) => sim.start(cdbWrite10(i, 1), { dataOut: new Uint8Array(512).fill(i + 1) }));
      expect(waiting.map((t) => t.state)).to.deep.equal(['qfull', 'qfull', 'qfull', 'qfull', 'qfull']);
      expect(waiting.every((t) => t.cmdId === 0)).to.equal(true);
      let c = sim.counters();
      expect(c.qfullDepth).to.equal(5);
      expect(c.qfullQueued).to.equal(5);
      // Waiting commands hold no data blocks (the kernel gives them back so others can progress).
      expect(c.dataBlocksUsed).to.equal(0);

      // Each 376-byte completion makes room for ~3 of the 128-byte writes, strictly in order.
      be.complete(first[0].cmdId, { status: 0 });
      be.kick();
      sim.processKicks();
      const states = waiting.map((t) => t.state);
      expect(states.indexOf('qfull')).to.be.greaterThan(0);
      expect(states.slice(0, states.indexOf('qfull')).every((s) => s === 'ring')).to.equal(true);
      expect(states.slice(states.indexOf('qfull')).every((s) => s === 'qfull')).to.equal(true);
      c = sim.counters();
      expect(c.qfullDepth).to.equal(states.filter((s) => s === 'qfull').length);

      for (const x of first.slice(1, 4)) be.complete(x.cmdId, { status: 0 });
      be.kick();
      sim.processKicks();
      expect(waiting.every((t) => t.state === 'ring')).to.equal(true);
      expect(sim.counters().qfullDepth).to.equal(0);
      // The data the initiator gave while the ring was full arrived intact.
      for (const x of [...first.slice(4), ...be.takeCommands()]) be.complete(x.cmdId, be.execute(x));
      be.kick();
      sim.processKicks();
      await Promise.all([...ringed, ...waiting].map((t) => t.result));
      for (let i = 0; i < 5; i++) expect(be.store[i * 512]).to.equal(i + 1);
    } finally {
      be.close();
      await sim.close();
    }
  });

  it('queues on a full data area and lets the freed blocks go to the oldest waiter', async () => {
    for (const pagesPerBlk of [1, 4]) {
      // 1 MiB data area: 256 pages. 256 KiB writes take 64 pages each, so four fill it.
      const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, dataPagesPerBlk: pagesPerBlk, autoKicks: false });
      const be = new RamBackend(sim, { blockSize: 512, blocks: 8192 });
      const r = rng(pagesPerBlk);
      try {
        const blocksPerCmd = 256 * KIB / sim.layout.blockSize;
        const payloads = Array.from({ length: 7 }, () => randomBytes(r, 256 * KIB));
        const tasks = payloads.map((p, i) => sim.start(cdbWrite10(i * 512, 512), { dataOut: p }));
        expect(tasks.map((t) => t.state)).to.deep.equal(['ring', 'ring', 'ring', 'ring', 'qfull', 'qfull', 'qfull']);
        expect(sim.counters()).to.include({ dataBlocksUsed: 4 * blocksPerCmd, dataBlocksTotal: 4 * blocksPerCmd, qfullDepth: 3, qfullQueued: 3 });
        const first = be.takeCommands();
        // Answer the second one: its blocks (the second quarter) go to the fifth write.
        be.complete(first[1].cmdId, be.execute(first[1]));
        be.kick();
        sim.processKicks();
        expect(tasks.map((t) => t.state)).to.deep.equal(['ring', 'done', 'ring', 'ring', 'ring', 'qfull', 'qfull']);
        const [fifth] = be.takeCommands();
        expect(fifth.iovs).to.deep.equal([{ offset: sim.layout.dataOff + 256 * KIB, length: 256 * KIB }]);
        expect(Buffer.from(be.consumer.view(fifth.iovs[0])).equals(Buffer.from(payloads[4]))).to.equal(true);
        // Drain everything; the last two follow as space frees.
        let pending = [first[0], first[2], first[3], fifth];
        while (pending.length) {
          for (const x of pending) be.complete(x.cmdId, be.execute(x));
          be.kick();
          sim.processKicks();
          pending = be.takeCommands();
        }
        const res = await Promise.all(tasks.map((t) => t.result));
        expect(res.every((x) => x.status === ScsiStatus.GOOD)).to.equal(true);
        for (let i = 0; i < 7; i++) {
          expect(Buffer.from(be.store.subarray(i * 256 * KIB, (i + 1) * 256 * KIB)).equals(Buffer.from(payloads[i])), `write ${i}`).to.equal(true);
        }
        // The sixth was put back once when only the fifth fitted: a failed retry counts again.
        expect(sim.counters()).to.include({ dataBlocksUsed: 0, qfullDepth: 0, qfullQueued: 4, inflight: 0 });
      } finally {
        be.close();
        await sim.close();
      }
    }
  });

  it('fails a command after qfull_time_out with TASK SET FULL', async () => {
    const clock = new ManualClock();
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, qfullTimeOutMs: 500, cmdTimeOutMs: 0, clock, autoKicks: false });
    try {
      fillRing(sim);
      const a = sim.start(cdbOfLength(6));
      clock.advance(200);
      const b = sim.start(cdbOfLength(6));
      clock.advance(299);
      expect([a.state, b.state]).to.deep.equal(['qfull', 'qfull']);
      clock.advance(1);
      expect([a.state, b.state]).to.deep.equal(['done', 'qfull']);
      const ra = await a.result;
      expect(ra).to.include({ status: ScsiStatus.TASK_SET_FULL, failure: 'qfull-timeout', cmdId: 0 });
      expect(ra.sense.length).to.equal(0);
      clock.advance(200);
      expect(b.state).to.equal('done');
      expect((await b.result).status).to.equal(ScsiStatus.TASK_SET_FULL);
      expect(sim.counters()).to.include({ qfullTimeouts: 2, qfullDepth: 0, cmdTimeouts: 0 });
    } finally {
      await sim.close();
    }
  });

  it('by default (qfull_time_out -1) waits cmd_time_out in the qfull queue', async () => {
    const clock = new ManualClock();
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, cmdTimeOutMs: 3000, clock, autoKicks: false });
    try {
      const ringed = fillRing(sim);
      const q = sim.start(cdbOfLength(6));
      clock.advance(2999);
      expect(q.state).to.equal('qfull');
      clock.advance(1);
      expect((await q.result).status).to.equal(ScsiStatus.TASK_SET_FULL);
      // The ones on the ring expired at the same moment, differently.
      const r0 = await ringed[0].result;
      expect(r0).to.include({ status: ScsiStatus.CHECK_CONDITION, timedOut: true, failure: 'cmd-timeout' });
    } finally {
      await sim.close();
    }
  });

  it('never queues with qfull_time_out 0: TASK SET FULL at once', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, qfullTimeOutSec: 0, autoKicks: false });
    try {
      fillRing(sim);
      const r = await sim.submit(cdbOfLength(6));
      expect(r).to.include({ status: ScsiStatus.TASK_SET_FULL, failure: 'qfull-disabled' });
      expect(sim.counters()).to.include({ qfullDepth: 0, qfullQueued: 0 });
      // The data area too.
      const d = await sim.submit(cdbRead10(0, 1), { dataInLength: 2 * 1024 * 1024 - 4096 });
      expect(d.failure).to.equal('data-too-big');
    } finally {
      await sim.close();
    }
  });

  it('fails the qfull queue with BUSY when the device is blocked, refuses new commands, and recovers on unblock', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    const be = new RamBackend(sim, { blocks: 256 });
    try {
      const ringed = fillRing(sim);
      const cmds = be.takeCommands();
      const q = [sim.start(cdbOfLength(6)), sim.start(cdbOfLength(6))];
      // Userspace answered one before the block but never kicked: block_dev reaps it first.
      be.complete(cmds[0].cmdId, { status: ScsiStatus.GOOD });
      sim.block();
      expect(sim.isBlocked).to.equal(true);
      expect((await ringed[0].result).status).to.equal(ScsiStatus.GOOD);
      for (const t of q) expect(await t.result).to.include({ status: ScsiStatus.BUSY, failure: 'blocked-qfull' });
      const refused = await sim.submit(cdbRead10(0, 1), { dataInLength: 512 });
      expect(refused).to.include({ status: ScsiStatus.BUSY, failure: 'blocked' });
      expect(refused.sense.length).to.equal(0);
      // Completions still flow while blocked.
      for (const x of cmds.slice(1)) be.complete(x.cmdId, { status: 0 });
      be.kick();
      sim.processKicks();
      await Promise.all(ringed.map((t) => t.result));
      sim.unblock();
      const after = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
      expect(after.state).to.equal('ring');
      be.serve();
      expect((await after.result).status).to.equal(ScsiStatus.GOOD);
    } finally {
      be.close();
      await sim.close();
    }
  });

  it('retries the queue after reset_ring on the emptied ring', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    try {
      const ringed = fillRing(sim);
      const q = sim.start(cdbOfLength(6));
      sim.resetRing(1);
      for (const t of ringed) expect(await t.result).to.include({ status: ScsiStatus.BUSY, failure: 'reset' });
      expect(q.state).to.equal('ring');
      expect(q.cmdId).to.equal(1);
      expect(mbHead(sim)).to.equal(cmdEntrySize(0, 6));
    } finally {
      await sim.close();
    }
  });

  it('answers a retry that fails with a plain CHECK CONDITION, whatever the reason (kernel quirk)', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    const be = new RamBackend(sim, { blocks: 256 });
    try {
      const ringed = fillRing(sim);
      const cmds = be.takeCommands();
      const ok = sim.start(cdbOfLength(6));
      // Too big for the data area, but the queue is checked first, so it waits like the others ...
      const huge = sim.start(cdbRead10(0, 1), { dataInLength: 2 * 1024 * 1024 });
      expect(huge.state).to.equal('qfull');
      be.complete(cmds[0].cmdId, { status: 0 });
      be.kick();
      sim.processKicks();
      // ... and on the retry the size check fails it, reported as LU communication failure
      // instead of the INVALID FIELD IN CDB a fresh submission gets.
      expect(ok.state).to.equal('ring');
      const r = await huge.result;
      expect(r).to.include({ status: ScsiStatus.CHECK_CONDITION, failure: 'requeue-failed' });
      expect(parseSense(r.sense)).to.include({ key: SenseKey.NOT_READY, asc: 0x08, ascq: 0 });
      for (const x of [...cmds.slice(1), ...be.takeCommands()]) be.complete(x.cmdId, { status: 0 });
      be.kick();
      sim.processKicks();
      await Promise.all([...ringed, ok].map((t) => t.result));
    } finally {
      be.close();
      await sim.close();
    }
  });

  it('reports the counters a bench reads', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    const be = new RamBackend(sim, { blocks: 256 });
    try {
      const t = sim.start(cdbWrite10(0, 8), { dataOut: new Uint8Array(4096) });
      let c = sim.counters();
      expect(c).to.include({ ringBytesUsed: cmdEntrySize(1, 10), dataBlocksUsed: 1, inflight: 1, idsInUse: 1, submitted: 1, irqs: 1, kicks: 0 });
      be.serve();
      await t.result;
      c = sim.counters();
      expect(c).to.include({ ringBytesUsed: 0, dataBlocksUsed: 0, inflight: 0, idsInUse: 0, completed: 1, kicks: 1 });
      expect(c.ringSize).to.equal(sim.layout.cmdrSize);
      // A LUN that gets an error answer from userspace still counts as completed.
      const bad = sim.start(cdbRead10(4096, 1), { dataInLength: 512 });
      be.serve();
      expect(parseSense((await bad.result).sense)).to.include({ key: SenseKey.ILLEGAL_REQUEST, asc: 0x21 });
      expect(sim.counters().completed).to.equal(2);
    } finally {
      be.close();
      await sim.close();
    }
  });
});
