/**
 * The per-device command loop: drain the ring, dispatch each command to the
 * SCSI core or the handler with many in flight, write completions as they
 * settle (in any order), and kick the kernel once per batch.
 *
 * It runs on the device's own worker thread and is the only code touching
 * that ring, so it needs no locks; the only shared state is the counter
 * buffer, published through a sequence lock.
 */
import { performance } from 'node:perf_hooks';
import {
  RingConsumer, RingBrokenError, ScsiStatus, TmrType, pollIn, pollInSync, readEvent, writeEvent,
  type RingCommand, type IoVec,
} from '@tcmu-ts/ring';
import {
  planCommand, senseForError, isResourceShortage, ScsiError, makeBlockIo, flattenBuffers, copyToBuffers,
  requestSenseData, PARAMETER_LIST_OPCODES, MEDIA_ACCESS_OPCODES, READ_ONLY_MEDIA_OPCODES,
  type AluaGroupInfo, type DeviceHandler, type ScsiDeviceInfo, type ScsiPlan,
} from '@tcmu-ts/core';
import { BusySignal } from './alua-controller.js';
import { CommandExecutor, type PeerLink } from './executor.js';
import { CounterWriter, Scalar } from '../counters.js';

const CLS_READ = 0;
const CLS_WRITE = 1;
const CLS_FLUSH = 2;
const CLS_OTHER = 3;
/** How long one wait for the kernel may last before the loop looks at its stop flag again. */
const WAIT_SLICE_MS = 200;
/** The same, when the thread itself sleeps in poll() and nothing else runs meanwhile. */
const IDLE_SLICE_MS = 20;

export interface EngineLog {
  /** tcmu-runner log level 5 (one line per CDB); optional for embedders that never turn it on. */
  scsi?(msg: string): void;
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

export interface EngineOptions {
  map: ArrayBuffer;
  eventFd: number;
  handler: DeviceHandler;
  info: ScsiDeviceInfo;
  counters: CounterWriter;
  log: EngineLog;
  /** Called when the ring cannot be trusted any more; run() then ends and the supervisor restarts the device on a reset ring. */
  onRingBroken(reason: string): void;
  /** The daemon's other LUNs, for EXTENDED COPY between them; without it only copies within this LUN work. */
  peers?: PeerLink;
  /**
   * tcmu-runner's tcmur_cmd_time_out, in ms (0/absent: off): a command
   * running longer is logged as timed out, and again when it completes.
   */
  cmdTimeOutMs?: number;
  /** ALUA group states changed here (SET TARGET PORT GROUPS, lock holder moved). */
  onAluaChange?(groups: readonly AluaGroupInfo[]): void;
  /** Tests only: COMPARE AND WRITE without the LBA range lock. */
  unsafeNoCawLock?: boolean;
}

/** A command being watched for tcmur_cmd_time_out. */
interface Tracked {
  readonly start: number;
  readonly cdb: Uint8Array;
  timedOut: boolean;
}

export class DeviceEngine {
  private readonly consumer: RingConsumer;
  private readonly u8: Uint8Array;
  private kickPending = false;
  private stopping = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private broken = false;
  /** run() has returned: the ring may be unmapped at any moment. */
  private finished = false;
  /** tcmu-runner's log level 5: a line per CDB. */
  logCdbs = false;
  /** Reported once, to the next command that is not exempt from unit attentions. */
  private unitAttention: ScsiError | null = null;
  /** Ids a TMR asked about; they are still completed (the kernel waits for them), but logged. */
  private readonly aborted = new Set<number>();
  /** Everything beyond READ/WRITE/SYNCHRONIZE CACHE, the range lock, FORMAT and ALUA state. */
  readonly exec: CommandExecutor;
  /** Work that is no command on the ring: another LUN's copy IO, a FORMAT UNIT with IMMED. */
  private background = 0;
  private readonly tracked = new Map<number, Tracked>();
  private timeoutTimer: NodeJS.Timeout | undefined;
  /** Commands that ran past tcmur_cmd_time_out. */
  timedOutCommands = 0;

