/**
 * The plugin API between the TCMU engine and backstore handlers.
 *
 * Modelled on what tcmu-runner's `struct tcmur_handler` lets a C handler do,
 * reshaped for JavaScript:
 *  - one object per handler type (`Handler`), one object per open device
 *    (`DeviceHandler`) instead of a private pointer hung off the device;
 *  - a return value instead of TCMU_STS return codes plus
 *    tcmur_cmd_complete(): a callout that finishes on the device thread
 *    returns (void, or its result), one that finishes later returns a
 *    promise (see Callout);
 *  - failures are thrown (or rejected): an errno-style error (anything with
 *    `code: 'EIO'`, `'ENOSPC'`, ...) or a ScsiError from the SCSI core when a
 *    handler needs a specific sense key/ASC/ASCQ. The engine turns both into
 *    status and sense through one table (statusForError in the SCSI core).
 *
 * Everything an IO callout receives points straight into the ring's data
 * area, and the BlockIo itself belongs to the engine's command record.
 * Handlers must finish with both before their callout returns or its
 * promise settles, and must never keep references to them afterwards: the
 * engine reuses them for the next command as soon as the completion is
 * posted.
 *
 * This module imports nothing: handlers load it without koffi or the ring.
 */

// ---------------------------------------------------------------- config

/** Result of `Handler.checkConfig`. `reason` is shown to the administrator as is. */
export type ConfigCheck = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export const configOk: ConfigCheck = Object.freeze({ ok: true });

export function configError(reason: string): ConfigCheck {
  return { ok: false, reason };
}

/**
 * Split a TCMU cfgstring ("<subtype>/<handler config>") into its parts.
 * The kernel passes the whole string; handlers only ever see the part after
 * the first '/', so a file handler's path keeps its own leading '/'
 * ("file//var/img" -> "/var/img").
 */
export function splitCfgstring(cfgstring: string): { subtype: string; config: string } {
  const slash = cfgstring.indexOf('/');
  if (slash < 0) return { subtype: cfgstring, config: '' };
  return { subtype: cfgstring.slice(0, slash), config: cfgstring.slice(slash + 1) };
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 2 ** 10, kb: 2 ** 10, kib: 2 ** 10,
  m: 2 ** 20, mb: 2 ** 20, mib: 2 ** 20,
  g: 2 ** 30, gb: 2 ** 30, gib: 2 ** 30,
  t: 2 ** 40, tb: 2 ** 40, tib: 2 ** 40,
  p: 2 ** 50, pb: 2 ** 50, pib: 2 ** 50,
};

/**
 * Parse "4096", "64k", "1.5G", "2TiB" into bytes (units are powers of two,
 * as storage tools conventionally mean them). Returns undefined rather than
 * throwing so handlers can treat a non-size config as a plain name.
 */
