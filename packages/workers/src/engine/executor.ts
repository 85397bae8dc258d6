/**
 * The executor: everything one command goes through between the ring and
 * its completion, on the device's worker thread. The gates first (unit
 * attention, FORMAT UNIT in progress, the handler's own handleCmd, ALUA),
 * then the planner's verdict carried out: answered in place, READ / WRITE /
 * SYNCHRONIZE CACHE straight to the handler (completed in place when the
 * callout returns synchronously), and every other plan through the handler's
 * own callout or emulated on read/write, as tcmu-runner's
 * tcmur_cmd_handler.c does.
 *
 * Also here: the LBA range lock that makes COMPARE AND WRITE atomic against
 * writes, and both ends of EXTENDED COPY between LUNs of the daemon.
 */
import {
  Asc, ListIdUsage, ScsiError, SenseKey, XcopySegmentField, compareAndWriteViaReadWrite, compareBuffers,
  copyToBuffers, enabledPort, errnoError, flattenBuffers, hexBytes, isZeroRange, makeBlockIo, naaDesignator, patternOf,
  planCommand, requestSenseData, scsiErrorFor, sliceBuffers, sliceIovecs, writeSameViaWrite,
  MEDIA_ACCESS_OPCODES, PARAMETER_LIST_OPCODES, READ_ONLY_MEDIA_OPCODES,
  type AluaGroupInfo, type BlockIo, type Callout, type CompareAndWriteIo, type DeviceHandler, type IoVec, type LbaStatusExtent,
  type RawResult, type ScsiDeviceInfo, type ScsiPlan,
} from '@tcmu-ts/core';
import { ScsiStatus } from '@tcmu-ts/ring/abi';
import { AluaController } from './alua-controller.js';
import { CommandClass, type Command } from './command.js';
import type { PeerInfo, WireError } from '../device-spec.js';
import { LbaRangeLock } from './lba-lock.js';
import { CopyStatusTable } from './xcopy-status.js';

/** How a worker reaches the other LUNs of the daemon (through the supervisor). */
export interface PeerLink {
  /** The LUN whose VPD 83h NAA designator is `naa` (32 hex digits), if the daemon serves it. */
  lookup(naa: string): Promise<PeerInfo | undefined>;
  /** Read or write `blocks` at `lba` of LUN `device`, the data in `buf` from byte `offset`. Rejects with ScsiError or an errno error. */
  io(device: string, op: 'read' | 'write', lba: number, blocks: number, buf: SharedArrayBuffer, offset: number): Promise<void>;
}

