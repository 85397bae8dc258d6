/**
 * The userspace side of the command ring: reads what the kernel produced
 * between our tail and the kernel's head, and writes completions back at the
 * mailbox tail by the out-of-order completion rule.
 *
 * Everything the kernel (or something pretending to be it) wrote is treated
 * as untrusted: every length, offset and count is checked against the ring
 * and the map before it is used, so a malformed entry becomes a typed
 * `malformed` record for that entry instead of an exception or a read outside
 * the map.
 */
import {
  CmdReq, CmdRsp, CMD_ENTRY_SIZE, EntryHdr, EntryOp, Mailbox, MailboxFlag, TCMU_MAILBOX_VERSION,
  TCMU_SENSE_BUFFERSIZE, TmrEntry, UFlag, entryLen, entryOp, ringUsed,
} from './abi.js';
import { MAX_CDB_LENGTH, ringCdbLength } from './kernel-scsi.js';

/** A span of the map (offset from its start) holding data of one command. */
export interface IoVec {
  offset: number;
  length: number;
}

export interface RingCommand {
  kind: 'cmd';
  cmdId: number;
  /** A copy: the entry holding the CDB is reused for completions. */
  cdb: Uint8Array;
  /** Data-out (or data-in for a non-bidi command) buffers. */
  iovs: IoVec[];
  /** Data-in buffers of a bidirectional command. */
  bidiIovs: IoVec[];
  /** Sum of iovs lengths. */
  dataLength: number;
}

export interface RingTmr {
  kind: 'tmr';
  tmrType: number;
  cmdIds: number[];
}

/** Why one entry could not be used. The entry is skipped; if it has an id it is completed with an error. */
export type MalformedReason =
  | 'bad-length'
  | 'bad-opcode'
  | 'cdb-out-of-bounds'
  | 'iov-count'
  | 'iov-out-of-bounds'
  | 'tmr-count'
  | 'misplaced-pad';

export interface RingMalformed {
  kind: 'malformed';
  /** Non-zero when the entry is a CMD whose id can still be answered. */
  cmdId: number;
  reason: MalformedReason;
  detail: string;
  /** Ring offset of the entry. */
  at: number;
}

export type RingEntry = RingCommand | RingTmr | RingMalformed;

/** What RingConsumer.take() found. */
export const Taken = { NONE: 0, CMD: 1, TMR: 2, MALFORMED: 3 } as const;

/**
 * One command as read off the ring, filled in place by RingConsumer.take():
 * a record the engine reuses from command to command, so reading an entry
 * allocates nothing once the record has seen a CDB of that length and as
 * many iovecs.
 */
export class RingSlot {
  cmdId = 0;
  /** The CDB, copied out of the ring (its entry is reused for completions). */
  cdb: Uint8Array = NO_CDB;
  /** Data-out (or data-in for a non-bidi command) buffers, as spans of the map. */
  readonly iovecs: IoVec[] = [];
  /** Data-in buffers of a bidirectional command. */
  readonly bidiIovecs: IoVec[] = [];
  /** Sum of iovecs lengths. */
  dataLength = 0;
  private readonly cdbStore = new Uint8Array(MAX_CDB_LENGTH);
  /** cdbStore views by length, made once each. */
  private readonly cdbViews: Uint8Array[] = [];

  setCdb(src: Uint8Array, at: number, length: number): void {
    const store = this.cdbStore;
    for (let i = 0; i < length; i++) store[i] = src[at + i];
    this.cdb = this.cdbViews[length] ??= store.subarray(0, length);
  }

  setIovec(list: IoVec[], i: number, offset: number, length: number): void {
    const v = list[i];
    if (v === undefined) list[i] = { offset, length };
    else {
      v.offset = offset;
      v.length = length;
    }
  }
}

const NO_CDB = new Uint8Array(0);

function copySpans(list: readonly IoVec[]): IoVec[] {
  const out = new Array<IoVec>(list.length);
  for (let i = 0; i < list.length; i++) out[i] = { offset: list[i].offset, length: list[i].length };
  return out;
}