export function parseSize(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = SIZE_UNITS[m[2].toLowerCase()];
  if (unit === undefined) return undefined;
  const bytes = Math.floor(Number(m[1]) * unit);
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/**
 * Split "main;key=value;flag" style handler options. The first field is
 * returned as `main`; later fields become options (a bare flag maps to '').
 * ';' was picked because it cannot be confused with path separators and
 * targetcli passes it through untouched.
 */
export function parseOptions(config: string, separator = ';'): { main: string; options: Map<string, string> } {
  const parts = config.split(separator);
  const options = new Map<string, string>();
  for (let i = 1; i < parts.length; i++) {
    const p = parts[i].trim();
    if (p === '') continue;
    const eq = p.indexOf('=');
    if (eq < 0) options.set(p.toLowerCase(), '');
    else options.set(p.slice(0, eq).trim().toLowerCase(), p.slice(eq + 1).trim());
  }
  return { main: parts[0], options };
}

// ---------------------------------------------------------------- device

export interface HandlerLog {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
  error(msg: string): void;
}

/** Where the ring is, for handlers that hand IO to threads which map it themselves. */
export interface RingMapInfo {
  /** The UIO fd (or memfd in tests); valid in every thread of this process. */
  readonly mapFd: number;
  readonly mapSize: number;
}

/** What a handler learns about the device it is asked to open. */
export interface HandlerDevice {
  /** Kernel device name (e.g. "uio0"), for log messages. */
  readonly name: string;
  /** The handler's part of the cfgstring, after "<subtype>/". */
  readonly cfgstring: string;
  readonly blockSize: number;
  /**
   * Capacity in blocks as configured in the kernel (dev_size / block size).
   * A handler may set it in open() when its backing store decides the size,
   * e.g. a file handler given an existing image and no dev_size.
   */
  numLbas: number;
  /** Largest transfer the kernel will send in one command, in blocks. */
  readonly maxXferBlocks: number;
  /** Whether the initiator sees a volatile write cache (then FUA/flush matter). */
  readonly writeCache: boolean;
  readonly log: HandlerLog;
  /** Present when the engine runs over a real or simulated ring. */
  readonly ring?: RingMapInfo;
  /**
   * tcmu-runner's per-device `tcmur_cmd_time_out` (seconds; 0 or absent:
   * off), from the device's dev_config. The engine logs commands that take
   * longer; a handler may use it to size its own backend timeouts.
   */
  readonly cmdTimeOut?: number;
  /**
   * Tell the engine the handler lost its lock (tcmu_notify_lock_lost), e.g.
   * when the backend fenced this node. Call it before failing the command
   * that found out. Present when the engine runs the device.
   */
  readonly notifyLockLost?: () => void;
}

/** What a handler knows of its lock (tcmu-runner's TCMUR_DEV_LOCK_* as a handler reports them). */
export type HandlerLockState = 'locked' | 'unlocked' | 'unknown';

/** The tag lock() gets when no ALUA group asked for the lock (implicit failover; TCMU_INVALID_LOCK_TAG). */
export const NO_LOCK_TAG = 0xffff;

// ---------------------------------------------------------------- IO

/** A region of the ring mapping, for threads that map the ring themselves. */
export interface IoVec {
  /** Byte offset from the start of the ring mapping (not of the data area). */
  readonly offset: number;
  readonly length: number;
}

/**
 * One READ or WRITE, already range-checked by the engine.
 * The buffers are views on the ring's data area, in order, and together hold
 * exactly `length` bytes; a read fills them, a write takes its data from them.
 */
export interface BlockIo {
  readonly lba: number;
  readonly blocks: number;
  /** Byte offset on the device: lba * blockSize. */
  readonly offset: number;
  /** Byte count: blocks * blockSize. */
  readonly length: number;
  readonly buffers: readonly Uint8Array[];
  /** The same memory as `buffers`, as offsets in the ring map (see HandlerDevice.ring). */
  readonly iovecs?: readonly IoVec[];
  /** Force unit access: the data must be on stable media before completion. */
  readonly fua: boolean;
}

/** COMPARE AND WRITE: `compare` is checked against the medium, then `buffers` are written. */
export interface CompareAndWriteIo extends BlockIo {
  /** The verify half of the data-out buffer (same length as `buffers`). */
  readonly compare: readonly Uint8Array[];
  readonly compareIovecs?: readonly IoVec[];
}

/** `offset` is the byte offset of the first mismatch inside the compared range. */
export type CompareResult = { readonly ok: true } | { readonly ok: false; readonly offset: number };

export interface LbaRange {
  readonly lba: number;
  readonly blocks: number;
}

/** SBC-4 PROVISIONING STATUS of an extent: mapped, deallocated (reads zeros), anchored. */
export type LbaProvisioning = 'mapped' | 'deallocated' | 'anchored';

export interface LbaStatusExtent extends LbaRange {
  readonly status: LbaProvisioning;
}

/**
 * Extents from per-block-run classification: merge adjacent runs of one
 * status, stop at `maxExtents`. `runs` yields [lba, blocks, status] in order.
 */
export function mergeExtents(runs: Iterable<readonly [number, number, LbaProvisioning]>, maxExtents: number): LbaStatusExtent[] {
  const out: { lba: number; blocks: number; status: LbaProvisioning }[] = [];
  for (const [lba, blocks, status] of runs) {
    if (blocks <= 0) continue;
    const last = out[out.length - 1];
    if (last && last.status === status && last.lba + last.blocks === lba) last.blocks += blocks;
    else if (out.length === maxExtents) break;
    else out.push({ lba, blocks, status });
  }
  return out;
}

/** A command handed to `DeviceHandler.handleCmd` before the engine emulates it. */
export interface RawCommand {
  readonly cdb: Uint8Array;
  /** The data buffer (data-in or data-out, depending on the opcode). */
  readonly buffers: readonly Uint8Array[];
  readonly iovecs?: readonly IoVec[];
  /** Total bytes in `buffers`. */
  readonly length: number;
}

/**
 * A command completed by the handler itself. For a plain failure, throw
 * instead (ScsiError or an errno error); a result with `status` and `sense`
 * is for pass-through handlers that already have the sense bytes.
 */
export interface RawResult {
  /** SAM status byte: 0x00 GOOD, 0x02 CHECK CONDITION, 0x08 BUSY, ... */
  readonly status: number;
  readonly sense?: Uint8Array;
  /** Bytes of data-in actually produced, when fewer than the buffer holds. */
  readonly dataLength?: number;
}

/**
 * A change of a running device. `config`: a new cfgstring (the handler's
 * part) for the daemon's dev_config; resolve when it is applied in place
 * (the device keeps running, e.g. fault options), throw EOPNOTSUPP to have
 * the daemon reopen the handler with it instead.
 */
export type ReconfigChange =
  | { readonly kind: 'size'; readonly numLbas: number; readonly devSize: number }
  | { readonly kind: 'config'; readonly cfgstring: string }
  | { readonly kind: 'writecache'; readonly enabled: boolean };

/**
 * A callout's result: a promise for work that completes later, or the value
 * itself (void for the IO callouts) when the work is done on return. An IO
 * finished on the device thread (page cache, memory) should return
 * synchronously: the engine then completes the command in place, with no
 * promise, microtask or closure for it. Throwing synchronously fails the
 * command just as a rejected promise does. A thenable is as good as a
 * promise: the engine calls `then(succeed, failed)` once, with callbacks
 * bound once per command record, so a handler may return a pooled record
 * of its own (glfs does) instead of allocating a promise per command.
 */
export type Callout<T> = Promise<T> | PromiseLike<T> | T;

/**
 * An open device. Every IO callout is optional: what is missing the engine
 * either emulates from what exists (WRITE SAME through write(), COMPARE AND
 * WRITE through read()+write(), ...) or rejects with INVALID OPCODE.
 *
 * Every callout runs on the device's worker thread. Callouts may run
 * concurrently for different commands, as in tcmu-runner; ordering between
 * overlapping IOs is the initiator's business.
 */
export interface DeviceHandler {
  /** Optional. READ: fill io.buffers from the medium. */
  read?(io: BlockIo): Callout<void>;
  /** Optional. WRITE: store io.buffers; with io.fua on stable media before completing. */
  write?(io: BlockIo): Callout<void>;
  /** Optional. SYNCHRONIZE CACHE: everything completed so far must reach stable media. */
  flush?(): Callout<void>;
  /** Optional. UNMAP / WRITE SAME with the UNMAP bit: the ranges must read back as zeros afterwards. */
  unmap?(ranges: readonly LbaRange[]): Callout<void>;
  /**
   * WRITE SAME: `pattern` is one block, to be written to every block of `io`'s range.
   * The engine passes `io.buffers` empty (the range may be far larger than any
   * buffer); only lba/blocks/offset/length/fua describe it.
   */
  writeSame?(io: BlockIo, pattern: Uint8Array): Callout<void>;
  /** Optional. COMPARE AND WRITE; the engine holds the range exclusively while it runs. */
  compareAndWrite?(io: CompareAndWriteIo): Callout<CompareResult>;
  /**
   * Sees every command first when present. Resolve to undefined to let the
   * engine handle it (the common case: only claim the opcodes you care about).
   */
  handleCmd?(cmd: RawCommand): Callout<RawResult | undefined>;
  /** Resolve to accept the change; throw (e.g. code 'EOPNOTSUPP') to refuse it. */
  reconfig?(change: ReconfigChange): Promise<void>;
  /**
   * Cluster lock API, for handlers whose backing store other nodes may
   * write too (tcmu-runner's lock/unlock/get_lock_tag/get_lock_state, which
   * rbd implements). With ALUA groups configured the engine uses it as
   * tcmu-runner does:
   *  - implicit failover: the first write takes the lock (NO_LOCK_TAG) while
   *    the initiator is answered BUSY and retries;
   *  - explicit failover: SET TARGET PORT GROUPS making the local group
   *    active/optimized takes the lock with that group's id as tag, standby
   *    releases it; REPORT TARGET PORT GROUPS shows the group whose tag
   *    holds the lock as active/optimized and every other group standby, and
   *    media access without the lock gets NOT READY, TARGET PORT IN STANDBY STATE.
   * Throw to fail: errno codes ETIMEDOUT, EAGAIN, EBUSY and ESTALE (fenced)
   * mean "try again later" (BUSY), anything else a failed transition.
   * Implement all four or none.
   */
  lock?(tag: number): Promise<void>;
  unlock?(): Promise<void>;
  /** The tag the lock was taken with by whichever node holds it; null when nobody does. */
  getLockTag?(): Promise<number | null>;
  /** Whether this node holds the lock right now. */
  getLockState?(): Promise<HandlerLockState>;
  /**
   * Optional. GET LBA STATUS: the provisioning of the blocks from `lba` on,
   * as extents in order, the first starting at `lba`, together at most
   * `blocks` long and at most `maxExtents` of them (fewer is fine: the
   * initiator asks again from where the answer ends). A block reported
   * deallocated must read back as zeros.
   */
  lbaStatus?(lba: number, blocks: number, maxExtents: number): Callout<readonly LbaStatusExtent[]>;
  /** Optional. Read once after open(): what the medium's geometry asks initiators to do. */
  readonly limits?: DeviceLimits;
  /**
   * Optional, for handlers whose IO completes on threads of a native
   * library (librbd): a file descriptor that turns readable when
   * completions wait, and reap(), which settles their promises. The device
   * thread then waits in poll() on the ring, its messages and this fd
   * together, instead of handing each wait to a pool thread. reap() runs
   * on the device thread and must not block. Read once after open().
   */
  readonly completions?: HandlerCompletions;
  /**
   * Optional. What INQUIRY says the device is when it is not a plain disk
   * (a zoned disk, an optical drive). Read once after open().
   */
  readonly identity?: DeviceIdentity;
  close(): Promise<void>;
}

/**
 * A device type other than a direct-access disk, as INQUIRY reports it.
 * Everything absent keeps the disk's answer. The handler answers the
 * commands of its device type itself in handleCmd (ZBC IN/OUT, the MMC set).
 */
export interface DeviceIdentity {
  /** PERIPHERAL DEVICE TYPE: 05h MMC (optical), 14h host-managed zoned. */
  readonly peripheralType?: number;
  /** Removable medium (RMB). */
  readonly removable?: boolean;
  /** Up to four version descriptors for standard INQUIRY (e.g. ZBC 0x0600, MMC-6 0x04e0). */
  readonly versionDescriptors?: readonly number[];
  /** Which block VPD pages (B0h, B1h, B2h) the engine still offers; [] for none. */
  readonly blockVpdPages?: readonly number[];
  /** ZONED field of VPD B1h: 1 host aware (a host-managed disk says so by its peripheral type). */
  readonly zoned?: number;
  /** The handler's own VPD pages, page code to the whole page (header included), e.g. B6h. */
  readonly vpdPages?: ReadonlyMap<number, Uint8Array>;
}

/**
 * What a device tells initiators about its medium, once open (tcmu-runner's
 * tcmu_dev_set_* calls from a handler's open). Every field is optional; the
 * engine's defaults stand for what is absent.
 */
export interface DeviceLimits {
  /** MAXIMUM UNMAP LBA COUNT in the Block Limits VPD page. */
  readonly maxUnmapBlocks?: number;
  /** OPTIMAL UNMAP GRANULARITY, in blocks. */
  readonly unmapGranularity?: number;
  /** UNMAP GRANULARITY ALIGNMENT, in blocks. */
  readonly unmapGranularityAlignment?: number;
  /** Unmapped blocks read back as zeros (LBPRZ). Default: true when unmap() exists. */
  readonly unmapReadsZeros?: boolean;
  /** OPTIMAL TRANSFER LENGTH, in blocks. */
  readonly optimalTransferBlocks?: number;
  /** The medium refuses writes (a snapshot): WP set, writes answered DATA PROTECT. */
  readonly writeProtect?: boolean;
  /**
   * write() of up to this many blocks lands whole or not at all, a crash
   * included: WRITE ATOMIC (16) and the Block Limits atomic fields are
   * offered. Absent: not offered.
   */
  readonly atomicWriteBlocks?: number;
  /** ATOMIC ALIGNMENT: an atomic write must start at a multiple of this many blocks. */
  readonly atomicAlignmentBlocks?: number;
}

/** See DeviceHandler.completions. */
export interface HandlerCompletions {
  readonly fd: number;
  reap(): void;
}

/** A handler type, registered by subtype. */
export interface Handler {
  /** Human-friendly name. */
  readonly name: string;
  /** Matches the first part of the cfgstring ("file" for "file//var/img"). */
  readonly subtype: string;
  readonly configDescription: string;
  /** Cheap, side-effect free validation of the handler's part of a cfgstring. */
  checkConfig(cfgstring: string): ConfigCheck;
  /**
   * Optional. The check that needs the backend (does the pool and image
   * exist?), run after checkConfig passed: for DBus CheckConfig, a device
   * being added, a new dev_config. Runs on the supervisor thread, so it
   * must not block it; no side effects.
   */
  probeConfig?(cfgstring: string): Promise<ConfigCheck>;
  /** `reopen` is true when the engine recovers a device it had open before. */
  open(dev: HandlerDevice, reopen: boolean): Promise<DeviceHandler>;
  /**
   * Handlers doing blocking work may ask for that many worker threads; the
   * handler itself owns them (the engine only reads this as a hint for
   * queue depth). 0 or absent: everything runs on the engine's thread.
   */
  readonly nrThreads?: number;
}

/**
 * Identity function that types a handler literal: parameters get their
 * types from context, and a misspelt member (e.g. `nrThread`) is an error.
 */
export function defineHandler(handler: Handler): Handler {
  return handler;
}

// ---------------------------------------------------------------- errors

/** An Error carrying an errno code the engine knows how to turn into sense data. */
export class ErrnoError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(`${code}: ${message}`);
    this.name = 'ErrnoError';
    this.code = code;
  }
}