export interface ExecLog {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface ExecOptions {
  info: ScsiDeviceInfo;
  handler: DeviceHandler;
  log: ExecLog;
  peers?: PeerLink;
  /** Tests only: no LBA range lock (COMPARE AND WRITE is then not atomic). */
  unsafeNoLock?: boolean;
  onAluaChange?(groups: readonly AluaGroupInfo[]): void;
  /** Work that outlives its command (FORMAT UNIT with IMMED): the engine waits for it before stopping. */
  track(job: Promise<unknown>): void;
}

/** The command's data buffers, as views on the ring. */
export interface CommandData {
  readonly dataLength: number;
  readonly buffers: readonly Uint8Array[];
  readonly iovecs: readonly IoVec[];
}

/** tcmu-runner stages emulated writes (WRITE SAME, FORMAT UNIT) 1 MiB at a time, rounded up to whole transfers. */
const STAGING_BYTES = 1 << 20;

/** Chunk of blocks for a read-back (VERIFY, WRITE AND VERIFY) or a copy. */
function chunkBlocks(info: ScsiDeviceInfo): number {
  const byBytes = Math.max(1, Math.floor(STAGING_BYTES / info.blockSize));
  return info.maxXferBlocks > 0 ? Math.max(byBytes, info.maxXferBlocks) : byBytes;
}

function stagingBytes(info: ScsiDeviceInfo): number {
  const xfer = Math.max(1, info.maxXferBlocks) * info.blockSize;
  return Math.ceil(STAGING_BYTES / xfer) * xfer;
}

/** An error as it crosses to another thread, and back. */
export function toWire(e: unknown): WireError {
  if (e instanceof ScsiError) return { key: e.key, asc: e.asc, ascq: e.ascq, message: e.message };
  const code = (e as { code?: unknown } | null)?.code;
  return { code: typeof code === 'string' ? code : 'EIO', message: e instanceof Error ? e.message : String(e) };
}

export function fromWire(w: WireError): Error {
  if (w.key !== undefined) return new ScsiError(w.key, w.asc ?? 0, w.ascq ?? 0, { message: w.message });
  return errnoError(w.code ?? 'EIO', w.message);
}

/** A write's failure with its direction settled (EIO: WRITE ERROR), for errors that leave this command. */
function asWriteFailure(e: unknown): unknown {
  const code = (e as { code?: unknown } | null)?.code;
  return code === 'EIO' ? scsiErrorFor(e, 'write') : e;
}

/** A callout that returned a promise rather than finishing in place. */
function pending<T>(r: Callout<T>): r is Promise<T> | PromiseLike<T> {
  return r !== undefined && r !== null && typeof (r as { then?: unknown }).then === 'function';
}

/** SAM-5: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit attention. */
const UA_EXEMPT: ReadonlySet<number> = new Set([0x12, 0xa0, 0x03]);
const REQUEST_SENSE = 0x03;
/** Answered normally while FORMAT UNIT runs (REQUEST SENSE with the progress). */
const FORMAT_EXEMPT: ReadonlySet<number> = new Set([0x12, 0xa0]);

/** Counter class and failure direction of each plan the executor runs beyond READ/WRITE/FLUSH. */
const PLAN_CLASS: Partial<Record<ScsiPlan['kind'], { cls: number; write: boolean }>> = {
  'write-same': { cls: CommandClass.WRITE, write: true },
  'compare-and-write': { cls: CommandClass.WRITE, write: true },
  'write-verify': { cls: CommandClass.WRITE, write: true },
  verify: { cls: CommandClass.READ, write: false },
  format: { cls: CommandClass.OTHER, write: true },
};

interface CopyEnd {
  /** undefined: this LUN. */
  readonly peer?: string;
  readonly blockSize: number;
  readonly numLbas: number;
  readonly maxXferBlocks: number;
}

type XcopyPlan = Extract<ScsiPlan, { kind: 'xcopy' }>;

export class CommandExecutor {
  readonly rangeLock = new LbaRangeLock();
  /** COPY STATUS held for EXTENDED COPY commands with LIST ID USAGE 00b. */
  readonly copyStatus = new CopyStatusTable();
  readonly alua?: AluaController;
  /** Set while FORMAT UNIT runs: progress 0..65535 for sense-key-specific bytes. */
  formatProgress: number | undefined;
  /** Reported once, to the next command that is not exempt from unit attentions. */
  private unitAttention: ScsiError | null = null;
  private naaHex?: string;
  private cancelled = false;

  constructor(private readonly x: ExecOptions) {
    if (enabledPort(x.info.alua)) {
      this.alua = new AluaController(x.info.alua!, x.handler, x.log, (g) => x.onAluaChange?.(g));
    }
  }

  private get info(): ScsiDeviceInfo {
    return this.x.info;
  }

  private get h(): DeviceHandler {
    return this.x.handler;
  }

  /** E.g. CAPACITY DATA HAS CHANGED after a dev_size change. */
  raiseUnitAttention(ua: ScsiError): void {
    this.unitAttention = ua;
  }

  /** A logical unit reset (task management): copy status held for RECEIVE COPY RESULTS is discarded. */
  onReset(): void {
    this.copyStatus.clear();
  }

  /** The device is stopping: a running format ends at its next chunk instead of holding the stop up. */
  cancel(): void {
    this.cancelled = true;
  }

  /** NOT READY, FORMAT IN PROGRESS with where the format is, or undefined when none runs. */
  formatError(): ScsiError | undefined {
    return this.formatProgress === undefined ? undefined : ScsiError.formatInProgress(this.formatProgress);
  }

  // ------------------------------------------------------------ one command

  /**
   * Carry one command to its completion (cmd.done / cmd.fail), now or when
   * the handler's promise settles. Never throws.
   */
  execute(cmd: Command): void {
    try {
      const op = cmd.cdb[0];
      if (this.unitAttention !== null && !UA_EXEMPT.has(op)) {
        const ua = this.unitAttention;
        this.unitAttention = null;
        cmd.fail(ua);
        return;
      }
      if (this.formatProgress !== undefined && !FORMAT_EXEMPT.has(op)) {
        // tcmu-runner lets only INQUIRY through while formatting; REPORT LUNS is the
        // kernel's, and REQUEST SENSE is how SBC says the progress is polled.
        const formatting = this.formatError()!;
        if (op !== REQUEST_SENSE) {
          cmd.fail(formatting);
          return;
        }
        const produced = copyToBuffers(cmd.buffers, requestSenseData(cmd.cdb, formatting));
        cmd.bytes = produced;
        cmd.done(ScsiStatus.GOOD, undefined, produced);
        return;
      }
      if (this.h.handleCmd) this.offerToHandler(cmd);
      else this.plan(cmd);
    } catch (e) {
      // A command already completed ignores this (DeviceEngine.fail).
      cmd.fail(e);
    }
  }