  constructor(private readonly o: EngineOptions) {
    this.consumer = new RingConsumer(o.map);
    this.u8 = new Uint8Array(o.map);
    this.exec = new CommandExecutor({
      info: o.info,
      handler: o.handler,
      log: o.log,
      peers: o.peers,
      unsafeNoLock: o.unsafeNoCawLock,
      onAluaChange: o.onAluaChange,
      track: (job) => this.trackBackground(job),
    });
  }

  /** The handler reported a lost lock (HandlerDevice.notifyLockLost). */
  notifyLockLost(): void {
    this.exec.alua?.lockLost();
  }

  /** Another worker's EXTENDED COPY reads or writes this LUN; run() waits for it before ending. */
  servePeerIo(op: 'read' | 'write', lba: number, blocks: number, buf: SharedArrayBuffer, offset: number): Promise<void> {
    return this.trackBackground(this.exec.servePeerIo(op, lba, blocks, buf, offset));
  }

  private trackBackground<T>(job: Promise<T>): Promise<T> {
    this.background++;
    const done = () => {
      this.background--;
      this.maybeIdle();
    };
    job.then(done, done);
    return job;
  }

  get info(): ScsiDeviceInfo {
    return this.o.info;
  }

  /** Runs until stop(): drain, then wait for the next kernel event without blocking this thread's event loop. */
  async run(): Promise<void> {
    const fd = this.o.eventFd;
    while (!this.stopping && !this.broken) {
      this.drain();
      if (this.broken) break;
      // Let handler promises that already settled (page-cache IO, RAM) post
      // their completions and the batch's kick before deciding how to wait.
      await new Promise<void>((r) => setImmediate(r));
      if (this.consumer.hasWork()) continue;
      let revents: number;
      if (this.inFlight === 0) {
        // Nothing of ours can settle while we wait, so the thread may sleep in
        // poll() itself: no hop through the libuv pool on the way in or out.
        // The slice is short so stop requests and timers are still seen soon.
        this.flushKick();
        revents = pollInSync(fd, IDLE_SLICE_MS);
        if (!revents) await new Promise<void>((r) => setImmediate(r));
      } else {
        revents = await pollIn(fd, WAIT_SLICE_MS);
      }
      if (revents) {
        this.o.counters.add(Scalar.WAKEUPS);
        while (readEvent(fd) !== null) { /* take every pending event: one drain serves them all */ }
      }
    }
    // Commands already on the ring were accepted by the kernel on our behalf: answer them too.
    if (!this.broken) this.drain();
    await this.whenIdle();
    this.flushKick();
    this.finished = true;
  }

  /**
   * Stop: what is on the ring now is still read and answered, nothing after
   * that; run() resolves once every command read has completed. Block the
   * device first for a clean stop, so the kernel queues nothing more.
   */
  stop(): void {
    this.stopping = true;
    this.exec.cancel();
  }

  /** E.g. CAPACITY DATA HAS CHANGED after a dev_size change. */
  raiseUnitAttention(ua: ScsiError): void {
    this.unitAttention = ua;
  }