export function errnoError(code: string, message: string): ErrnoError {
  return new ErrnoError(code, message);
}

// ---------------------------------------------------------------- buffer helpers
//
// These loop over indices rather than using iterators or callbacks because
// they sit on the per-IO path of in-memory handlers.

/** Total bytes in a scatter/gather list. */
export function buffersLength(buffers: readonly Uint8Array[]): number {
  let n = 0;
  for (let i = 0; i < buffers.length; i++) n += buffers[i].byteLength;
  return n;
}

/**
 * Scatter: copy `src` into the buffers starting `at` bytes into the list.
 * Copies min(src.length, room) bytes and returns that count.
 */
export function copyToBuffers(buffers: readonly Uint8Array[], src: Uint8Array, at = 0): number {
  let done = 0;
  let skip = at;
  for (let i = 0; i < buffers.length && done < src.byteLength; i++) {
    const b = buffers[i];
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    const n = Math.min(b.byteLength - skip, src.byteLength - done);
    b.set(src.subarray(done, done + n), skip);
    done += n;
    skip = 0;
  }
  return done;
}

/**
 * Gather: copy from the buffers, starting `at` bytes into the list, into
 * `dst`. Copies min(dst.length, available) bytes and returns that count.
 */
export function copyFromBuffers(buffers: readonly Uint8Array[], dst: Uint8Array, at = 0): number {
  let done = 0;
  let skip = at;
  for (let i = 0; i < buffers.length && done < dst.byteLength; i++) {
    const b = buffers[i];
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    const n = Math.min(b.byteLength - skip, dst.byteLength - done);
    dst.set(skip === 0 && n === b.byteLength ? b : b.subarray(skip, skip + n), done);
    done += n;
    skip = 0;
  }
  return done;
}

