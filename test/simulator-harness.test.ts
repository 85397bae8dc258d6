/**
 * Shared pieces for the kernel-simulator tests: a RAM-disk backend that
 * answers the simulator through the real RingConsumer on the main thread, a
 * seeded PRNG, and CDB builders. The describe() block at the end tests the
 * initiator helpers themselves.
 */
import { expect } from 'chai';
import {
  KernelSimulator, RingConsumer, Mailbox, EntryHdr, EntryOp, ScsiStatus, SenseKey, mapShared, readEvent, writeEvent,
  fixedSense, parseSense, scsiCdbLength, cdbRead10, cdbRead16, cdbWrite10, cdbWrite16, cdbInquiry, cdbReadCapacity16,
  Initiator, entryLen, entryOp,
  type CompletionOptions, type RingCommand, type RingEntry, type SharedMap, type SimResult, type SubmitOptions,
} from '@tcmu-ts/ring';
import { rng } from './fixtures/prng.js';
export { rng };


export function randInt(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

export function randomBytes(r: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (r() * 256) | 0;
  return b;
}

/** A CDB of exactly `len` bytes as the kernel sizes it: a group code if one matches, else variable-length (0x7F). */
export function cdbOfLength(len: number): Uint8Array {
  const byGroup: Record<number, number> = { 6: 0x08, 10: 0x28, 12: 0xa8, 16: 0x88 };
  let c: Uint8Array;
  if (byGroup[len] !== undefined) {
    c = new Uint8Array(len);
    c[0] = byGroup[len];
  } else {
    if (len < 8 || len > 260) throw new RangeError(`no CDB of ${len} bytes`);
    c = new Uint8Array(len);
    c[0] = 0x7f;
    c[7] = len - 8;
  }
  for (let i = 1; i < len; i++) if (i !== 7 || c[0] !== 0x7f) c[i] = (i * 37) & 0xff;
  if (scsiCdbLength(c) !== len) throw new Error(`cdbOfLength(${len}) built a ${scsiCdbLength(c)}-byte CDB`);
  return c;
}

export function mbHead(sim: KernelSimulator): number {
  return new DataView(sim.map).getUint32(Mailbox.CMD_HEAD, true);
}
export function mbTail(sim: KernelSimulator): number {
  return new DataView(sim.map).getUint32(Mailbox.CMD_TAIL, true);
}

/** The header of the ring entry at ring offset `at`, read from the simulator's map. */
export function entryAt(sim: KernelSimulator, at: number): { op: number; len: number; cmdId: number; base: number } {
  const dv = new DataView(sim.map);
  const base = sim.layout.cmdrOff + at;
  const lo = dv.getUint32(base + EntryHdr.LEN_OP, true);
  return { op: entryOp(lo), len: entryLen(lo), cmdId: dv.getUint16(base + EntryHdr.CMD_ID, true), base };
}

export interface Answer {
  status: number;
  opts?: CompletionOptions;
}

/**
 * A RAM disk behind the simulator, answering through the lead's RingConsumer
 * on its own mapping of the memfd (as a daemon would). It only knows the few
 * commands the tests send; everything else is answered UNKNOWN_OP.
 */
export class RamBackend {
  readonly consumer: RingConsumer;
  readonly store: Uint8Array;
  readonly blockSize: number;
  private readonly shared: SharedMap;

  constructor(readonly sim: KernelSimulator, opts: { blockSize?: number; blocks?: number } = {}) {
    this.blockSize = opts.blockSize ?? 512;
    this.store = new Uint8Array(this.blockSize * (opts.blocks ?? 2048));
    this.shared = mapShared(sim.endpoint.mapFd, sim.endpoint.mapSize);
    this.consumer = new RingConsumer(this.shared.buffer);
  }

  /** Everything the kernel has produced since the last call. */
  take(): RingEntry[] {
    const out: RingEntry[] = [];
    for (let e = this.consumer.next(); e; e = this.consumer.next()) out.push(e);
    return out;
  }

  takeCommands(): RingCommand[] {
    const es = this.take();
    for (const e of es) if (e.kind !== 'cmd') throw new Error(`unexpected ${e.kind} entry`);
    return es as RingCommand[];
  }

  /** Run one command against the RAM disk, writing any data-in into its iovecs. */
  execute(c: RingCommand): Answer {
    const cdb = c.cdb;
    const dv = new DataView(cdb.buffer, cdb.byteOffset, cdb.byteLength);
    let lba: number;
    let blocks: number;
    switch (cdb[0]) {
      case 0x28:
      case 0x2a:
        lba = dv.getUint32(2, false);
        blocks = dv.getUint16(7, false);
        break;
      case 0x88:
      case 0x8a:
        lba = Number(dv.getBigUint64(2, false));
        blocks = dv.getUint32(10, false);
        break;
      case 0x00:
        return { status: ScsiStatus.GOOD };
      case 0x12: {
        const inq = new Uint8Array(36);
        inq[2] = 0x06;
        inq[3] = 0x02;
        inq[4] = 31;
        inq.set(new TextEncoder().encode('TCMU-TS RAMDISK SIM     0001'), 8);
        const n = this.scatter(c, inq);
        return { status: ScsiStatus.GOOD, opts: { readLen: n } };
      }
      default:
        return { status: 0, opts: { unknownOp: true } };
    }
    const bytes = blocks * this.blockSize;
    if ((lba + blocks) * this.blockSize > this.store.length) {
      return { status: ScsiStatus.CHECK_CONDITION, opts: { sense: fixedSense(SenseKey.ILLEGAL_REQUEST, 0x21, 0) } };
    }
    const off = lba * this.blockSize;
    if (cdb[0] === 0x28 || cdb[0] === 0x88) {
      this.scatter(c, this.store.subarray(off, off + bytes));
    } else {
      let at = off;
      for (const iov of c.iovs) {
        this.store.set(this.consumer.view(iov), at);
        at += iov.length;
      }
    }
    return { status: ScsiStatus.GOOD };
  }

  /** Copy `src` into the command's data-in iovecs; returns bytes copied. */
  scatter(c: RingCommand, src: Uint8Array): number {
    let done = 0;
    for (const iov of c.iovs) {
      const n = Math.min(iov.length, src.length - done);
      if (n <= 0) break;
      this.consumer.view(iov).set(src.subarray(done, done + n));
      done += n;
    }
    return done;
  }

  complete(cmdId: number, a: Answer): void {
    if (a.opts?.unknownOp) this.consumer.unknownOp(cmdId);
    else this.consumer.complete(cmdId, a.status, a.opts);
  }

  /**
   * Write a completion the consumer would refuse (an id answered twice, or
   * one never handed out) straight into the entry at the mailbox tail, to see
   * what the kernel does with a misbehaving daemon.
   */
  forgeCompletion(cmdId: number, status: number): void {
    const dv = new DataView(this.sim.map);
    const u32 = new Uint32Array(this.sim.map, 0, Mailbox.SIZE / 4);
    const cmdrOff = dv.getUint32(Mailbox.CMDR_OFF, true);
    const size = dv.getUint32(Mailbox.CMDR_SIZE, true);
    let tail = Atomics.load(u32, Mailbox.CMD_TAIL / 4);
    for (;;) {
      const lo = dv.getUint32(cmdrOff + tail + EntryHdr.LEN_OP, true);
      if (entryOp(lo) === EntryOp.CMD) {
        dv.setUint16(cmdrOff + tail + EntryHdr.CMD_ID, cmdId, true);
        dv.setUint8(cmdrOff + tail + EntryHdr.UFLAGS, 0);
        dv.setUint8(cmdrOff + tail + 8, status);
        const next = (tail + entryLen(lo)) % size;
        Atomics.store(u32, Mailbox.CMD_TAIL / 4, next);
        // The consumer calls a cmd_tail moved behind its back a broken ring; this daemon
        // misbehaves on purpose and keeps using it, so it hands the consumer the new tail.
        (this.consumer as unknown as { tailPos: number }).tailPos = next;
        return;
      }
      tail = (tail + entryLen(lo)) % size;
    }
  }

  /** Write a kick on the uio fd, as a daemon does after a batch of completions. */
  kick(): void {
    writeEvent(this.sim.endpoint.eventFd, 1);
  }

  /** Take the irqs the kernel sent (a daemon reads them to re-arm poll). */
  drainIrqs(): number {
    let n = 0;
    while (readEvent(this.sim.endpoint.eventFd) !== null) n++;
    return n;
  }

  /** Answer every command waiting on the ring, in ring order, then kick and let the kernel reap. */
  serve(): number {
    this.drainIrqs();
    const cmds = this.takeCommands();
    for (const c of cmds) this.complete(c.cmdId, this.execute(c));
    if (cmds.length) {
      this.kick();
      this.sim.processKicks();
    }
    return cmds.length;
  }

  close(): void {
    this.shared.unmap();
  }
}

/** Submit and keep serving until the answer arrives (for tests with autoKicks off). */
export async function roundTrip(sim: KernelSimulator, be: RamBackend, cdb: Uint8Array, opts?: SubmitOptions): Promise<SimResult> {
  const p = sim.submit(cdb, opts);
  be.serve();
  return p;
}

describe('simulator test helpers and initiator CDBs', () => {
  it('builds READ/WRITE(10/16) CDBs with big-endian fields', () => {
    expect([...cdbRead10(0x01020304, 0x0506)]).to.deep.equal([0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]);
    expect([...cdbWrite10(7, 1, { fua: true })]).to.deep.equal([0x2a, 0x08, 0, 0, 0, 7, 0, 0, 1, 0]);
    const r16 = cdbRead16(0x0102030405060708n, 0x090a0b0c);
    expect([...r16]).to.deep.equal([0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]);
    expect(cdbWrite16(1, 1)[0]).to.equal(0x8a);
    expect(() => cdbRead10(2 ** 32, 1)).to.throw(RangeError);
    expect(() => cdbRead10(0, 0x10000)).to.throw(RangeError);
    expect([...cdbInquiry(96)]).to.deep.equal([0x12, 0, 0, 0, 96, 0]);
    expect([...cdbInquiry(255, 0x80)]).to.deep.equal([0x12, 1, 0x80, 0, 255, 0]);
    expect(cdbReadCapacity16()[1]).to.equal(0x10);
  });

  it('sizes CDBs by opcode group like the kernel, variable-length ones by their length byte', () => {
    expect(scsiCdbLength(Uint8Array.of(0x00))).to.equal(6);
    expect(scsiCdbLength(Uint8Array.of(0x28))).to.equal(10);
    expect(scsiCdbLength(Uint8Array.of(0x41))).to.equal(10);
    expect(scsiCdbLength(Uint8Array.of(0x60))).to.equal(12); // reserved group 3
    expect(scsiCdbLength(Uint8Array.of(0x88))).to.equal(16);
    expect(scsiCdbLength(Uint8Array.of(0xa8))).to.equal(12);
    expect(scsiCdbLength(Uint8Array.of(0xc0))).to.equal(10);
    const v = new Uint8Array(32);
    v[0] = 0x7f;
    v[7] = 24;
    expect(scsiCdbLength(v)).to.equal(32);
    for (const n of [6, 8, 10, 12, 16, 24, 200, 260]) expect(cdbOfLength(n).length).to.equal(n);
  });

  it('parses fixed and descriptor sense', () => {
    expect(parseSense(fixedSense(SenseKey.MEDIUM_ERROR, 0x11, 0x04))).to.include({ key: 3, asc: 0x11, ascq: 4, descriptor: false });
    expect(parseSense(Uint8Array.of(0x72, 0x05, 0x24, 0x01))).to.include({ key: 5, asc: 0x24, ascq: 1, descriptor: true });
    expect(parseSense(Uint8Array.of(0x00, 0x05))).to.equal(null);
  });

  it('the initiator picks READ(16) only when READ(10) cannot address the range', async () => {
    const seen: Uint8Array[] = [];
    const target = {
      submit: async (cdb: Uint8Array, o?: SubmitOptions): Promise<SimResult> => {
        seen.push(cdb);
        return { tag: 1, cmdId: 1, status: 0, sense: new Uint8Array(0), dataIn: new Uint8Array(o?.dataInLength ?? 0), residual: 0, timedOut: false, aborted: false };
      },
    };
    const ini = new Initiator(target, { blockSize: 4096 });
    const r = await ini.read(10, 2);
    expect(r.ok).to.equal(true);
    expect(r.data.length).to.equal(8192);
    await ini.read(2 ** 32 + 5, 1);
    await ini.read(0, 0x10000);
    await ini.write(3, new Uint8Array(4096));
    expect(seen.map((c) => c[0])).to.deep.equal([0x28, 0x88, 0x88, 0x2a]);
    expect(() => ini.write(0, new Uint8Array(100))).to.throw(RangeError);
  });

  it('a ring entry header reader agrees with the consumer (harness self-check)', () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 1, autoKicks: false });
    try {
      void sim.submit(cdbRead10(0, 1), { dataInLength: 512 });
      const e = entryAt(sim, 0);
      expect(e.op).to.equal(EntryOp.CMD);
      expect(e.cmdId).to.equal(1);
      expect(mbHead(sim)).to.equal(e.len);
    } finally {
      void sim.close();
    }
  });
});
