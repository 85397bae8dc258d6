/**
 * Ring fuzz (issue 17, item 4): a hostile producer writes malformed and
 * adversarial entries into a real shared mapping (a memfd, as the
 * simulator's), and the real RingConsumer and DeviceEngine (the drain the
 * device worker runs, the executor, the ram handler) take them.
 *
 * Each round writes 0-3 well-formed commands and one adversarial entry of a
 * class drawn at random, publishes cmd_head, and runs one drain. What must
 * happen, by class:
 *  - reported: the entry is reported malformed (one log line, the
 *    MALFORMED_ENTRIES counter), answered if its id was read, and the ring
 *    goes on: afterwards cmd_tail == cmd_head and nothing is in flight;
 *  - fatal: the ring cannot be parsed past it; the engine says so once
 *    (onRingBroken) and ends its loop; the fuzzer then does what the
 *    restart path does (reset the ring: head = tail = 0, a new engine);
 *  - answered: the ring level is fine but the command is hostile to the
 *    SCSI layer (random CDB bytes, transfer length and buffers that
 *    disagree, TMRs naming unknown ids): answered, nothing reported;
 *  - chaos (cmd_head moved backwards): stale entries are parsed again;
 *    what still parses is executed again (a producer that moved head far
 *    forward would look the same), the rest is reported or breaks the
 *    ring. Only "no crash" is checked; then the ring is reset.
 * Any exception out of drain() other than through onRingBroken is a crash
 * (a RangeError from a typed array or DataView would be an out-of-bounds
 * access: every read of the map goes through them).
 */
import { performance } from 'node:perf_hooks';
import {
  CMD_ENTRY_SIZE, CmdReq, EntryHdr, EntryOp, Mailbox, MailboxFlag, TCMU_MAILBOX_VERSION, TmrEntry,
  alignUp, closeFd, cmdEntrySize, lenOp, mapShared, memfdCreate, readEvent, setNonBlocking, socketPair, type SharedMap,
} from '@tcmu-ts/ring';
import { makeHandlerDevice, mulberry32, type DeviceHandler } from '@tcmu-ts/core';
import { ramHandler } from '@tcmu-ts/handlers';
import { CounterWriter, createCounterBuffer } from '../counters.js';
import type { DeviceSpec } from '../device-spec.js';
import { DeviceEngine } from '../engine/device-engine.js';
import { scsiInfoFromSpec } from '../engine/scsi-info.js';

export type FuzzExpect = 'reported' | 'fatal' | 'answered' | 'chaos';

/** Every adversarial class, with what must come of it. */
export const FUZZ_CLASSES = {
  // ---- reported: the entry alone is refused
  'bad-opcode': 'reported', // op 3..7 (also: a length whose low 3 bits are not 0 is read as op bits)
  'iov-count': 'reported', // iov_cnt (+ bidi + dif) past the entry, up to 2^32-1
  'iov-outside-map': 'reported', // iovec past the end of the map, or length past it
  'iov-in-cmd-ring': 'reported', // iovec over the mailbox or the command ring
  'iov-wrapping': 'reported', // base + len wrapping 2^64, or bases past 2^53
  'cdb-outside-ring': 'reported', // cdb_off in the mailbox, the data area, or past 2^53
  'cdb-outside-entry': 'reported', // cdb_off in the ring but in another entry or over the iovecs
  'cdb-overrun': 'reported', // a variable-length CDB longer than its entry or than 260 bytes
  'tmr-too-short': 'reported', // a TMR entry shorter than struct tcmu_tmr_entry
  'tmr-count': 'reported', // cmd_cnt ids that do not fit the entry
  'pad-misplaced': 'reported', // a PAD that does not end at the ring's end
  // ---- fatal: the ring cannot be parsed past it
  'cmd-too-short': 'fatal', // a CMD entry shorter than struct tcmu_cmd_entry: its response would not fit in it
  'len-zero': 'fatal',
  'len-past-head': 'fatal',
  'len-past-end': 'fatal',
  'len-huge': 'fatal',
  'cmd-id-zero': 'fatal',
  'dup-inflight-id': 'fatal', // an id that is still in flight (a command held by the handler)
  'head-outside': 'fatal', // cmd_head past the ring or not 8-aligned
  'tail-overwritten': 'fatal', // cmd_tail (ours) written by the peer
  // ---- answered: fine for the ring, hostile for the SCSI layer
  'random-cdb': 'answered',
  'rw-length-mismatch': 'answered',
  'tmr-unknown': 'answered', // TMR of any type naming ids that are not in flight
  'reused-id': 'answered', // an id answered before, used again
  // ---- chaos
  'head-backwards': 'chaos',
} as const satisfies Record<string, FuzzExpect>;