/** Copy between two scatter/gather lists (e.g. data-out to data-in); returns bytes copied. */
export function copyBuffers(dst: readonly Uint8Array[], src: readonly Uint8Array[]): number {
  let di = 0, doff = 0, done = 0;
  for (let si = 0; si < src.length; si++) {
    const s = src[si];
    let soff = 0;
    while (soff < s.byteLength) {
      if (di >= dst.length) return done;
      const d = dst[di];
      const n = Math.min(s.byteLength - soff, d.byteLength - doff);
      d.set(s.subarray(soff, soff + n), doff);
      soff += n; doff += n; done += n;
      if (doff === d.byteLength) { di++; doff = 0; }
    }
  }
  return done;
}

/** Zero `length` bytes of the list starting `at` (default: all of it). */
export function zeroBuffers(buffers: readonly Uint8Array[], at = 0, length = Infinity): void {
  let skip = at;
  let left = length;
  for (let i = 0; i < buffers.length && left > 0; i++) {
    const b = buffers[i];
    if (skip >= b.byteLength) {
      skip -= b.byteLength;
      continue;
    }
    const end = Math.min(b.byteLength, skip + left);
    b.fill(0, skip, end);
    left -= end - skip;
    skip = 0;
  }
}

/**
 * The part [at, at+length) of a list of spans (views, iovecs), cutting the
 * spans at either end with `cut`. Allocates, so keep it for slow paths
 * (short reads, splitting large IOs).
 */
