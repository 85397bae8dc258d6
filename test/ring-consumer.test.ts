import { expect } from 'chai';
import fc from 'fast-check';
import {
  RingConsumer, RingBrokenError, Mailbox, MailboxFlag, EntryHdr, CmdReq, CmdRsp, TmrEntry, EntryOp, UFlag,
  lenOp, cmdEntrySize, tmrEntrySize, type RingEntry,
} from '@tcmu-ts/ring';

/** A hand-built ring, written the way the kernel lays entries out, to test the consumer alone. */
class HandRing {
  readonly buf: ArrayBuffer;
  readonly dv: DataView;
  head = 0;
  constructor(readonly cmdrSize = 4096, readonly dataSize = 65536, flags = MailboxFlag.CAP_OOOC | MailboxFlag.CAP_READ_LEN | MailboxFlag.CAP_TMR | MailboxFlag.CAP_KEEP_BUF) {
    this.buf = new ArrayBuffer(128 + cmdrSize + dataSize);
    this.dv = new DataView(this.buf);
    this.dv.setUint16(Mailbox.VERSION, 2, true);
    this.dv.setUint16(Mailbox.FLAGS, flags, true);
    this.dv.setUint32(Mailbox.CMDR_OFF, 128, true);
    this.dv.setUint32(Mailbox.CMDR_SIZE, cmdrSize, true);
  }
  get dataOff() { return 128 + this.cmdrSize; }
  publish() { this.dv.setUint32(Mailbox.CMD_HEAD, this.head, true); }
  pad() {
    const len = this.cmdrSize - this.head;
    this.dv.setUint32(128 + this.head, lenOp(len, EntryOp.PAD), true);
    this.dv.setUint16(128 + this.head + EntryHdr.CMD_ID, 0, true);
    this.head = 0;
  }
  cmd(id: number, cdb: number[], iovs: [number, number][]): number {
    const len = cmdEntrySize(iovs.length, cdb.length);
    if (this.cmdrSize - this.head < len) this.pad();
    const at = this.head, base = 128 + at;
    new Uint8Array(this.buf, base, len).fill(0);
    this.dv.setUint32(base, lenOp(len, EntryOp.CMD), true);
    this.dv.setUint16(base + EntryHdr.CMD_ID, id, true);
    this.dv.setUint32(base + CmdReq.IOV_CNT, iovs.length, true);
    iovs.forEach(([o, l], i) => {
      this.dv.setBigUint64(base + CmdReq.IOV + 16 * i, BigInt(o), true);
      this.dv.setBigUint64(base + CmdReq.IOV + 16 * i + 8, BigInt(l), true);
    });
    const cdbAt = base + len - Math.ceil(cdb.length / 8) * 8;
    this.dv.setBigUint64(base + CmdReq.CDB_OFF, BigInt(cdbAt), true);
    new Uint8Array(this.buf).set(cdb, cdbAt);
    this.head = (at + len) % this.cmdrSize;
    return at;
  }
  tmr(type: number, ids: number[]) {
    const len = tmrEntrySize(ids.length);
    if (this.cmdrSize - this.head < len) this.pad();
    const base = 128 + this.head;
    this.dv.setUint32(base, lenOp(len, EntryOp.TMR), true);
    this.dv.setUint8(base + TmrEntry.TMR_TYPE, type);
    this.dv.setUint32(base + TmrEntry.CMD_CNT, ids.length, true);
    ids.forEach((id, i) => this.dv.setUint16(base + TmrEntry.CMD_IDS + 2 * i, id, true));
    this.head = (this.head + len) % this.cmdrSize;
  }
  tail() { return this.dv.getUint32(Mailbox.CMD_TAIL, true); }
}

const READ10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];

function drain(c: RingConsumer): RingEntry[] {
  const out: RingEntry[] = [];
  for (let e = c.next(); e; e = c.next()) out.push(e);
  return out;
}