export type FuzzClass = keyof typeof FUZZ_CLASSES;
const CLASS_NAMES = Object.keys(FUZZ_CLASSES) as FuzzClass[];

export interface FuzzOptions {
  /** Adversarial entries to inject (well-formed fillers come on top). */
  entries: number;
  seed?: number;
  /** Stop after this many ms even if fewer entries were injected. */
  maxMs?: number;
  /** Called now and then with the entries injected so far. */
  progress?(done: number): void;
}

export interface FuzzClassReport {
  injected: number;
  /** reported: malformed reports seen for it; fatal: ring-broken reports. */
  reported: number;
  /** Rounds whose outcome differed from the class's expectation. */
  mismatches: number;
}

export interface FuzzReport {
  seed: number;
  entries: number;
  fillers: number;
  ms: number;
  entriesPerSec: number;
  crashes: number;
  crashSamples: string[];
  mismatchSamples: string[];
  ringResets: number;
  malformedReports: number;
  ringBrokenReports: number;
  /** Malformed reports by the consumer's reason. */
  reasons: Record<string, number>;
  classes: Record<string, FuzzClassReport>;
}

const BS = 512;
const LBAS = 2048;
const CMDR_OFF = Mailbox.SIZE;
/** A small ring wraps often: PADs and entries at the ring's end get exercised. */
const RING_BYTES = 64 * 1024;
const CMDR_SIZE = RING_BYTES - CMDR_OFF;
const DATA_OFF = RING_BYTES;
const DATA_SIZE = 256 * 1024;
const MAP_SIZE = DATA_OFF + DATA_SIZE;
const FLAGS = MailboxFlag.CAP_OOOC | MailboxFlag.CAP_READ_LEN | MailboxFlag.CAP_TMR;

interface EngineInternals {
  drain(): void;
  /** Set when run() has returned: a kick scheduled later then leaves the ring alone. */
  finished: boolean;
}

/** A handler whose commands may be held in flight (for in-flight duplicate ids), ram underneath. */
class HoldingHandler implements DeviceHandler {
  hold = false;
  private readonly held: (() => void)[] = [];
  constructor(private readonly ram: DeviceHandler) {}
  read(io: Parameters<NonNullable<DeviceHandler['read']>>[0]) {
    if (this.hold) return new Promise<void>((r) => this.held.push(r));
    return this.ram.read!(io);
  }
  write(io: Parameters<NonNullable<DeviceHandler['write']>>[0]) {
    return this.ram.write!(io);
  }
  flush() {
    return this.ram.flush!();
  }
  unmap(ranges: Parameters<NonNullable<DeviceHandler['unmap']>>[0]) {
    return this.ram.unmap!(ranges);
  }
  release(): void {
    const h = this.held.splice(0);
    for (const r of h) r();
  }
  close(): Promise<void> {
    return this.ram.close();
  }
}