function sliceSpans<T>(list: readonly T[], size: (t: T) => number, cut: (t: T, from: number, n: number) => T, at: number, length: number): T[] {
  const out: T[] = [];
  let skip = at;
  let left = length;
  for (let i = 0; i < list.length && left > 0; i++) {
    const t = list[i];
    const len = size(t);
    if (skip >= len) {
      skip -= len;
      continue;
    }
    const n = Math.min(len - skip, left);
    out.push(skip === 0 && n === len ? t : cut(t, skip, n));
    left -= n;
    skip = 0;
  }
  return out;
}

/** Sub-list covering [at, at+length) of a scatter/gather list. */
export function sliceBuffers(buffers: readonly Uint8Array[], at: number, length = Infinity): Uint8Array[] {
  return sliceSpans(buffers, (b) => b.byteLength, (b, from, n) => b.subarray(from, from + n), at, length);
}

/** The iovecs covering [at, at+length) of a command's data. */
export function sliceIovecs(iovs: readonly IoVec[], at: number, length = Infinity): IoVec[] {
  return sliceSpans(iovs, (v) => v.length, (v, from, n) => ({ offset: v.offset + from, length: n }), at, length);
}

/** True when every byte of the list is zero (e.g. to skip storing all-zero blocks). */
export function isZero(buffers: readonly Uint8Array[]): boolean {
  for (let i = 0; i < buffers.length; i++) if (!isZeroRange(buffers[i], 0, buffers[i].byteLength)) return false;
  return true;
}

