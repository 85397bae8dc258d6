/**
 * The producer side of the TCMU ring: a stand-in for the kernel's
 * drivers/target/target_core_user.c, so the daemon can be exercised without
 * LIO. It follows the rules of the Linux 6.x driver (the xarray-based one
 * with cmd_ring_size_mb, data_pages_per_blk, KEEP_BUF and TMR notification;
 * the copy read was from around v6.15), including its quirks, because the
 * point is to make a consumer meet exactly what it will meet in production.
 *
 * The consumer side sees what it would see with /dev/uioN: a map it mmaps
 * MAP_SHARED at offset 0 and an fd on which it polls for POLLIN / reads 4
 * bytes (an irq) and writes 4 bytes (a kick). Here the map is a memfd and the
 * fd one end of a datagram socketpair; the simulator keeps the other end.
 *
 * The simulator also plays the small part of the LIO core a test needs: it
 * turns the driver's outcomes into what an initiator would get back (status,
 * sense, data, residual), e.g. a bare CHECK CONDITION from the driver becomes
 * LOGICAL UNIT COMMUNICATION FAILURE sense as target_complete_cmd() does.
 */
import {
  CmdReq, CmdRsp, EntryHdr, EntryOp, Mailbox, MailboxFlag, PAGE_SIZE, ScsiStatus, TCMU_MAILBOX_VERSION,
  TCMU_OP_ALIGN_SIZE, TCMU_SENSE_BUFFERSIZE, TmrEntry, TmrType, UFlag, alignUp, cmdEntrySize, entryLen, entryOp,
  lenOp, ringFree, ringUsed, tmrEntrySize,
} from '../abi.js';
import { POLLERR, POLLHUP, POLLIN, closeFd, mapShared, memfdCreate, pollIn, readEvent, setNonBlocking, socketPair, writeEvent, type SharedMap } from '../sys.js';
import { MAX_CDB_LENGTH, SenseKey, fixedSense, scsiCdbLength } from '../kernel-scsi.js';
import { systemClock, type SimClock } from './clock.js';

/** What a consumer needs to attach to a device, whether a real /dev/uioN or the simulator. */
export interface UioEndpoint {
  /** mmap this MAP_SHARED at offset 0, `mapSize` bytes. */
  mapFd: number;
  /** poll for POLLIN + read 4 bytes to take an irq; write 4 bytes to kick. Equal to mapFd on a real UIO device. */
  eventFd: number;
  mapSize: number;
}

export interface SimulatorOptions {
  /** memfd name, for /proc/<pid>/fd readers. */
  name?: string;
  /** Mailbox + command ring, in MiB (configfs cmd_ring_size_mb, 1..8; more is clamped to 8 like the kernel). Default 8. */
  cmdRingSizeMb?: number;
  /** Data area in MiB (max_data_area_mb; clamped to the global 2048 like the kernel). Default 1024. */
  maxDataAreaMb?: number;
  /** Pages per data block (data_pages_per_blk). Default 1. */
  dataPagesPerBlk?: number;
  /** attrib/cmd_time_out in seconds; fractions allowed here (the kernel takes whole seconds). 0 disables. Default 30. */
  cmdTimeOutSec?: number;
  /** Same as cmdTimeOutSec in milliseconds; wins when both are given. */
  cmdTimeOutMs?: number;
  /** attrib/qfull_time_out in seconds: -1 (default) = use cmd_time_out (or 30 s if that is 0), 0 = never queue, >0 = this. */
  qfullTimeOutSec?: number;
  /** Same as qfullTimeOutSec in milliseconds (-1 and 0 keep their meaning); wins when both are given. */
  qfullTimeOutMs?: number;
  /**
   * attrib/tmr_notification. The kernel defaults it to 0 and the daemon turns
   * it on; the simulator defaults to on so abortTask()/lunReset() produce TMR entries.
   */
  tmrNotification?: boolean;
  /** Mailbox capability flags. Default OOOC|READ_LEN|TMR|KEEP_BUF, which is what the kernel always advertises. */
  mailboxFlags?: number;
  /** Time source for the timers; a ManualClock makes timeouts deterministic. */
  clock?: SimClock;
  /** Poll the kick fd on the libuv pool and process kicks by itself. Default true; false = call processKicks(). */
  autoKicks?: boolean;
}

/** Where things are in the map, as the kernel computes it at enable time. */
export interface SimLayout {
  cmdrOff: number;
  cmdrSize: number;
  dataOff: number;
  dataSize: number;
  mapSize: number;
  /** Bytes per data block: data_pages_per_blk pages. */
  blockSize: number;
  /** Data blocks the area holds (whole blocks only). */
  maxBlocks: number;
  dataPagesPerBlk: number;
}

export interface SubmitOptions {
  /** Data-out (a WRITE's payload). */
  dataOut?: Uint8Array;
  /** Data-in bytes expected (a READ's transfer length). With dataOut too, the command is bidirectional. */
  dataInLength?: number;
}

/**
 * Why the answer did not come from userspace, or came from it but was
 * overridden; absent when userspace answered normally.
 */
export type SimFailure =
  | 'blocked' // device blocked (action/block_dev): BUSY
  | 'blocked-qfull' // was waiting in the qfull queue when the device got blocked: BUSY
  | 'broken' // ring marked broken: CHECK CONDITION, LU communication failure
  | 'data-too-big' // more data than the whole data area: CHECK CONDITION, invalid field in CDB
  | 'cmd-too-big' // ring entry larger than half the ring: CHECK CONDITION, invalid field in CDB
  | 'cdb-too-long' // CDB longer than LIO accepts: CHECK CONDITION, invalid field in CDB
  | 'no-cmd-id' // all 65535 ids in use: TASK SET FULL
  | 'qfull-disabled' // ring/data full and qfull_time_out is 0: TASK SET FULL
  | 'qfull-timeout' // waited qfull_time_out in the qfull queue: TASK SET FULL
  | 'requeue-failed' // retry from the qfull queue failed: CHECK CONDITION, LU communication failure
  | 'cmd-timeout' // userspace did not answer within cmd_time_out: CHECK CONDITION, LU communication failure
  | 'unknown-op' // userspace set UNKNOWN_OP: CHECK CONDITION, LU communication failure
  | 'tmr-aborted' // aborted by a TMR while still in the qfull queue: TASK ABORTED
  | 'reset' // failed by action/reset_ring: BUSY (level 1) or CHECK CONDITION (level 2)
  | 'closed'; // the simulator was closed under it