/** The mailbox or ring cannot be trusted any further (e.g. an entry length that cannot be stepped over). */
export class RingBrokenError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RingBrokenError';
  }
}

export interface CompletionOptions {
  sense?: Uint8Array;
  /** Bytes of data-in produced; sent only when the kernel advertises CAP_READ_LEN. */
  readLen?: number;
  /** Ask the kernel to keep the data buffer (CAP_KEEP_BUF) until free_kept_buf. */
  keepBuf?: boolean;
  unknownOp?: boolean;
}


/** How much of the entry at ring offset 0 is kept to recognise it (header, iovecs and CDB of common entries). */
const ZERO_ENTRY_COPY = 256;

export class RingConsumer {
  readonly version: number;
  readonly flags: number;
  readonly cmdrOff: number;
  readonly cmdrSize: number;
  private readonly mapSize: number;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly u32: Uint32Array;
  /** Where we read next; everything before it has been parsed. */
  private readPos: number;
  /**
   * cmd_tail as we last stored it. The mailbox's copy is ours alone to
   * write: if it changes under us, someone else is writing our side of the
   * ring and nothing between tail and head can be trusted.
   */
  private tailPos: number;
  /** Commands read but not yet completed: the tail may only pass this many CMD entries. */
  private unanswered = 0;
  /** 1 for each id read and not yet answered: a second completion of an id would break the kernel's ring for good. */
  private readonly outstanding = new Uint8Array(0x10000);
  /**
   * The entry at ring offset 0 as we read it (up to its first ZERO_ENTRY_COPY bytes, CDB
   * included for common entries): while our tail is 0 a reset_ring leaves the tail as we
   * stored it, and only a different entry there shows the kernel has rewritten the ring.
   */
  private readonly atZero = new Uint8Array(ZERO_ENTRY_COPY);
  private atZeroLen = 0;

  constructor(map: ArrayBuffer) {
    this.mapSize = map.byteLength;
    if (this.mapSize < Mailbox.SIZE) throw new RingBrokenError(`map of ${this.mapSize} bytes has no room for a mailbox`);
    this.u8 = new Uint8Array(map);
    this.dv = new DataView(map);
    this.u32 = new Uint32Array(map, 0, Mailbox.SIZE / 4);
    this.version = this.dv.getUint16(Mailbox.VERSION, true);
    this.flags = this.dv.getUint16(Mailbox.FLAGS, true);
    this.cmdrOff = this.dv.getUint32(Mailbox.CMDR_OFF, true);
    this.cmdrSize = this.dv.getUint32(Mailbox.CMDR_SIZE, true);
    if (this.version !== TCMU_MAILBOX_VERSION) throw new RingBrokenError(`mailbox version ${this.version}, expected ${TCMU_MAILBOX_VERSION}`);
    if (this.cmdrOff < Mailbox.SIZE || this.cmdrSize < CMD_ENTRY_SIZE * 2 || this.cmdrOff + this.cmdrSize > this.mapSize || this.cmdrOff % 8 !== 0 || this.cmdrSize % 8 !== 0) {
      throw new RingBrokenError(`ring [${this.cmdrOff}, +${this.cmdrSize}) does not fit a map of ${this.mapSize} bytes`);
    }
    const tail = this.tail();
    if (tail >= this.cmdrSize || tail % 8 !== 0) throw new RingBrokenError(`cmd_tail ${tail} outside the ring`);
    this.readPos = tail;
    this.tailPos = tail;
  }

  get outOfOrder(): boolean {
    return (this.flags & MailboxFlag.CAP_OOOC) !== 0;
  }

  head(): number {
    return Atomics.load(this.u32, Mailbox.CMD_HEAD / 4);
  }
  tail(): number {
    return Atomics.load(this.u32, Mailbox.CMD_TAIL / 4);
  }

