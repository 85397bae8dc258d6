/**
 * The per-device ring loop: read each entry into a pooled command record,
 * hand it to the executor, write completions as they come (in any order),
 * and kick the kernel once per batch.
 *
 * It runs on the device's own worker thread and is the only code touching
 * that ring, so it needs no locks; the only shared state is the counter
 * buffer, published through a sequence lock.
 */
import { performance } from 'node:perf_hooks';
import {
  READY, RingConsumer, RingBrokenError, ScsiStatus, Taken, TmrType, WOKEN, clearWake, pollIn, pollInSync, readEvent, writeEvent,
  type CompletionOptions,
} from '@tcmu-ts/ring';
import {
  ScsiError, decodeRw, hexBytes, senseKeyOf, statusForError,
  type AluaGroupInfo, type DeviceHandler, type ScsiDeviceInfo,
} from '@tcmu-ts/core';
import { BusySignal } from './alua-controller.js';
import { Command, CommandClass, type CommandSink } from './command.js';
import { CommandExecutor, type PeerLink } from './executor.js';
import { CounterWriter, Scalar } from '../counters.js';

/** How long one wait for the kernel may last before the loop looks at its stop flag again. */
const WAIT_SLICE_MS = 200;
/**
 * The same, when the thread itself sleeps in poll() and nothing else runs
 * meanwhile: short without a wake fd, so messages are still seen soon.
 */
const IDLE_SLICE_MS = 20;
/** With a wake fd every message cuts the sleep short; the slice only bounds how late a timer may run. */
const IDLE_SLICE_WAKE_MS = 250;
/** A wait on a handler's completion fd while its IO is in flight: timers (a polled completion, timeouts) run at least this often. */
const HANDLER_SLICE_MS = 5;
/** Under constant load the loop never waits: it still yields this often, for messages and timers. */
const YIELD_EVERY_MS = 2;

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
  /**
   * An eventfd (wakeFdCreate) whoever posts this thread messages signals
   * after posting: a worker sleeping in poll() then turns its event loop at
   * once instead of at the end of its slice.
   */
  wakeFd?: number;
  handler: DeviceHandler;
  info: ScsiDeviceInfo;
  counters: CounterWriter;
  log: EngineLog;
  /** Called when the ring cannot be trusted any more (the engine logs nothing itself: the callee reports it); run() then ends and the supervisor restarts the device on a reset ring. */
  onRingBroken(reason: string): void;
  /** The daemon's other LUNs, for EXTENDED COPY between them; without it only copies within this LUN work. */
  peers?: PeerLink;
  /**
   * tcmu-runner's tcmur_cmd_time_out, in ms (0/absent: off): a command
   * running longer is logged as timed out, and again when it completes.
   */
  cmdTimeOutMs?: number;
  /**
   * The kernel's cmd_time_out, in ms (0/absent: off or unknown): a command
   * held longer has been failed by the kernel, which drops our completion.
   * Counted (Scalar.TIMEOUTS) so a real device reports what a simulated
   * one's kernel counts itself.
   */
  kernelCmdTimeOutMs?: number;
  /** ALUA group states changed here (SET TARGET PORT GROUPS, lock holder moved). */
  onAluaChange?(groups: readonly AluaGroupInfo[]): void;
  /** Tests only: COMPARE AND WRITE without the LBA range lock. */
  unsafeNoCawLock?: boolean;
}

const setImmediateTurn = (): Promise<void> => new Promise<void>((r) => setImmediate(r));