export interface SimResult {
  /** Simulator-wide submission number (stands for the initiator's task tag). */
  tag: number;
  /** The ring cmd_id it last had; 0 if it never reached the ring. */
  cmdId: number;
  status: number;
  /** Sense the initiator would receive: userspace's 96 bytes, LIO's own fixed sense, or empty. */
  sense: Uint8Array;
  /** Data-in as the initiator would receive it (read_len bytes when userspace reported READ_LEN). */
  dataIn: Uint8Array;
  /** Underflow residual LIO reports (expected minus delivered data-in). */
  residual: number;
  /** Failed by cmd_time_out. */
  timedOut: boolean;
  /** Covered by a TMR: the initiator would not see this response in real life. */
  aborted: boolean;
  failure?: SimFailure;
}

export type SimTaskState = 'qfull' | 'ring' | 'expired' | 'kept' | 'done';

/** A submitted command, for callers that need to refer to it before it completes (e.g. to abort it). */
export interface SimTask {
  readonly tag: number;
  /**
   * Ring cmd_id while the kernel holds one for it (on the ring, expired but unanswered, or
   * answered with KEEP_BUF); 0 while it waits in the qfull queue and once it is done
   * (SimResult.cmdId keeps the last one).
   */
  readonly cmdId: number;
  readonly state: SimTaskState;
  readonly result: Promise<SimResult>;
}

export interface TmrOutcome {
  tmrType: number;
  /** The command was still active (ABORT_TASK of a finished command is answered by LIO without telling the backend). */
  found: boolean;
  /** Ids listed in the TMR entry: in-flight commands the TMR covers. */
  cmdIds: number[];
  /** Commands taken out of the qfull queue and answered TASK ABORTED. */
  abortedQueued: number;
  /** A TMR entry was (or will be, once ring space frees up) written. */
  notified: boolean;
}

export interface SimCounters {
  /** cmd_head minus the kernel's last-cleaned position. */
  ringBytesUsed: number;
  ringSize: number;
  dataBlocksUsed: number;
  dataBlocksTotal: number;
  /** The kernel's dbi_thresh: how far into the data area blocks have been handed out. */
  dataBlocksThreshold: number;
  /** Commands on the ring and not yet answered nor expired. */
  inflight: number;
  /** Ids held: in flight, expired but not yet answered, or answered with KEEP_BUF. */
  idsInUse: number;
  qfullDepth: number;
  /** Times a command was put on the qfull queue (a retry that fails again counts again). */
  qfullQueued: number;
  qfullTimeouts: number;
  cmdTimeouts: number;
  /** Completions for commands that had already expired. */
  lateCompletions: number;
  keptBuffers: number;
  tmrQueueDepth: number;
  kicks: number;
  irqs: number;
  submitted: number;
  completed: number;
  padEntries: number;
  tmrEntries: number;
  broken: boolean;
  blocked: boolean;
}

// ---------------------------------------------------------------------------

const MIB = 1 << 20;
const CMDR_OFF = Mailbox.SIZE;
const MB_CMDR_MAX_MB = 8; // MB_CMDR_SIZE_DEF: mailbox + ring never exceed 8 MiB
const GLOBAL_MAX_DATA_AREA_MB = 2048; // default global_max_data_area_mb (512K pages)
const TCMU_TIME_OUT_MS = 30_000;
const MAX_CMD_ID = 0xffff;
// A poll in flight holds a libuv pool thread; returning now and then lets queued pool work
// (file I/O, other pollers) through even when the pool is small.
const KICK_POLL_SLICE_MS = 200;
const DEFAULT_FLAGS = MailboxFlag.CAP_OOOC | MailboxFlag.CAP_READ_LEN | MailboxFlag.CAP_TMR | MailboxFlag.CAP_KEEP_BUF;

const LUCF_SENSE = () => fixedSense(SenseKey.NOT_READY, 0x08, 0x00); // LOGICAL UNIT COMMUNICATION FAILURE
const INVALID_CDB_SENSE = () => fixedSense(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00); // INVALID FIELD IN CDB
const EMPTY: Uint8Array = new Uint8Array(0);

type Dir = 'none' | 'out' | 'in' | 'bidi';
type Answer = Omit<SimResult, 'tag' | 'cmdId' | 'aborted'>;

class Command implements SimTask {
  cmdId = 0;
  lastCmdId = 0;
  state: SimTaskState = 'qfull';
  deadline = 0;
  /** Data block indexes: data-out (or data-in) blocks first, then a bidi command's data-in blocks. */
  dbi: Uint32Array;
  dbiCur = 0;
  expired = false;
  keepBuf = false;
  aborted = false;
  settled = false;
  readonly result: Promise<SimResult>;
  private resolveResult!: (r: SimResult) => void;
  private listeners: (() => void)[] = [];

  constructor(
    readonly tag: number,
    readonly cdb: Uint8Array,
    readonly dir: Dir,
    /** se_cmd->data_length: data-out bytes, or data-in bytes for a read. */
    readonly dataLength: number,
    /** Data-in bytes of a bidi command. */
    readonly bidiLength: number,
    public dataOut: Uint8Array | undefined,
    readonly dbiCnt: number,
    readonly dbiBidiCnt: number,
  ) {
    this.dbi = new Uint32Array(dbiCnt);
    this.result = new Promise((res) => (this.resolveResult = res));
  }

  settle(r: Answer): void {
    if (this.settled) return;
    this.settled = true;
    this.dataOut = undefined;
    this.resolveResult({ tag: this.tag, cmdId: this.lastCmdId, aborted: this.aborted, ...r });
    for (const l of this.listeners) l();
    this.listeners = [];
  }

  onSettle(fn: () => void): void {
    if (this.settled) fn();
    else this.listeners.push(fn);
  }
}

interface PendingTmr {
  type: number;
  ids: number[];
}

type QueueRc = { rc: 0 } | { rc: 1 } | { rc: -1; why: SimFailure };

/** A kernel timer_list: one expiry, re-armed with mod_timer, dropped with timer_delete. */
class KernelTimer {
  private handle: unknown = undefined;
  constructor(private readonly clock: SimClock, private readonly fire: () => void) {}
  get pending(): boolean {
    return this.handle !== undefined;
  }
  mod(at: number): void {
    this.del();
    this.handle = this.clock.setTimer(() => {
      this.handle = undefined;
      this.fire();
    }, Math.ceil(at - this.clock.now()));
  }
  del(): void {
    if (this.handle !== undefined) this.clock.clearTimer(this.handle);
    this.handle = undefined;
  }
}

/**
 * One TCMU device as the kernel runs it. Submit commands with submit()/start();
 * a consumer attached to `endpoint` answers them.
 */