  /** True when the kernel has produced entries we have not read. */
  hasWork(): boolean {
    return this.head() !== this.readPos;
  }

  /** Commands read and not yet completed. */
  get inFlight(): number {
    return this.unanswered;
  }

  /** The command with this id was read off the ring and not yet answered. */
  isOutstanding(cmdId: number): boolean {
    return this.outstanding[cmdId & 0xffff] === 1;
  }

  /** Ring bytes between the mailbox tail and head. */
  ringBytesUsed(): number {
    return ringUsed(this.head(), this.tail(), this.cmdrSize);
  }

  /**
   * The next entry the kernel produced, or null when we have caught up with
   * cmd_head. PAD entries are stepped over silently. Allocates a record per
   * entry: the engine's per-command path uses take() instead.
   */
  next(): RingEntry | null {
    const slot = (this.nextSlot ??= new RingSlot());
    switch (this.take(slot)) {
      case Taken.NONE:
        return null;
      case Taken.CMD:
        return { kind: 'cmd', cmdId: slot.cmdId, cdb: slot.cdb.slice(), iovs: copySpans(slot.iovecs), bidiIovs: copySpans(slot.bidiIovecs), dataLength: slot.dataLength };
      case Taken.TMR:
        return this.lastTmr!;
      default:
        return this.lastMalformed!;
    }
  }

  /**
   * Read the next entry into `slot` (a CMD) or into lastTmr / lastMalformed,
   * and say which; Taken.NONE when we have caught up with cmd_head. PAD
   * entries are stepped over silently. A CMD fills the slot's id, CDB,
   * iovecs and data length in place: nothing is allocated for it.
   */
  take(slot: RingSlot): number {
    const head = this.head();
    if (head >= this.cmdrSize || head % 8 !== 0) throw new RingBrokenError(`cmd_head ${head} outside the ring`);
    if (head === this.readPos) return Taken.NONE;
    this.checkTail();
    // Entries between tail and our read position are still unanswered: the kernel cannot have taken their room back.
    if (ringUsed(head, this.tailPos, this.cmdrSize) < ringUsed(this.readPos, this.tailPos, this.cmdrSize)) {
      throw new RingBrokenError(`cmd_head ${head} moved back behind the entries read up to ${this.readPos} (tail ${this.tailPos})`);
    }
    while (this.readPos !== head) {
      const at = this.readPos;
      const base = this.cmdrOff + at;
      const lo = this.dv.getUint32(base + EntryHdr.LEN_OP, true);
      const len = entryLen(lo);
      const op = entryOp(lo);
      const avail = ringUsed(head, at, this.cmdrSize);
      // An entry never wraps and never passes head; a zero length would never advance.
      if (len === 0 || len > avail || at + len > this.cmdrSize) {
        throw new RingBrokenError(`entry at ring offset ${at} has length ${len} (${avail} bytes up to head, ${this.cmdrSize - at} to the end)`);
      }
      this.readPos = (at + len) % this.cmdrSize;
      if (at === 0) {
        const n = Math.min(len, ZERO_ENTRY_COPY);
        for (let i = 0; i < n; i++) this.atZero[i] = this.u8[base + i]; // no subarray: nothing allocated here
        this.atZeroLen = n;
      }
      if (op === EntryOp.PAD) {
        // The kernel pads only up to the end of the ring, when the next entry would not fit there.
        if (at + len !== this.cmdrSize) return this.malformed(0, 'misplaced-pad', `PAD of ${len} bytes ends at ${at + len}, not at the ring's end ${this.cmdrSize}`, at);
        continue;
      }
      if (op === EntryOp.TMR) return this.parseTmr(base, len, at);
      if (op !== EntryOp.CMD) return this.malformed(0, 'bad-opcode', `opcode ${op}`, at);
      // Its completion is written over the entry (status, read_len, 96 bytes of sense): a shorter
      // one could only be answered by writing into the next entry, or past the ring's end.
      if (len < CMD_ENTRY_SIZE) throw new RingBrokenError(`CMD entry at ring offset ${at} has ${len} bytes, too few to hold its response`);
      const cmdId = this.dv.getUint16(base + EntryHdr.CMD_ID, true);
      // Id 0 can never be answered (the kernel would call its ring broken), and it would hold the tail back forever.
      if (cmdId === 0) throw new RingBrokenError(`CMD entry at ring offset ${at} has cmd_id 0`);
      if (this.outstanding[cmdId] === 1) throw new RingBrokenError(`CMD entry at ring offset ${at} reuses in-flight cmd_id ${cmdId}`);
      this.unanswered++; // even malformed commands need their completion to move the tail
      this.outstanding[cmdId] = 1;
      return this.parseCmd(base, len, at, cmdId, slot);
    }
    return Taken.NONE;
  }