describe('ring consumer', () => {
  it('reads a CMD entry: id, copied CDB and iovecs at the ABI offsets', () => {
    const r = new HandRing();
    r.cmd(7, READ10, [[r.dataOff, 4096], [r.dataOff + 8192, 512]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    const [e] = drain(c);
    expect(e).to.deep.include({ kind: 'cmd', cmdId: 7, dataLength: 4608 });
    if (e.kind !== 'cmd') throw new Error('not a cmd');
    expect([...e.cdb]).to.deep.equal(READ10);
    expect(e.iovs).to.deep.equal([{ offset: r.dataOff, length: 4096 }, { offset: r.dataOff + 8192, length: 512 }]);
    expect(c.inFlight).to.equal(1);
  });

  it('steps over a PAD at the end of the ring and finds the next entry at 0', () => {
    const r = new HandRing(1024);
    for (let id = 1; id <= 7; id++) r.cmd(id, READ10, []); // 7 entries of 128 bytes: 896 of 1024 used
    r.publish();
    const c = new RingConsumer(r.buf);
    expect(drain(c).map((e) => (e.kind === 'cmd' ? e.cmdId : -1))).to.deep.equal([1, 2, 3, 4, 5, 6, 7]);
    for (let id = 1; id <= 7; id++) c.complete(id, 0);
    r.dv.setUint32(Mailbox.CMD_TAIL, r.tail(), true);
    // A 5-iovec entry (128 + 16-byte CDB = 144) cannot fit the last 128 bytes: PAD, then offset 0.
    const at = r.cmd(8, [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [[r.dataOff, 512], [r.dataOff + 4096, 512], [r.dataOff + 8192, 512], [r.dataOff + 12288, 512], [r.dataOff + 16384, 512]]);
    expect(at).to.equal(0);
    r.publish();
    const got = drain(c);
    expect(got).to.have.length(1);
    expect(got[0]).to.include({ kind: 'cmd', cmdId: 8 });
    c.complete(8, 0);
    expect(r.tail()).to.equal(r.head);
  });

  it('completes out of order by writing at the mailbox tail and taking the completed id', () => {
    const r = new HandRing();
    const at1 = r.cmd(1, READ10, []);
    const at2 = r.cmd(2, READ10, []);
    r.publish();
    const c = new RingConsumer(r.buf);
    drain(c);
    const sense = new Uint8Array(18); sense[0] = 0x70; sense[2] = 5; sense[12] = 0x21;
    c.complete(2, 2, { sense });
    // The first entry now carries id 2 and the response; the tail moved past it only.
    expect(r.dv.getUint16(128 + at1 + EntryHdr.CMD_ID, true)).to.equal(2);
    expect(r.dv.getUint8(128 + at1 + CmdRsp.SCSI_STATUS)).to.equal(2);
    expect(r.dv.getUint8(128 + at1 + CmdRsp.SENSE + 12)).to.equal(0x21);
    expect(r.tail()).to.equal(at2);
    c.complete(1, 0, { readLen: 100 });
    expect(r.dv.getUint16(128 + at2 + EntryHdr.CMD_ID, true)).to.equal(1);
    expect(r.dv.getUint8(128 + at2 + EntryHdr.UFLAGS)).to.equal(UFlag.READ_LEN);
    expect(r.dv.getUint32(128 + at2 + CmdRsp.READ_LEN, true)).to.equal(100);
    expect(r.tail()).to.equal(r.head);
  });

  it('sets READ_LEN only when the kernel offers CAP_READ_LEN, and KEEP_BUF / UNKNOWN_OP flags', () => {
    const r = new HandRing(4096, 65536, MailboxFlag.CAP_OOOC);
    const at = r.cmd(1, READ10, []); r.cmd(2, READ10, []); r.cmd(3, READ10, []);
    r.publish();
    const c = new RingConsumer(r.buf);
    drain(c);
    c.complete(1, 0, { readLen: 5, keepBuf: true });
    expect(r.dv.getUint8(128 + at + EntryHdr.UFLAGS)).to.equal(0);
    c.unknownOp(2);
    expect(r.dv.getUint8(128 + at + 128 + EntryHdr.UFLAGS)).to.equal(UFlag.UNKNOWN_OP);
    const r2 = new HandRing();
    const at2 = r2.cmd(9, READ10, []); r2.publish();
    const c2 = new RingConsumer(r2.buf);
    drain(c2);
    c2.complete(9, 0, { keepBuf: true });
    expect(r2.dv.getUint8(128 + at2 + EntryHdr.UFLAGS)).to.equal(UFlag.KEEP_BUF);
  });

  it('reports TMR entries and steps the tail over them when completing', () => {
    const r = new HandRing();
    r.cmd(1, READ10, []); r.tmr(1, [1]); r.cmd(2, READ10, []);
    r.publish();
    const c = new RingConsumer(r.buf);
    const got = drain(c);
    expect(got[1]).to.deep.equal({ kind: 'tmr', tmrType: 1, cmdIds: [1] });
    c.complete(1, 0x40);
    c.complete(2, 0);
    expect(r.tail()).to.equal(r.head);
  });

  it('refuses a second completion of the same id and one for an id never read', () => {
    const r = new HandRing();
    r.cmd(5, READ10, []); r.cmd(6, READ10, []);
    r.publish();
    const c = new RingConsumer(r.buf);
    drain(c);
    c.complete(5, 0);
    const tail = r.tail();
    expect(() => c.complete(5, 0)).to.throw(/not outstanding/);
    expect(() => c.complete(9, 0)).to.throw(/not outstanding/);
    expect(r.tail()).to.equal(tail);
    c.complete(6, 0);
    expect(r.tail()).to.equal(r.head);
  });

  it('refuses a completion with nothing outstanding', () => {
    const r = new HandRing();
    const c = new RingConsumer(r.buf);
    expect(() => c.complete(1, 0)).to.throw(/no command outstanding/);
  });

  it('rejects a mailbox whose ring does not fit the map', () => {
    const r = new HandRing();
    r.dv.setUint32(Mailbox.CMDR_SIZE, 1 << 30, true);
    expect(() => new RingConsumer(r.buf)).to.throw(RingBrokenError);
  });

  it('turns iovecs and CDB offsets past the map into malformed entries for that command', () => {
    const r = new HandRing();
    r.cmd(3, READ10, [[r.dataOff + 65536 - 8, 16]]);
    r.cmd(4, READ10, [[5, 16]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    const got = drain(c);
    expect(got.map((e) => e.kind === 'malformed' && e.reason)).to.deep.equal(['iov-out-of-bounds', 'iov-out-of-bounds']);
    expect(got.map((e) => e.kind === 'malformed' && e.cmdId)).to.deep.equal([3, 4]);
  });

  // Regressions found by the ring fuzz (bench/ring-fuzz.ts).
  it('calls a CMD entry too short for its response a broken ring, and writes nothing past it', () => {
    const r = new HandRing();
    // 64 bytes, op CMD, id 9: answering it would write 96 bytes of sense from offset 16, into the next entry.
    r.dv.setUint32(128, lenOp(64, EntryOp.CMD), true);
    r.dv.setUint16(128 + EntryHdr.CMD_ID, 9, true);
    r.head = 64;
    r.cmd(10, READ10, [[r.dataOff, 512]]);
    r.publish();
    const before = new Uint8Array(r.buf.slice(128 + 64, 128 + 64 + 128));
    const c = new RingConsumer(r.buf);
    expect(() => c.next()).to.throw(RingBrokenError, /too few to hold its response/);
    expect(new Uint8Array(r.buf.slice(128 + 64, 128 + 64 + 128))).to.deep.equal(before);
    expect(c.inFlight).to.equal(0);
  });

  // Found by the soak (an admin's reset_ring under load): the kernel may reset the ring between the
  // consumer's check of cmd_tail and its store of the new one.
  describe('a ring reset racing a completion', () => {
    /** Runs `kernel` right after the consumer's next read of cmd_tail, as another CPU could. */
    class RacedConsumer extends RingConsumer {
      kernel: (() => void) | undefined;
      override tail(): number {
        const t = super.tail();
        const k = this.kernel;
        this.kernel = undefined;
        k?.();
        return t;
      }
    }
    /** action/reset_ring, then a new command (ids restart at 1) queued at offset 0. */
    function resetAndQueue(r: HandRing, cdb = READ10): void {
      r.dv.setUint32(Mailbox.CMD_TAIL, 0, true);
      r.head = 0;
      r.cmd(1, cdb, [[r.dataOff, 512]]);
      r.publish();
    }

    it('leaves the kernel\'s tail of 0 alone: the command queued after the reset is not answered', () => {
      const r = new HandRing();
      r.cmd(1, READ10, [[r.dataOff, 512]]);
      r.cmd(2, READ10, [[r.dataOff + 512, 512]]);
      r.publish();
      const c = new RacedConsumer(r.buf);
      c.next();
      c.next();
      c.complete(1, 0);
      expect(r.tail()).to.be.greaterThan(0);
      c.kernel = () => resetAndQueue(r);
      expect(() => c.complete(2, 0)).to.throw(RingBrokenError, /cmd_tail changed under us: 0/);
      expect(r.tail()).to.equal(0);
    });

    it('sees the reset when its own tail was 0 too, by cmd_head behind what it had read', () => {
      const r = new HandRing();
      r.cmd(1, READ10, [[r.dataOff, 512]]);
      r.cmd(2, READ10, [[r.dataOff + 512, 512]]);
      r.cmd(3, READ10, [[r.dataOff + 1024, 512]]);
      r.publish();
      const c = new RacedConsumer(r.buf);
      c.next();
      c.next();
      c.next();
      c.kernel = () => resetAndQueue(r);
      expect(() => c.complete(2, 0)).to.throw(RingBrokenError, /moved back behind the entries read/);
      expect(r.tail()).to.equal(0);
    });

    it('sees the reset when its own tail was 0 and the kernel has queued past what it read, by the entry at offset 0', () => {
      const r = new HandRing();
      r.cmd(1, READ10, [[r.dataOff, 512]]);
      r.publish();
      const c = new RacedConsumer(r.buf);
      c.next();
      c.kernel = () => {
        resetAndQueue(r, [0x28, 0, 0, 0, 0, 7, 0, 0, 1, 0]); // id 1 at offset 0 again, another LBA
        r.cmd(2, READ10, [[r.dataOff + 512, 512]]);
        r.publish();
      };
      expect(() => c.complete(1, 0)).to.throw(RingBrokenError, /entry at ring offset 0 is not the one we read/);
      expect(r.tail()).to.equal(0);
    });
  });

  it('calls cmd_tail written by someone else a broken ring, before reading or completing', () => {
    const r = new HandRing();
    r.cmd(1, READ10, [[r.dataOff, 512]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    expect(c.next()).to.deep.include({ kind: 'cmd', cmdId: 1 });
    r.dv.setUint32(Mailbox.CMD_TAIL, 4000, true);
    expect(() => c.complete(1, 0)).to.throw(RingBrokenError, /cmd_tail changed under us: 4000/);
    r.cmd(2, READ10, [[r.dataOff, 512]]);
    r.publish();
    expect(() => c.next()).to.throw(RingBrokenError, /cmd_tail changed/);
    // After a reset (head = tail = 0) resync() takes the new tail.
    r.dv.setUint32(Mailbox.CMD_TAIL, 0, true);
    r.head = 0;
    r.publish();
    c.resync();
    expect(c.next()).to.equal(null);
  });

  it('calls cmd_head moved back behind unanswered entries a broken ring', () => {
    const r = new HandRing();
    r.cmd(1, READ10, [[r.dataOff, 512]]);
    const second = r.cmd(2, READ10, [[r.dataOff, 512]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    drain(c);
    r.head = second;
    r.publish();
    expect(() => c.next()).to.throw(RingBrokenError, /moved back behind/);
  });

  it('reports a PAD that does not end at the ring\'s end, and steps over it', () => {
    const r = new HandRing();
    r.dv.setUint32(128, lenOp(64, EntryOp.PAD), true);
    r.head = 64;
    r.cmd(5, READ10, [[r.dataOff, 512]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    const got = drain(c);
    expect(got.map((e) => e.kind)).to.deep.equal(['malformed', 'cmd']);
    expect(got[0]).to.deep.include({ reason: 'misplaced-pad', cmdId: 0, at: 0 });
    c.complete(5, 0);
    expect(r.tail()).to.equal(r.head);
  });

  it('does not walk past the read position when an entry between tail and it was rewritten', () => {
    const r = new HandRing();
    const a = r.cmd(1, READ10, [[r.dataOff, 512]]);
    r.cmd(2, READ10, [[r.dataOff, 512]]);
    r.publish();
    const c = new RingConsumer(r.buf);
    drain(c);
    // The peer turns the first entry into a PAD as long as the ring: the walk would go round forever.
    r.dv.setUint32(128 + a, lenOp(4096, EntryOp.PAD), true);
    expect(() => c.complete(2, 0)).to.throw(RingBrokenError);
  });

  it('never throws anything but RingBrokenError and never reads outside the map for random entries (fast-check)', () => {
    fc.assert(fc.property(
      fc.record({
        lenOp: fc.integer({ min: 0, max: 0xffffffff }),
        id: fc.integer({ min: 0, max: 0xffff }),
        iovCnt: fc.oneof(fc.integer({ min: 0, max: 8 }), fc.integer({ min: 0, max: 0xffffffff })),
        bidiCnt: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 0xffffffff })),
        cdbOff: fc.oneof(fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }), fc.integer({ min: 0, max: 70000 }).map(BigInt)),
        iovs: fc.array(fc.tuple(fc.bigInt({ min: 0n, max: 0xffffffffffffffffn }), fc.bigInt({ min: 0n, max: 0xffffffffffffffffn })), { maxLength: 8 }),
        head: fc.integer({ min: 0, max: 4095 }),
        tmr: fc.boolean(),
        cmdCnt: fc.integer({ min: 0, max: 0xffffffff }),
      }),
      (g) => {
        const r = new HandRing(4096, 8192);
        const dv = r.dv;
        const base = 128;
        dv.setUint32(base, g.lenOp, true);
        dv.setUint16(base + EntryHdr.CMD_ID, g.id, true);
        if (g.tmr) dv.setUint32(base + TmrEntry.CMD_CNT, g.cmdCnt, true);
        else {
          dv.setUint32(base + CmdReq.IOV_CNT, g.iovCnt, true);
          dv.setUint32(base + CmdReq.IOV_BIDI_CNT, g.bidiCnt, true);
          dv.setBigUint64(base + CmdReq.CDB_OFF, g.cdbOff, true);
          g.iovs.forEach(([o, l], i) => { dv.setBigUint64(base + 48 + 16 * i, o, true); dv.setBigUint64(base + 56 + 16 * i, l, true); });
        }
        dv.setUint32(Mailbox.CMD_HEAD, g.head & ~7, true);
        const c = new RingConsumer(r.buf);
        try {
          for (let i = 0; i < 1000; i++) {
            const e = c.next();
            if (!e) break;
            if (e.kind === 'cmd') {
              for (const v of [...e.iovs, ...e.bidiIovs]) {
                expect(v.offset).to.be.at.least(r.dataOff);
                expect(v.offset + v.length).to.be.at.most(r.buf.byteLength);
                c.view(v);
              }
            }
          }
        } catch (err) {
          if (!(err instanceof RingBrokenError)) throw err;
        }
      },
    ), { numRuns: 2000 });
  });
});