export class KernelSimulator {
  readonly endpoint: UioEndpoint;
  readonly layout: SimLayout;
  /** The simulator's own view of the shared map (tests may inspect it; invalid after close()). */
  readonly map: ArrayBuffer;

  private readonly shared: SharedMap;
  private readonly u8: Uint8Array;
  private readonly dv: DataView;
  private readonly mb32: Uint32Array;
  private readonly memFd: number;
  private readonly kernelFd: number;
  private readonly userFd: number;
  private readonly clock: SimClock;
  private readonly cmdTimeOutMs: number;
  private readonly qfullTimeOutMs: number;
  private tmrNotify: boolean;

  private cmdrLastCleaned = 0;
  private readonly bitmap: Uint32Array;
  private blocksUsed = 0;
  private dbiThresh = 0;
  private readonly commands = new Map<number, Command>();
  private idHint = 1; // every id below it is taken: allocation is lowest-free like xa_alloc
  private readonly inflight = new Set<Command>(); // insertion order = queue order, like the kernel's list
  private qfull: Command[] = [];
  private tmrQueue: PendingTmr[] = [];
  private readonly cmdTimer: KernelTimer;
  private readonly qfullTimer: KernelTimer;
  private broken = false;
  private blocked = false;
  private plugged = false;
  private closed = false;
  private nextTag = 1;
  private irqCount = 0;
  private loop: Promise<void> | undefined;
  private readonly stats = {
    qfullQueued: 0, qfullTimeouts: 0, cmdTimeouts: 0, lateCompletions: 0, kicks: 0, irqs: 0,
    submitted: 0, completed: 0, padEntries: 0, tmrEntries: 0,
  };

  constructor(opts: SimulatorOptions = {}) {
    this.layout = computeLayout(opts);
    this.clock = opts.clock ?? systemClock;
    this.cmdTimeOutMs = timeoutMs(opts.cmdTimeOutMs, opts.cmdTimeOutSec, TCMU_TIME_OUT_MS, 'cmd_time_out');
    this.qfullTimeOutMs = timeoutMs(opts.qfullTimeOutMs, opts.qfullTimeOutSec, -1, 'qfull_time_out');
    this.tmrNotify = opts.tmrNotification ?? true;

    const { mapSize, cmdrSize, maxBlocks } = this.layout;
    this.memFd = memfdCreate(opts.name ?? 'tcmu-sim', mapSize);
    let pair: [number, number] | undefined;
    try {
      this.shared = mapShared(this.memFd, mapSize);
      pair = socketPair();
      setNonBlocking(pair[0]);
      setNonBlocking(pair[1]);
    } catch (e) {
      if (pair) {
        closeFd(pair[0]);
        closeFd(pair[1]);
      }
      closeFd(this.memFd);
      throw e;
    }
    [this.kernelFd, this.userFd] = pair;
    this.map = this.shared.buffer;
    this.u8 = new Uint8Array(this.map);
    this.dv = new DataView(this.map);
    this.mb32 = new Uint32Array(this.map, 0, Mailbox.SIZE / 4);
    this.bitmap = new Uint32Array(Math.ceil(maxBlocks / 32));
    this.endpoint = { mapFd: this.memFd, eventFd: this.userFd, mapSize };

    // The mailbox as tcmu_configure_device leaves it: head = tail = 0.
    this.dv.setUint16(Mailbox.VERSION, TCMU_MAILBOX_VERSION, true);
    this.dv.setUint16(Mailbox.FLAGS, opts.mailboxFlags ?? DEFAULT_FLAGS, true);
    this.dv.setUint32(Mailbox.CMDR_OFF, CMDR_OFF, true);
    this.dv.setUint32(Mailbox.CMDR_SIZE, cmdrSize, true);
    Atomics.store(this.mb32, Mailbox.CMD_HEAD / 4, 0);
    Atomics.store(this.mb32, Mailbox.CMD_TAIL / 4, 0);

    // Both timers do the same thing, as in the kernel: they schedule the work that checks both queues.
    this.cmdTimer = new KernelTimer(this.clock, () => this.checkTimedOut());
    this.qfullTimer = new KernelTimer(this.clock, () => this.checkTimedOut());

    if (opts.autoKicks ?? true) this.loop = this.kickLoop();
  }

  // ----- initiator side -----------------------------------------------------

  /** Submit a command; resolves when the initiator would get its response. */
  submit(cdb: Uint8Array, opts: SubmitOptions = {}): Promise<SimResult> {
    return this.start(cdb, opts).result;
  }

  /** Submit a command and get a handle on it (for abortTask or to watch its state). */
  start(cdb: Uint8Array, opts: SubmitOptions = {}): SimTask {
    const cdbLen = scsiCdbLength(cdb);
    const kcdb = new Uint8Array(cdbLen);
    kcdb.set(cdb.length > cdbLen ? cdb.subarray(0, cdbLen) : cdb);
    const out = opts.dataOut && opts.dataOut.length > 0 ? opts.dataOut : undefined;
    const inLen = opts.dataInLength ?? 0;
    if (!Number.isInteger(inLen) || inLen < 0) throw new RangeError(`dataInLength ${inLen}`);
    const dir: Dir = out ? (inLen > 0 ? 'bidi' : 'out') : inLen > 0 ? 'in' : 'none';
    const dataLength = out ? out.length : inLen;
    const bidiLength = dir === 'bidi' ? inLen : 0;
    const blk = this.layout.blockSize;
    const bidiBlocks = Math.ceil(bidiLength / blk);
    const cmd = new Command(this.nextTag++, kcdb, dir, dataLength, bidiLength, out, Math.ceil(dataLength / blk) + bidiBlocks, bidiBlocks);
    this.stats.submitted++;

    if (this.closed) {
      cmd.state = 'done';
      cmd.settle(kernelAnswer('closed'));
      return cmd;
    }
    if (cdbLen > MAX_CDB_LENGTH) {
      // LIO's core refuses it before the backend sees it.
      cmd.state = 'done';
      cmd.settle(kernelAnswer('cdb-too-long'));
      return cmd;
    }
    const r = this.queueCmdRing(cmd);
    if (r.rc === -1) {
      cmd.state = 'done';
      cmd.settle(kernelAnswer(r.why));
    } else if (r.rc === 1 && cmd.dataOut) {
      // The initiator's buffer is the fabric's: keep our own copy while we wait for room.
      cmd.dataOut = cmd.dataOut.slice();
    }
    return cmd;
  }