  /** The record next() reads into before copying out. */
  private nextSlot: RingSlot | undefined;

  /** The TMR entry take() last returned Taken.TMR for. */
  lastTmr: RingTmr | undefined;
  /** The entry take() last returned Taken.MALFORMED for. */
  lastMalformed: RingMalformed | undefined;

  private malformed(cmdId: number, reason: MalformedReason, detail: string, at: number): number {
    this.lastMalformed = { kind: 'malformed', cmdId, reason, detail, at };
    return Taken.MALFORMED;
  }

  private parseTmr(base: number, len: number, at: number): number {
    if (len < TmrEntry.SIZE) return this.malformed(0, 'bad-length', `TMR entry of ${len} bytes`, at);
    const count = this.dv.getUint32(base + TmrEntry.CMD_CNT, true);
    if (TmrEntry.SIZE + 2 * count > len) return this.malformed(0, 'tmr-count', `${count} ids do not fit a ${len}-byte TMR entry`, at);
    const cmdIds = new Array<number>(count);
    for (let i = 0; i < count; i++) cmdIds[i] = this.dv.getUint16(base + TmrEntry.CMD_IDS + 2 * i, true);
    this.lastTmr = { kind: 'tmr', tmrType: this.u8[base + TmrEntry.TMR_TYPE], cmdIds };
    return Taken.TMR;
  }

  private parseCmd(base: number, len: number, at: number, cmdId: number, slot: RingSlot): number {
    const iovCnt = this.dv.getUint32(base + CmdReq.IOV_CNT, true);
    const bidiCnt = this.dv.getUint32(base + CmdReq.IOV_BIDI_CNT, true);
    const difCnt = this.dv.getUint32(base + CmdReq.IOV_DIF_CNT, true);
    const total = iovCnt + bidiCnt + difCnt;
    if (CmdReq.IOV + CmdReq.IOVEC_SIZE * total > len) return this.malformed(cmdId, 'iov-count', `${iovCnt}+${bidiCnt}+${difCnt} iovecs do not fit a ${len}-byte entry`, at);

    // u64 fields are read as two u32 halves: no BigInt on the per-command path.
    const cdbOff = this.u64(base + CmdReq.CDB_OFF);
    // The CDB lives in the ring, after this entry's iovecs: anything else is not a kernel-made entry.
    if (cdbOff < this.cmdrOff || cdbOff >= this.cmdrOff + this.cmdrSize) return this.malformed(cmdId, 'cdb-out-of-bounds', `cdb_off ${this.u64Text(base + CmdReq.CDB_OFF)} outside the ring`, at);
    const entryEnd = base + len;
    if (cdbOff < base + CmdReq.IOV + CmdReq.IOVEC_SIZE * total || cdbOff >= entryEnd) {
      return this.malformed(cmdId, 'cdb-out-of-bounds', `cdb_off ${cdbOff} not inside its entry [${base}, ${entryEnd})`, at);
    }
    const cdbLen = ringCdbLength(this.u8, cdbOff, entryEnd);
    if (cdbLen === 0 || cdbOff + cdbLen > entryEnd) return this.malformed(cmdId, 'cdb-out-of-bounds', `CDB of opcode 0x${this.u8[cdbOff].toString(16)} overruns its entry`, at);

    const dataStart = this.cmdrOff + this.cmdrSize;
    let dataLength = 0;
    for (let i = 0; i < iovCnt + bidiCnt; i++) {
      const p = base + CmdReq.IOV + CmdReq.IOVEC_SIZE * i;
      const off = this.u64(p);
      const l = this.u64(p + 8);
      if (off > this.mapSize || l > this.mapSize - off || off < dataStart) {
        return this.malformed(cmdId, 'iov-out-of-bounds', `iovec ${i} [${this.u64Text(p)}, +${this.u64Text(p + 8)}) outside the data area [${dataStart}, ${this.mapSize})`, at);
      }
      if (i < iovCnt) {
        slot.setIovec(slot.iovecs, i, off, l);
        dataLength += l;
      } else slot.setIovec(slot.bidiIovecs, i - iovCnt, off, l);
    }
    // Writing length is not free even when it does not change: only when it does.
    if (slot.iovecs.length !== iovCnt) slot.iovecs.length = iovCnt;
    if (slot.bidiIovecs.length !== bidiCnt) slot.bidiIovecs.length = bidiCnt;
    // A copy: the entry holding the CDB is reused for completions.
    slot.setCdb(this.u8, cdbOff, cdbLen);
    slot.cmdId = cmdId;
    slot.dataLength = dataLength;
    return Taken.CMD;
  }