/** True when b[start, end) is all zeros. */
export function isZeroRange(b: Uint8Array, start: number, end: number): boolean {
  let j = start;
  // Four bytes per step where alignment allows: ring buffers and chunk
  // stores are page aligned, so this is the usual case. Int32 reads stay
  // small integers in optimized code, unlike BigUint64 reads.
  const abs = b.byteOffset + j;
  if ((abs & 3) === 0 && end - j >= 64) {
    const words = (end - j) >>> 2;
    const w = new Int32Array(b.buffer, abs, words);
    for (let k = 0; k < words; k++) if (w[k] !== 0) return false;
    j += words << 2;
  }
  for (; j < end; j++) if (b[j] !== 0) return false;
  return true;
}

/**
 * Offset of the first byte where the list differs from `expected` (compared
 * over min of both lengths), or -1 when they match. Feeds CompareResult.
 */
export function compareBuffers(buffers: readonly Uint8Array[], expected: Uint8Array): number {
  let pos = 0;
  for (let i = 0; i < buffers.length && pos < expected.byteLength; i++) {
    const b = buffers[i];
    const n = Math.min(b.byteLength, expected.byteLength - pos);
    for (let j = 0; j < n; j++) if (b[j] !== expected[pos + j]) return pos + j;
    pos += n;
  }
  return -1;
}