  /**
   * Hold back irqs while submitting a batch (the LIO core's plug/unplug around
   * a burst of submissions); unplug() sends one irq for the lot.
   */
  plug(): boolean {
    if (this.plugged) return false;
    this.plugged = true;
    return true;
  }

  unplug(): void {
    if (!this.plugged) return;
    this.plugged = false;
    if (!this.closed) this.notify();
  }

  /** ABORT_TASK. `target` is a task handle or the ring cmd_id of an in-flight command. */
  abortTask(target: SimTask | number): Promise<TmrOutcome> {
    let cmd: Command | undefined;
    if (typeof target === 'number') cmd = this.commands.get(target);
    else if (target instanceof Command) cmd = target;
    if (!cmd || this.closed || (cmd.state !== 'qfull' && cmd.state !== 'ring')) {
      return Promise.resolve({ tmrType: TmrType.ABORT_TASK, found: false, cmdIds: [], abortedQueued: 0, notified: false });
    }
    return this.tmrNotify_(TmrType.ABORT_TASK, [cmd]);
  }

  /** attrib/tmr_notification written at run time (the kernel takes it at any time; no TMR entry is replayed). */
  setTmrNotification(on: boolean): void {
    this.tmrNotify = on;
  }

  get tmrNotification(): boolean {
    return this.tmrNotify;
  }

  /** LUN RESET: covers every active command of the device. */
  lunReset(): Promise<TmrOutcome> {
    if (this.closed) return Promise.resolve({ tmrType: TmrType.LUN_RESET, found: false, cmdIds: [], abortedQueued: 0, notified: false });
    const active = [...this.qfull, ...this.inflight].sort((a, b) => a.tag - b.tag);
    return this.tmrNotify_(TmrType.LUN_RESET, active);
  }

  // ----- configfs actions -----------------------------------------------------

  /** action/block_dev 1: answer what userspace finished, fail the qfull queue with BUSY, refuse new commands. */
  block(): void {
    this.assertOpen();
    if (this.blocked) return;
    this.blocked = true;
    this.handleCompletions();
    this.runQfullQueue(true);
  }

  /** action/block_dev 0. */
  unblock(): void {
    this.assertOpen();
    this.blocked = false;
  }

  get isBlocked(): boolean {
    return this.blocked;
  }

  get isBroken(): boolean {
    return this.broken;
  }

  /**
   * action/reset_ring: fail everything on the ring (level 1: BUSY, retryable;
   * level 2: CHECK CONDITION), forget kept buffers and expired commands, set
   * head = tail = 0, clear "broken", then retry the qfull queue. The consumer
   * must start over from tail 0.
   */
  resetRing(level: 1 | 2 = 1): void {
    this.assertOpen();
    if (level !== 1 && level !== 2) throw new RangeError(`reset_ring ${level}: must be 1 or 2`);
    for (const [id, cmd] of this.commands) {
      this.commands.delete(id);
      if (!cmd.expired && !cmd.keepBuf) {
        this.inflight.delete(cmd);
        cmd.settle(level === 1
          ? { status: ScsiStatus.BUSY, sense: EMPTY, dataIn: EMPTY, residual: 0, timedOut: false, failure: 'reset' }
          : { status: ScsiStatus.CHECK_CONDITION, sense: LUCF_SENSE(), dataIn: EMPTY, residual: 0, timedOut: false, failure: 'reset' });
      }
      this.freeData(cmd, cmd.dbiCnt);
      this.retire(cmd);
    }
    this.idHint = 1;
    this.cmdrLastCleaned = 0;
    Atomics.store(this.mb32, Mailbox.CMD_TAIL / 4, 0);
    Atomics.store(this.mb32, Mailbox.CMD_HEAD / 4, 0);
    this.broken = false;
    this.cmdTimer.del();
    // After a reset userspace starts afresh; TMRs still waiting for room are about commands that are gone.
    this.tmrQueue = [];
    this.runQfullQueue(false);
  }

  /** action/free_kept_buf: release the data blocks of a command completed with KEEP_BUF. */
  freeKeptBuf(cmdId: number): void {
    this.assertOpen();
    const cmd = this.commands.get(cmdId);
    if (!cmd) throw new Error(`free_kept_buf: cmd_id ${cmdId} not found (EINVAL)`);
    if (!cmd.keepBuf) throw new Error(`free_kept_buf: cmd_id ${cmdId} was not completed with KEEP_BUF (EINVAL)`);
    this.releaseId(cmdId);
    this.freeData(cmd, cmd.dbiCnt);
    this.retire(cmd);
    // Only data space came free: a waiting TMR still goes first, so leave the qfull queue alone then.
    if (this.tmrQueue.length === 0) this.runQfullQueue(false);
  }

  /**
   * The consumer closed the UIO device (tcmu_release): kept buffers are freed
   * since a new opener could never name them. Commands still on the ring stay.
   */
  releaseUio(): void {
    this.assertOpen();
    let freed = false;
    for (const [id, cmd] of this.commands) {
      if (!cmd.keepBuf) continue;
      freed = true;
      this.releaseId(id);
      this.freeData(cmd, cmd.dbiCnt);
      this.retire(cmd);
    }
    if (freed && this.tmrQueue.length === 0) this.runQfullQueue(false);
  }

  // ----- consumer side ------------------------------------------------------------

  /**
   * Take the kicks waiting on the event socket and, if there were any, do what
   * the kernel does on a UIO write: reap completions up to cmd_tail, then retry
   * the qfull queue. Returns the number of kicks taken.
   */
  processKicks(): number {
    if (this.closed) return 0;
    let n = 0;
    try {
      while (readEvent(this.kernelFd) !== null) n++;
    } catch {
      // The peer went away; nothing more will arrive.
    }
    if (n === 0) return 0;
    this.stats.kicks += n;
    if (this.handleCompletions()) this.runQfullQueue(false);
    return n;
  }

