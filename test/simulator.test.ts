import { expect } from 'chai';
import assert from 'node:assert/strict';
import {
  KernelSimulator, Mailbox, MailboxFlag, EntryOp, CmdReq, ScsiStatus, SenseKey, cmdEntrySize, alignUp,
  parseSense, cdbRead10, cdbWrite10, pollIn, readEvent, Initiator, type SimTask,
} from '@tcmu-ts/ring';
import { RamBackend, cdbOfLength, entryAt, mbHead, mbTail, randInt, rng, roundTrip } from './simulator-harness.test.js';

const MIB = 1 << 20;

describe('kernel simulator: layout and mailbox', () => {
  it('lays out mailbox, ring and data area as the kernel does for each cmd_ring_size_mb', async () => {
    for (const mb of [1, 2, 5, 8]) {
      const sim = new KernelSimulator({ cmdRingSizeMb: mb, maxDataAreaMb: 2, autoKicks: false });
      try {
        const L = sim.layout;
        expect(L.cmdrOff).to.equal(128);
        expect(L.cmdrSize).to.equal(mb * MIB - 128);
        expect(L.dataOff).to.equal(mb * MIB);
        expect(L.dataOff % 4096).to.equal(0);
        expect(L.dataSize).to.equal(2 * MIB);
        expect(L.mapSize).to.equal(L.dataOff + L.dataSize);
        expect(sim.endpoint.mapSize).to.equal(L.mapSize);
        const dv = new DataView(sim.map);
        expect(dv.getUint16(Mailbox.VERSION, true)).to.equal(2);
        expect(dv.getUint16(Mailbox.FLAGS, true)).to.equal(MailboxFlag.CAP_OOOC | MailboxFlag.CAP_READ_LEN | MailboxFlag.CAP_TMR | MailboxFlag.CAP_KEEP_BUF);
        expect(dv.getUint32(Mailbox.CMDR_OFF, true)).to.equal(128);
        expect(dv.getUint32(Mailbox.CMDR_SIZE, true)).to.equal(mb * MIB - 128);
        expect(mbHead(sim)).to.equal(0);
        expect(mbTail(sim)).to.equal(0);
      } finally {
        await sim.close();
      }
    }
  });

  it('clamps and validates configfs attributes like the kernel', async () => {
    const big = new KernelSimulator({ cmdRingSizeMb: 64, maxDataAreaMb: 1, autoKicks: false });
    expect(big.layout.cmdrSize).to.equal(8 * MIB - 128);
    await big.close();
    const blk = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, dataPagesPerBlk: 3, autoKicks: false });
    expect(blk.layout.blockSize).to.equal(3 * 4096);
    expect(blk.layout.maxBlocks).to.equal(85); // 256 pages / 3, the remainder is never used
    await blk.close();
    expect(() => new KernelSimulator({ cmdRingSizeMb: 0 })).to.throw(RangeError);
    expect(() => new KernelSimulator({ maxDataAreaMb: 1, dataPagesPerBlk: 257 })).to.throw(RangeError);
    expect(() => new KernelSimulator({ qfullTimeOutSec: -2 })).to.throw(RangeError);
  });

  it('honours custom mailbox flags and a default 8 MiB ring', async () => {
    const sim = new KernelSimulator({ mailboxFlags: MailboxFlag.CAP_OOOC, maxDataAreaMb: 1, autoKicks: false });
    expect(new DataView(sim.map).getUint16(Mailbox.FLAGS, true)).to.equal(MailboxFlag.CAP_OOOC);
    expect(sim.layout.cmdrSize).to.equal(8 * MIB - 128);
    await sim.close();
  });
});

