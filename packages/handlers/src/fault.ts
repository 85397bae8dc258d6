/**
 * The `fault` handler: any other handler with faults injected into its IO,
 * for multipath, timeout and error-path testing (issue 17, item 1).
 *
 * cfgstring (the part after "fault/"):
 *
 *   <inner cfgstring>[;<fault option>]...          e.g. ram/1G;error=EIO@0.01;latency=2-20
 *   <inner cfgstring>;;<fault option>[;...]        e.g. file//img;async;;hang=0.001
 *
 * Split rule. The inner cfgstring (e.g. "ram/64M;chunk=4k") may carry ';'
 * options of its own, so the fault options are found from the end:
 *  - if the string contains ";;" (an empty field, which no handler gives a
 *    meaning: parseOptions skips it), everything after the last ";;" is
 *    fault options and everything before it the inner cfgstring, exactly;
 *  - otherwise trailing ";key=value" fields whose key is a fault key
 *    (latency, error, rerror, werror, hang, partial, lba, seed) are fault
 *    options, and the scan stops at the first field that is not: that field
 *    and everything before it are the inner cfgstring. An inner option that
 *    happens to use a fault key is passed through with ";;" after it.
 * "fault/ram/64M" with no option is a plain pass-through whose faults can be
 * switched on later.
 *
 * Options (rates are probabilities in [0, 1] drawn per command):
 *   latency=<ms>[-<ms>]   every IO callout waits this long (uniform in the
 *                         range) before its inner IO starts; 0 = off
 *   error=<ERRNO>@<rate>  fail the command with this errno (no inner IO);
 *                         repeatable; checked in order, first hit wins.
 *                         EIO: MEDIUM ERROR (read or write sense by the
 *                         command's direction), ENOSPC: SPACE ALLOCATION
 *                         FAILED, EAGAIN/EBUSY/ETIMEDOUT: BUSY, ... (the
 *                         engine's one status table, statusForError)
 *   rerror=, werror=      the same for reads only / for writes only (writes:
 *                         write, write same, unmap, compare and write, flush)
 *   hang=<rate>[@<ms>]    the command is held and never completes (for the
 *                         kernel's cmd_time_out and TMR abort paths). It is
 *                         released after <ms> if given, or by the next
 *                         run-time change of the fault options; released
 *                         commands then run their inner IO normally (a late
 *                         completion the kernel drops if it timed out)
 *   partial=<rate>        a torn IO, never acknowledged GOOD. A WRITE of n
 *                         blocks stores only its first k blocks (k drawn in
 *                         [0, n-1]) through the inner handler and then fails
 *                         with EIO (MEDIUM ERROR, WRITE ERROR): afterwards
 *                         each block holds either its old data (blocks k..)
 *                         or the new (blocks ..k-1), whole, never a mix
 *                         inside a block. A READ fills only its first k
 *                         blocks, zeroes the rest and fails with EIO. Only
 *                         READ and WRITE tear; other commands ignore it.
 *   lba=<start>-<end>     faults (not latency) only for IOs touching blocks
 *                         [start, end]; commands without an LBA range (flush)
 *                         get none then
 *   seed=<n>              the random source; the same seed and the same
 *                         command order give the same faults. Default: random
 *
 * Order per command: hang, then errors, then partial, each an independent
 * draw; latency is added to whatever happens (a failing IO waits too).
 *
 * Run-time change: reconfig({ kind: 'config', cfgstring }) with the same
 * inner cfgstring swaps the fault options in place (the inner handler stays
 * open, its data intact; a new seed restarts the random source, none keeps
 * it); a different inner cfgstring is refused with EOPNOTSUPP, which makes
 * the daemon reopen the device. The daemon sends a dev_config change (e.g.
 * `tcmu-ts reconfig <name> fault/...`) here first.
 *
 * Atomic writes are not offered (a torn write is one of the faults), so the
 * inner handler's atomicWriteBlocks is dropped; everything else it offers
 * (limits, identity, completions, the lock API, lbaStatus, handleCmd) is
 * passed through untouched. With no fault option set, an IO costs one
 * method call and a few comparisons over the inner handler's own: no
 * promise, no allocation.
 */