  /** Stop the device: fail what is still outstanding, stop the poll loop, unmap, close both fds. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cmdTimer.del();
    this.qfullTimer.del();
    const outstanding = [...this.qfull, ...this.inflight];
    this.qfull = [];
    this.inflight.clear();
    for (const cmd of outstanding) {
      cmd.state = 'done';
      cmd.settle(kernelAnswer('closed'));
    }
    if (this.loop) {
      try {
        writeEvent(this.userFd, 0); // wake the poll on our end
      } catch {
        // already closed by someone: the poll times out instead
      }
      await this.loop;
    }
    this.shared.unmap();
    closeFd(this.kernelFd);
    closeFd(this.userFd);
    closeFd(this.memFd);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  counters(): SimCounters {
    const head = this.closed ? 0 : Atomics.load(this.mb32, Mailbox.CMD_HEAD / 4);
    let kept = 0;
    for (const c of this.commands.values()) if (c.keepBuf) kept++;
    return {
      ringBytesUsed: this.closed ? 0 : ringUsed(head % this.layout.cmdrSize, this.cmdrLastCleaned, this.layout.cmdrSize),
      ringSize: this.layout.cmdrSize,
      dataBlocksUsed: this.blocksUsed,
      dataBlocksTotal: this.layout.maxBlocks,
      dataBlocksThreshold: this.dbiThresh,
      inflight: this.inflight.size,
      idsInUse: this.commands.size,
      qfullDepth: this.qfull.length,
      keptBuffers: kept,
      tmrQueueDepth: this.tmrQueue.length,
      broken: this.broken,
      blocked: this.blocked,
      ...this.stats,
    };
  }

  /** Ring ids of the commands in flight, oldest first. */
  inflightIds(): number[] {
    return [...this.inflight].map((c) => c.cmdId);
  }

  // ----- queueing (queue_cmd_ring and friends) ----------------------------------------

  private queueCmdRing(cmd: Command): QueueRc {
    const { maxBlocks, cmdrSize } = this.layout;
    if (this.blocked) return { rc: -1, why: 'blocked' };
    if (this.broken) return { rc: -1, why: 'broken' };
    // Commands keep their order: once one waits, everything after it waits too.
    if (this.qfull.length > 0) return this.addToQfull(cmd);
    if (cmd.dbiCnt > maxBlocks) return { rc: -1, why: 'data-too-big' };

    const iov = this.allocDataSpace(cmd);
    if (!iov) {
      this.freeData(cmd, cmd.dbiCur);
      cmd.dbiCur = 0;
      return this.addToQfull(cmd);
    }
    const baseSize = cmdEntrySize(iov.total, 0);
    const size = baseSize + alignUp(cmd.cdb.length, TCMU_OP_ALIGN_SIZE);
    if (size > cmdrSize / 2) {
      this.freeData(cmd, cmd.dbiCur);
      return { rc: -1, why: 'cmd-too-big' };
    }
    // Data blocks are not held while waiting for ring space, so others can use them.
    if (!this.ringSpaceAvail(size)) {
      this.freeData(cmd, cmd.dbiCur);
      cmd.dbiCur = 0;
      return this.addToQfull(cmd);
    }
    const id = this.allocId();
    if (id === 0) {
      this.freeData(cmd, cmd.dbiCnt);
      return { rc: -1, why: 'no-cmd-id' };
    }
    cmd.cmdId = id;
    cmd.lastCmdId = id;
    this.commands.set(id, cmd);

    const head = this.ringInsertPadding(size);
    const entry = CMDR_OFF + head;
    this.u8.fill(0, entry, entry + size);
    this.dv.setUint32(entry + EntryHdr.LEN_OP, lenOp(size, EntryOp.CMD), true);

    cmd.dbiCur = 0;
    const iovAt = entry + CmdReq.IOV;
    const src = cmd.dir === 'out' || cmd.dir === 'bidi' ? cmd.dataOut : undefined;
    const n = this.setupIovs(cmd, iovAt, cmd.dataLength, src);
    this.dv.setUint32(entry + CmdReq.IOV_CNT, n, true);
    if (cmd.dir === 'bidi') {
      // The data-in iovecs of a bidi command never merge with the data-out ones.
      const nb = this.setupIovs(cmd, iovAt + CmdReq.IOVEC_SIZE * n, cmd.bidiLength, undefined);
      this.dv.setUint32(entry + CmdReq.IOV_BIDI_CNT, nb, true);
    }
    cmd.dataOut = undefined;

    this.setupCmdTimer(cmd, this.cmdTimeOutMs, this.cmdTimer);
    this.dv.setUint16(entry + EntryHdr.CMD_ID, id, true);
    const cdbOff = CMDR_OFF + head + baseSize;
    this.u8.set(cmd.cdb, cdbOff);
    this.dv.setBigUint64(entry + CmdReq.CDB_OFF, BigInt(cdbOff), true);

    // Publishing the head is the release point: the entry is complete before the consumer can see it.
    Atomics.store(this.mb32, Mailbox.CMD_HEAD / 4, (head + size) % cmdrSize);
    cmd.state = 'ring';
    this.inflight.add(cmd);
    if (!this.plugged) this.notify();
    return { rc: 0 };
  }

  private addToQfull(cmd: Command): QueueRc {
    // qfull_time_out 0 means "never queue"; -1 falls back to cmd_time_out, then to the 30 s default.
    if (this.qfullTimeOutMs === 0) return { rc: -1, why: 'qfull-disabled' };
    const tmo = this.qfullTimeOutMs > 0 ? this.qfullTimeOutMs : this.cmdTimeOutMs || TCMU_TIME_OUT_MS;
    this.setupCmdTimer(cmd, tmo, this.qfullTimer);
    cmd.state = 'qfull';
    this.qfull.push(cmd);
    this.stats.qfullQueued++;
    return { rc: 1 };
  }

  private setupCmdTimer(cmd: Command, tmo: number, timer: KernelTimer): void {
    if (!tmo) return;
    // The kernel rounds the deadline up to a whole second (round_jiffies_up); we keep it exact so
    // tests can use short timeouts.
    cmd.deadline = this.clock.now() + tmo;
    if (!timer.pending) timer.mod(cmd.deadline);
  }

  private mbHead(): number {
    // The kernel trusts nothing it reads back from the mailbox, not even its own head.
    return Atomics.load(this.mb32, Mailbox.CMD_HEAD / 4) % this.layout.cmdrSize;
  }

  private ringSpaceAvail(size: number): boolean {
    const cmdrSize = this.layout.cmdrSize;
    const head = this.mbHead();
    const toEnd = cmdrSize - head;
    // Entries never wrap: one that does not fit before the end needs a PAD for the rest as well.
    const needed = toEnd >= size ? size : size + toEnd;
    return ringFree(head, this.cmdrLastCleaned, cmdrSize) >= needed;
  }

  private ringInsertPadding(size: number): number {
    const cmdrSize = this.layout.cmdrSize;
    let head = this.mbHead();
    const toEnd = cmdrSize - head;
    if (toEnd < size) {
      const at = CMDR_OFF + head;
      this.dv.setUint32(at + EntryHdr.LEN_OP, lenOp(toEnd, EntryOp.PAD), true);
      this.dv.setUint16(at + EntryHdr.CMD_ID, 0, true);
      this.u8[at + EntryHdr.KFLAGS] = 0;
      this.u8[at + EntryHdr.UFLAGS] = 0;
      Atomics.store(this.mb32, Mailbox.CMD_HEAD / 4, (head + toEnd) % cmdrSize);
      this.stats.padEntries++;
      head = this.mbHead();
    }
    return head;
  }