/** Fill the list with repeats of `pattern` (WRITE SAME emulation into a staging buffer). */
export function fillPattern(buffers: readonly Uint8Array[], pattern: Uint8Array): void {
  if (pattern.byteLength === 0) return;
  let p = 0;
  for (let i = 0; i < buffers.length; i++) {
    const b = buffers[i];
    let j = 0;
    while (j < b.byteLength) {
      const n = Math.min(b.byteLength - j, pattern.byteLength - p);
      b.set(p === 0 && n === pattern.byteLength ? pattern : pattern.subarray(p, p + n), j);
      j += n;
      p += n;
      if (p === pattern.byteLength) p = 0;
    }
  }
}

/** One contiguous view of the list: the buffer itself when there is one, else a copy. */
export function flattenBuffers(buffers: readonly Uint8Array[]): Uint8Array {
  if (buffers.length === 1) return buffers[0];
  const out = new Uint8Array(buffersLength(buffers));
  copyFromBuffers(buffers, out);
  return out;
}

// ---------------------------------------------------------------- IO builders

/** Build a BlockIo; length is checked against the buffers so tests catch mistakes early. */
export function makeBlockIo(opts: {
  lba: number;
  blocks: number;
  blockSize: number;
  buffers: readonly Uint8Array[];
  iovecs?: readonly IoVec[];
  fua?: boolean;
}): BlockIo {
  const length = opts.blocks * opts.blockSize;
  const have = buffersLength(opts.buffers);
  if (have !== length) {
    throw new RangeError(`BlockIo of ${opts.blocks} blocks needs ${length} bytes of buffers, got ${have}`);
  }
  const io: BlockIo = {
    lba: opts.lba,
    blocks: opts.blocks,
    offset: opts.lba * opts.blockSize,
    length,
    buffers: opts.buffers,
    // Always present (possibly undefined) so every BlockIo shares one shape.
    iovecs: opts.iovecs,
    fua: opts.fua ?? false,
  };
  return io;
}

/**
 * The contiguous view of a WRITE SAME's single-block data-out: the engine
 * passes this as `pattern`. Handlers that only implement write() can use
 * writeSameViaWrite instead of implementing writeSame.
 */