  /** A little-endian u64 as a number; values past 2^53 come out as Infinity, which every bound check rejects. */
  private u64(at: number): number {
    const hi = this.dv.getUint32(at + 4, true);
    return hi >= 0x200000 ? Infinity : hi * 0x100000000 + this.dv.getUint32(at, true);
  }
  /** The exact value, for error messages only. */
  private u64Text(at: number): string {
    return this.dv.getBigUint64(at, true).toString();
  }

  /**
   * Answer command `cmdId`: the response goes into the entry now at the
   * mailbox tail (PAD and TMR entries there are stepped over), that entry takes
   * the id, and the tail moves past it. The caller kicks the kernel afterwards,
   * once per batch.
   */
  complete(cmdId: number, status: number, opts?: CompletionOptions): void {
    if (this.unanswered === 0) throw new Error(`completion of cmd ${cmdId} with no command outstanding`);
    if (this.outstanding[cmdId] !== 1) throw new Error(`completion of cmd ${cmdId}, which is not outstanding (answered twice, or never read)`);
    this.checkTail();
    // A reset back to 0 while our tail was 0 is invisible to checkTail() and to the exchange below;
    // cmd_head behind what we read, or another entry at offset 0, is not.
    if (this.tailPos === 0) this.checkNotResetAtZero();
    let tail = this.tailPos;
    // Every entry up to readPos was checked when it was read; one rewritten since then must not send us round the ring.
    let left = ringUsed(this.readPos, tail, this.cmdrSize);
    for (;;) {
      const base = this.cmdrOff + tail;
      const lo = this.dv.getUint32(base + EntryHdr.LEN_OP, true);
      const len = entryLen(lo);
      if (len === 0 || len > left || tail + len > this.cmdrSize) throw new RingBrokenError(`entry at tail ${tail} has length ${len} (${left} bytes read past the tail)`);
      left -= len;
      if (entryOp(lo) === EntryOp.CMD) {
        if (len < CMD_ENTRY_SIZE) throw new RingBrokenError(`CMD entry at tail ${tail} has ${len} bytes, too few to hold a response`);
        this.writeResponse(base, cmdId, status, opts);
        tail = (tail + len) % this.cmdrSize;
        break;
      }
      tail = (tail + len) % this.cmdrSize;
      if (left === 0) throw new RingBrokenError('no unanswered command entry between tail and the read position');
    }
    this.unanswered--;
    this.outstanding[cmdId] = 0;
    // Skip PAD/TMR entries that follow once nothing is left to answer, so the kernel can reclaim them.
    if (this.unanswered === 0) tail = this.readPos;
    // An admin's action/reset_ring may land at any moment, also since checkTail() above. A plain
    // store would then overwrite the kernel's tail of 0, and the kernel would take the entries it
    // has queued since (ids restart at 1) for answered: new commands completed, GOOD, without
    // being run. Move the tail only if it is still the one we stored.
    const was = this.tailPos;
    this.tailPos = tail;
    const seen = Atomics.compareExchange(this.u32, Mailbox.CMD_TAIL / 4, was, tail);
    if (seen !== was) throw new RingBrokenError(`cmd_tail changed under us: ${seen}, we stored ${was}`);
  }