import {
  configError,
  configOk,
  defineHandler,
  errnoError,
  makeBlockIo,
  sliceBuffers,
  sliceIovecs,
  splitCfgstring,
  zeroBuffers,
  loadHandler,
  mulberry32,
  type BlockIo,
  type Callout,
  type CompareAndWriteIo,
  type CompareResult,
  type ConfigCheck,
  type DeviceHandler,
  type DeviceLimits,
  type Handler,
  type HandlerDevice,
  type LbaRange,
  type ReconfigChange,
} from '@tcmu-ts/core';

// ---------------------------------------------------------------- options

export interface FaultError {
  readonly code: string;
  readonly rate: number;
  /** 'rw': both directions; 'r': reads only; 'w': writes only. */
  readonly dir: 'rw' | 'r' | 'w';
}

export interface FaultOptions {
  readonly latencyMin: number;
  readonly latencyMax: number;
  readonly errors: readonly FaultError[];
  readonly hang: number;
  /** ms a hung command is held; 0: until released by a run-time change. */
  readonly hangMs: number;
  readonly partial: number;
  readonly lbaStart: number;
  readonly lbaEnd: number;
  readonly seed?: number;
}

export const NO_FAULTS: FaultOptions = Object.freeze({
  latencyMin: 0, latencyMax: 0, errors: Object.freeze([]) as readonly FaultError[], hang: 0, hangMs: 0, partial: 0, lbaStart: 0, lbaEnd: Infinity,
});

const FAULT_KEYS: ReadonlySet<string> = new Set(['latency', 'error', 'rerror', 'werror', 'hang', 'partial', 'lba', 'seed']);

/** The inner cfgstring and the fault option fields, by the split rule in the header. */
export function splitFaultConfig(cfg: string): { inner: string; fields: string[] } {
  const dd = cfg.lastIndexOf(';;');
  if (dd >= 0) {
    return { inner: cfg.slice(0, dd), fields: cfg.slice(dd + 2).split(';').filter((f) => f.trim() !== '') };
  }
  const parts = cfg.split(';');
  let i = parts.length;
  // The first field is always the inner handler's (its subtype/...).
  while (i > 1) {
    const p = parts[i - 1].trim();
    const eq = p.indexOf('=');
    const key = (eq < 0 ? p : p.slice(0, eq)).trim().toLowerCase();
    if (p !== '' && !FAULT_KEYS.has(key)) break;
    i--;
  }
  return { inner: parts.slice(0, i).join(';'), fields: parts.slice(i).filter((f) => f.trim() !== '') };
}

function parseRate(text: string, what: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < 0 || n > 1) throw new Error(`${what}: rate "${text}" must be a number in [0, 1]`);
  return n;
}

function parseMs(text: string, what: string): number {
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n) || n < 0 || n > 3_600_000) throw new Error(`${what}: "${text}" must be milliseconds in [0, 3600000]`);
  return n;
}