  /** handleCmd sees the command first; undefined hands it back to the planner. */
  private offerToHandler(cmd: Command): void {
    const r = this.h.handleCmd!({ cdb: cmd.cdb, buffers: cmd.buffers, iovecs: cmd.iovecs, length: cmd.dataLength });
    if (!pending(r)) {
      this.afterHandler(cmd, r);
      return;
    }
    r.then((res) => {
      try {
        this.afterHandler(cmd, res);
      } catch (e) {
        cmd.fail(e);
      }
    }, cmd.failed);
  }

  private afterHandler(cmd: Command, res: RawResult | undefined): void {
    if (res === undefined) {
      this.plan(cmd);
      return;
    }
    cmd.bytes = res.dataLength ?? 0;
    cmd.done(res.status, res.sense, res.dataLength ?? -1);
  }

  private plan(cmd: Command): void {
    const op = cmd.cdb[0];
    // ALUA first, as tcmu-runner's alua_check_state runs before a command is looked at.
    if (this.alua && MEDIA_ACCESS_OPCODES.has(op)) this.alua.check(READ_ONLY_MEDIA_OPCODES.has(op));
    // Only parameter lists need the data-out contiguous (MODE SELECT, UNMAP, EXTENDED COPY, ...).
    const dataOut = cmd.dataLength > 0 && PARAMETER_LIST_OPCODES.has(op) ? flattenBuffers(cmd.buffers) : undefined;
    const plan = planCommand(cmd.cdb, this.info, dataOut, cmd.dataLength, cmd.plan);
    switch (plan.kind) {
      case 'done': {
        const produced = plan.dataIn && plan.dataIn.length ? copyToBuffers(cmd.buffers, plan.dataIn) : 0;
        cmd.bytes = produced;
        cmd.done(plan.status, plan.sense, produced);
        return;
      }
      case 'read':
        this.read(cmd);
        return;
      case 'write':
        this.write(cmd);
        return;
      case 'flush':
        this.flush(cmd);
        return;
      default:
        this.runPlan(cmd, plan);
    }
  }

  /** Point the record's BlockIo at its planned range; the buffers are the command's own, cut to the transfer. */
  private blockIo(cmd: Command): BlockIo {
    const p = cmd.plan;
    const bs = this.info.blockSize;
    const length = p.blocks * bs;
    // The kernel sizes the data buffer from the CDB; a shorter one means a broken entry.
    if (cmd.dataLength < length) throw ScsiError.hardwareError();
    const io = cmd.io;
    io.lba = p.lba;
    io.blocks = p.blocks;
    io.offset = p.lba * bs;
    io.length = length;
    io.fua = p.fua;
    // The kernel may hand out more buffer than the transfer needs (rare: a slice then).
    io.buffers = cmd.dataLength === length ? cmd.buffers : sliceBuffers(cmd.buffers, 0, length);
    io.iovecs = cmd.dataLength === length ? cmd.iovecs : sliceIovecs(cmd.iovecs, 0, length);
    cmd.bytes = length;
    return io;
  }

  private read(cmd: Command): void {
    cmd.cls = CommandClass.READ;
    const h = this.h;
    if (!h.read) throw ScsiError.invalidOpcode();
    const io = this.blockIo(cmd);
    cmd.readLen = io.length;
    const r = h.read(io);
    if (pending(r)) r.then(cmd.succeed, cmd.failed);
    else cmd.done(ScsiStatus.GOOD, undefined, io.length);
  }

  /**
   * Writes hold their range shared, so a COMPARE AND WRITE on it waits for
   * them and they for it. With no exclusive holder or waiter anywhere (the
   * usual case) the write goes straight to the handler, and only one that
   * stays in flight takes a hold, in the same turn: nothing can overlap it
   * in between.
   */
  private write(cmd: Command): void {
    cmd.cls = CommandClass.WRITE;
    cmd.write = true;
    if (!this.h.write) throw ScsiError.invalidOpcode();
    const io = this.blockIo(cmd);
    const lock = this.rangeLock;
    if (this.x.unsafeNoLock || !lock.hasExclusive) {
      this.issueWrite(cmd);
      return;
    }
    const id = lock.tryAcquire(io.lba, io.blocks, false);
    if (id !== undefined) {
      cmd.lockId = id;
      this.issueWrite(cmd);
      return;
    }
    void lock.acquire(io.lba, io.blocks, false).then((granted) => {
      cmd.lockId = granted;
      try {
        this.issueWrite(cmd);
      } catch (e) {
        cmd.fail(e);
      }
    });
  }