  private checkNotResetAtZero(): void {
    const head = this.head();
    if (ringUsed(head, 0, this.cmdrSize) < this.readPos) throw new RingBrokenError(`cmd_head ${head} moved back behind the entries read up to ${this.readPos} (tail 0)`);
    const base = this.cmdrOff;
    for (let i = 0; i < this.atZeroLen; i++) {
      if (this.u8[base + i] !== this.atZero[i]) throw new RingBrokenError('the entry at ring offset 0 is not the one we read: the ring was reset under us');
    }
  }

  /** cmd_tail must still be what we stored. */
  private checkTail(): void {
    const t = this.tail();
    if (t !== this.tailPos) throw new RingBrokenError(`cmd_tail changed under us: ${t}, we stored ${this.tailPos}`);
  }

  private writeResponse(base: number, cmdId: number, status: number, opts?: CompletionOptions): void {
    const u8 = this.u8;
    this.dv.setUint16(base + EntryHdr.CMD_ID, cmdId, true);
    let uflags = 0;
    if (opts?.unknownOp) uflags |= UFlag.UNKNOWN_OP;
    u8[base + CmdRsp.SCSI_STATUS] = status;
    if (opts?.readLen !== undefined && (this.flags & MailboxFlag.CAP_READ_LEN)) {
      uflags |= UFlag.READ_LEN;
      this.dv.setUint32(base + CmdRsp.READ_LEN, opts.readLen, true);
    }
    if (opts?.keepBuf && (this.flags & MailboxFlag.CAP_KEEP_BUF)) uflags |= UFlag.KEEP_BUF;
    u8[base + EntryHdr.UFLAGS] = uflags;
    const sense = opts?.sense;
    if (sense && sense.length) {
      const n = Math.min(sense.length, TCMU_SENSE_BUFFERSIZE);
      u8.set(n === sense.length ? sense : sense.subarray(0, n), base + CmdRsp.SENSE);
      if (n < TCMU_SENSE_BUFFERSIZE) u8.fill(0, base + CmdRsp.SENSE + n, base + CmdRsp.SENSE + TCMU_SENSE_BUFFERSIZE);
    } else if (status !== 0) {
      u8.fill(0, base + CmdRsp.SENSE, base + CmdRsp.SENSE + TCMU_SENSE_BUFFERSIZE);
    }
  }

  /** Tell the kernel the opcode is unknown (it answers the initiator itself). */
  unknownOp(cmdId: number): void {
    this.complete(cmdId, 0, { unknownOp: true });
  }

  /** Forget everything read: used after the kernel's ring reset, which sets head = tail = 0. */
  resync(): void {
    const t = this.tail();
    if (t >= this.cmdrSize || t % 8 !== 0) throw new RingBrokenError(`cmd_tail ${t} outside the ring`);
    this.readPos = t;
    this.tailPos = t;
    this.atZeroLen = 0;
    this.unanswered = 0;
    this.outstanding.fill(0);
  }

  /** A view on the map (no copy) for one iovec. */
  view(iov: IoVec): Uint8Array {
    return new Uint8Array(this.u8.buffer, iov.offset, iov.length);
  }
}