  private whenIdle(): Promise<void> {
    if (this.inFlight === 0 && this.background === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  private maybeIdle(): void {
    if (this.inFlight === 0 && this.background === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const r of w) r();
    }
    if (this.tracked.size === 0 && this.timeoutTimer) {
      clearInterval(this.timeoutTimer);
      this.timeoutTimer = undefined;
    }
  }

  private drain(): void {
    let entry;
    try {
      while ((entry = this.consumer.next()) !== null) {
        switch (entry.kind) {
          case 'cmd':
            this.dispatch(entry);
            break;
          case 'tmr':
            this.onTmr(entry.tmrType, entry.cmdIds);
            break;
          case 'malformed':
            this.o.counters.add(Scalar.MALFORMED_ENTRIES);
            this.o.log.error(`malformed ring entry at ${entry.at}: ${entry.reason} (${entry.detail})`);
            if (entry.cmdId !== 0) {
              this.inFlight++;
              this.finish(entry.cmdId, CLS_OTHER, 0, performance.now(), ScsiError.hardwareError());
            }
            break;
        }
      }
    } catch (e) {
      if (!(e instanceof RingBrokenError)) throw e;
      this.broken = true;
      this.o.log.error(`ring broken: ${e.message}`);
      this.o.onRingBroken(e.message);
    }
    this.o.counters.set(Scalar.RING_BYTES_USED, this.consumer.ringBytesUsed());
    this.o.counters.set(Scalar.IN_FLIGHT, this.inFlight);
    this.flushKick();
  }

  private onTmr(type: number, ids: number[]): void {
    this.o.counters.add(Scalar.TMR_SEEN);
    const name = Object.entries(TmrType).find(([, v]) => v === type)?.[0] ?? `type ${type}`;
    this.o.log.warn(`task management ${name} for ${ids.length} command(s): ${ids.join(',')}`);
    for (const id of ids) this.aborted.add(id);
    if (RESET_TMRS.has(type)) this.exec.onReset();
  }

  private views(iovs: IoVec[]): Uint8Array[] {
    const out = new Array<Uint8Array>(iovs.length);
    for (let i = 0; i < iovs.length; i++) out[i] = new Uint8Array(this.u8.buffer, iovs[i].offset, iovs[i].length);
    return out;
  }

  private dispatch(cmd: RingCommand): void {
    const start = performance.now();
    this.inFlight++;
    if (this.o.cmdTimeOutMs) this.track(cmd, start);
    if (this.logCdbs) this.o.log.scsi?.(`cmd ${cmd.cmdId}: CDB ${hex(cmd.cdb)}, ${cmd.dataLength} data bytes in ${cmd.iovs.length} iovec(s)`);
    if (this.unitAttention && !UA_EXEMPT.has(cmd.cdb[0])) {
      const ua = this.unitAttention;
      this.unitAttention = null;
      this.finish(cmd.cmdId, CLS_OTHER, 0, start, ua);
      return;
    }
    const formatting = this.exec.formatError();
    if (formatting && !FORMAT_EXEMPT.has(cmd.cdb[0])) {
      // tcmu-runner lets only INQUIRY through while formatting; REPORT LUNS is the
      // kernel's, and REQUEST SENSE is how SBC says the progress is polled.
      if (cmd.cdb[0] === REQUEST_SENSE) {
        let data: Uint8Array;
        try {
          data = requestSenseData(cmd.cdb, formatting);
        } catch (e) {
          this.finish(cmd.cmdId, CLS_OTHER, 0, start, e);
          return;
        }
        const produced = copyToBuffers(this.views(cmd.iovs), data);
        this.complete(cmd.cmdId, CLS_OTHER, produced, start, ScsiStatus.GOOD, undefined, produced);
        return;
      }
      this.finish(cmd.cmdId, CLS_OTHER, 0, start, formatting);
      return;
    }
    const h = this.o.handler;
    if (h.handleCmd) {
      this.dispatchRaw(cmd, start);
      return;
    }
    this.dispatchEmulated(cmd, start);
  }

  private dispatchRaw(cmd: RingCommand, start: number): void {
    const buffers = this.views(cmd.iovs);
    this.o.handler.handleCmd!({ cdb: cmd.cdb, buffers, iovecs: cmd.iovs, length: cmd.dataLength }).then(
      (res) => {
        if (res === undefined) return this.dispatchEmulated(cmd, start, buffers);
        this.complete(cmd.cmdId, CLS_OTHER, res.dataLength ?? 0, start, res.status, res.sense, res.dataLength);
      },
      (err) => this.finish(cmd.cmdId, CLS_OTHER, 0, start, err),
    );
  }

  private dispatchEmulated(cmd: RingCommand, start: number, buffers?: Uint8Array[]): void {
    const info = this.o.info;
    let outcome: ScsiPlan;
    const bufs = buffers ?? this.views(cmd.iovs);
    const op = cmd.cdb[0];
    try {
      // ALUA first, as tcmu-runner's alua_check_state runs before a command is looked at.
      if (this.exec.alua && MEDIA_ACCESS_OPCODES.has(op)) this.exec.alua.check(READ_ONLY_MEDIA_OPCODES.has(op));
      // Only parameter lists need the data-out contiguous (MODE SELECT, UNMAP, EXTENDED COPY, ...).
      const dataOut = cmd.dataLength > 0 && PARAMETER_LIST_OPCODES.has(op) ? flattenBuffers(bufs) : undefined;
      outcome = planCommand(cmd.cdb, info, dataOut, cmd.dataLength);
    } catch (e) {
      this.finish(cmd.cmdId, CLS_OTHER, 0, start, e);
      return;
    }
    const h = this.o.handler;
    switch (outcome.kind) {
      case 'done': {
        let produced = 0;
        if (outcome.dataIn && outcome.dataIn.length) produced = copyToBuffers(bufs, outcome.dataIn);
        this.complete(cmd.cmdId, CLS_OTHER, produced, start, outcome.status, outcome.sense, produced);
        return;
      }
      case 'read':
      case 'write': {
        const write = outcome.kind === 'write';
        const cls = write ? CLS_WRITE : CLS_READ;
        if (outcome.blocks === 0) {
          this.complete(cmd.cmdId, cls, 0, start, ScsiStatus.GOOD);
          return;
        }
        const fn = write ? h.write : h.read;
        if (!fn) {
          this.finish(cmd.cmdId, cls, 0, start, ScsiError.invalidOpcode());
          return;
        }
        const length = outcome.blocks * info.blockSize;
        if (cmd.dataLength < length) {
          // The kernel sizes the data buffer from the CDB; a shorter one means a broken entry.
          this.finish(cmd.cmdId, cls, 0, start, ScsiError.hardwareError());
          return;
        }
        const io = makeBlockIo({
          lba: outcome.lba, blocks: outcome.blocks, blockSize: info.blockSize,
          buffers: cmd.dataLength === length ? bufs : trimViews(bufs, length),
          iovecs: cmd.dataLength === length ? cmd.iovs : trimIovecs(cmd.iovs, length), fua: outcome.fua,
        });
        if (!write) {
          fn.call(h, io).then(
            () => this.complete(cmd.cmdId, cls, length, start, ScsiStatus.GOOD, undefined, length),
            (err) => this.finish(cmd.cmdId, cls, 0, start, err, false),
          );
          return;
        }
        // Writes hold their range shared, so a COMPARE AND WRITE on it waits for them and they for it.
        const issue = (lockId: number | undefined) => {
          fn.call(h, io).then(
            () => {
              if (lockId !== undefined) this.exec.rangeLock.release(lockId);
              this.complete(cmd.cmdId, cls, length, start, ScsiStatus.GOOD);
            },
            (err) => {
              if (lockId !== undefined) this.exec.rangeLock.release(lockId);
              this.finish(cmd.cmdId, cls, 0, start, err, true);
            },
          );
        };
        if (this.o.unsafeNoCawLock) {
          issue(undefined);
          return;
        }
        const id = this.exec.rangeLock.tryAcquire(outcome.lba, outcome.blocks, false);
        if (id !== undefined) issue(id);
        else void this.exec.rangeLock.acquire(outcome.lba, outcome.blocks, false).then(issue);
        return;
      }
      case 'flush': {
        if (!h.flush) {
          this.complete(cmd.cmdId, CLS_FLUSH, 0, start, ScsiStatus.GOOD);
          return;
        }
        h.flush().then(
          () => this.complete(cmd.cmdId, CLS_FLUSH, 0, start, ScsiStatus.GOOD),
          (err) => this.finish(cmd.cmdId, CLS_FLUSH, 0, start, err, true),
        );
        return;
      }
      case 'passthrough':
        this.finish(cmd.cmdId, CLS_OTHER, 0, start, ScsiError.invalidOpcode());
        return;
      default: {
        const plan = outcome;
        const cls = PLAN_CLASS[plan.kind] ?? CLS_OTHER;
        const write = cls === CLS_WRITE;
        this.exec.run(plan, { dataLength: cmd.dataLength, buffers: bufs, iovecs: cmd.iovs }).then(
          (produced) =>
            this.complete(cmd.cmdId, cls, write ? cmd.dataLength : produced, start, ScsiStatus.GOOD, undefined, produced || undefined),
          (err) => this.finish(cmd.cmdId, cls, 0, start, err, write),
        );
      }
    }
  }

  /**
   * Complete with the sense an error maps to. A handler out of resources
   * gets the initiator to retry, as tcmu-runner answers TCMU_STS_NO_RESOURCE
   * and TCMU_STS_BUSY: TASK SET FULL when memory ran out (ENOMEM, ENOBUFS),
   * BUSY when the handler says to try again (EAGAIN) or a lock is being taken.
   */
  private finish(cmdId: number, cls: number, bytes: number, start: number, err: unknown, write = false): void {
    if (err instanceof BusySignal) {
      this.complete(cmdId, cls, bytes, start, ScsiStatus.BUSY);
      return;
    }
    if (isResourceShortage(err)) {
      this.o.counters.add(Scalar.QFULL_REPLIES);
      const code = (err as { code?: string }).code;
      const status = code === 'ENOMEM' || code === 'ENOBUFS' ? ScsiStatus.TASK_SET_FULL : ScsiStatus.BUSY;
      this.complete(cmdId, cls, bytes, start, status);
      return;
    }
    if (!(err instanceof ScsiError)) {
      this.o.counters.add(Scalar.HANDLER_ERRORS);
      this.o.log.warn(`cmd ${cmdId}: handler error: ${err instanceof Error ? err.message : String(err)}`);
    }
    this.complete(cmdId, cls, bytes, start, ScsiStatus.CHECK_CONDITION, senseForError(err, write, this.o.info.dSense));
  }

  private complete(cmdId: number, cls: number, bytes: number, start: number, status: number, sense?: Uint8Array, readLen?: number): void {
    // Once the ring is broken nothing more is written to it: the supervisor resets
    // the ring, the kernel fails these commands and the initiator retries them.
    if (!this.broken) {
      try {
        this.consumer.complete(cmdId, status, { sense, readLen });
      } catch (e) {
        if (!(e instanceof RingBrokenError)) throw e;
        this.broken = true;
        this.o.onRingBroken(e.message);
      }
    }
    if (this.aborted.size && this.aborted.delete(cmdId)) this.o.log.info(`cmd ${cmdId} completed after abort`);
    const senseKey = status === ScsiStatus.CHECK_CONDITION && sense && sense.length > 2 ? senseKeyOf(sense) : status === ScsiStatus.GOOD ? -1 : 0;
    const now = performance.now();
    this.o.counters.command(cls, bytes, (now - start) / 1000, senseKey);
    if (this.tracked.size) {
      const t = this.tracked.get(cmdId);
      if (t) {
        this.tracked.delete(cmdId);
        if (t.timedOut) this.o.log.info(`timed out command id ${cmdId} completed after ${((now - t.start) / 1000).toFixed(3)} seconds with status ${status}`);
      }
    }
    this.inFlight--;
    this.scheduleKick();
    this.maybeIdle();
  }

  /** Watch a command for tcmur_cmd_time_out; the timer runs only while something is watched. */
  private track(cmd: RingCommand, start: number): void {
    this.tracked.set(cmd.cmdId, { start, cdb: cmd.cdb, timedOut: false });
    if (this.timeoutTimer) return;
    const tmo = this.o.cmdTimeOutMs!;
    this.timeoutTimer = setInterval(() => this.checkTimeouts(), Math.max(10, Math.min(1000, tmo / 4)));
    this.timeoutTimer.unref();
  }

  /** check_for_timed_out_cmds: each command is logged once when it passes the limit. */
  private checkTimeouts(): void {
    const tmo = this.o.cmdTimeOutMs!;
    const now = performance.now();
    for (const [id, t] of this.tracked) {
      if (t.timedOut || now - t.start < tmo) continue;
      t.timedOut = true;
      this.timedOutCommands++;
      const { lba, blocks } = lbaAndLength(t.cdb);
      this.o.log.info(`command ${id} SCSI CDB 0x${t.cdb[0].toString(16).padStart(2, '0')} at LBA ${lba} for ${blocks} blocks timed out (tcmur_cmd_time_out ${tmo / 1000} s)`);
    }
  }

  /** One kick per batch: completions that settle in the same turn share it. */
  private scheduleKick(): void {
    if (this.kickPending) return;
    this.kickPending = true;
    setImmediate(() => this.flushKick());
  }

  private flushKick(): void {
    // After run() the worker unmaps the ring: a kick scheduled before that must not touch it.
    if (this.finished) return;
    const wasPending = this.kickPending;
    this.kickPending = false;
    this.o.counters.set(Scalar.IN_FLIGHT, this.inFlight);
    this.o.counters.set(Scalar.RING_BYTES_USED, this.consumer.ringBytesUsed());
    if (wasPending) {
      this.o.counters.add(Scalar.KICKS);
      writeEvent(this.o.eventFd);
    }
    this.o.counters.publish();
  }
}

/** Task management functions that reset the logical unit (copy status held for RECEIVE COPY RESULTS goes). */
const RESET_TMRS: ReadonlySet<number> = new Set([TmrType.LUN_RESET, TmrType.LUN_RESET_PRO, TmrType.TARGET_WARM_RESET, TmrType.TARGET_COLD_RESET]);

/** SAM-5: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit attention. */
const UA_EXEMPT = new Set([0x12, 0xa0, 0x03]);
const REQUEST_SENSE = 0x03;
/** Answered normally while FORMAT UNIT runs (REQUEST SENSE with the progress). */
const FORMAT_EXEMPT = new Set([0x12, 0xa0]);

/** Counter class of each plan the executor runs. */
const PLAN_CLASS: Partial<Record<ScsiPlan['kind'], number>> = {
  'write-same': CLS_WRITE,
  'compare-and-write': CLS_WRITE,
  'write-verify': CLS_WRITE,
  verify: CLS_READ,
};

/** LBA and transfer length of a CDB for log lines (tcmu_cdb_get_lba / get_xfer_length); 0 when it has none. */
function lbaAndLength(cdb: Uint8Array): { lba: bigint; blocks: number } {
  const be32 = (o: number) => ((cdb[o] << 24) | (cdb[o + 1] << 16) | (cdb[o + 2] << 8) | cdb[o + 3]) >>> 0;
  switch (cdb[0] >> 5) {
    case 0:
      return { lba: BigInt(((cdb[1] & 0x1f) << 16) | (cdb[2] << 8) | cdb[3]), blocks: cdb[4] };
    case 1:
    case 2:
      return { lba: BigInt(be32(2)), blocks: (cdb[7] << 8) | cdb[8] };
    case 4:
      return { lba: (BigInt(be32(2)) << 32n) | BigInt(be32(6)), blocks: be32(10) };
    case 5:
      return { lba: BigInt(be32(2)), blocks: be32(6) };
    default:
      return { lba: 0n, blocks: 0 };
  }
}

function hex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += (i ? ' ' : '') + b[i].toString(16).padStart(2, '0');
  return s;
}

function senseKeyOf(sense: Uint8Array): number {
  // Fixed format keeps the key in byte 2, descriptor format in byte 1.
  return (sense[0] & 0x7f) >= 0x72 ? sense[1] & 0x0f : sense[2] & 0x0f;
}

/** The first `length` bytes of a scatter list (the kernel may hand out more buffer than the transfer needs). */
function trimViews(bufs: Uint8Array[], length: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0, left = length; i < bufs.length && left > 0; left -= bufs[i].byteLength, i++) {
    out.push(bufs[i].byteLength <= left ? bufs[i] : bufs[i].subarray(0, left));
  }
  return out;
}
function trimIovecs(iovs: IoVec[], length: number): IoVec[] {
  const out: IoVec[] = [];
  for (let i = 0, left = length; i < iovs.length && left > 0; left -= iovs[i].length, i++) {
    out.push(iovs[i].length <= left ? iovs[i] : { offset: iovs[i].offset, length: left });
  }
  return out;
}