  private issueWrite(cmd: Command): void {
    const io = cmd.io;
    const r = this.h.write!(io);
    if (!pending(r)) {
      cmd.done();
      return;
    }
    if (cmd.lockId === 0 && !this.x.unsafeNoLock) cmd.lockId = this.rangeLock.tryAcquire(io.lba, io.blocks, false)!;
    r.then(cmd.succeed, cmd.failed);
  }

  private flush(cmd: Command): void {
    cmd.cls = CommandClass.FLUSH;
    cmd.write = true;
    const h = this.h;
    const r = h.flush ? h.flush() : undefined;
    if (pending(r)) r.then(cmd.succeed, cmd.failed);
    else cmd.done();
  }

  /** Release what a completing command holds. */
  release(cmd: Command): void {
    if (cmd.lockId !== 0) {
      this.rangeLock.release(cmd.lockId);
      cmd.lockId = 0;
    }
  }

  /** Every plan beyond READ/WRITE/SYNCHRONIZE CACHE: async, closures allowed (not the per-IO path). */
  private runPlan(cmd: Command, plan: ScsiPlan): void {
    const c = PLAN_CLASS[plan.kind];
    if (c) {
      cmd.cls = c.cls;
      cmd.write = c.write;
    }
    this.run(plan, cmd).then(
      (produced) => {
        cmd.bytes = cmd.cls === CommandClass.WRITE ? cmd.dataLength : produced;
        cmd.done(ScsiStatus.GOOD, undefined, produced || -1);
      },
      cmd.failed,
    );
  }

  /** Take the range, run `fn`, release. Shared for writes, exclusive for COMPARE AND WRITE and WRITE AND VERIFY. */
  async locked<T>(lba: number, blocks: number, exclusive: boolean, fn: () => Callout<T>): Promise<T> {
    if (this.x.unsafeNoLock) return fn();
    const id = this.rangeLock.tryAcquire(lba, blocks, exclusive) ?? (await this.rangeLock.acquire(lba, blocks, exclusive));
    try {
      return await fn();
    } finally {
      this.rangeLock.release(id);
    }
  }

  /** Run a plan that is neither answered in place nor a block transfer. Resolves to the Data-In bytes produced. */
  async run(plan: ScsiPlan, data: CommandData): Promise<number> {
    switch (plan.kind) {
      case 'unmap':
        await this.unmap(plan.ranges);
        return 0;
      case 'write-same':
        await this.writeSame(plan.lba, plan.blocks, plan.unmap, plan.ndob, data);
        return 0;
      case 'compare-and-write':
        await this.compareAndWrite(plan.lba, plan.blocks, plan.fua, data);
        return 0;
      case 'verify':
        await this.verify(plan.lba, plan.blocks, plan.bytchk, data);
        return 0;
      case 'write-verify':
        await this.writeVerify(plan.lba, plan.blocks, data);
        return 0;
      case 'orwrite':
        await this.orWrite(plan.lba, plan.blocks, plan.fua, data);
        return 0;
      case 'write-atomic':
        await this.writeAtomic(plan.lba, plan.blocks, plan.fua, data);
        return 0;
      case 'format':
        await this.format(plan.immed);
        return 0;
      case 'xcopy':
        await this.extendedCopy(plan);
        return 0;
      case 'copy-status':
        return copyToBuffers(data.buffers, this.copyStatus.report(plan.listId, plan.allocationLength));
      case 'rtpg': {
        if (!this.alua) throw ScsiError.invalidOpcode();
        const d = await this.alua.reportTargetPortGroups(plan.extended, plan.allocationLength);
        return copyToBuffers(data.buffers, d);
      }
      case 'lba-status':
        return copyToBuffers(data.buffers, await this.lbaStatus(plan.lba, plan.allocationLength));
      case 'stpg':
        if (!this.alua) throw ScsiError.invalidOpcode();
        await this.alua.setTargetPortGroups(plan.descriptors);
        return 0;
      default:
        throw ScsiError.invalidOpcode();
    }
  }

  // ------------------------------------------------------------ GET LBA STATUS

  /** The LBA status parameter data (SBC-3 5.6.2), as many descriptors as the allocation length holds. */
  private async lbaStatus(lba: number, allocationLength: number): Promise<Uint8Array> {
    if (!this.h.lbaStatus) throw ScsiError.invalidField(1, 4);
    const max = Math.max(1, Math.min(LBA_STATUS_MAX_EXTENTS, Math.floor((allocationLength - 8) / 16)));
    const extents = await this.h.lbaStatus(lba, this.info.numLbas - lba, max);
    return lbaStatusData(extents, max);
  }

  // ------------------------------------------------------------ UNMAP / WRITE SAME