  private allocId(): number {
    for (let id = this.idHint; id <= MAX_CMD_ID; id++) {
      if (!this.commands.has(id)) {
        this.idHint = id + 1;
        return id;
      }
    }
    this.idHint = MAX_CMD_ID + 1;
    return 0;
  }

  private releaseId(id: number): void {
    this.commands.delete(id);
    if (id < this.idHint) this.idHint = id;
  }

  // ----- data area ----------------------------------------------------------------

  /** tcmu_alloc_data_space: blocks for the command, or null if the data area cannot hold it now. */
  private allocDataSpace(cmd: Command): { total: number } | null {
    if (cmd.dbiCnt === 0) return { total: 0 };
    const space = this.dbiThresh - this.blocksUsed; // every used block lies below the threshold
    if (space < cmd.dbiCnt) {
      const blocksLeft = this.layout.maxBlocks - this.dbiThresh + space;
      if (blocksLeft < cmd.dbiCnt) return null;
      this.dbiThresh = Math.min(this.dbiThresh + cmd.dbiCnt, this.layout.maxBlocks);
    }
    const main = this.getEmptyBlocks(cmd, cmd.dataLength);
    if (main < 0) return null;
    let bidi = 0;
    if (cmd.dbiBidiCnt) {
      bidi = this.getEmptyBlocks(cmd, cmd.bidiLength);
      if (bidi < 0) return null;
    }
    return { total: main + bidi };
  }

  /** Lowest free blocks first; returns how many iovecs they make once adjacent blocks merge. */
  private getEmptyBlocks(cmd: Command, length: number): number {
    const blk = this.layout.blockSize;
    let prev = -2;
    let iovs = 0;
    for (; length > 0; length -= blk) {
      const dbi = this.findFirstZero(this.dbiThresh);
      if (dbi < 0) return -1;
      this.bitmap[dbi >>> 5] |= 1 << (dbi & 31);
      this.blocksUsed++;
      cmd.dbi[cmd.dbiCur++] = dbi;
      if (dbi !== prev + 1) iovs++;
      prev = dbi;
    }
    return iovs;
  }

  private findFirstZero(limit: number): number {
    const words = Math.ceil(limit / 32);
    for (let w = 0; w < words; w++) {
      const v = this.bitmap[w];
      if (v === 0xffffffff) continue;
      const bit = 31 - Math.clz32(~v & (v + 1)); // lowest clear bit
      const dbi = w * 32 + bit;
      return dbi < limit ? dbi : -1;
    }
    return -1;
  }

  private freeData(cmd: Command, count: number): void {
    for (let i = 0; i < count; i++) {
      const dbi = cmd.dbi[i];
      const mask = 1 << (dbi & 31);
      if (this.bitmap[dbi >>> 5] & mask) {
        this.bitmap[dbi >>> 5] &= ~mask;
        this.blocksUsed--;
      }
    }
  }

  /** Write the iovecs for `length` bytes of the command's next blocks, copying `src` in if given. */
  private setupIovs(cmd: Command, at: number, length: number, src: Uint8Array | undefined): number {
    const { blockSize: blk, dataOff } = this.layout;
    let prev = -2;
    let n = 0;
    let base = 0;
    let len = 0;
    let copied = 0;
    const flush = () => {
      const p = at + CmdReq.IOVEC_SIZE * (n - 1);
      this.dv.setBigUint64(p, BigInt(base), true);
      this.dv.setBigUint64(p + 8, BigInt(len), true);
    };
    for (; length > 0; length -= blk) {
      const dbi = cmd.dbi[cmd.dbiCur++];
      const part = Math.min(length, blk);
      if (dbi !== prev + 1) {
        if (n > 0) flush();
        n++;
        base = dataOff + dbi * blk;
        len = 0;
      }
      len += part;
      if (src) {
        this.u8.set(src.subarray(copied, copied + part), dataOff + dbi * blk);
        copied += part;
      }
      prev = dbi;
    }
    if (n > 0) flush();
    return n;
  }

  /** Copy `length` bytes of data-in out of the command's blocks, starting at block index `first`. */
  private gather(cmd: Command, first: number, length: number): Uint8Array {
    const { blockSize: blk, dataOff } = this.layout;
    const out = new Uint8Array(length);
    let done = 0;
    for (let i = first; done < length; i++) {
      const part = Math.min(length - done, blk);
      const at = dataOff + cmd.dbi[i] * blk;
      out.set(this.u8.subarray(at, at + part), done);
      done += part;
    }
    return out;
  }

  // ----- completions (tcmu_handle_completions) ------------------------------------------

  private handleCompletions(): boolean {
    if (this.broken) return false;
    const cmdrSize = this.layout.cmdrSize;
    let freeSpace = false;
    let walked = 0;
    for (;;) {
      const tail = Atomics.load(this.mb32, Mailbox.CMD_TAIL / 4);
      if (this.cmdrLastCleaned === tail) break;
      const at = CMDR_OFF + this.cmdrLastCleaned;
      const lo = this.dv.getUint32(at + EntryHdr.LEN_OP, true);
      const len = entryLen(lo);
      // The kernel would spin forever on a zero length or a tail it can never reach; we call that broken.
      walked += len;
      if (len === 0 || walked > cmdrSize) {
        this.broken = true;
        return false;
      }
      freeSpace = true;
      const op = entryOp(lo);
      if (op === EntryOp.PAD || op === EntryOp.TMR) {
        this.cmdrLastCleaned = (this.cmdrLastCleaned + len) % cmdrSize;
        continue;
      }
      // Anything else is taken for a CMD, as the kernel does (it only warns).
      const uflags = this.u8[at + EntryHdr.UFLAGS];
      const id = this.dv.getUint16(at + EntryHdr.CMD_ID, true);
      const keepBuf = (uflags & UFlag.KEEP_BUF) !== 0;
      const cmd = this.commands.get(id);
      if (!cmd) {
        this.broken = true;
        return false;
      }
      if (!keepBuf) this.releaseId(id);
      if (!this.handleCompletion(cmd, at, keepBuf)) break;
      this.cmdrLastCleaned = (this.cmdrLastCleaned + len) % cmdrSize;
    }
    if (freeSpace) freeSpace = this.runTmrQueue();
    if (this.cmdTimeOutMs) this.setNextDeadline(this.inflight, this.cmdTimer);
    return freeSpace;
  }