/** Parse the fault option fields; throws an Error with the reason. */
export function parseFaultOptions(fields: readonly string[]): FaultOptions {
  let latencyMin = 0, latencyMax = 0, hang = 0, hangMs = 0, partial = 0, lbaStart = 0, lbaEnd = Infinity;
  let seed: number | undefined;
  const errors: FaultError[] = [];
  for (const f of fields) {
    const eq = f.indexOf('=');
    if (eq < 0) throw new Error(`fault option "${f.trim()}" needs a value (key=value)`);
    const key = f.slice(0, eq).trim().toLowerCase();
    const value = f.slice(eq + 1).trim();
    switch (key) {
      case 'latency': {
        const m = /^([^-]+)(?:-(.+))?$/.exec(value);
        if (!m) throw new Error(`latency="${value}" must be <ms> or <ms>-<ms>`);
        latencyMin = parseMs(m[1], 'latency');
        latencyMax = m[2] === undefined ? latencyMin : parseMs(m[2], 'latency');
        if (latencyMax < latencyMin) throw new Error(`latency="${value}": the range is backwards`);
        break;
      }
      case 'error':
      case 'rerror':
      case 'werror': {
        const m = /^(E[A-Z0-9]+)@(.+)$/i.exec(value);
        if (!m) throw new Error(`${key}="${value}" must be <ERRNO>@<rate>, e.g. EIO@0.01`);
        errors.push({ code: m[1].toUpperCase(), rate: parseRate(m[2], key), dir: key === 'error' ? 'rw' : key === 'rerror' ? 'r' : 'w' });
        break;
      }
      case 'hang': {
        const m = /^([^@]+)(?:@(.+))?$/.exec(value);
        if (!m) throw new Error(`hang="${value}" must be <rate>[@<ms>]`);
        hang = parseRate(m[1], 'hang');
        hangMs = m[2] === undefined ? 0 : parseMs(m[2], 'hang');
        break;
      }
      case 'partial':
        partial = parseRate(value, 'partial');
        break;
      case 'lba': {
        const m = /^(\d+)-(\d+)$/.exec(value);
        if (!m || Number(m[2]) < Number(m[1]) || !Number.isSafeInteger(Number(m[2]))) throw new Error(`lba="${value}" must be <start>-<end> with start <= end`);
        lbaStart = Number(m[1]);
        lbaEnd = Number(m[2]);
        break;
      }
      case 'seed': {
        const n = Number(value);
        if (!Number.isSafeInteger(n) || n < 0) throw new Error(`seed="${value}" must be a non-negative integer`);
        seed = n;
        break;
      }
      default:
        throw new Error(`unknown fault option "${key}" (known: ${[...FAULT_KEYS].join(', ')})`);
    }
  }
  return { latencyMin, latencyMax, errors, hang, hangMs, partial, lbaStart, lbaEnd, ...(seed !== undefined ? { seed } : {}) };
}

/** Parse a whole "fault/" config: the inner cfgstring and the fault options. */
export function parseFaultConfig(cfg: string): { inner: string; options: FaultOptions } | string {
  const { inner, fields } = splitFaultConfig(cfg);
  if (inner.trim() === '') return 'needs an inner cfgstring: fault/<subtype>/<config>[;<fault option>...]';
  const { subtype } = splitCfgstring(inner);
  if (subtype === 'fault') return 'cannot wrap itself';
  if (!inner.includes('/')) return `inner cfgstring "${inner}" must be <subtype>/<config>`;
  try {
    return { inner, options: parseFaultOptions(fields) };
  } catch (e) {
    return (e as Error).message;
  }
}

/** The handlers fault can wrap without loading anything: builtins.ts hands them over (no import cycle). */
let innerHandlers: readonly Handler[] = [];

export function setFaultInnerHandlers(list: readonly Handler[]): void {
  innerHandlers = list;
}

function builtin(subtype: string): Handler | undefined {
  return innerHandlers.find((h) => h.subtype === subtype);
}

// ---------------------------------------------------------------- device

/** What the fault handler did so far, for tests and logs. */
export interface FaultStats {
  commands: number;
  delayed: number;
  errors: number;
  hangs: number;
  partials: number;
  /** Hung commands released (by time or by a run-time change). */
  released: number;
}