describe('kernel simulator: queueing a command', () => {
  let sim: KernelSimulator;
  let be: RamBackend;
  beforeEach(() => {
    sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 4, autoKicks: false });
    be = new RamBackend(sim, { blockSize: 512, blocks: 4096 });
  });
  afterEach(async () => {
    be.close();
    await sim.close();
  });

  it('writes the entry, copies data-out at queue time, publishes head and raises an irq', () => {
    const data = Uint8Array.from({ length: 3 * 512 }, (_, i) => (i * 7) & 0xff);
    const task = sim.start(cdbWrite10(5, 3), { dataOut: data });
    expect(task.cmdId).to.equal(1);
    expect(task.state).to.equal('ring');
    const size = cmdEntrySize(1, 10);
    expect(mbHead(sim)).to.equal(size);
    const e = entryAt(sim, 0);
    expect(e).to.include({ op: EntryOp.CMD, len: size, cmdId: 1 });
    const dv = new DataView(sim.map);
    expect(dv.getUint32(e.base + CmdReq.IOV_CNT, true)).to.equal(1);
    expect(dv.getUint32(e.base + CmdReq.IOV_BIDI_CNT, true)).to.equal(0);
    expect(Number(dv.getBigUint64(e.base + CmdReq.CDB_OFF, true))).to.equal(128 + 0 + 112);
    expect(Number(dv.getBigUint64(e.base + CmdReq.IOV, true))).to.equal(sim.layout.dataOff);
    expect(Number(dv.getBigUint64(e.base + CmdReq.IOV + 8, true))).to.equal(3 * 512);
    expect([...new Uint8Array(sim.map, sim.layout.dataOff, data.length)]).to.deep.equal([...data]);
    expect(readEvent(sim.endpoint.eventFd)).to.equal(1); // the running irq count
    expect(readEvent(sim.endpoint.eventFd)).to.equal(null);
    const [c] = be.takeCommands();
    expect([...c.cdb]).to.deep.equal([...cdbWrite10(5, 3)]);
  });

  it('round-trips writes and reads through the consumer, with the auto kick loop', async () => {
    const auto = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1 });
    const ram = new RamBackend(auto, { blockSize: 512, blocks: 64 });
    // A daemon loop on the main thread: wait for irqs, answer, kick.
    let stop = false;
    const daemon = (async () => {
      while (!stop) {
        const rev = await pollIn(auto.endpoint.eventFd, 50);
        if (!rev) continue;
        ram.drainIrqs();
        const cmds = ram.takeCommands();
        for (const c of cmds) ram.complete(c.cmdId, ram.execute(c));
        if (cmds.length) ram.kick();
      }
    })();
    try {
      const ini = new Initiator(auto, { blockSize: 512 });
      const data = Uint8Array.from({ length: 4096 }, (_, i) => (i * 13 + 1) & 0xff);
      expect((await ini.write(8, data)).ok).to.equal(true);
      const r = await ini.read(8, 8);
      expect(r.ok).to.equal(true);
      expect(Buffer.from(r.data).equals(Buffer.from(data))).to.equal(true);
      const inq = await ini.inquiry(96);
      expect(inq.ok).to.equal(true);
      expect(inq.data.length).to.equal(36); // READ_LEN: only what the backend produced
      expect(inq.residual).to.equal(60);
      expect(auto.counters().kicks).to.be.greaterThan(0);
    } finally {
      stop = true;
      await daemon;
      ram.close();
      await auto.close();
    }
  });

  it('gives each PAD exactly the rest of the ring and starts the next entry at 0, across ring and entry sizes', async () => {
    for (const ringMb of [1, 2, 3]) {
      const s = new KernelSimulator({ cmdRingSizeMb: ringMb, maxDataAreaMb: 1, autoKicks: false });
      const b = new RamBackend(s, { blockSize: 512, blocks: 64 });
      const r = rng(0x5eed + ringMb);
      const size = s.layout.cmdrSize;
      let pads = 0;
      let exactFits = 0;
      let wraps = 0;
      // Answer in batches (one kick each) so the walk over a few MiB of ring stays quick; a batch
      // is far smaller than the ring, so nothing ever waits in the qfull queue.
      let batch: { task: SimTask; cdb: Uint8Array; inLen: number }[] = [];
      const drain = async () => {
        s.unplug();
        const cmds = b.takeCommands();
        assert.equal(cmds.length, batch.length);
        cmds.forEach((c, i) => assert.deepEqual(c.cdb, batch[i].cdb));
        for (const c of cmds) b.complete(c.cmdId, { status: ScsiStatus.GOOD });
        b.kick();
        s.processKicks();
        for (const x of batch) {
          const res = await x.task.result;
          assert.equal(res.status, ScsiStatus.GOOD);
          assert.equal(res.dataIn.length, x.inLen);
        }
        batch = [];
        b.drainIrqs();
        s.plug();
      };
      try {
        s.plug();
        while (wraps < 2) {
          const head = mbHead(s);
          const toEnd = size - head;
          // Mostly random CDB lengths; near the end steer towards the two interesting cases:
          // the first wrap with an entry that does not fit (PAD), the second with an exact fit.
          let entry = 112 + alignUp(randInt(r, 6, 260), 8);
          if (toEnd <= 376 + 120) {
            if (wraps % 2 === 1) entry = toEnd <= 376 ? Math.max(120, toEnd) : toEnd - 200;
            else entry = toEnd < 376 ? Math.max(120, toEnd + 8) : 120;
          }
          const cdbLen = Math.min(entry - 112, 260);
          const cdb = cdbOfLength(cdbLen === 8 && r() < 0.5 ? 6 : cdbLen);
          const blocks = randInt(r, 0, 3);
          const write = r() < 0.5;
          const task = s.start(cdb, blocks === 0 ? {} : write ? { dataOut: new Uint8Array(blocks * 512).fill(blocks) } : { dataInLength: blocks * 512 });
          batch.push({ task, cdb, inLen: blocks && !write ? blocks * 512 : 0 });
          const expected = cmdEntrySize(blocks ? 1 : 0, cdb.length);
          assert.equal(expected, entry);
          let at = head;
          if (toEnd < expected) {
            const pad = entryAt(s, head);
            assert.equal(pad.op, EntryOp.PAD, 'PAD op');
            assert.equal(pad.len, toEnd, 'PAD covers the rest of the ring');
            assert.equal(pad.cmdId, 0);
            at = 0;
            pads++;
            wraps++;
          } else if (toEnd === expected) {
            exactFits++;
            wraps++;
          }
          const e = entryAt(s, at);
          assert.deepEqual([e.op, e.len, e.cmdId], [EntryOp.CMD, expected, task.cmdId], `entry after head ${head}`);
          const cdbOff = Number(new DataView(s.map).getBigUint64(e.base + CmdReq.CDB_OFF, true));
          assert.equal(cdbOff, 128 + at + expected - alignUp(cdb.length, 8));
          assert.equal(mbHead(s), (at + expected) % size);
          if (batch.length === 64 || at === 0) await drain();
        }
        await drain();
        expect(pads, `PADs on a ${ringMb} MiB ring`).to.equal(1);
        expect(exactFits, `exact fits on a ${ringMb} MiB ring`).to.equal(1);
        expect(s.counters().padEntries).to.equal(pads);
        expect(s.counters().ringBytesUsed).to.equal(0);
      } finally {
        b.close();
        await s.close();
      }
    }
  });

  it('merges adjacent data blocks into one iovec and splits at holes (lowest free block first)', async () => {
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, dataPagesPerBlk: 2, autoKicks: false });
    const b = new RamBackend(s);
    const blk = s.layout.blockSize; // 8 KiB
    try {
      // Eight one-block reads hold blocks 0..7; answering 1, 3, 4 and 6 with KEEP_BUF pins those.
      const tasks: SimTask[] = [];
      for (let i = 0; i < 8; i++) tasks.push(s.start(cdbRead10(i, 1), { dataInLength: blk }));
      const cmds = b.takeCommands();
      expect(cmds.map((c) => (c.iovs[0].offset - s.layout.dataOff) / blk)).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7]);
      for (const c of cmds) b.complete(c.cmdId, { status: 0, opts: { keepBuf: [1, 3, 4, 6].includes(c.cmdId - 1) } });
      b.kick();
      s.processKicks();
      await Promise.all(tasks.map((t) => t.result));
      expect(s.counters().dataBlocksUsed).to.equal(4);
      // Free: 0, 2, 5, 7, 8, ... A 5.5-block write takes 0 | 2 | 5 | 7,8 (merged) = 4 iovecs.
      const data = Uint8Array.from({ length: 5 * blk + blk / 2 }, (_, i) => (i >> 3) & 0xff);
      const at = mbHead(s);
      const t = s.start(cdbWrite10(0, 1), { dataOut: data });
      const [c] = b.takeCommands();
      const rel = c.iovs.map((v) => [(v.offset - s.layout.dataOff) / blk, v.length]);
      expect(rel).to.deep.equal([[0, blk], [2, blk], [5, blk], [7, blk + blk + blk / 2]]);
      expect(entryAt(s, at).len).to.equal(cmdEntrySize(4, 10));
      // The data went into the blocks in order.
      const got = new Uint8Array(data.length);
      let o = 0;
      for (const v of c.iovs) {
        got.set(b.consumer.view(v), o);
        o += v.length;
      }
      expect(Buffer.from(got).equals(Buffer.from(data))).to.equal(true);
      b.complete(c.cmdId, { status: 0 });
      b.kick();
      s.processKicks();
      expect((await t.result).status).to.equal(0);
    } finally {
      b.close();
      await s.close();
    }
  });

  it('keeps a bidi command\'s data-in iovecs separate and returns data-in limited to the data-out length', async () => {
    const out = new Uint8Array(1000).fill(0xaa);
    const t = sim.start(cdbOfLength(16), { dataOut: out, dataInLength: 5000 });
    const [c] = be.takeCommands();
    expect(c.iovs).to.have.length(1);
    expect(c.bidiIovs).to.have.length(1);
    expect(c.iovs[0].length).to.equal(1000);
    expect(c.bidiIovs[0].length).to.equal(5000);
    expect(c.bidiIovs[0].offset).to.equal(sim.layout.dataOff + 4096); // its own block, right after
    be.consumer.view(c.bidiIovs[0]).fill(0x55);
    be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    const r = await t.result;
    expect(r.dataIn.length).to.equal(1000); // the kernel gathers bidi data-in up to data_length
    expect(r.dataIn.every((x) => x === 0x55)).to.equal(true);
  });

  it('copies the CDB as long as the kernel sizes it, zero-filling a short buffer', async () => {
    const t = sim.start(Uint8Array.of(0x88, 1, 2)); // a 16-byte opcode with 3 bytes given
    const [c] = be.takeCommands();
    expect([...c.cdb]).to.deep.equal([0x88, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    await t.result;
    const long = new Uint8Array(270);
    long[0] = 0x7f;
    long[7] = 255; // 263 bytes: more than LIO takes
    const r = await sim.submit(long);
    expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect(r.failure).to.equal('cdb-too-long');
    expect(parseSense(r.sense)).to.include({ key: SenseKey.ILLEGAL_REQUEST, asc: 0x24 });
  });

  it('fails data larger than the whole data area with INVALID FIELD IN CDB, without touching the ring', async () => {
    const r = await sim.submit(cdbRead10(0, 1), { dataInLength: 4 * MIB + 1 });
    expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect(r.failure).to.equal('data-too-big');
    expect(parseSense(r.sense)).to.include({ key: SenseKey.ILLEGAL_REQUEST, asc: 0x24, ascq: 0 });
    expect(mbHead(sim)).to.equal(0);
    expect(sim.counters().dataBlocksUsed).to.equal(0);
    // Exactly the data area is fine.
    const ok = sim.start(cdbRead10(0, 1), { dataInLength: 4 * MIB });
    expect(ok.state).to.equal('ring');
    be.serve();
    expect((await ok.result).status).to.equal(0);
  });

  it('hands out the lowest free cmd id, like the kernel\'s xarray allocator', async () => {
    const tasks = Array.from({ length: 10 }, (_, i) => sim.start(cdbRead10(i, 1), { dataInLength: 512 }));
    expect(tasks.map((t) => t.cmdId)).to.deep.equal([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    const cmds = be.takeCommands();
    for (const id of [7, 3, 9]) be.complete(id, { status: 0 });
    be.kick();
    sim.processKicks();
    const next = [sim.start(cdbRead10(0, 1)), sim.start(cdbRead10(0, 1)), sim.start(cdbRead10(0, 1)), sim.start(cdbRead10(0, 1))];
    expect(next.map((t) => t.cmdId)).to.deep.equal([3, 7, 9, 11]);
    for (const c of cmds) if (![7, 3, 9].includes(c.cmdId)) be.complete(c.cmdId, { status: 0 });
    for (const c of be.takeCommands()) be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    await Promise.all([...tasks, ...next].map((t) => t.result));
    expect(sim.counters().idsInUse).to.equal(0);
  });

  it('refuses an entry that would fill the ring to the last byte (one byte stays free) until a completion', async () => {
    // 1 MiB ring: 2788 entries of 376 bytes leave 160 bytes before the end; tail stays at 0.
    const size = sim.layout.cmdrSize;
    const big = cdbOfLength(260);
    expect(cmdEntrySize(0, 260)).to.equal(376);
    const n = Math.floor(size / 376);
    const tasks: SimTask[] = [];
    for (let i = 0; i < n; i++) tasks.push(sim.start(big));
    expect(tasks.every((t) => t.state === 'ring')).to.equal(true);
    expect(mbHead(sim)).to.equal(n * 376);
    const toEnd = size - n * 376;
    expect(toEnd).to.equal(160);
    // A 160-byte entry would make head == tail: full would look empty.
    const exact = sim.start(cdbOfLength(48));
    expect(exact.state).to.equal('qfull');
    expect(sim.counters().qfullQueued).to.equal(1);
    // Order is kept: a smaller one that would fit waits behind it.
    const small = sim.start(cdbOfLength(6));
    expect(small.state).to.equal('qfull');
    expect(sim.counters().qfullDepth).to.equal(2);
    expect(sim.counters().ringBytesUsed).to.equal(n * 376);
    // One completion frees 376 bytes at the start: the 160-byte entry now fits exactly at the end
    // (no PAD), head wraps to 0, and the small one goes at 0.
    const ringed = be.takeCommands();
    be.complete(ringed[0].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(exact.state).to.equal('ring');
    expect(entryAt(sim, n * 376)).to.include({ op: EntryOp.CMD, len: 160, cmdId: exact.cmdId });
    expect(entryAt(sim, 0)).to.include({ op: EntryOp.CMD, len: 120, cmdId: small.cmdId });
    expect(sim.counters().padEntries).to.equal(0);
    expect(mbHead(sim)).to.equal(120);
    // The rest drains normally.
    for (const c of [...ringed.slice(1), ...be.takeCommands()]) be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    await Promise.all([...tasks, exact, small].map((t) => t.result));
    expect(sim.counters().ringBytesUsed).to.equal(0);
  });

  it('counts the PAD in the space an entry needs at the end of the ring', async () => {
    // Fill to 160 bytes before the end, then free exactly one 376-byte entry at the start:
    // a 376-byte entry needs 376 + 160 (PAD) but only 160 + 376 - 1 are free.
    const size = sim.layout.cmdrSize;
    const n = Math.floor(size / 376);
    const tasks: SimTask[] = [];
    for (let i = 0; i < n; i++) tasks.push(sim.start(cdbOfLength(260)));
    const cmds = be.takeCommands();
    be.complete(cmds[0].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(sim.counters().ringBytesUsed).to.equal((n - 1) * 376);
    const t = sim.start(cdbOfLength(260));
    expect(t.state).to.equal('qfull');
    // One more completion and it goes in behind a PAD.
    be.complete(cmds[1].cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    expect(t.state).to.equal('ring');
    expect(entryAt(sim, n * 376)).to.include({ op: EntryOp.PAD, len: 160 });
    expect(entryAt(sim, 0)).to.include({ op: EntryOp.CMD, len: 376, cmdId: t.cmdId });
    for (const c of [...cmds.slice(2), ...be.takeCommands()]) be.complete(c.cmdId, { status: 0 });
    be.kick();
    sim.processKicks();
    await Promise.all([...tasks, t].map((x) => x.result));
    expect(sim.counters().ringBytesUsed).to.equal(0);
  });

  it('passes status, sense, READ_LEN and UNKNOWN_OP through as LIO would', async () => {
    const rd = sim.start(cdbRead10(0, 8), { dataInLength: 4096 });
    const [c] = be.takeCommands();
    be.scatter(c, new Uint8Array(4096).fill(9));
    be.complete(c.cmdId, { status: 0, opts: { readLen: 1636 } });
    be.kick();
    sim.processKicks();
    let r = await rd.result;
    expect(r.status).to.equal(0);
    expect(r.dataIn.length).to.equal(1636);
    expect(r.residual).to.equal(4096 - 1636);

    // CHECK CONDITION: userspace's 96 sense bytes, no data unless READ_LEN came with it.
    const sense = new Uint8Array(96);
    sense.set([0x70, 0, SenseKey.MEDIUM_ERROR, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x11, 0x00]);
    const bad = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    const [c2] = be.takeCommands();
    be.complete(c2.cmdId, { status: ScsiStatus.CHECK_CONDITION, opts: { sense } });
    be.kick();
    sim.processKicks();
    r = await bad.result;
    expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect([...r.sense]).to.deep.equal([...sense]);
    expect(r.dataIn.length).to.equal(0);

    const partial = sim.start(cdbRead10(0, 4), { dataInLength: 2048 });
    const [c3] = be.takeCommands();
    be.complete(c3.cmdId, { status: ScsiStatus.CHECK_CONDITION, opts: { sense, readLen: 1024 } });
    be.kick();
    sim.processKicks();
    r = await partial.result;
    expect(r.dataIn.length).to.equal(1024);
    expect(r.residual).to.equal(1024);
    expect(parseSense(r.sense)).to.include({ key: SenseKey.MEDIUM_ERROR, asc: 0x11 });

    // Any other non-GOOD status goes out bare.
    const busy = sim.start(cdbRead10(0, 1), { dataInLength: 512 });
    be.complete(be.takeCommands()[0].cmdId, { status: ScsiStatus.BUSY, opts: { readLen: 100 } });
    be.kick();
    sim.processKicks();
    r = await busy.result;
    expect(r).to.include({ status: ScsiStatus.BUSY, residual: 0 });
    expect(r.dataIn.length).to.equal(0);

    // UNKNOWN_OP: the kernel answers CHECK CONDITION and the core adds LU communication failure.
    const unk = sim.start(Uint8Array.of(0xc5, 0, 0, 0, 0, 0, 0, 0, 0, 0));
    const [c4] = be.takeCommands();
    be.consumer.unknownOp(c4.cmdId);
    be.kick();
    sim.processKicks();
    r = await unk.result;
    expect(r.status).to.equal(ScsiStatus.CHECK_CONDITION);
    expect(r.failure).to.equal('unknown-op');
    expect(parseSense(r.sense)).to.include({ key: SenseKey.NOT_READY, asc: 0x08, ascq: 0 });
  });

  it('enforces the half-ring limit on entry size at exactly cmdr_size / 2', async function () {
    this.timeout(60000);
    // 1 MiB ring: half is 524224 bytes. With a 10-byte CDB, 32760 iovecs make exactly that and
    // 32761 one more. Fragment a 256 MiB data area by pinning every other block with KEEP_BUF.
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 256, autoKicks: false });
    const b = new RamBackend(s);
    try {
      const half = s.layout.cmdrSize / 2;
      expect(cmdEntrySize(32760, 10)).to.equal(half);
      expect(cmdEntrySize(32761, 10)).to.be.greaterThan(half);
      const pinned = 65522;
      let submitted = 0;
      while (submitted < pinned) {
        s.plug();
        const batch = Math.min(4000, pinned - submitted);
        for (let i = 0; i < batch; i++) void s.submit(cdbRead10(0, 1), { dataInLength: 1 });
        s.unplug();
        submitted += batch;
        for (const c of b.takeCommands()) b.consumer.complete(c.cmdId, 0, { keepBuf: true });
        b.kick();
        s.processKicks();
      }
      expect(s.counters()).to.include({ keptBuffers: pinned, dataBlocksUsed: pinned, idsInUse: pinned, ringBytesUsed: 0 });
      for (let id = 1; id <= pinned; id += 2) s.freeKeptBuf(id); // id k holds block k-1: frees 0, 2, 4, ...
      expect(s.counters().dataBlocksUsed).to.equal(pinned / 2);

      const tooBig = await s.submit(cdbRead10(0, 1), { dataInLength: 32761 * 4096 });
      expect(tooBig.status).to.equal(ScsiStatus.CHECK_CONDITION);
      expect(tooBig.failure).to.equal('cmd-too-big');
      expect(parseSense(tooBig.sense)).to.include({ key: SenseKey.ILLEGAL_REQUEST, asc: 0x24 });
      expect(s.counters().dataBlocksUsed).to.equal(pinned / 2); // its blocks went back

      const atLimit = s.start(cdbRead10(0, 1), { dataInLength: 32760 * 4096 });
      expect(atLimit.state).to.equal('ring');
      const [c] = b.takeCommands();
      expect(c.iovs).to.have.length(32760);
      expect(entryAt(s, 0).len).to.equal(half);
      b.consumer.complete(c.cmdId, ScsiStatus.GOOD, { readLen: 1 });
      b.kick();
      s.processKicks();
      expect((await atLimit.result).dataIn.length).to.equal(1);
    } finally {
      b.close();
      await s.close();
    }
  });

  it('roundTrip helper: a write then a read see the same bytes', async () => {
    const data = Uint8Array.from({ length: 1024 }, (_, i) => 255 - (i & 0xff));
    expect((await roundTrip(sim, be, cdbWrite10(100, 2), { dataOut: data })).status).to.equal(0);
    const r = await roundTrip(sim, be, cdbRead10(100, 2), { dataInLength: 1024 });
    expect(Buffer.from(r.dataIn).equals(Buffer.from(data))).to.equal(true);
  });

  it('closes cleanly: outstanding commands fail, the fds are released', async () => {
    const s = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1 });
    const p = s.submit(cdbRead10(0, 1), { dataInLength: 512 });
    await s.close();
    const r = await p;
    expect(r.failure).to.equal('closed');
    expect(s.isClosed).to.equal(true);
    expect((await s.submit(cdbRead10(0, 1))).failure).to.equal('closed');
    expect(() => s.resetRing()).to.throw(/closed/);
    await s.close(); // idempotent
  });
});