  private async unmap(ranges: readonly { lba: number; blocks: number }[]): Promise<void> {
    if (!this.h.unmap) throw ScsiError.invalidOpcode();
    let lo = Infinity;
    let hi = 0;
    for (const r of ranges) {
      lo = Math.min(lo, r.lba);
      hi = Math.max(hi, r.lba + r.blocks);
    }
    await this.locked(lo, hi - lo, false, () => this.h.unmap!(ranges));
  }

  /**
   * WRITE SAME. With the UNMAP bit and a handler that can unmap, an
   * all-zero block unmaps the range (unmapped blocks read as zeros); any
   * other block is written, since unmapping would lose it (tcmu-runner
   * unmaps whatever the block holds). Then the handler's writeSame, else
   * the block repeated through write() in 1 MiB stages.
   */
  private async writeSame(lba: number, blocks: number, unmap: boolean, ndob: boolean, data: CommandData): Promise<void> {
    const bs = this.info.blockSize;
    // tcmu-runner: the Data-Out Buffer must be exactly one block.
    if (!ndob && data.dataLength !== bs) throw ScsiError.invalidField();
    const pattern = ndob ? new Uint8Array(bs) : patternOf(data.buffers, bs);
    const h = this.h;
    // The data is `pattern`; a WRITE SAME carries no buffers of the range's length.
    const io: BlockIo = { lba, blocks, offset: lba * bs, length: blocks * bs, buffers: [], iovecs: undefined, fua: false };
    await this.locked(lba, blocks, false, async () => {
      if (unmap && h.unmap && this.info.lbpws && isZeroRange(pattern, 0, bs)) return h.unmap([{ lba, blocks }]);
      if (h.writeSame) return h.writeSame(io, pattern);
      if (!h.write) throw ScsiError.invalidOpcode();
      return writeSameViaWrite(h, io, pattern, stagingBytes(this.info));
    });
  }

  // ------------------------------------------------------------ COMPARE AND WRITE

  private async compareAndWrite(lba: number, blocks: number, fua: boolean, data: CommandData): Promise<void> {
    const bs = this.info.blockSize;
    const half = blocks * bs;
    // tcmu-runner: verify and write data must both be there (check_iovec_length).
    if (data.dataLength < 2 * half) throw ScsiError.hardwareError();
    const h = this.h;
    if (!h.compareAndWrite && !(h.read && h.write)) throw ScsiError.invalidOpcode();
    const io: CompareAndWriteIo = {
      ...makeBlockIo({
        lba, blocks, blockSize: bs, fua,
        buffers: sliceBuffers(data.buffers, half, half),
        iovecs: sliceIovecs(data.iovecs, half, half),
      }),
      compare: sliceBuffers(data.buffers, 0, half),
      compareIovecs: sliceIovecs(data.iovecs, 0, half),
    };
    const res = await this.locked(lba, blocks, true, () =>
      h.compareAndWrite ? h.compareAndWrite(io) : compareAndWriteViaReadWrite(h, io, bs),
    );
    if (!res.ok) throw ScsiError.miscompare(res.offset);
  }

  // ------------------------------------------------------------ VERIFY / WRITE AND VERIFY

  /**
   * Read [lba, lba+blocks) back chunk by chunk; `check(view, at)` sees each
   * chunk with its byte offset from the start of the range.
   */
  private async readBack(lba: number, blocks: number, check?: (view: Uint8Array, at: number) => void): Promise<void> {
    const h = this.h;
    if (!h.read) throw ScsiError.invalidOpcode();
    const bs = this.info.blockSize;
    const per = Math.min(blocks, chunkBlocks(this.info));
    const scratch = new Uint8Array(per * bs);
    for (let done = 0; done < blocks; ) {
      const n = Math.min(per, blocks - done);
      const view = n === per ? scratch : scratch.subarray(0, n * bs);
      await h.read(makeBlockIo({ lba: lba + done, blocks: n, blockSize: bs, buffers: [view] }));
      check?.(view, done * bs);
      done += n;
    }
  }

  /**
   * VERIFY: BYTCHK 0 reads the blocks back (a failed read is a MEDIUM
   * ERROR); 1 compares them with the Data-Out Buffer; 3 compares each with
   * the single block sent. MISCOMPARE carries the offset of the first
   * differing byte (for 3, counted as if the block were repeated).
   */
  private async verify(lba: number, blocks: number, bytchk: 0 | 1 | 3, data: CommandData): Promise<void> {
    const bs = this.info.blockSize;
    if (bytchk === 0) return this.readBack(lba, blocks);
    if (bytchk === 1) {
      if (data.dataLength < blocks * bs) throw ScsiError.hardwareError();
      return this.readBack(lba, blocks, (view, at) => {
        const diff = compareBuffers(sliceBuffers(data.buffers, at, view.length), view);
        if (diff >= 0) throw ScsiError.miscompare(at + diff);
      });
    }
    if (data.dataLength < bs) throw ScsiError.hardwareError();
    const block = patternOf(data.buffers, bs);
    return this.readBack(lba, blocks, (view, at) => {
      for (let off = 0; off < view.length; off += bs) {
        const diff = compareBuffers([block], view.subarray(off, off + bs));
        if (diff >= 0) throw ScsiError.miscompare(at + off + diff);
      }
    });
  }

