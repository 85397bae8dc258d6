/**
 * rbd: a LUN backed by a Ceph RBD image, through librbd's asynchronous IO.
 *
 * cfgstring (as tcmu-runner's): rbd/<pool>/<image>[@snap][;osd_op_timeout=N][;conf=<path>][;id=<user>]
 *
 * Data never passes through JS: readv/writev get iovecs that point into the
 * ring's data area, which this thread maps a second time to know its
 * address. With the rbd cache off (as tcmu-runner has it) an acknowledged
 * write is on the OSDs, so FUA needs nothing more and SYNCHRONIZE CACHE is
 * a formality librbd still sees.
 *
 * HA (several gateways on one image) is tcmu-runner's: the engine's ALUA
 * code drives lock()/unlock(); taking the lock breaks a dead or older
 * holder's (librbd blocklists it, fencing its IO), the lock tag goes into
 * image metadata next to the librbd client that holds it, and IO failing
 * with -ESHUTDOWN (we were blocklisted) or -EROFS (someone else holds the
 * lock) reports the lock lost and answers BUSY, so the initiator retries
 * on whichever path is active.
 *
 * Callouts (all on the device's worker thread): read, write, flush, unmap
 * (write_zeroes, which unlike discard also zeroes partial objects),
 * writeSame, compareAndWrite (librbd's own for one 512-byte sector, else
 * read+compare+write while the engine holds the range), lbaStatus (GET LBA
 * STATUS, from rbd_diff_iterate2), reconfig (size
 * must match the image), lock API (when the image has exclusive-lock).
 */