const enum Kind { READ, WRITE, OTHER_WRITE, FLUSH }

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FaultDevice implements DeviceHandler {
  private opts: FaultOptions = NO_FAULTS;
  /** Any fault option set: the fast path checks only this. */
  private active = false;
  private rand: () => number = mulberry32((Math.random() * 2 ** 32) >>> 0);
  private readonly held = new Set<() => void>();
  readonly stats: FaultStats = { commands: 0, delayed: 0, errors: 0, hangs: 0, partials: 0, released: 0 };
  readonly limits?: DeviceLimits;
  readonly read?: (io: BlockIo) => Callout<void>;
  readonly write?: (io: BlockIo) => Callout<void>;
  readonly flush?: () => Callout<void>;
  readonly unmap?: (ranges: readonly LbaRange[]) => Callout<void>;
  readonly writeSame?: (io: BlockIo, pattern: Uint8Array) => Callout<void>;
  readonly compareAndWrite?: (io: CompareAndWriteIo) => Callout<CompareResult>;
  // Passed straight through (bound, or absent as on the inner handler).
  readonly handleCmd?: DeviceHandler['handleCmd'];
  readonly lock?: DeviceHandler['lock'];
  readonly unlock?: DeviceHandler['unlock'];
  readonly getLockTag?: DeviceHandler['getLockTag'];
  readonly getLockState?: DeviceHandler['getLockState'];
  readonly lbaStatus?: DeviceHandler['lbaStatus'];
  readonly completions?: DeviceHandler['completions'];
  readonly identity?: DeviceHandler['identity'];

  constructor(
    readonly inner: DeviceHandler,
    /** The inner cfgstring it was opened with: a run-time change must keep it. */
    readonly innerConfig: string,
    private readonly dev: HandlerDevice,
    options: FaultOptions,
  ) {
    this.setOptions(options);
    const h = inner;
    if (h.limits) {
      const { atomicWriteBlocks: _a, atomicAlignmentBlocks: _b, ...rest } = h.limits;
      this.limits = rest;
    }
    if (h.completions) this.completions = h.completions;
    if (h.identity) this.identity = h.identity;
    if (h.handleCmd) this.handleCmd = h.handleCmd.bind(h);
    if (h.lock) this.lock = h.lock.bind(h);
    if (h.unlock) this.unlock = h.unlock.bind(h);
    if (h.getLockTag) this.getLockTag = h.getLockTag.bind(h);
    if (h.getLockState) this.getLockState = h.getLockState.bind(h);
    if (h.lbaStatus) this.lbaStatus = h.lbaStatus.bind(h);
    // Only what the inner handler has: the engine emulates the rest on top of these, as it would without us.
    if (h.read) {
      const read = h.read.bind(h);
      this.read = (io) => (this.active ? this.faulted(Kind.READ, io.lba, io.blocks, () => read(io), io) : read(io));
    }
    if (h.write) {
      const write = h.write.bind(h);
      this.write = (io) => (this.active ? this.faulted(Kind.WRITE, io.lba, io.blocks, () => write(io), io) : write(io));
    }
    if (h.flush) {
      const flush = h.flush.bind(h);
      this.flush = () => (this.active ? this.faulted(Kind.FLUSH, -1, 0, flush) : flush());
    }
    if (h.unmap) {
      const unmap = h.unmap.bind(h);
      this.unmap = (ranges) => {
        if (!this.active) return unmap(ranges);
        let lo = Infinity, hi = -1;
        for (const r of ranges) {
          lo = Math.min(lo, r.lba);
          hi = Math.max(hi, r.lba + r.blocks);
        }
        return this.faulted(Kind.OTHER_WRITE, hi < 0 ? -1 : lo, hi < 0 ? 0 : hi - lo, () => unmap(ranges));
      };
    }
    if (h.writeSame) {
      const ws = h.writeSame.bind(h);
      this.writeSame = (io, pattern) => (this.active ? this.faulted(Kind.OTHER_WRITE, io.lba, io.blocks, () => ws(io, pattern)) : ws(io, pattern));
    }
    if (h.compareAndWrite) {
      const caw = h.compareAndWrite.bind(h);
      this.compareAndWrite = (io) => (this.active ? this.faulted(Kind.OTHER_WRITE, io.lba, io.blocks, () => caw(io)) : caw(io));
    }
  }

  get options(): FaultOptions {
    return this.opts;
  }

  /** Commands held by hang= right now. */
  get heldCommands(): number {
    return this.held.size;
  }

  /** Swap the fault options in place; held commands are released. */
  setOptions(o: FaultOptions): void {
    this.opts = o;
    this.active = o.latencyMax > 0 || o.errors.length > 0 || o.hang > 0 || o.partial > 0;
    if (o.seed !== undefined) this.rand = mulberry32(o.seed);
    this.releaseHeld();
  }

  /** Let every held command go on to its inner IO. */
  releaseHeld(): void {
    const held = [...this.held];
    this.held.clear();
    for (const go of held) go();
  }

  private faulted<T>(kind: Kind, lba: number, blocks: number, run: () => Callout<T>, io?: BlockIo): Callout<T> {
    const o = this.opts;
    this.stats.commands++;
    const inRange = o.lbaStart === 0 && o.lbaEnd === Infinity ? true : lba >= 0 && lba <= o.lbaEnd && lba + Math.max(1, blocks) - 1 >= o.lbaStart;
    let delay = 0;
    if (o.latencyMax > 0) delay = o.latencyMin + (o.latencyMax - o.latencyMin) * this.rand();
    let action: (() => Callout<T>) | undefined;
    let hang = false;
    if (inRange) {
      if (o.hang > 0 && this.rand() < o.hang) hang = true;
      else {
        const write = kind !== Kind.READ;
        for (const e of o.errors) {
          if (e.dir === 'r' ? write : e.dir === 'w' ? !write : false) continue;
          if (this.rand() < e.rate) {
            this.stats.errors++;
            const err = errnoError(e.code, `fault injected (${this.dev.name}, ${write ? 'write' : 'read'} at LBA ${lba})`);
            action = () => {
              throw err;
            };
            break;
          }
        }
        if (!action && o.partial > 0 && io && (kind === Kind.READ || kind === Kind.WRITE) && this.rand() < o.partial) {
          this.stats.partials++;
          const keep = Math.floor(this.rand() * io.blocks);
          action = (kind === Kind.READ ? () => this.tornRead(io, keep) : () => this.tornWrite(io, keep)) as () => Callout<T>;
        }
      }
    }
    const go = action ?? run;
    if (hang) {
      this.stats.hangs++;
      return new Promise<T>((resolve, reject) => {
        const release = () => {
          this.stats.released++;
          try {
            Promise.resolve(run()).then(resolve, reject);
          } catch (e) {
            reject(e);
          }
        };
        this.held.add(release);
        if (o.hangMs > 0) {
          setTimeout(() => {
            if (this.held.delete(release)) release();
          }, o.hangMs);
        }
      });
    }
    if (delay > 0) {
      this.stats.delayed++;
      return sleep(delay).then<T>(go);
    }
    return go();
  }

  /** Store the first `keep` blocks, then fail: never GOOD, each block old or new. */
  private async tornWrite(io: BlockIo, keep: number): Promise<void> {
    if (keep > 0) {
      const bs = this.dev.blockSize;
      const len = keep * bs;
      await this.inner.write!(makeBlockIo({
        lba: io.lba, blocks: keep, blockSize: bs, buffers: sliceBuffers(io.buffers, 0, len),
        iovecs: io.iovecs ? sliceIovecs(io.iovecs, 0, len) : undefined, fua: io.fua,
      }));
    }
    throw errnoError('EIO', `fault injected: torn write, ${keep} of ${io.blocks} blocks at LBA ${io.lba} stored`);
  }

  /** Read everything, keep the first `keep` blocks, zero the rest, fail. */
  private async tornRead(io: BlockIo, keep: number): Promise<void> {
    await this.inner.read!(io);
    zeroBuffers(io.buffers, keep * this.dev.blockSize);
    throw errnoError('EIO', `fault injected: short read, ${keep} of ${io.blocks} blocks at LBA ${io.lba}`);
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    if (change.kind !== 'config') {
      await this.inner.reconfig?.(change);
      return;
    }
    const parsed = parseFaultConfig(change.cfgstring);
    if (typeof parsed === 'string') throw errnoError('EINVAL', `fault: ${parsed}`);
    if (parsed.inner !== this.innerConfig) {
      throw errnoError('EOPNOTSUPP', `fault: the inner cfgstring changed ("${this.innerConfig}" -> "${parsed.inner}"): the device must be reopened`);
    }
    this.setOptions(parsed.options);
    this.dev.log.info(`fault: options now ${describeFaults(parsed.options)}`);
  }

  async close(): Promise<void> {
    this.releaseHeld();
    await this.inner.close();
  }
}