  /**
   * WRITE AND VERIFY: write, read back, compare (tcmu-runner compares
   * whatever BYTCHK says). The range is held exclusively from the write to
   * the end of the compare, so an overlapping write cannot make it miscompare.
   */
  private async writeVerify(lba: number, blocks: number, data: CommandData): Promise<void> {
    const h = this.h;
    if (!h.write || !h.read) throw ScsiError.invalidOpcode();
    const bs = this.info.blockSize;
    const length = blocks * bs;
    if (data.dataLength < length) throw ScsiError.hardwareError();
    const buffers = sliceBuffers(data.buffers, 0, length);
    await this.locked(lba, blocks, true, async () => {
      await h.write!(makeBlockIo({ lba, blocks, blockSize: bs, buffers, iovecs: sliceIovecs(data.iovecs, 0, length) }));
      await this.readBack(lba, blocks, (view, at) => {
        const diff = compareBuffers(sliceBuffers(buffers, at, view.length), view);
        if (diff >= 0) throw ScsiError.miscompare(at + diff);
      });
    });
  }

  // ------------------------------------------------------------ ORWRITE, WRITE ATOMIC

  /** Read, OR the Data-Out in, write back: the range held exclusively so no write lands in between. */
  private async orWrite(lba: number, blocks: number, fua: boolean, data: CommandData): Promise<void> {
    const h = this.h;
    if (!h.write || !h.read) throw ScsiError.invalidOpcode();
    const bs = this.info.blockSize;
    const length = blocks * bs;
    if (data.dataLength < length) throw ScsiError.hardwareError();
    await this.locked(lba, blocks, true, async () => {
      const merged = new Uint8Array(length);
      await h.read!(makeBlockIo({ lba, blocks, blockSize: bs, buffers: [merged] }));
      let at = 0;
      for (const b of sliceBuffers(data.buffers, 0, length)) {
        for (let i = 0; i < b.length; i++) merged[at + i] |= b[i];
        at += b.length;
      }
      await h.write!(makeBlockIo({ lba, blocks, blockSize: bs, buffers: [merged], fua }));
    });
  }

  /**
   * One write() the handler promised lands whole (limits.atomicWriteBlocks),
   * held exclusively so no overlapping command is interleaved with it.
   */
  private async writeAtomic(lba: number, blocks: number, fua: boolean, data: CommandData): Promise<void> {
    const h = this.h;
    if (!h.write || !h.limits?.atomicWriteBlocks) throw ScsiError.invalidOpcode();
    const bs = this.info.blockSize;
    const length = blocks * bs;
    if (data.dataLength < length) throw ScsiError.hardwareError();
    await this.locked(lba, blocks, true, () =>
      h.write!(makeBlockIo({ lba, blocks, blockSize: bs, buffers: sliceBuffers(data.buffers, 0, length), iovecs: sliceIovecs(data.iovecs, 0, length), fua })));
  }

  // ------------------------------------------------------------ FORMAT UNIT

  /**
   * FORMAT UNIT: zeros over the whole medium, 1 MiB (rounded up to whole
   * transfers) at a time, through writeSame when the handler has it, else
   * write. While it runs every command but INQUIRY, REPORT LUNS and
   * REQUEST SENSE gets NOT READY, FORMAT IN PROGRESS with the progress;
   * REQUEST SENSE returns that sense as its data. With IMMED the command
   * completes at once.
   */
  private async format(immed: boolean): Promise<void> {
    const h = this.h;
    if (!h.write && !h.writeSame) throw ScsiError.invalidOpcode();
    const pending = this.formatError();
    if (pending) throw pending;
    this.formatProgress = 0;
    const job = this.zeroAll().finally(() => {
      this.formatProgress = undefined;
    });
    if (immed) {
      this.x.track(job.catch((e) => this.x.log.error(`FORMAT UNIT failed: ${e instanceof Error ? e.message : String(e)}`)));
      return;
    }
    await job;
  }