export function patternOf(buffers: readonly Uint8Array[], blockSize: number): Uint8Array {
  if (buffers.length > 0 && buffers[0].byteLength >= blockSize) return buffers[0].subarray(0, blockSize);
  const out = new Uint8Array(blockSize);
  copyFromBuffers(buffers, out);
  return out;
}

/**
 * WRITE SAME on top of write(): fills a staging buffer of at most
 * `stagingBytes` with the pattern once and writes it repeatedly, so a
 * large range costs a handful of writes rather than one per block.
 */
export async function writeSameViaWrite(
  handler: Pick<DeviceHandler, 'write'>,
  io: BlockIo,
  pattern: Uint8Array,
  stagingBytes = 1 << 20,
): Promise<void> {
  if (!handler.write) throw errnoError('EOPNOTSUPP', 'handler has no write()');
  const blockSize = pattern.byteLength;
  const perWrite = Math.max(1, Math.min(io.blocks, Math.floor(stagingBytes / blockSize)));
  const staging = new Uint8Array(perWrite * blockSize);
  fillPattern([staging], pattern);
  for (let lba = io.lba, left = io.blocks; left > 0;) {
    const n = Math.min(left, perWrite);
    const buf = n === perWrite ? staging : staging.subarray(0, n * blockSize);
    await handler.write(makeBlockIo({ lba, blocks: n, blockSize, buffers: [buf], fua: io.fua }));
    lba += n;
    left -= n;
  }
}

/**
 * COMPARE AND WRITE on top of read() and write(). Not atomic by itself: the
 * caller must keep other writes to the range out while it runs (tcmu-runner
 * holds a per-device lock for the same reason).
 */
export async function compareAndWriteViaReadWrite(
  handler: Pick<DeviceHandler, 'read' | 'write'>,
  io: CompareAndWriteIo,
  blockSize: number,
): Promise<CompareResult> {
  if (!handler.read || !handler.write) throw errnoError('EOPNOTSUPP', 'handler needs read() and write()');
  const current = new Uint8Array(io.length);
  await handler.read(makeBlockIo({ lba: io.lba, blocks: io.blocks, blockSize, buffers: [current] }));
  const at = compareBuffers(io.compare, current);
  if (at >= 0) return { ok: false, offset: at };
  await handler.write(io);
  return { ok: true };
}

// ---------------------------------------------------------------- test / embedding helpers

export const silentLog: HandlerLog = Object.freeze({
  debug() {},
  info() {},
  warn() {},
  error() {},
});

/** A log that prefixes every line with the device name; debug only when asked. */
export function consoleLog(prefix: string, debug = false): HandlerLog {
  return {
    debug: debug ? (m) => console.debug(`${prefix}: ${m}`) : () => {},
    info: (m) => console.info(`${prefix}: ${m}`),
    warn: (m) => console.warn(`${prefix}: ${m}`),
    error: (m) => console.error(`${prefix}: ${m}`),
  };
}

/**
 * A HandlerDevice for tests, benchmarks and embedding a handler without a
 * kernel. Defaults: 512-byte blocks, 1024-block transfers, write cache on.
 */
export function makeHandlerDevice(opts: {
  cfgstring: string;
  name?: string;
  blockSize?: number;
  numLbas?: number;
  maxXferBlocks?: number;
  writeCache?: boolean;
  log?: HandlerLog;
  ring?: RingMapInfo;
  cmdTimeOut?: number;
}): HandlerDevice {
  return {
    ...(opts.cmdTimeOut !== undefined ? { cmdTimeOut: opts.cmdTimeOut } : {}),
    name: opts.name ?? 'test',
    cfgstring: opts.cfgstring,
    blockSize: opts.blockSize ?? 512,
    numLbas: opts.numLbas ?? 0,
    maxXferBlocks: opts.maxXferBlocks ?? 1024,
    writeCache: opts.writeCache ?? true,
    log: opts.log ?? silentLog,
    ring: opts.ring,
  };
}