  private handleCompletion(cmd: Command, at: number, keepBuf: boolean): boolean {
    let ok = true;
    if (cmd.expired) {
      // Already answered by the timeout: just take the space back.
      this.stats.lateCompletions++;
    } else if (cmd.keepBuf) {
      // A second completion of a command whose buffer was kept: the ring cannot be trusted.
      this.broken = true;
      ok = false;
    } else {
      this.inflight.delete(cmd);
      this.stats.completed++;
      cmd.dbiCur = 0;
      cmd.settle(this.answerFromEntry(cmd, at));
    }
    if (!keepBuf) {
      this.freeData(cmd, cmd.dbiCnt);
      this.retire(cmd);
    } else {
      cmd.expired = false;
      cmd.keepBuf = true;
      cmd.state = 'kept';
    }
    return ok;
  }

  /** What the initiator gets for a completion userspace wrote at `at`. */
  private answerFromEntry(cmd: Command, at: number): Answer {
    const uflags = this.u8[at + EntryHdr.UFLAGS];
    if (uflags & UFlag.UNKNOWN_OP) {
      // The driver answers CHECK CONDITION without sense; the core fills in LU communication failure.
      return { status: ScsiStatus.CHECK_CONDITION, sense: LUCF_SENSE(), dataIn: EMPTY, residual: 0, timedOut: false, failure: 'unknown-op' };
    }
    const status = this.u8[at + CmdRsp.SCSI_STATUS];
    let readLen = cmd.dataLength;
    let readLenValid = false;
    if (cmd.dir === 'in' && (uflags & UFlag.READ_LEN)) {
      const rl = this.dv.getUint32(at + CmdRsp.READ_LEN, true);
      // read_len 0 means "not reported", not "no data".
      if (rl) {
        readLenValid = true;
        if (rl < readLen) readLen = rl;
      }
    }
    let sense = EMPTY;
    if (status === ScsiStatus.CHECK_CONDITION) {
      sense = this.u8.slice(at + CmdRsp.SENSE, at + CmdRsp.SENSE + TCMU_SENSE_BUFFERSIZE);
      if (!readLenValid) return { status, sense, dataIn: EMPTY, residual: 0, timedOut: false };
    }
    let dataIn = EMPTY;
    if (cmd.dir === 'bidi') {
      // The kernel gathers the bidi data-in with the data-out length as its limit, so a data-in
      // buffer longer than the data-out one comes back truncated.
      dataIn = this.gather(cmd, cmd.dbiCnt - cmd.dbiBidiCnt, Math.min(cmd.dataLength, cmd.bidiLength));
    } else if (cmd.dir === 'in') {
      dataIn = this.gather(cmd, 0, readLen);
    }
    // The core sends data with GOOD, or with CHECK CONDITION when a valid read_len came along;
    // any other status goes out bare. Only those first two cases get a residual.
    const withData = status === ScsiStatus.GOOD || (status === ScsiStatus.CHECK_CONDITION && readLenValid);
    if (!withData) dataIn = EMPTY;
    const residual = withData && readLenValid ? cmd.dataLength - readLen : 0;
    return { status, sense, dataIn, residual, timedOut: false };
  }

  private retire(cmd: Command): void {
    cmd.state = 'done';
    cmd.cmdId = 0;
    cmd.keepBuf = false;
  }

  private runTmrQueue(): boolean {
    if (this.tmrQueue.length === 0) return true;
    const tmrs = this.tmrQueue;
    this.tmrQueue = [];
    for (let i = 0; i < tmrs.length; i++) {
      if (this.queueTmrRing(tmrs[i])) {
        this.tmrQueue.push(...tmrs.slice(i + 1));
        return false;
      }
    }
    return true;
  }

  private runQfullQueue(fail: boolean): void {
    if (this.qfull.length === 0) return;
    const cmds = this.qfull;
    this.qfull = [];
    for (let i = 0; i < cmds.length; i++) {
      const cmd = cmds[i];
      if (fail) {
        // Never started, so BUSY lets the initiator retry once the device is back.
        cmd.state = 'done';
        cmd.settle({ status: ScsiStatus.BUSY, sense: EMPTY, dataIn: EMPTY, residual: 0, timedOut: false, failure: 'blocked-qfull' });
        continue;
      }
      const r = this.queueCmdRing(cmd);
      if (r.rc === -1) {
        // The kernel drops the specific reason here: every failed retry is a plain CHECK CONDITION.
        cmd.state = 'done';
        cmd.settle({ status: ScsiStatus.CHECK_CONDITION, sense: LUCF_SENSE(), dataIn: EMPTY, residual: 0, timedOut: false, failure: 'requeue-failed' });
      } else if (r.rc > 0) {
        this.qfull.push(...cmds.slice(i + 1));
        break;
      }
    }
    this.setNextDeadline(this.qfull, this.qfullTimer);
  }

  // ----- timeouts ---------------------------------------------------------------------

  private setNextDeadline(queue: Iterable<Command>, timer: KernelTimer): void {
    const first = queue[Symbol.iterator]().next();
    if (!first.done) timer.mod(first.value.deadline);
    else timer.del();
  }

  private checkTimedOut(): void {
    if (this.closed) return;
    const now = this.clock.now();
    // With cmd_time_out 0 a deadline can only be a stale qfull one: ignore it.
    if (this.cmdTimeOutMs) {
      for (const cmd of [...this.inflight]) {
        if (now < cmd.deadline) continue;
        cmd.expired = true;
        cmd.state = 'expired';
        this.inflight.delete(cmd);
        this.stats.cmdTimeouts++;
        // Id, ring entry and blocks stay until userspace answers (or the ring is reset).
        cmd.settle({ status: ScsiStatus.CHECK_CONDITION, sense: LUCF_SENSE(), dataIn: EMPTY, residual: 0, timedOut: true, failure: 'cmd-timeout' });
      }
      this.setNextDeadline(this.inflight, this.cmdTimer);
    }
    const keep: Command[] = [];
    for (const cmd of this.qfull) {
      if (now < cmd.deadline) {
        keep.push(cmd);
        continue;
      }
      this.stats.qfullTimeouts++;
      cmd.state = 'done';
      cmd.settle({ status: ScsiStatus.TASK_SET_FULL, sense: EMPTY, dataIn: EMPTY, residual: 0, timedOut: false, failure: 'qfull-timeout' });
    }
    this.qfull = keep;
    this.setNextDeadline(this.qfull, this.qfullTimer);
  }

  // ----- task management ------------------------------------------------------------------

