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
  RingConsumer, RingBrokenError, ScsiStatus, TmrType, pollIn, readEvent, writeEvent,
  type RingCommand, type IoVec,
} from '@tcmu-ts/ring';
import {
  emulate, senseForError, isResourceShortage, ScsiError, makeBlockIo, flattenBuffers, copyToBuffers,
  type DeviceHandler, type ScsiDeviceInfo, type ScsiOutcome,
} from '@tcmu-ts/core';
import { CounterWriter, Scalar } from './counters.js';

const CLS_READ = 0;
const CLS_WRITE = 1;
const CLS_FLUSH = 2;
const CLS_OTHER = 3;
/** How long one wait for the kernel may last before the loop looks at its stop flag again. */
const WAIT_SLICE_MS = 200;

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
}

export class DeviceEngine {
  private readonly consumer: RingConsumer;
  private readonly u8: Uint8Array;
  private kickPending = false;
  private stopping = false;
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  private broken = false;
  /** tcmu-runner's log level 5: a line per CDB. */
  logCdbs = false;
  /** Reported once, to the next command that is not exempt from unit attentions. */
  private unitAttention: ScsiError | null = null;
  /** Ids a TMR asked about; they are still completed (the kernel waits for them), but logged. */
  private readonly aborted = new Set<number>();

  constructor(private readonly o: EngineOptions) {
    this.consumer = new RingConsumer(o.map);
    this.u8 = new Uint8Array(o.map);
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
      if (this.consumer.hasWork()) {
        // Let settled handler promises post their completions before reading more.
        await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      const revents = await pollIn(fd, WAIT_SLICE_MS);
      if (revents) {
        this.o.counters.add(Scalar.WAKEUPS);
        while (readEvent(fd) !== null) { /* take every pending event: one drain serves them all */ }
      }
    }
    // Commands already on the ring were accepted by the kernel on our behalf: answer them too.
    if (!this.broken) this.drain();
    await this.whenIdle();
    this.flushKick();
  }

  /**
   * Stop: what is on the ring now is still read and answered, nothing after
   * that; run() resolves once every command read has completed. Block the
   * device first for a clean stop, so the kernel queues nothing more.
   */
  stop(): void {
    this.stopping = true;
  }

  /** E.g. CAPACITY DATA HAS CHANGED after a dev_size change. */
  raiseUnitAttention(ua: ScsiError): void {
    this.unitAttention = ua;
  }

  private whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
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
  }

  private views(iovs: IoVec[]): Uint8Array[] {
    const out = new Array<Uint8Array>(iovs.length);
    for (let i = 0; i < iovs.length; i++) out[i] = new Uint8Array(this.u8.buffer, iovs[i].offset, iovs[i].length);
    return out;
  }

  private dispatch(cmd: RingCommand): void {
    const start = performance.now();
    this.inFlight++;
    if (this.logCdbs) this.o.log.scsi?.(`cmd ${cmd.cmdId}: CDB ${hex(cmd.cdb)}, ${cmd.dataLength} data bytes in ${cmd.iovs.length} iovec(s)`);
    if (this.unitAttention && !UA_EXEMPT.has(cmd.cdb[0])) {
      const ua = this.unitAttention;
      this.unitAttention = null;
      this.finish(cmd.cmdId, CLS_OTHER, 0, start, ua);
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
    let outcome: ScsiOutcome;
    const bufs = buffers ?? this.views(cmd.iovs);
    try {
      const op = cmd.cdb[0];
      // Only non-READ/WRITE commands with data-out need it contiguous (MODE SELECT and the like).
      const dataOut = cmd.dataLength > 0 && !isReadWrite(op) ? flattenBuffers(bufs) : undefined;
      outcome = emulate(cmd.cdb, info, dataOut);
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
        fn.call(h, io).then(
          () => this.complete(cmd.cmdId, cls, length, start, ScsiStatus.GOOD, undefined, write ? undefined : length),
          (err) => this.finish(cmd.cmdId, cls, 0, start, err, write),
        );
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
      default:
        this.finish(cmd.cmdId, CLS_OTHER, 0, start, ScsiError.invalidOpcode());
    }
  }

  /** Complete with the sense an error maps to; BUSY when the handler is out of resources. */
  private finish(cmdId: number, cls: number, bytes: number, start: number, err: unknown, write = false): void {
    if (isResourceShortage(err)) {
      this.o.counters.add(Scalar.QFULL_REPLIES);
      this.complete(cmdId, cls, bytes, start, ScsiStatus.BUSY);
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
    this.o.counters.command(cls, bytes, (performance.now() - start) / 1000, senseKey);
    this.inFlight--;
    this.scheduleKick();
    if (this.inFlight === 0 && this.idleWaiters.length) {
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const r of w) r();
    }
  }

  /** One kick per batch: completions that settle in the same turn share it. */
  private scheduleKick(): void {
    if (this.kickPending) return;
    this.kickPending = true;
    setImmediate(() => this.flushKick());
  }

  private flushKick(): void {
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

/** SAM-5: INQUIRY, REPORT LUNS and REQUEST SENSE neither report nor clear a unit attention. */
const UA_EXEMPT = new Set([0x12, 0xa0, 0x03]);

function hex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += (i ? ' ' : '') + b[i].toString(16).padStart(2, '0');
  return s;
}

function isReadWrite(op: number): boolean {
  return op === 0x28 || op === 0x2a || op === 0x88 || op === 0x8a || op === 0x08 || op === 0x0a || op === 0xa8 || op === 0xaa;
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