import { constants, hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import {
  NO_LOCK_TAG, ScsiError, compareAndWriteViaReadWrite, configError, configOk, copyFromBuffers, copyToBuffers, defineHandler,
  compareBuffers, errnoError, isZero, makeBlockIo, mergeExtents, parseOptions,
  type BlockIo, type CompareAndWriteIo, type CompareResult, type ConfigCheck, type DeviceHandler, type DeviceLimits,
  type HandlerCompletions, type HandlerDevice, type HandlerLockState, type IoVec, type LbaProvisioning, type LbaRange,
  type LbaStatusExtent, type ReconfigChange,
} from '@tcmu-ts/core';
import { errnoNumber, mapShared, type SharedMap } from '@tcmu-ts/ring';
import { probeOnWorker } from './probe-worker.js';
import { CompletionPipe, NativeBuffer, RBD_FEATURE_EXCLUSIVE_LOCK, RadosCluster, RbdError, RbdImage, MAX_IOVECS } from './librbd.js';

const { ETIMEDOUT, EROFS, EILSEQ, EINVAL, ENOENT } = constants.errno;
/** What a blocklisted client gets. */
const ESHUTDOWN = errnoNumber('ESHUTDOWN')!;
const LOCK_TAG_KEY = 'tcmu_rbd_locker_tag';
/** How long probeConfig and a reconnect may wait for the monitors (librados' own default is 300 s). */
const CONNECT_TIMEOUT_S = '15';
const RECONNECT_EVERY_MS = 1000;
/**
 * Objects one GET LBA STATUS lists at most (1 GiB of 4 MiB objects): librbd
 * sends one OSD op per object and the device thread waits for all of them;
 * the initiator asks again from where the answer ends.
 */
export const LBA_STATUS_MAX_OBJECTS = 256;

export interface RbdConfig {
  pool: string;
  image: string;
  snap?: string;
  osdOpTimeout?: string;
  conf?: string;
  id?: string;
}

const OPTIONS = new Set(['osd_op_timeout', 'conf', 'id']);

/** Parse the handler's part of the cfgstring; a string is the reason it is bad. */
export function parseRbdConfig(config: string): RbdConfig | string {
  const { main, options } = parseOptions(config);
  const m = /^([^/@;]+)\/([^/@;]+)(?:@([^/@;]+))?$/.exec(main);
  if (!m) return `"${main}" is not <pool>/<image>[@snap]`;
  for (const k of options.keys()) if (!OPTIONS.has(k)) return `unknown option "${k}" (known: ${[...OPTIONS].join(', ')})`;
  const out: RbdConfig = { pool: m[1], image: m[2], ...(m[3] ? { snap: m[3] } : {}) };
  const tmo = options.get('osd_op_timeout');
  if (tmo !== undefined) {
    if (!/^\d+(\.\d+)?$/.test(tmo) || Number(tmo) <= 0) return `osd_op_timeout=${tmo} must be a positive number of seconds`;
    out.osdOpTimeout = tmo;
  }
  for (const k of ['conf', 'id'] as const) {
    const v = options.get(k);
    if (v === undefined) continue;
    if (v === '') return `${k}= needs a value`;
    out[k] = v;
  }
  return out;
}

function connect(c: RbdConfig, settings: Record<string, string> = {}): RadosCluster {
  return RadosCluster.connect({ id: c.id, conf: c.conf, osdOpTimeout: c.osdOpTimeout, settings });
}

export interface ProbeRequest {
  config: RbdConfig;
}

/** Does the pool, image (and snapshot) exist? Blocks: run it off the supervisor thread (rbd-probe.ts). */
export function probeImage({ config: c }: ProbeRequest): ConfigCheck {
  const where = `${c.pool}/${c.image}${c.snap ? `@${c.snap}` : ''}`;
  let cluster: RadosCluster | undefined;
  try {
    cluster = connect(c, { client_mount_timeout: CONNECT_TIMEOUT_S, rados_mon_op_timeout: CONNECT_TIMEOUT_S });
    let io: number;
    try {
      io = cluster.openPool(c.pool);
    } catch (e) {
      if (e instanceof RbdError && e.rc === -ENOENT) return configError(`pool "${c.pool}" does not exist`);
      throw e;
    }
    try {
      RbdImage.open(io, c.image, c.snap, true).close();
    } catch (e) {
      if (e instanceof RbdError && e.rc === -ENOENT) {
        return configError(c.snap ? `image "${c.pool}/${c.image}" or its snapshot "${c.snap}" does not exist` : `image "${c.pool}/${c.image}" does not exist`);
      }
      throw e;
    } finally {
      cluster.closePool(io);
    }
    return configOk;
  } catch (e) {
    return configError(`cannot check ${where}: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    cluster?.shutdown();
  }
}

/** librbd's lock answers as the handler lock API's errno codes: the engine answers BUSY for the retryable ones. */
function lockError(e: unknown, what: string): Error {
  if (!(e instanceof RbdError)) return e instanceof Error ? e : new Error(String(e));
  const code = e.rc === -ESHUTDOWN ? 'ESTALE' : e.rc === -ETIMEDOUT ? 'ETIMEDOUT' : e.rc === -ENOENT ? 'EAGAIN' : e.code === 'ENOMEM' ? 'ENOMEM' : 'EIO';
  return errnoError(code, `${what}: ${e.message}`);
}

/**
 * Addresses of librados clients of this thread that were blocklisted and
 * are gone: removed from the OSD blocklist by the next client that connects,
 * so entries do not pile up for an hour each (tcmu-runner's blocklist_caches).
 */
const staleAddresses: string[] = [];

class RbdDevice implements DeviceHandler {
  private cluster: RadosCluster;
  private io: number;
  private image: RbdImage;
  private address = '';
  private ring: SharedMap | undefined;
  /** The client is blocklisted: nothing works until a new one connects (lock() does). */
  private fenced = false;
  /** An IO timed out: reconnect once nothing is in flight (tcmu_notify_cmd_timed_out). */
  private reconnectWanted = false;
  private lockLostCount = 0;
  /** False between closing a client and a new one connecting (the image handle is gone then). */
  private connected = true;
  private lastAttempt = -Infinity;
  private timedOutCount = 0;
  readonly limits: DeviceLimits;
  /** Under the engine, completions are reaped by the device thread's own poll (DeviceHandler.completions). */
  readonly completions: HandlerCompletions | undefined;
  private readonly pipe: CompletionPipe | undefined;
  lock?: (tag: number) => Promise<void>;
  unlock?: () => Promise<void>;
  getLockTag?: () => Promise<number | null>;
  getLockState?: () => Promise<HandlerLockState>;

  constructor(private readonly dev: HandlerDevice, private readonly config: RbdConfig) {
    this.pipe = dev.ring ? CompletionPipe.create() : undefined;
    this.completions = this.pipe ? { fd: this.pipe.readFd, reap: () => this.image.reap() } : undefined;
    this.cluster = connect(config);
    try {
      this.io = this.cluster.openPool(config.pool);
      this.image = RbdImage.open(this.io, config.image, config.snap, config.snap !== undefined, this.pipe);
    } catch (e) {
      this.cluster.shutdown();
      this.pipe?.close();
      throw e;
    }
    try {
      this.register();
      const size = this.image.size();
      const bs = dev.blockSize;
      if (dev.numLbas === 0) dev.numLbas = Math.floor(size / bs);
      else if (dev.numLbas * bs !== size) {
        throw errnoError('EINVAL', `image ${config.pool}/${config.image} is ${size} bytes but the device is ${dev.numLbas * bs} (${dev.numLbas} blocks of ${bs}): resize one to match`);
      }
      const { objectSize } = this.image.info();
      const granularity = Number(this.cluster.confGet('rbd_discard_granularity_bytes') ?? objectSize) || objectSize;
      // librbd splits and aligns by itself; four objects per UNMAP keeps the OSD queues from flooding (as tcmu-runner).
      this.limits = {
        maxUnmapBlocks: Math.max(1, Math.floor((objectSize * 4) / bs)),
        unmapGranularity: Math.max(1, Math.floor(granularity / bs)),
        unmapGranularityAlignment: 0,
        ...(config.snap ? { writeProtect: true } : {}),
      };
      if (this.image.features() & RBD_FEATURE_EXCLUSIVE_LOCK) {
        this.lock = (tag) => this.takeLock(tag);
        this.unlock = () => this.dropLock();
        this.getLockTag = () => this.lockTag();
        this.getLockState = () => this.lockState();
      } else {
        dev.log.warn(`image ${config.pool}/${config.image} has no exclusive-lock feature: HA (ALUA failover between gateways) is not available`);
      }
      if (dev.ring) this.ring = mapShared(dev.ring.mapFd, dev.ring.mapSize);
    } catch (e) {
      this.closeAll();
      throw e;
    }
  }

  // ------------------------------------------------------------ IO

  read(io: BlockIo): Promise<void> {
    return this.transfer(io, false);
  }

  write(io: BlockIo): Promise<void> {
    return this.transfer(io, true);
  }

  /** readv/writev on the ring's pages; buffers outside the ring (or too many iovecs) go through a bounce buffer. */
  private transfer(io: BlockIo, write: boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.usable(reject)) return;
      const what = write ? 'write' : 'read';
      const ring = this.ring;
      const direct = ring !== undefined && io.iovecs !== undefined && io.iovecs.length <= MAX_IOVECS;
      const bounce = direct ? undefined : new NativeBuffer(io.length);
      if (bounce && write) copyFromBuffers(io.buffers, bounce.bytes);
      const settle = (rc: number): void => {
        if (bounce) {
          if (rc >= 0 && !write) copyToBuffers(io.buffers, bounce.bytes);
          bounce.free();
        }
        if (rc < 0) reject(this.failure(rc, what, io));
        else resolve();
      };
      const iovecs = bounce ? bounce.iovecs : io.iovecs!;
      const base = bounce ? bounce.address : ring!.address;
      if (write) this.image.writev(iovecs, base, io.offset, settle);
      else this.image.readv(iovecs, base, io.offset, settle);
    });
  }

  flush(): Promise<void> {
    return this.call('flush', (settle) => this.image.flush(settle));
  }

  /** Zeroes, not discard: a discard smaller than the granularity is skipped and would read back old data. */
  async unmap(ranges: readonly LbaRange[]): Promise<void> {
    const bs = this.dev.blockSize;
    await Promise.all(ranges.map((r) => this.call('unmap', (settle) => this.image.writeZeroes(r.lba * bs, r.blocks * bs, settle))));
  }

  writeSame(io: BlockIo, pattern: Uint8Array): Promise<void> {
    if (isZero([pattern])) return this.call('write same', (settle) => this.image.writeZeroes(io.offset, io.length, settle));
    const native = NativeBuffer.of(pattern);
    return this.call('write same', (settle) => this.image.writeSame(io.offset, io.length, native.address, pattern.byteLength, settle))
      .finally(() => native.free());
  }

  compareAndWrite(io: CompareAndWriteIo): Promise<CompareResult> {
    // librbd 16 compares at most one 512-byte sector itself; anything larger is emulated
    // while the engine holds the range (a second gateway cannot write without the lock).
    if (io.length !== 512 || io.offset % 512 !== 0) return compareAndWriteViaReadWrite(this, io, this.dev.blockSize);
    const compare = new NativeBuffer(io.length);
    const data = new NativeBuffer(io.length);
    copyFromBuffers(io.compare, compare.bytes);
    copyFromBuffers(io.buffers, data.bytes);
    // librbd 16 counts the mismatch from the start of the object holding the sector,
    // plus the offset inside the compared buffer (measured: sector 8193 gives 4 MiB + n).
    const objectStart = io.offset - (io.offset % this.objectSize());
    return new Promise<CompareResult>((resolve, reject) => {
      if (!this.usable(reject)) return;
      this.image.compareAndWrite(io.offset, io.length, compare.address, data.address, (rc, mismatch) => {
        compare.free();
        data.free();
        const at = mismatch - objectStart;
        if (rc === -EILSEQ) resolve(at >= 0 && at < io.length ? { ok: false, offset: at } : this.mismatchByReading(io));
        else if (rc < 0) reject(this.failure(rc, 'compare and write', io));
        else resolve({ ok: true });
      });
    }).catch((e) => {
      compare.free();
      data.free();
      throw e;
    });
  }

  /** Should librbd ever give a mismatch offset outside the sector: find it by reading the sector back. */
  private async mismatchByReading(io: CompareAndWriteIo): Promise<CompareResult> {
    const current = new Uint8Array(io.length);
    await this.read(makeBlockIo({ lba: io.lba, blocks: io.blocks, blockSize: this.dev.blockSize, buffers: [current] }));
    return { ok: false, offset: Math.max(0, compareBuffers(io.compare, current)) };
  }

  /**
   * GET LBA STATUS from rbd_diff_iterate2 since the image's creation: what
   * librbd reports existing is mapped, the rest deallocated (a missing
   * object reads zeros; a clone's parent data counts as existing). librbd
   * reports per object, from the object's start to the end of its data
   * (RADOS does not list holes inside an object), so a write anywhere maps
   * its object up to there; UNMAP of whole objects removes them (write
   * zeroes), deallocating them again. At most LBA_STATUS_MAX_OBJECTS
   * objects a call, ending on an object boundary.
   */
  lbaStatus(lba: number, blocks: number, maxExtents: number): readonly LbaStatusExtent[] {
    let refused: Error | undefined;
    if (!this.usable((e) => { refused = e; })) throw refused!;
    const bs = this.dev.blockSize;
    const os = this.objectSize();
    const start = lba * bs;
    const capEnd = (Math.floor(start / os) + LBA_STATUS_MAX_OBJECTS) * os;
    const end = Math.min((lba + blocks) * bs, Math.max(start + bs, Math.floor(capEnd / bs) * bs));
    let reported;
    try {
      reported = this.image.diff(start, end - start, false);
    } catch (e) {
      throw e instanceof RbdError ? this.failure(e.rc, 'get lba status') : e;
    }
    // In offset order (a striped image reports per object, not per offset); a partly covered block is mapped.
    const mapped = reported.filter((d) => d.exists && d.length > 0).sort((a, b) => a.offset - b.offset);
    const endLba = end / bs;
    function* runs(): Generator<[number, number, LbaProvisioning]> {
      let at = lba;
      for (const d of mapped) {
        const first = Math.max(at, Math.floor(d.offset / bs));
        const last = Math.min(endLba, Math.ceil((d.offset + d.length) / bs));
        if (last <= first) continue;
        if (first > at) yield [at, first - at, 'deallocated'];
        yield [first, last - first, 'mapped'];
        at = last;
      }
      if (at < endLba) yield [at, endLba - at, 'deallocated'];
    }
    return mergeExtents(runs(), maxExtents);
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    if (change.kind === 'size') {
      const size = this.image.size();
      if (size !== change.devSize) {
        throw errnoError('EINVAL', `image ${this.config.pool}/${this.config.image} is ${size} bytes, not ${change.devSize}: resize the image first (rbd resize)`);
      }
      return;
    }
    if (change.kind === 'writecache') return;
    throw errnoError('EOPNOTSUPP', 'a new cfgstring needs the device reopened');
  }

  private objectSizeBytes = 0;
  private objectSize(): number {
    if (!this.objectSizeBytes) this.objectSizeBytes = this.image.info().objectSize;
    return this.objectSizeBytes;
  }

  /** One asynchronous call whose result is only success or an error. */
  private call(what: string, start: (settle: (rc: number) => void) => void): Promise<void> {
    return new Promise((resolve, reject) => {
      if (!this.usable(reject)) return;
      start((rc) => (rc < 0 ? reject(this.failure(rc, what)) : resolve()));
    });
  }

  /** False (and the command answered BUSY) while this gateway cannot do IO. */
  private usable(reject: (e: Error) => void): boolean {
    if ((!this.connected || this.reconnectWanted) && this.image.inFlight === 0 && !this.fenced) this.tryReconnect('an IO timed out');
    if (this.fenced) {
      reject(errnoError('EBUSY', 'this gateway is fenced (blocklisted) until it takes the lock again'));
      return false;
    }
    if (!this.connected) {
      reject(errnoError('EBUSY', 'not connected to the cluster'));
      return false;
    }
    return true;
  }

  /** tcmu-runner's rbd_finish_aio_generic: what a failed call means for the initiator. */
  private failure(rc: number, what: string, io?: BlockIo): Error {
    const at = io ? ` at byte ${io.offset} (${io.length} bytes)` : '';
    if (rc === -ETIMEDOUT) {
      this.timedOutCount++;
      this.reconnectWanted = true;
      this.dev.log.error(`${what}${at} timed out (rados_osd_op_timeout): answering BUSY, reconnecting when idle`);
      this.updateStatus();
      return errnoError('ETIMEDOUT', `${what} timed out`);
    }
    if (rc === -ESHUTDOWN || rc === -EROFS) {
      // -ESHUTDOWN: this client was blocklisted; -EROFS: another client holds the exclusive lock.
      if (rc === -ESHUTDOWN) this.markFenced();
      else this.lockLost();
      return errnoError('EBUSY', `${what}${at}: ${rc === -ESHUTDOWN ? 'this gateway was fenced (blocklisted)' : 'another gateway holds the image lock'}`);
    }
    if (rc === -EINVAL) return ScsiError.invalidField();
    this.dev.log.error(`${what}${at} failed: ${new RbdError(what, rc).message}`);
    return errnoError('EIO', `${what} failed (${rc})`);
  }

  // ------------------------------------------------------------ lock API

  private async takeLock(tag: number): Promise<void> {
    try {
      if (this.fenced || !this.connected) this.reconnect(this.fenced ? 'fenced' : 'reconnecting');
      if (!this.ownsLock()) {
        const owner = this.image.lockOwner();
        if (owner !== undefined) {
          this.dev.log.info(`breaking the image lock of ${owner}`);
          this.image.breakLock(owner);
        }
        this.image.acquireLock();
      }
      if (tag !== NO_LOCK_TAG) {
        const owner = this.image.lockOwner();
        if (owner === undefined) throw errnoError('EAGAIN', 'lost the lock while tagging it');
        this.image.metadataSet(LOCK_TAG_KEY, `tcmu_tag=${tag},rbd_client=${owner}`);
      }
      this.dev.log.info('acquired the exclusive lock');
      this.updateStatus(true);
    } catch (e) {
      this.updateStatus(false);
      throw lockError(e, 'taking the image lock');
    }
  }

  private async dropLock(): Promise<void> {
    try {
      if (this.ownsLock()) this.image.releaseLock();
    } catch (e) {
      throw lockError(e, 'releasing the image lock');
    }
    this.updateStatus(false);
  }

  /** The tag stored by whoever holds the lock now; null when nobody does or the tag is stale. */
  private async lockTag(): Promise<number | null> {
    try {
      const value = this.image.metadataGet(LOCK_TAG_KEY);
      const owner = this.image.lockOwner();
      if (value === undefined || owner === undefined) return null;
      const m = /^tcmu_tag=(\d+),rbd_client=(.*)$/.exec(value);
      // A holder that crashed between taking the lock and tagging it leaves another client's tag.
      if (!m || m[2] !== owner) return null;
      return Number(m[1]);
    } catch (e) {
      throw lockError(e, 'reading the lock tag');
    }
  }

  private async lockState(): Promise<HandlerLockState> {
    try {
      return this.ownsLock() ? 'locked' : 'unlocked';
    } catch (e) {
      return e instanceof RbdError && e.rc === -ESHUTDOWN ? 'unlocked' : 'unknown';
    }
  }

  private ownsLock(): boolean {
    try {
      return this.image.isLockOwner();
    } catch (e) {
      if (e instanceof RbdError && e.rc === -ESHUTDOWN) this.markFenced();
      throw e;
    }
  }

  /** tcmu_notify_lock_lost: the engine takes the lock again before the next write gets through. */
  private lockLost(): void {
    this.lockLostCount++;
    this.dev.notifyLockLost?.();
    this.updateStatus(false);
  }

  /** Blocklisted: told once, however many commands find out. */
  private markFenced(): void {
    if (this.fenced) return;
    this.fenced = true;
    this.dev.log.warn('this gateway was blocklisted by another one taking the image lock');
    this.lockLost();
  }

  // ------------------------------------------------------------ connection

  /** A new librados client (a blocklisted one stays useless): the lock, if any, went with the old one. */
  private reconnect(why: string): void {
    this.dev.log.warn(`reconnecting to the cluster (${why})`);
    const old = this.fenced ? this.address : '';
    const oldAddress = this.connected ? this.address : '';
    if (this.connected) this.closeImage();
    this.connected = false;
    this.lastAttempt = performance.now();
    const cluster = connect(this.config, { client_mount_timeout: CONNECT_TIMEOUT_S });
    try {
      this.io = cluster.openPool(this.config.pool);
      this.image = RbdImage.open(this.io, this.config.image, this.config.snap, this.config.snap !== undefined, this.pipe);
    } catch (e) {
      cluster.shutdown();
      throw e;
    }
    this.cluster = cluster;
    this.connected = true;
    // The client we just shut down may still be named the lock owner, and would stay so until its
    // watch times out (about 30 s of BUSY): it is ours and gone, so break its lock now.
    const owner = safe(() => this.image.lockOwner(), undefined);
    if (owner && oldAddress.includes(owner)) {
      this.dev.log.info(`breaking the image lock our previous client (${owner}) still holds`);
      safe(() => this.image.breakLock(owner), undefined);
      if (!old) staleAddresses.push(oldAddress);
    }
    if (old) staleAddresses.push(old);
    this.fenced = false;
    this.reconnectWanted = false;
    this.register();
    // A new client holds no lock: let the engine take it again before writing.
    this.dev.notifyLockLost?.();
  }

  /** reconnect() from the IO path: at most once a second, a failure leaves the device answering BUSY. */
  private tryReconnect(why: string): void {
    if (performance.now() - this.lastAttempt < RECONNECT_EVERY_MS) return;
    try {
      this.reconnect(why);
    } catch (e) {
      this.dev.log.error(`reconnect failed: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  private register(): void {
    const host = hostname();
    const { pool, image } = this.config;
    try {
      this.cluster.serviceRegister('tcmu-runner', `${host}:${pool}/${image}`, {
        pool_name: pool, image_name: image, daemon_type: 'portal', daemon_prefix: host, implementation: 'tcmu-ts',
      });
    } catch (e) {
      this.dev.log.warn(`cannot register with the cluster's service map: ${e instanceof Error ? e.message : String(e)}`);
    }
    this.address = this.safeAddress();
    while (staleAddresses.length) {
      const addr = staleAddresses.pop()!;
      try {
        this.cluster.monCommand({ prefix: 'osd blocklist', blocklistop: 'rm', addr });
        this.dev.log.info(`removed stale blocklist entry ${addr}`);
      } catch {
        // Already expired or removed by another gateway.
      }
    }
  }

  private safeAddress(): string {
    try {
      return this.cluster.addresses();
    } catch {
      return '';
    }
  }

  private updateStatus(owner?: boolean): void {
    try {
      this.cluster.serviceUpdateStatus({
        lock_owner: String(owner ?? safe(() => this.image.isLockOwner(), false)),
        lock_lost_cnt: String(this.lockLostCount),
        cmd_timed_out_cnt: String(this.timedOutCount),
      });
    } catch {
      // Status is best effort: a cluster that cannot take it cannot take IO either, and IO says so.
    }
  }

  /** Counters for tests and the service map. */
  get stats(): { lockLost: number; timedOut: number; fenced: boolean } {
    return { lockLost: this.lockLostCount, timedOut: this.timedOutCount, fenced: this.fenced };
  }

  private closeImage(): void {
    this.image.close();
    this.cluster.closePool(this.io);
    this.cluster.shutdown();
  }

  private closeAll(): void {
    if (this.fenced && this.address) staleAddresses.push(this.address);
    if (this.connected) this.closeImage();
    this.connected = false;
    this.ring?.unmap();
    this.ring = undefined;
    this.pipe?.close();
  }

  async close(): Promise<void> {
    this.closeAll();
  }
}

function safe<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}

/** Run probeImage on a worker thread, so the caller's thread never waits on librados. */
function probeOffThread(config: RbdConfig): Promise<ConfigCheck> {
  return probeOnWorker(new URL('./rbd-probe.js', import.meta.url), { config } satisfies ProbeRequest, 'the image');
}

export const rbdHandler = defineHandler({
  name: 'Ceph RBD',
  subtype: 'rbd',
  configDescription: 'rbd/<pool>/<image>[@snap][;osd_op_timeout=<seconds>][;conf=<ceph.conf path>][;id=<ceph user>]',
  checkConfig(config: string): ConfigCheck {
    const c = parseRbdConfig(config);
    return typeof c === 'string' ? configError(c) : configOk;
  },
  probeConfig(config: string): Promise<ConfigCheck> {
    const c = parseRbdConfig(config);
    return typeof c === 'string' ? Promise.resolve(configError(c)) : probeOffThread(c);
  },
  async open(dev: HandlerDevice): Promise<DeviceHandler> {
    const c = parseRbdConfig(dev.cfgstring);
    if (typeof c === 'string') throw errnoError('EINVAL', c);
    return new RbdDevice(dev, c);
  },
});

export type { RbdDevice };
export type { IoVec };