  private async zeroAll(): Promise<void> {
    const h = this.h;
    const bs = this.info.blockSize;
    const total = this.info.numLbas;
    this.x.log.info(`format: writing zeros over ${total} blocks`);
    const per = Math.max(1, Math.min(total, Math.floor(stagingBytes(this.info) / bs)));
    const zeroBlock = new Uint8Array(bs);
    const zeros = h.writeSame ? undefined : new Uint8Array(per * bs);
    for (let done = 0; done < total; ) {
      if (this.cancelled) throw ScsiError.internalFailure(new Error('format interrupted: the device is stopping'));
      const n = Math.min(per, total - done);
      if (h.writeSame) {
        const io: BlockIo = { lba: done, blocks: n, offset: done * bs, length: n * bs, buffers: [], iovecs: undefined, fua: false };
        await h.writeSame(io, zeroBlock);
      } else {
        await h.write!(makeBlockIo({ lba: done, blocks: n, blockSize: bs, buffers: [zeros!.subarray(0, n * bs)] }));
      }
      done += n;
      if (done < total) this.formatProgress = Math.min(0xffff, Math.floor((0x10000 * done) / total));
    }
    this.x.log.info('format: done');
  }

  // ------------------------------------------------------------ EXTENDED COPY

  private get myNaa(): string {
    return (this.naaHex ??= hexBytes(naaDesignator(this.info.wwn ?? this.info.serial)));
  }

  private async copyEnd(naa: Uint8Array): Promise<CopyEnd | undefined> {
    const hex = hexBytes(naa);
    if (hex === this.myNaa) return { blockSize: this.info.blockSize, numLbas: this.info.numLbas, maxXferBlocks: this.info.maxXferBlocks };
    const p = await this.x.peers?.lookup(hex);
    return p && { peer: p.name, blockSize: p.blockSize, numLbas: p.numLbas, maxXferBlocks: p.maxXferBlocks };
  }

  /**
   * EXTENDED COPY between this LUN and any LUN of the daemon (itself
   * included), found by the NAA designator of its VPD 83h page. As in
   * tcmu-runner one end must be the LUN the command came to. Blocks move
   * through a SharedArrayBuffer the other LUN's worker reads or fills, via
   * the supervisor. tcmu-runner refuses copies between two different
   * devices, since it cannot check the initiator may reach the other one;
   * here every LUN the daemon serves counts as reachable.
   *
   * The list has been checked (ILLEGAL REQUEST errors); what goes wrong
   * from here happens while segments are processed and is COPY ABORTED
   * (SPC-4), with the segment number in COMMAND-SPECIFIC INFORMATION and a
   * segment pointer at the field at fault: a CSCD index that names no
   * descriptor or a LU not served here (COPY TARGET DEVICE NOT REACHABLE),
   * block sizes that differ (INCORRECT COPY TARGET DEVICE TYPE), blocks
   * past the end of either LU (no additional sense code: SPC-4 has none
   * for it under COPY ABORTED; the pointer names the LBA). All of that is
   * checked before the segment's first block moves.
   */
  private async extendedCopy(plan: XcopyPlan): Promise<void> {
    const named = plan.listIdUsage !== ListIdUsage.NONE;
    const progress = named ? this.copyStatus.begin(plan.listId, plan.listIdUsage === ListIdUsage.HOLD) : undefined;
    try {
      for (const seg of plan.segments) {
        const at = (byte?: number) => ({ segment: seg.index, ...(byte !== undefined ? { byte } : {}) });
        const src = seg.source && (await this.copyEnd(seg.source));
        if (!src) throw ScsiError.copyTargetNotReachable(at(XcopySegmentField.SOURCE_INDEX));
        const dst = seg.destination && (await this.copyEnd(seg.destination));
        if (!dst) throw ScsiError.copyTargetNotReachable(at(XcopySegmentField.DESTINATION_INDEX));
        // Neither end is this LUN.
        if (src.peer !== undefined && dst.peer !== undefined) throw ScsiError.copyTargetNotReachable(at());
        if (src.blockSize !== dst.blockSize) throw ScsiError.incorrectCopyTargetType(at());
        if (seg.sourceLba + BigInt(seg.blocks) > BigInt(src.numLbas)) {
          throw ScsiError.copyAborted(Asc.NO_ADDITIONAL_SENSE, at(XcopySegmentField.SOURCE_LBA));
        }
        if (seg.destinationLba + BigInt(seg.blocks) > BigInt(dst.numLbas)) {
          throw ScsiError.copyAborted(Asc.NO_ADDITIONAL_SENSE, at(XcopySegmentField.DESTINATION_LBA));
        }
        if (seg.blocks > 0) {
          await this.copySegment(src, Number(seg.sourceLba), dst, Number(seg.destinationLba), seg.blocks, (n) => {
            if (progress) progress.bytes += n * src.blockSize;
          });
        }
        if (progress) progress.segmentsProcessed++;
      }
    } catch (e) {
      this.copyStatus.finish(plan.listId, progress, false);
      throw e;
    }
    this.copyStatus.finish(plan.listId, progress, true);
  }