export class DeviceEngine implements CommandSink {
  private readonly consumer: RingConsumer;
  private readonly map: ArrayBuffer;
  private kickPending = false;
  /** A kick is owed for completions written since the last one (set by complete(), paid by flushKick()). */
  private completedSinceKick = false;
  private stopping = false;
  /** drain() is running: it kicks once at its end for every completion written meanwhile. */
  private draining = false;
  private inFlight = 0;
  /** Data-area bytes the iovecs of the commands in flight hold (the kernel frees their blocks at completion). */
  private dataBytesInFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private broken = false;
  /** run() has returned: the ring may be unmapped at any moment. */
  private finished = false;
  /** tcmu-runner's log level 5: a line per CDB. */
  logCdbs = false;
  /** Ids a TMR asked about; they are still completed (the kernel waits for them), but logged. */
  private readonly aborted = new Set<number>();
  /** Gates, planner verdicts and every plan kind; the engine only moves commands on and off the ring. */
  readonly exec: CommandExecutor;
  /** Work that is no command on the ring: another LUN's copy IO, a FORMAT UNIT with IMMED. */
  private background = 0;
  /** Records free for the next entry: the pool grows to the deepest queue seen, then stops allocating. */
  private readonly free: Command[] = [];
  private records = 0;
  /** Every record made, live or free: scanned for the kernel's cmd_time_out without a per-command map. */
  private readonly allRecords: Command[] = [];
  private kernelTimeoutTimer: NodeJS.Timeout | undefined;
  /** Commands watched for tcmur_cmd_time_out, by id. */
  private readonly tracked = new Map<number, Command>();
  private timeoutTimer: NodeJS.Timeout | undefined;
  /** One options record for every completion written. */
  private readonly completion: CompletionOptions = { sense: undefined, readLen: undefined };
  /** Commands that ran past tcmur_cmd_time_out. */
  timedOutCommands = 0;

  constructor(private readonly o: EngineOptions) {
    this.consumer = new RingConsumer(o.map);
    this.map = o.map;
    this.exec = new CommandExecutor({
      info: o.info,
      handler: o.handler,
      log: o.log,
      peers: o.peers,
      unsafeNoLock: o.unsafeNoCawLock,
      onAluaChange: o.onAluaChange,
      track: (job) => this.trackBackground(job),
    });
    const c = o.counters;
    c.set(Scalar.RING_SIZE, this.consumer.cmdrSize);
    c.set(Scalar.DATA_AREA_BYTES, o.map.byteLength - this.consumer.cmdrOff - this.consumer.cmdrSize);
    // A restarted worker starts with nothing in flight, whatever its predecessor last published.
    c.set(Scalar.IN_FLIGHT, 0);
    c.set(Scalar.DATA_BYTES_IN_FLIGHT, 0);
    c.publish();
    const kernelTmo = o.kernelCmdTimeOutMs ?? 0;
    if (kernelTmo > 0) {
      // One timer for the device's life: starting one per busy period would cost a timer per command at QD1.
      this.kernelTimeoutTimer = setInterval(() => this.countKernelTimeouts(kernelTmo), Math.max(10, Math.min(1000, kernelTmo / 4)));
      this.kernelTimeoutTimer.unref();
    }
  }