/** One line for logs. */
export function describeFaults(o: FaultOptions): string {
  const parts: string[] = [];
  if (o.latencyMax > 0) parts.push(`latency ${o.latencyMin}${o.latencyMax !== o.latencyMin ? `-${o.latencyMax}` : ''} ms`);
  for (const e of o.errors) parts.push(`${e.dir === 'rw' ? '' : e.dir}error ${e.code}@${e.rate}`);
  if (o.hang > 0) parts.push(`hang ${o.hang}${o.hangMs ? `@${o.hangMs} ms` : ''}`);
  if (o.partial > 0) parts.push(`partial ${o.partial}`);
  if (o.lbaEnd !== Infinity || o.lbaStart !== 0) parts.push(`lba ${o.lbaStart}-${o.lbaEnd}`);
  if (o.seed !== undefined) parts.push(`seed ${o.seed}`);
  return parts.length ? parts.join(', ') : 'none';
}

export const faultHandler = defineHandler({
  name: 'Fault injection over another handler',
  subtype: 'fault',
  configDescription:
    'fault/<inner cfgstring>[;latency=<ms>[-<ms>]][;error=<ERRNO>@<rate>]...[;rerror=..][;werror=..]' +
    '[;hang=<rate>[@<ms>]][;partial=<rate>][;lba=<start>-<end>][;seed=<n>]. ' +
    'Wraps any built-in handler (e.g. fault/ram/1G;error=EIO@0.01). Fault options are the trailing fields with a fault key, ' +
    'or everything after ";;". Changeable at run time with a new dev_config keeping the inner cfgstring.',
  checkConfig(cfgstring: string): ConfigCheck {
    const parsed = parseFaultConfig(cfgstring);
    if (typeof parsed === 'string') return configError(parsed);
    const { subtype, config } = splitCfgstring(parsed.inner);
    const h = builtin(subtype);
    if (!h) return configOk; // a handler module: checked when it is loaded at open()
    const inner = h.checkConfig(config);
    return inner.ok ? configOk : configError(`${subtype}: ${inner.reason}`);
  },
  async probeConfig(cfgstring: string): Promise<ConfigCheck> {
    const parsed = parseFaultConfig(cfgstring);
    if (typeof parsed === 'string') return configError(parsed);
    const { subtype, config } = splitCfgstring(parsed.inner);
    const h = builtin(subtype);
    return h?.probeConfig ? h.probeConfig(config) : configOk;
  },
  async open(dev: HandlerDevice, reopen: boolean): Promise<DeviceHandler> {
    const parsed = parseFaultConfig(dev.cfgstring);
    if (typeof parsed === 'string') throw errnoError('EINVAL', `fault: ${parsed}`);
    const { subtype, config } = splitCfgstring(parsed.inner);
    const handler = builtin(subtype) ?? (await loadHandler(subtype));
    const check = handler.checkConfig(config);
    if (!check.ok) throw errnoError('EINVAL', `fault: ${subtype}: ${check.reason}`);
    // The inner handler sees the same device with its own cfgstring; numLbas it sets flows back.
    const innerDev: HandlerDevice = { ...dev, cfgstring: config };
    const inner = await handler.open(innerDev, reopen);
    if (innerDev.numLbas !== dev.numLbas) dev.numLbas = innerDev.numLbas;
    const d = new FaultDevice(inner, parsed.inner, dev, parsed.options);
    if (d.options !== NO_FAULTS) dev.log.info(`fault: ${parsed.inner} with ${describeFaults(parsed.options)}`);
    return d;
  },
});