  private async copySegment(
    src: CopyEnd, srcLba: number, dst: CopyEnd, dstLba: number, blocks: number, onWritten?: (blocks: number) => void,
  ): Promise<void> {
    const bs = src.blockSize;
    const limit = (m: number) => (m > 0 ? m : 2048);
    const per = Math.max(1, Math.min(blocks, limit(src.maxXferBlocks), limit(dst.maxXferBlocks)));
    const sab = new SharedArrayBuffer(per * bs);
    // Within one LUN, a destination just after an overlapping source is copied from the end.
    const backwards = src.peer === dst.peer && dstLba > srcLba && dstLba < srcLba + blocks;
    for (let done = 0; done < blocks; ) {
      const n = Math.min(per, blocks - done);
      const off = backwards ? blocks - done - n : done;
      await this.copyIo(src, 'read', srcLba + off, n, sab);
      await this.copyIo(dst, 'write', dstLba + off, n, sab);
      onWritten?.(n);
      done += n;
    }
  }

  private async copyIo(end: CopyEnd, op: 'read' | 'write', lba: number, blocks: number, sab: SharedArrayBuffer): Promise<void> {
    if (end.peer === undefined) {
      await this.localIo(op, lba, blocks, sab, 0);
      return;
    }
    try {
      await this.x.peers!.io(end.peer, op, lba, blocks, sab, 0);
    } catch (e) {
      // The other LUN gone, or not ready (standby, formatting): its copy target is not reachable.
      if ((e instanceof ScsiError && e.key === SenseKey.NOT_READY) || (e as { code?: string }).code === 'ENODEV') {
        throw ScsiError.copyTargetNotReachable();
      }
      throw op === 'write' ? asWriteFailure(e) : e;
    }
  }

  /** Block IO on this LUN for a copy, ours or another worker's. */
  private async localIo(op: 'read' | 'write', lba: number, blocks: number, buf: SharedArrayBuffer, offset: number): Promise<void> {
    const bs = this.info.blockSize;
    const io = makeBlockIo({ lba, blocks, blockSize: bs, buffers: [new Uint8Array(buf, offset, blocks * bs)] });
    if (op === 'read') {
      if (!this.h.read) throw ScsiError.invalidOpcode();
      await this.h.read(io);
      return;
    }
    if (!this.h.write) throw ScsiError.invalidOpcode();
    // The failure goes back to another LUN's EXTENDED COPY: settle its direction here.
    await this.locked(lba, blocks, false, () => this.h.write!(io)).catch((e: unknown) => {
      throw asWriteFailure(e);
    });
  }

  /**
   * Serve another worker's EXTENDED COPY read or write of this LUN, with the
   * checks a command would get here: format, ALUA state, range, write protect.
   */
  async servePeerIo(op: 'read' | 'write', lba: number, blocks: number, buf: SharedArrayBuffer, offset: number): Promise<void> {
    const pending = this.formatError();
    if (pending) throw pending;
    this.alua?.check(op === 'read');
    if (!Number.isSafeInteger(lba) || lba < 0 || lba + blocks > this.info.numLbas) throw ScsiError.lbaOutOfRange(lba);
    if (op === 'write' && this.info.writeProtect) throw ScsiError.writeProtected();
    if (offset + blocks * this.info.blockSize > buf.byteLength) throw ScsiError.hardwareError();
    await this.localIo(op, lba, blocks, buf, offset);
  }
}

/** A handler is asked for at most this many extents per GET LBA STATUS (the initiator asks again from the end). */
const LBA_STATUS_MAX_EXTENTS = 1024;
const PROVISIONING_STATUS: Record<LbaStatusExtent['status'], number> = { mapped: 0, deallocated: 1, anchored: 2 };

/** LBA status descriptors for extents; one longer than the 32-bit NUMBER OF LOGICAL BLOCKS field is split. */
export function lbaStatusData(extents: readonly LbaStatusExtent[], maxDescriptors: number): Uint8Array {
  const ds: [number, number, number][] = [];
  for (const e of extents) {
    for (let at = e.lba, left = e.blocks; left > 0 && ds.length < maxDescriptors;) {
      const n = Math.min(left, 0xffffffff);
      ds.push([at, n, PROVISIONING_STATUS[e.status]]);
      at += n;
      left -= n;
    }
  }
  const out = new Uint8Array(8 + 16 * ds.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, 4 + 16 * ds.length);
  ds.forEach(([at, n, st], i) => {
    v.setBigUint64(8 + 16 * i, BigInt(at));
    v.setUint32(8 + 16 * i + 8, n);
    out[8 + 16 * i + 12] = st;
  });
  return out;
}