  /** Commands held past the kernel's cmd_time_out, each counted once; the kernel logs them itself. */
  private countKernelTimeouts(tmo: number): void {
    if (this.finished) {
      clearInterval(this.kernelTimeoutTimer);
      return;
    }
    if (this.inFlight === 0) return;
    const now = performance.now();
    let n = 0;
    for (const cmd of this.allRecords) {
      if (!cmd.live || cmd.kernelTimedOut || now - cmd.start < tmo) continue;
      cmd.kernelTimedOut = true;
      n++;
    }
    if (n === 0) return;
    this.o.counters.add(Scalar.TIMEOUTS, n);
    this.o.counters.publish();
    this.o.log.warn(`${n} command(s) in flight longer than the kernel's cmd_time_out (${tmo / 1000} s): the kernel has failed them and will drop their completions`);
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

  /**
   * Runs until stop(). Each round drains the ring (commands whose callouts
   * finish in place are completed and kicked within the drain), then waits
   * for the kernel: in poll() on this thread when nothing is in flight, as
   * a pool-thread poll() when handler promises may still settle here.
   */
  async run(): Promise<void> {
    const fd = this.o.eventFd;
    const wakeFd = this.o.wakeFd ?? -1;
    const completions = wakeFd >= 0 ? this.o.handler.completions : undefined;
    let lastYield = performance.now();
    while (!this.stopping && !this.broken) {
      this.drain();
      if (this.broken) break;
      if (this.inFlight > 0 || this.kickPending) {
        // Let handler promises that already settled post their completions
        // and the batch's kick before deciding how to wait.
        await setImmediateTurn();
        lastYield = performance.now();
      } else if (performance.now() - lastYield >= YIELD_EVERY_MS) {
        // Constant load keeps the ring busy: let messages and timers in now and then.
        await setImmediateTurn();
        lastYield = performance.now();
      }
      if (this.consumer.hasWork()) continue;
      let revents: number;
      if (completions && this.background === 0) {
        // Everything in flight settles through the handler's fd: wait for it, the
        // ring and messages on this thread, and reap here (no pool thread, no
        // event-loop wake-up in between). The slice bounds how late a timer runs.
        if (this.completedSinceKick) this.flushKick();
        revents = pollInSync(fd, this.inFlight > 0 ? HANDLER_SLICE_MS : IDLE_SLICE_WAKE_MS, wakeFd, completions.fd);
        if (revents & READY) completions.reap();
        if (revents & WOKEN) clearWake(wakeFd);
        const ringEvent = revents & ~(WOKEN | READY);
        if (!ringEvent || revents & (WOKEN | READY)) {
          // Settle what reap() resolved, let messages and timers in.
          await setImmediateTurn();
          lastYield = performance.now();
        }
        revents &= ~READY;
      } else if (this.inFlight === 0 && this.background === 0) {
        // Nothing of ours can settle while we wait, so the thread may sleep in
        // poll() itself: no hop through the libuv pool on the way in or out.
        if (this.completedSinceKick) this.flushKick();
        revents = pollInSync(fd, wakeFd >= 0 ? IDLE_SLICE_WAKE_MS : IDLE_SLICE_MS, wakeFd);
        if (!revents || revents & WOKEN) {
          if (revents & WOKEN) clearWake(wakeFd);
          await setImmediateTurn();
          lastYield = performance.now();
        }
      } else {
        revents = await pollIn(fd, WAIT_SLICE_MS, wakeFd);
        if (revents & WOKEN) clearWake(wakeFd);
        lastYield = performance.now();
      }
      if (revents & ~WOKEN) {
        this.o.counters.add(Scalar.WAKEUPS);
        // One read takes the event (a UIO read returns the irq count); the
        // drain that follows serves everything the kernel queued meanwhile.
        readEvent(fd);
      }
    }
    // Commands already on the ring were accepted by the kernel on our behalf: answer them too.
    if (!this.broken) this.drain();
    await this.whenIdle();
    this.flushKick();
    this.finished = true;
    clearInterval(this.kernelTimeoutTimer);
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
    this.exec.raiseUnitAttention(ua);
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
  }

  private drain(): void {
    const consumer = this.consumer;
    this.draining = true;
    try {
      for (;;) {
        const cmd = this.free.pop() ?? this.newRecord();
        const taken = consumer.take(cmd);
        if (taken === Taken.CMD) {
          this.dispatch(cmd);
          continue;
        }
        this.free.push(cmd);
        if (taken === Taken.NONE) break;
        if (taken === Taken.TMR) this.onTmr(consumer.lastTmr!.tmrType, consumer.lastTmr!.cmdIds);
        else this.onMalformed();
      }
    } catch (e) {
      if (!(e instanceof RingBrokenError)) throw e;
      this.broken = true;
      // Reported once, by whoever owns the device (the supervisor's log, serveDevice's hook).
      this.o.onRingBroken(e.message);
    } finally {
      this.draining = false;
    }
    this.flushKick();
  }

  private onMalformed(): void {
    const entry = this.consumer.lastMalformed!;
    this.o.counters.add(Scalar.MALFORMED_ENTRIES);
    this.o.log.error(`malformed ring entry at ${entry.at}: ${entry.reason} (${entry.detail})`);
    if (entry.cmdId === 0) return;
    // Its id was read, so the kernel waits for an answer: a record with no data answers it.
    const cmd = this.free.pop() ?? this.newRecord();
    cmd.cmdId = entry.cmdId;
    cmd.cdb = new Uint8Array(1);
    cmd.iovecs.length = 0;
    cmd.dataLength = 0;
    this.begin(cmd);
    cmd.fail(ScsiError.hardwareError());
  }

  private onTmr(type: number, ids: number[]): void {
    this.o.counters.add(Scalar.TMR_SEEN);
    const name = Object.entries(TmrType).find(([, v]) => v === type)?.[0] ?? `type ${type}`;
    this.o.log.warn(`task management ${name} for ${ids.length} command(s): ${ids.join(',')}`);
    // The kernel may name a command we answered a moment ago (it has not seen the completion yet):
    // only ids still ours are remembered, or the set would keep ids no completion ever removes.
    for (const id of ids) if (this.consumer.isOutstanding(id)) this.aborted.add(id);
    if (RESET_TMRS.has(type)) this.exec.onReset();
  }

  /** Commands a TMR named that have not completed yet. */
  get abortsPending(): number {
    return this.aborted.size;
  }

  /** Records made so far: the deepest queue seen (tests check that they are reused). */
  get commandRecords(): number {
    return this.records;
  }

  private newRecord(): Command {
    this.records++;
    const cmd = new Command(this);
    this.allRecords.push(cmd);
    return cmd;
  }

  /** Reset the record's per-command state: the consumer has filled id, CDB and iovecs. */
  private begin(cmd: Command): void {
    cmd.live = true;
    cmd.cls = CommandClass.OTHER;
    cmd.write = false;
    cmd.bytes = 0;
    cmd.readLen = -1;
    cmd.timedOut = false;
    cmd.kernelTimedOut = false;
    cmd.start = performance.now();
    this.inFlight++;
    this.dataBytesInFlight += cmd.dataLength;
    const iovs = cmd.iovecs;
    const bufs = cmd.buffers;
    if (bufs.length !== iovs.length) bufs.length = iovs.length;
    for (let i = 0; i < iovs.length; i++) bufs[i] = new Uint8Array(this.map, iovs[i].offset, iovs[i].length);
    if (this.o.cmdTimeOutMs) this.track(cmd);
  }

  private dispatch(cmd: Command): void {
    this.begin(cmd);
    if (this.logCdbs) this.o.log.scsi?.(`cmd ${cmd.cmdId}: CDB ${hexBytes(cmd.cdb, ' ')}, ${cmd.dataLength} data bytes in ${cmd.iovecs.length} iovec(s)`);
    this.exec.execute(cmd);
  }

  /** CommandSink: complete with the status the one status table gives the error. */
  fail(cmd: Command, err: unknown): void {
    if (!cmd.live) return;
    const r = statusForError(err, cmd.write, this.o.info.dSense);
    if (r.status !== ScsiStatus.CHECK_CONDITION) {
      // A lock transition's BUSY is no shortage; the rest ask the initiator to retry.
      if (!(err instanceof BusySignal)) this.o.counters.add(Scalar.QFULL_REPLIES);
    } else if (!(err instanceof ScsiError)) {
      this.o.counters.add(Scalar.HANDLER_ERRORS);
      this.o.log.warn(`cmd ${cmd.cmdId}: handler error: ${err instanceof Error ? err.message : String(err)}`);
    }
    cmd.bytes = 0;
    this.complete(cmd, r.status, r.sense, -1);
  }

  /** CommandSink: write the completion, count it, recycle the record. */
  complete(cmd: Command, status: number, sense: Uint8Array | undefined, readLen: number): void {
    if (!cmd.live) return;
    cmd.live = false;
    this.exec.release(cmd);
    // Once the ring is broken nothing more is written to it: the supervisor resets
    // the ring, the kernel fails these commands and the initiator retries them.
    if (!this.broken) {
      const c = this.completion;
      c.sense = sense;
      c.readLen = readLen >= 0 ? readLen : undefined;
      try {
        this.consumer.complete(cmd.cmdId, status, c);
      } catch (e) {
        if (!(e instanceof RingBrokenError)) throw e;
        this.broken = true;
        this.o.onRingBroken(e.message);
      }
    }
    const id = cmd.cmdId;
    if (this.aborted.size && this.aborted.delete(id)) this.o.log.info(`cmd ${id} completed after abort`);
    const senseKey = status === ScsiStatus.GOOD ? -1 : status === ScsiStatus.CHECK_CONDITION && sense && sense.length > 2 ? senseKeyOf(sense) : 0;
    const now = performance.now();
    this.o.counters.command(cmd.cls, status === ScsiStatus.GOOD ? cmd.bytes : 0, (now - cmd.start) / 1000, senseKey);
    if (this.tracked.size && this.tracked.delete(id)) {
      if (cmd.timedOut) this.o.log.info(`timed out command id ${id} completed after ${((now - cmd.start) / 1000).toFixed(3)} seconds with status ${status}`);
      if (this.tracked.size === 0 && this.timeoutTimer) {
        clearInterval(this.timeoutTimer);
        this.timeoutTimer = undefined;
      }
    }
    this.inFlight--;
    this.dataBytesInFlight -= cmd.dataLength;
    this.free.push(cmd);
    this.completedSinceKick = true;
    // Inside a drain the kick comes at its end; later completions share a scheduled one.
    if (!this.draining) this.scheduleKick();
    if (this.inFlight === 0) this.maybeIdle();
  }

  /** Watch a command for tcmur_cmd_time_out; the timer runs only while something is watched. */
  private track(cmd: Command): void {
    this.tracked.set(cmd.cmdId, cmd);
    if (this.timeoutTimer) return;
    const tmo = this.o.cmdTimeOutMs!;
    this.timeoutTimer = setInterval(() => this.checkTimeouts(), Math.max(10, Math.min(1000, tmo / 4)));
    this.timeoutTimer.unref();
  }

  /** check_for_timed_out_cmds: each command is logged once when it passes the limit. */
  private checkTimeouts(): void {
    const tmo = this.o.cmdTimeOutMs!;
    const now = performance.now();
    for (const [id, cmd] of this.tracked) {
      if (cmd.timedOut || now - cmd.start < tmo) continue;
      cmd.timedOut = true;
      this.timedOutCommands++;
      this.o.counters.add(Scalar.CMD_TIME_OUT_EXCEEDED);
      const { lba, blocks } = lbaAndBlocks(cmd.cdb);
      this.o.log.info(`command ${id} SCSI CDB 0x${cmd.cdb[0].toString(16).padStart(2, '0')} at LBA ${lba} for ${blocks} blocks timed out (tcmur_cmd_time_out ${tmo / 1000} s)`);
    }
    // A timer, not a drain: publish here, or a device with nothing else to do would never show the count.
    if (!this.finished) this.o.counters.publish();
  }

  /**
   * One kick per batch: completions inside a drain are kicked at its end;
   * those settling later in the same event-loop turn share one scheduled kick.
   */
  private scheduleKick(): void {
    if (this.kickPending) return;
    this.kickPending = true;
    setImmediate(() => this.flushKick());
  }

  private flushKick(): void {
    // After run() the worker unmaps the ring: a kick scheduled before that must not touch it.
    if (this.finished) return;
    const owed = this.completedSinceKick;
    this.completedSinceKick = false;
    this.kickPending = false;
    const counters = this.o.counters;
    counters.set(Scalar.IN_FLIGHT, this.inFlight);
    counters.set(Scalar.DATA_BYTES_IN_FLIGHT, this.dataBytesInFlight);
    counters.set(Scalar.RING_BYTES_USED, this.consumer.ringBytesUsed());
    if (owed) {
      counters.add(Scalar.KICKS);
      writeEvent(this.o.eventFd);
    }
    counters.publish();
  }
}

/** Task management functions that reset the logical unit (copy status held for RECEIVE COPY RESULTS goes). */
const RESET_TMRS: ReadonlySet<number> = new Set([TmrType.LUN_RESET, TmrType.LUN_RESET_PRO, TmrType.TARGET_WARM_RESET, TmrType.TARGET_COLD_RESET]);

/** LBA and transfer length for a log line (tcmu_cdb_get_lba / get_xfer_length); 0 for commands without them. */
function lbaAndBlocks(cdb: Uint8Array): { lba: number; blocks: number } {
  try {
    return decodeRw(cdb);
  } catch {
    return { lba: 0, blocks: 0 };
  }
}