  private tmrNotify_(type: number, cmds: Command[]): Promise<TmrOutcome> {
    const onRing: Command[] = [];
    let abortedQueued = 0;
    for (const cmd of cmds) {
      if (cmd.state === 'ring') {
        cmd.aborted = true;
        onRing.push(cmd);
        continue;
      }
      // Still in the qfull queue: it never reached userspace, so the kernel answers it right here.
      this.qfull = this.qfull.filter((c) => c !== cmd);
      cmd.aborted = true;
      cmd.state = 'done';
      cmd.settle({ status: ScsiStatus.TASK_ABORTED, sense: EMPTY, dataIn: EMPTY, residual: 0, timedOut: false, failure: 'tmr-aborted' });
      abortedQueued++;
    }
    if (abortedQueued) this.setNextDeadline(this.qfull, this.qfullTimer);
    const ids = onRing.map((c) => c.cmdId);
    if (this.tmrNotify) this.queueTmrRing({ type, ids });
    const outcome: TmrOutcome = { tmrType: type, found: true, cmdIds: ids, abortedQueued, notified: this.tmrNotify && !this.broken };
    // The TMR response waits for every aborted command the backend holds to finish.
    return new Promise((resolve) => {
      let left = onRing.length;
      if (left === 0) return resolve(outcome);
      for (const c of onRing) c.onSettle(() => --left === 0 && resolve(outcome));
    });
  }

  /** queue_tmr_ring: 0 = written (or dropped on a broken ring), 1 = waiting for room. */
  private queueTmrRing(tmr: PendingTmr): number {
    if (this.broken) return 0;
    const size = tmrEntrySize(tmr.ids.length);
    if (this.tmrQueue.length > 0 || !this.ringSpaceAvail(size)) {
      this.tmrQueue.push(tmr);
      return 1;
    }
    const head = this.ringInsertPadding(size);
    const at = CMDR_OFF + head;
    this.u8.fill(0, at, at + size);
    this.dv.setUint32(at + EntryHdr.LEN_OP, lenOp(size, EntryOp.TMR), true);
    this.u8[at + TmrEntry.TMR_TYPE] = tmr.type;
    this.dv.setUint32(at + TmrEntry.CMD_CNT, tmr.ids.length, true);
    for (let i = 0; i < tmr.ids.length; i++) this.dv.setUint16(at + TmrEntry.CMD_IDS + 2 * i, tmr.ids[i], true);
    Atomics.store(this.mb32, Mailbox.CMD_HEAD / 4, (head + size) % this.layout.cmdrSize);
    this.stats.tmrEntries++;
    this.notify(); // a TMR is never held back by a plug
    return 0;
  }

  // ----- the uio fd --------------------------------------------------------------------------

  private notify(): void {
    // uio_event_notify: the event count goes up and pollers wake; a reader gets the running count.
    this.irqCount = (this.irqCount + 1) >>> 0;
    this.stats.irqs++;
    try {
      writeEvent(this.kernelFd, this.irqCount);
    } catch {
      // Consumer gone: the count still moved, as it would on a uio device nobody has open.
    }
  }

  private async kickLoop(): Promise<void> {
    while (!this.closed) {
      let rev: number;
      try {
        rev = await pollIn(this.kernelFd, KICK_POLL_SLICE_MS);
      } catch {
        return;
      }
      if (this.closed) return;
      if (rev & POLLIN) {
        this.processKicks();
      } else if (rev & (POLLHUP | POLLERR)) {
        await new Promise((r) => setTimeout(r, 50)); // a dead peer: do not spin on it
      }
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new Error('KernelSimulator is closed');
  }
}

// ---------------------------------------------------------------------------

function computeLayout(opts: SimulatorOptions): SimLayout {
  const ringMb = opts.cmdRingSizeMb ?? MB_CMDR_MAX_MB;
  if (!Number.isInteger(ringMb) || ringMb <= 0) throw new RangeError(`cmd_ring_size_mb ${ringMb}: must be a positive integer`);
  const cmdrSize = Math.min(ringMb, MB_CMDR_MAX_MB) * MIB - CMDR_OFF;

  let dataMb = opts.maxDataAreaMb ?? 1024;
  if (!Number.isInteger(dataMb) || dataMb <= 0) throw new RangeError(`max_data_area_mb ${dataMb}: must be a positive integer`);
  dataMb = Math.min(dataMb, GLOBAL_MAX_DATA_AREA_MB);
  const pages = (dataMb * MIB) / PAGE_SIZE;

  const perBlk = opts.dataPagesPerBlk ?? 1;
  if (!Number.isInteger(perBlk) || perBlk <= 0) throw new RangeError(`data_pages_per_blk ${perBlk}: must be a positive integer`);
  if (perBlk > pages) throw new RangeError(`data_pages_per_blk ${perBlk} exceeds max_data_area_mb ${dataMb} (${pages} pages)`);

  const dataOff = cmdrSize + CMDR_OFF; // a whole number of MiB, hence page aligned
  const dataSize = pages * PAGE_SIZE;
  return {
    cmdrOff: CMDR_OFF,
    cmdrSize,
    dataOff,
    dataSize,
    mapSize: dataOff + dataSize,
    blockSize: perBlk * PAGE_SIZE,
    maxBlocks: Math.floor(pages / perBlk),
    dataPagesPerBlk: perBlk,
  };
}

function timeoutMs(ms: number | undefined, sec: number | undefined, dflt: number, what: string): number {
  const v = ms !== undefined ? ms : sec !== undefined ? (sec < 0 ? sec : sec * 1000) : dflt;
  if (!Number.isFinite(v) || (v < 0 && !(what === 'qfull_time_out' && v === -1))) throw new RangeError(`${what} ${v}`);
  return v < 0 ? -1 : Math.round(v);
}

/** The answer for a command the kernel (or the core in front of it) refused at submission. */
function kernelAnswer(why: SimFailure): Answer {
  const base = { dataIn: EMPTY, residual: 0, timedOut: false, failure: why };
  switch (why) {
    case 'blocked':
      return { ...base, status: ScsiStatus.BUSY, sense: EMPTY };
    case 'data-too-big':
    case 'cmd-too-big':
    case 'cdb-too-long':
      return { ...base, status: ScsiStatus.CHECK_CONDITION, sense: INVALID_CDB_SENSE() };
    case 'no-cmd-id':
    case 'qfull-disabled':
      return { ...base, status: ScsiStatus.TASK_SET_FULL, sense: EMPTY };
    default:
      return { ...base, status: ScsiStatus.CHECK_CONDITION, sense: LUCF_SENSE() };
  }
}