export async function runRingFuzz(o: FuzzOptions): Promise<FuzzReport> {
  const seed = o.seed ?? ((Math.random() * 2 ** 32) >>> 0);
  const rand = mulberry32(seed);
  const ri = (n: number) => Math.floor(rand() * n);
  const memfd = memfdCreate('tcmu-ring-fuzz', MAP_SIZE);
  const map: SharedMap = mapShared(memfd, MAP_SIZE);
  const [userFd, kernelFd] = socketPair();
  setNonBlocking(userFd);
  setNonBlocking(kernelFd);
  const u8 = new Uint8Array(map.buffer);
  const dv = new DataView(map.buffer);
  const mb32 = new Uint32Array(map.buffer, 0, Mailbox.SIZE / 4);
  dv.setUint16(Mailbox.VERSION, TCMU_MAILBOX_VERSION, true);
  dv.setUint16(Mailbox.FLAGS, FLAGS, true);
  dv.setUint32(Mailbox.CMDR_OFF, CMDR_OFF, true);
  dv.setUint32(Mailbox.CMDR_SIZE, CMDR_SIZE, true);

  const ram = await ramHandler.open(makeHandlerDevice({ cfgstring: '1M', blockSize: BS, numLbas: LBAS }), false);
  const handler = new HoldingHandler(ram);
  const spec: DeviceSpec = {
    name: 'fuzz', subtype: 'ram', cfgstring: '1M', handlerSpec: 'ram', blockSize: BS, numLbas: LBAS,
    maxXferBlocks: 64, writeCache: true, serial: 'fuzz', wwn: 'fuzz', ring: { mapFd: memfd, eventFd: userFd, mapSize: MAP_SIZE },
  };
  const info = scsiInfoFromSpec(spec, LBAS, handler);
  const counters = new CounterWriter(createCounterBuffer());

  const report: FuzzReport = {
    seed, entries: 0, fillers: 0, ms: 0, entriesPerSec: 0, crashes: 0, crashSamples: [], mismatchSamples: [],
    ringResets: 0, malformedReports: 0, ringBrokenReports: 0, reasons: {}, classes: {},
  };
  for (const c of CLASS_NAMES) report.classes[c] = { injected: 0, reported: 0, mismatches: 0 };

  let malformed = 0;
  let broken = 0;
  const log = {
    debug() {}, info() {}, warn() {},
    error(msg: string) {
      const m = /^malformed ring entry at \d+: ([a-z-]+)/.exec(msg);
      if (m) {
        malformed++;
        report.reasons[m[1]] = (report.reasons[m[1]] ?? 0) + 1;
      }
    },
  };
  let engine: DeviceEngine | undefined;
  const newEngine = () => {
    // The one before is done with, as a worker that ended: its scheduled kicks must not touch the ring.
    if (engine) (engine as unknown as EngineInternals).finished = true;
    engine = new DeviceEngine({
      map: map.buffer, eventFd: userFd, handler, info, counters, log,
      onRingBroken: () => void broken++,
    });
  };
  /** What reset_ring and a new worker do: head = tail = 0, a consumer that starts there. */
  const reset = () => {
    handler.release();
    Atomics.store(mb32, Mailbox.CMD_HEAD / 4, 0);
    Atomics.store(mb32, Mailbox.CMD_TAIL / 4, 0);
    head = 0;
    report.ringResets++;
    newEngine();
  };

  let head = 0;
  let nextId = 1;
  const takeId = () => {
    const id = nextId;
    nextId = nextId === 0xffff ? 1 : nextId + 1;
    return id;
  };
  const setHead = (h: number) => Atomics.store(mb32, Mailbox.CMD_HEAD / 4, h);
  const w32 = (at: number, v: number) => dv.setUint32(at, v >>> 0, true);
  const w64 = (at: number, v: number) => {
    dv.setUint32(at, v % 0x100000000, true);
    dv.setUint32(at + 4, Math.floor(v / 0x100000000), true);
  };
  /** Room for `len` bytes at head: PAD up to the ring's end when it does not fit there. */
  const reserve = (len: number): number => {
    if (head + len > CMDR_SIZE) {
      w32(CMDR_OFF + head, lenOp(CMDR_SIZE - head, EntryOp.PAD));
      head = 0;
    }
    const at = head;
    head += len;
    if (head === CMDR_SIZE) head = 0;
    return at;
  };
  /** A data-area span. */
  const dataSpan = (len: number): number => DATA_OFF + ri(DATA_SIZE - len + 1);
  /** A well-formed CMD entry; returns its ring offset and layout. */
  const writeCmd = (cdb: Uint8Array, iovLens: number[], id = takeId()) => {
    const len = cmdEntrySize(iovLens.length, cdb.length);
    const at = reserve(len);
    const base = CMDR_OFF + at;
    u8.fill(0, base, base + len);
    w32(base + EntryHdr.LEN_OP, lenOp(len, EntryOp.CMD));
    dv.setUint16(base + EntryHdr.CMD_ID, id, true);
    w32(base + CmdReq.IOV_CNT, iovLens.length);
    const cdbAt = base + len - alignUp(cdb.length, 8);
    w64(base + CmdReq.CDB_OFF, cdbAt);
    for (let i = 0; i < iovLens.length; i++) {
      const p = base + CmdReq.IOV + CmdReq.IOVEC_SIZE * i;
      w64(p, dataSpan(iovLens[i]));
      w64(p + 8, iovLens[i]);
    }
    u8.set(cdb, cdbAt);
    return { at, base, len, cdbAt, id };
  };
  const rw16 = (read: boolean, lba: number, blocks: number): Uint8Array => {
    const c = new Uint8Array(16);
    c[0] = read ? 0x88 : 0x8a;
    const v = new DataView(c.buffer);
    v.setUint32(6, lba, false);
    v.setUint32(10, blocks, false);
    return c;
  };
  const split = (total: number): number[] => {
    const n = 1 + ri(3);
    const out: number[] = [];
    let left = total;
    for (let i = 0; i < n - 1 && left > 1; i++) {
      const l = 1 + ri(left - 1);
      out.push(l);
      left -= l;
    }
    out.push(left);
    return out;
  };
  const filler = () => {
    report.fillers++;
    const blocks = 1 + ri(8);
    const lba = ri(LBAS - blocks);
    const r = ri(4);
    if (r === 0) writeCmd(new Uint8Array(6), []); // TEST UNIT READY
    else writeCmd(rw16(r === 1, lba, blocks), split(blocks * BS));
  };
  const tmr = (len: number, type: number, ids: number[], count = ids.length) => {
    const at = reserve(len);
    const base = CMDR_OFF + at;
    u8.fill(0, base, base + len);
    w32(base + EntryHdr.LEN_OP, lenOp(len, EntryOp.TMR));
    u8[base + TmrEntry.TMR_TYPE] = type;
    w32(base + TmrEntry.CMD_CNT, count);
    for (let i = 0; i < ids.length && TmrEntry.SIZE + 2 * i + 2 <= len; i++) dv.setUint16(base + TmrEntry.CMD_IDS + 2 * i, ids[i], true);
  };
  /** A raw entry header of `len` bytes (no reservation beyond len that fits, which callers check). */
  const rawAt = (len: number): number => CMDR_OFF + reserve(len);
  const smallRead = () => rw16(true, ri(LBAS - 1), 1);

  /** Write the adversarial entry of class `c` (and set head when the class is about head). */
  const inject = (c: FuzzClass): void => {
    switch (c) {
      case 'bad-opcode': {
        const len = 8 * (1 + ri(16));
        const base = rawAt(len);
        w32(base, (len | (3 + ri(5))) >>> 0);
        return;
      }
      case 'cmd-too-short': {
        const len = 8 * (1 + ri(CMD_ENTRY_SIZE / 8 - 1));
        const base = rawAt(len);
        u8.fill(0xa5, base, base + len);
        w32(base, lenOp(len, EntryOp.CMD));
        if (len >= 8) dv.setUint16(base + EntryHdr.CMD_ID, takeId(), true);
        return;
      }
      case 'iov-count': {
        const e = writeCmd(smallRead(), [BS]);
        const field = [CmdReq.IOV_CNT, CmdReq.IOV_BIDI_CNT, CmdReq.IOV_DIF_CNT][ri(3)];
        // The entry holds 1 iovec and a 16-byte CDB in 128 bytes: 5 more never fit.
        w32(e.base + field, ri(2) ? 0xffffffff - ri(4) : 5 + ri(64));
        return;
      }
      case 'iov-outside-map': {
        const e = writeCmd(smallRead(), [BS]);
        const p = e.base + CmdReq.IOV;
        if (ri(2)) w64(p, MAP_SIZE - ri(BS)); // runs past the end
        else {
          w64(p, DATA_OFF);
          w64(p + 8, MAP_SIZE - DATA_OFF + 1 + ri(1 << 20));
        }
        return;
      }
      case 'iov-in-cmd-ring': {
        const e = writeCmd(smallRead(), [BS]);
        w64(e.base + CmdReq.IOV, ri(DATA_OFF));
        return;
      }
      case 'iov-wrapping': {
        const e = writeCmd(smallRead(), [BS]);
        const p = e.base + CmdReq.IOV;
        // base near 2^64 with a length that wraps, or a base past 2^53 that a double cannot hold exactly.
        dv.setUint32(p, 0xfffffff0, true);
        dv.setUint32(p + 4, ri(2) ? 0xffffffff : 0x200000 + ri(0xfff), true);
        w64(p + 8, 0x20 + ri(BS));
        return;
      }
      case 'cdb-outside-ring': {
        const e = writeCmd(smallRead(), [BS]);
        const p = e.base + CmdReq.CDB_OFF;
        const k = ri(3);
        if (k === 0) w64(p, ri(CMDR_OFF));
        else if (k === 1) w64(p, DATA_OFF + ri(DATA_SIZE + 4096));
        else {
          dv.setUint32(p, ri(0xffffffff), true);
          dv.setUint32(p + 4, 1 + ri(0xffffffff), true);
        }
        return;
      }
      case 'cdb-outside-entry': {
        const e = writeCmd(smallRead(), [BS]);
        const p = e.base + CmdReq.CDB_OFF;
        // Into the iovec array or the header, or anywhere in the ring outside [base, base+len).
        if (ri(2)) w64(p, e.base + ri(CmdReq.IOV + CmdReq.IOVEC_SIZE));
        else {
          let off = CMDR_OFF + ri(CMDR_SIZE - e.len);
          if (off >= e.base) off += e.len;
          w64(p, off);
        }
        return;
      }
      case 'cdb-overrun': {
        // A variable-length CDB (7Fh) whose additional length runs past the entry or past 260 bytes.
        const cdb = new Uint8Array(8);
        cdb[0] = 0x7f;
        const e = writeCmd(cdb, [BS]);
        u8[e.cdbAt + 7] = ri(2) ? 253 + ri(3) : 8 + ri(40);
        return;
      }
      case 'tmr-too-short': {
        const len = 8 * (1 + ri(TmrEntry.SIZE / 8 - 1));
        const base = rawAt(len);
        u8.fill(0x5a, base, base + len);
        w32(base, lenOp(len, EntryOp.TMR));
        return;
      }
      case 'tmr-count': {
        const len = TmrEntry.SIZE + 8 * ri(4);
        tmr(len, 1 + ri(8), [], ri(2) ? 0xffffffff - ri(4) : (len - TmrEntry.SIZE) / 2 + 1 + ri(1000));
        return;
      }
      case 'pad-misplaced': {
        const len = 8 * (1 + ri(64));
        // A PAD that would end at the ring's end is legal: start this one at 0 then.
        if (head + len >= CMDR_SIZE && head !== 0) {
          w32(CMDR_OFF + head, lenOp(CMDR_SIZE - head, EntryOp.PAD));
          head = 0;
        }
        const base = rawAt(len);
        w32(base, lenOp(len, EntryOp.PAD));
        return;
      }
      case 'len-zero': {
        const base = rawAt(8);
        w32(base, ri(8)); // len 0, any op
        return;
      }
      case 'len-past-head': {
        const e = writeCmd(smallRead(), [BS]);
        // Longer than what was produced, still inside the ring when possible.
        const room = CMDR_SIZE - e.at;
        const len = Math.min(e.len + 8 * (1 + ri(64)), room);
        if (len <= e.len) w32(e.base, lenOp(e.len + 8, EntryOp.CMD)); // past head (head is at the end)
        else w32(e.base, lenOp(len, EntryOp.CMD));
        return;
      }
      case 'len-past-end': {
        const e = writeCmd(smallRead(), [BS]);
        w32(e.base, lenOp(CMDR_SIZE - e.at + 8 * (1 + ri(1024)), [EntryOp.CMD, EntryOp.PAD, EntryOp.TMR][ri(3)]));
        return;
      }
      case 'len-huge': {
        const e = writeCmd(smallRead(), [BS]);
        w32(e.base, (0xfffffff8 - 8 * ri(1024) | ri(8)) >>> 0);
        return;
      }
      case 'cmd-id-zero':
        writeCmd(smallRead(), [BS], 0);
        return;
      case 'dup-inflight-id': {
        // The first is held in flight by the handler; the second reuses its id.
        const e = writeCmd(smallRead(), [BS]);
        writeCmd(smallRead(), [BS], e.id);
        handler.hold = true;
        return;
      }
      case 'head-outside':
        filler();
        setHead(ri(2) ? CMDR_SIZE + 8 * ri(1 << 16) : ((head + 1 + ri(7)) % CMDR_SIZE) | 1);
        return;
      case 'tail-overwritten': {
        filler();
        const t = Atomics.load(mb32, Mailbox.CMD_TAIL / 4);
        let v = ri(2) ? 8 * ri(CMDR_SIZE / 8) : ri(0xffffffff);
        if (v === t) v = t + 8;
        Atomics.store(mb32, Mailbox.CMD_TAIL / 4, v);
        return;
      }
      case 'random-cdb': {
        const cdb = new Uint8Array([6, 10, 12, 16][ri(4)]);
        for (let i = 0; i < cdb.length; i++) cdb[i] = ri(256);
        if (cdb[0] === 0x7f) cdb[0] = 0x7e;
        // The kernel sizes the CDB from its opcode's group: keep what it would copy.
        const group = [6, 10, 10, 12, 16, 12, 10, 10][cdb[0] >> 5];
        const full = new Uint8Array(group);
        full.set(cdb.subarray(0, Math.min(group, cdb.length)));
        writeCmd(full, ri(3) ? split(1 + ri(8 * BS)) : []);
        return;
      }
      case 'rw-length-mismatch': {
        const blocks = 1 + ri(64);
        const bytes = ri(4) === 0 ? 0 : 1 + ri(8 * BS);
        const cdb = rw16(ri(2) === 0, ri(2) ? ri(LBAS) : LBAS - ri(4), blocks);
        writeCmd(cdb, bytes === 0 ? [] : split(bytes));
        return;
      }
      case 'tmr-unknown': {
        const n = ri(6);
        const ids = Array.from({ length: n }, () => ri(0x10000));
        tmr(alignUp(TmrEntry.SIZE + 2 * n, 8), ri(256), ids);
        return;
      }
      case 'reused-id': {
        const id = takeId();
        writeCmd(smallRead(), [BS], id);
        writeCmd(new Uint8Array(6), [], id);
        return;
      }
      case 'head-backwards':
        return;
    }
  };

  newEngine();
  const t0 = performance.now();
  let lastProgress = t0;
  for (let n = 0; n < o.entries; n++) {
    if (o.maxMs !== undefined && (n & 255) === 0 && performance.now() - t0 > o.maxMs) break;
    const c = CLASS_NAMES[ri(CLASS_NAMES.length)];
    const expect = FUZZ_CLASSES[c];
    const cr = report.classes[c];
    cr.injected++;
    report.entries++;
    const m0 = malformed;
    const b0 = broken;
    // Room for the round: a few fillers and the entry; the ring is empty at the start of every round.
    const before = ri(3);
    for (let i = 0; i < before; i++) filler();
    inject(c);
    if (c !== 'head-outside') setHead(head);
    // A command after it: its completion moves the tail over everything before (PADs, TMRs, refused entries).
    if (expect !== 'fatal') {
      filler();
      setHead(head);
    }
    if (c === 'head-backwards') {
      // Everything so far answered first, then head moved back by up to a ring.
      runDrain(c);
      const back = 8 * (1 + ri(CMDR_SIZE / 8 - 1));
      head = (head - back + CMDR_SIZE) % CMDR_SIZE;
      setHead(head);
    }
    runDrain(c);
    handler.hold = false;
    // Some plans complete a turn later even over ram (emulations awaiting their steps).
    for (let k = 0; k < 100 && broken === b0 && Atomics.load(mb32, Mailbox.CMD_TAIL / 4) !== Atomics.load(mb32, Mailbox.CMD_HEAD / 4); k++) {
      await new Promise((r) => setImmediate(r));
    }
    if ((n & 1023) === 0) await new Promise((r) => setImmediate(r));
    const gotMal = malformed - m0;
    const gotBroken = broken - b0;
    let ok = true;
    const tail = Atomics.load(mb32, Mailbox.CMD_TAIL / 4);
    const hd = Atomics.load(mb32, Mailbox.CMD_HEAD / 4);
    if (expect === 'reported') {
      cr.reported += gotMal;
      ok = gotMal === 1 && gotBroken === 0 && tail === hd;
    } else if (expect === 'fatal') {
      cr.reported += gotBroken;
      ok = gotBroken === 1 && gotMal === 0;
    } else if (expect === 'answered') {
      // With every command answered, no abort may still be remembered (ids a TMR named that were not ours included).
      ok = gotMal === 0 && gotBroken === 0 && tail === hd && engine!.abortsPending === 0;
    } else {
      cr.reported += gotMal + gotBroken;
    }
    if (!ok) {
      cr.mismatches++;
      if (report.mismatchSamples.length < 20) report.mismatchSamples.push(`${c} (round ${n}): ${gotMal} malformed, ${gotBroken} broken, tail ${tail} head ${hd}, ${engine!.abortsPending} aborts pending`);
    }
    // Keep the kick socket from filling up.
    while (readEvent(kernelFd) !== null);
    if (gotBroken > 0 || expect === 'chaos' || !ok || tail !== hd) reset();
    if (o.progress && (n & 4095) === 0 && performance.now() - lastProgress > 1000) {
      lastProgress = performance.now();
      o.progress(n);
    }
  }
  report.ms = performance.now() - t0;
  report.entriesPerSec = Math.round(report.entries / (report.ms / 1000));
  report.malformedReports = malformed;
  report.ringBrokenReports = broken;
  (engine as unknown as EngineInternals).finished = true;
  handler.release();
  for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
  await handler.close();
  map.unmap();
  closeFd(memfd);
  closeFd(userFd);
  closeFd(kernelFd);
  return report;

  function runDrain(c: FuzzClass): void {
    try {
      (engine as unknown as EngineInternals).drain();
    } catch (e) {
      report.crashes++;
      if (report.crashSamples.length < 20) report.crashSamples.push(`${c}: ${e instanceof Error ? `${e.name}: ${e.message}\n${e.stack?.split('\n').slice(1, 4).join('\n')}` : String(e)}`);
    }
  }
}
