/**
 * glfs: a LUN backed by a file on a Gluster volume, through libgfapi's
 * asynchronous IO (tcmu-runner's glfs handler, which gluster-block uses).
 *
 * cfgstring (as tcmu-runner's): glfs/<volume>@<host>[:port]/<path>
 *   - host: a name, an IPv4 address or [an IPv6 address]; port: glusterd's
 *     (default 24007);
 *   - glusterd's unix socket instead of TCP: glfs/<volume>@unix/<path>;socket=<socket path>
 *
 * One glfs_t per server and volume serves every device of the process
 * (libgfapi.ts keeps the table). The file is opened O_DIRECT, and the
 * volume is expected to run with performance.strict-o-direct on, so an
 * acknowledged write is on the brick. readv/writev get iovecs that point
 * into the ring's data area through this thread's own mapping of it, so no
 * data passes through JS. SYNCHRONIZE CACHE and FUA are fdatasync, UNMAP is
 * discard, WRITE SAME of zeros (and with UNMAP) is zerofill; other WRITE
 * SAME patterns the engine emulates with write().
 *
 * Fencing, as tcmu-runner: the file gets the
 * trusted.glusterfs.enforce-mandatory-lock attribute at open (volumes with
 * locks.mandatory-locking optimal and features.enforce-mandatory-lock on),
 * after which the brick refuses IO (EBUSY, EAGAIN) from any client that
 * does not hold the whole-file mandatory lock, and a client taking the lock
 * preempts the holder. lock()/unlock() are that lock; the tag goes into the
 * file's user.tcmu-ts.lock-tag attribute. IO refused for want of the lock
 * (EBUSY, EAGAIN, ENOTCONN: a brick that restarted has forgotten its locks)
 * answers BUSY; when this gateway held the lock it reports the lock lost
 * (the engine's ALUA implicit failover takes it again on the next write),
 * otherwise it takes the lock in the background, so a LUN without ALUA
 * groups (nobody else calls lock()) works after one BUSY.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  NO_LOCK_TAG, ScsiError, configError, configOk, copyFromBuffers, copyToBuffers, defineHandler, errnoError, isZero, parseOptions,
  writeSameViaWrite,
  type BlockIo, type Callout, type ConfigCheck, type DeviceHandler, type DeviceLimits, type HandlerDevice, type HandlerLockState,
  type LbaRange, type ReconfigChange,
} from '@tcmu-ts/core';
import { mapShared, type SharedMap } from '@tcmu-ts/ring';
import { probeOnWorker } from './probe-worker.js';
import { GlfsError, GlfsFile, GlfsVolume, MAX_IOVECS, NativeBuffer, type GlfsOp, type VolfileServer } from './libgfapi.js';

export const GLUSTERD_PORT = 24007;
export const DEFAULT_SOCKET = '/var/run/glusterd.socket';
const LOCK_TAG_XATTR = 'user.tcmu-ts.lock-tag';

export interface GlfsConfig {
  volume: string;
  server: VolfileServer;
  /** Path of the file inside the volume, with its leading '/'. */
  path: string;
}

const OPTIONS = new Set(['socket']);

/** Parse the handler's part of the cfgstring; a string is the reason it is bad. */
export function parseGlfsConfig(config: string): GlfsConfig | string {
  const { main, options } = parseOptions(config);
  for (const k of options.keys()) if (!OPTIONS.has(k)) return `unknown option "${k}" (known: ${[...OPTIONS].join(', ')})`;
  const at = main.indexOf('@');
  if (at <= 0) return `"${main}" is not <volume>@<host>[:port]/<path>`;
  const volume = main.slice(0, at);
  if (!/^[A-Za-z0-9_.-]+$/.test(volume)) return `"${volume}" is not a Gluster volume name`;
  const rest = main.slice(at + 1);
  const m = /^(\[[0-9A-Fa-f:.]+\]|[^/:[\]]+)(?::([^/]*))?\/(.*)$/.exec(rest);
  if (!m) return `"${main}" is not <volume>@<host>[:port]/<path>`;
  const [, host, portText, file] = m;
  if (file.replace(/\/+/g, '') === '') return `"${main}" names no file after the host`;
  const path = `/${file.replace(/^\/+/, '')}`;
  const socket = options.get('socket');
  if (host === 'unix') {
    if (portText !== undefined) return 'a unix socket takes no port';
    if (socket === '') return 'socket= needs a path';
    return { volume, path, server: { transport: 'unix', socket: socket ?? DEFAULT_SOCKET } };
  }
  if (socket !== undefined) return 'socket= goes with the host "unix" (<volume>@unix/<path>;socket=<path>)';
  let port = GLUSTERD_PORT;
  if (portText !== undefined) {
    if (!/^\d+$/.test(portText) || Number(portText) < 1 || Number(portText) > 65535) return `port "${portText}" is not a number from 1 to 65535`;
    port = Number(portText);
  }
  return { volume, path, server: { transport: 'tcp', host: host.replace(/^\[(.*)\]$/, '$1'), port } };
}

function describe(c: GlfsConfig): string {
  const where = c.server.transport === 'tcp' ? `${c.server.host}:${c.server.port}` : `unix:${c.server.socket}`;
  return `${c.volume}@${where}${c.path}`;
}

/** gfapi's own log: errors only, next to the other temp files (tcmu-runner writes tcmu-runner-glfs.log). */
export const GFAPI_LOG = join(tmpdir(), 'tcmu-ts-glfs.log');

export interface ProbeRequest {
  config: GlfsConfig;
}

/** Is the volume reachable and the file there? Blocks: run it off the supervisor thread (glfs-probe.ts). */
export function probeFile({ config: c }: ProbeRequest): ConfigCheck {
  let volume: GlfsVolume;
  try {
    volume = GlfsVolume.acquire(c.server, c.volume, { logFile: GFAPI_LOG });
  } catch (e) {
    return configError(connectError(c, e).message);
  }
  try {
    volume.sizeOf(c.path);
    return configOk;
  } catch (e) {
    if (e instanceof GlfsError && e.code === 'ENOENT') return configError(`file "${c.path}" does not exist on volume "${c.volume}"`);
    return configError(`cannot check ${describe(c)}: ${e instanceof Error ? e.message : String(e)}`);
  } finally {
    volume.release();
  }
}

/** glfs_init's failure as something an administrator can act on. */
function connectError(c: GlfsConfig, e: unknown): Error {
  const where = c.server.transport === 'tcp' ? `${c.server.host}:${c.server.port}` : c.server.socket;
  const msg = e instanceof Error ? e.message : String(e);
  return errnoError(e instanceof GlfsError ? e.code : 'EIO',
    `cannot reach volume "${c.volume}" on ${where} (server unreachable, or no such volume, or it is not started): ${msg}`);
}

const LOCK_ERRNOS = new Set(['EBUSY', 'EAGAIN', 'ENOTCONN']);

class GlfsDevice implements DeviceHandler {
  private readonly volume: GlfsVolume;
  private readonly file: GlfsFile;
  private ring: SharedMap | undefined;
  /** The brick enforces mandatory locks on the file (else no fencing, as tcmu-runner's no_fencing). */
  private readonly fencing: boolean;
  /** We hold the mandatory lock, as far as we know. */
  private held = false;
  private selfLocking: Promise<void> | undefined;
  private lockLostCount = 0;
  readonly limits: DeviceLimits;
  lock?: (tag: number) => Promise<void>;
  unlock?: () => Promise<void>;
  getLockTag?: () => Promise<number | null>;
  getLockState?: () => Promise<HandlerLockState>;

  constructor(private readonly dev: HandlerDevice, private readonly config: GlfsConfig) {
    try {
      this.volume = GlfsVolume.acquire(config.server, config.volume, { logFile: GFAPI_LOG });
    } catch (e) {
      throw connectError(config, e);
    }
    try {
      try {
        this.file = GlfsFile.open(this.volume, config.path, (e, what, offset, length) => this.failure(e, what, offset, length));
      } catch (e) {
        if (e instanceof GlfsError && e.code === 'ENOENT') throw errnoError('ENOENT', `file "${config.path}" does not exist on volume "${config.volume}"`);
        throw e;
      }
    } catch (e) {
      this.volume.release();
      throw e;
    }
    try {
      this.fencing = this.file.enforceMandatoryLocks();
      const size = this.file.size();
      const bs = dev.blockSize;
      const blocks = Math.floor(size / bs);
      if (dev.numLbas === 0) dev.numLbas = blocks;
      else if (dev.numLbas !== blocks) {
        throw errnoError('EINVAL', `${describe(config)} is ${size} bytes but the device is ${dev.numLbas * bs} (${dev.numLbas} blocks of ${bs}): resize one to match`);
      }
      this.limits = { unmapGranularity: 1, unmapGranularityAlignment: 0 };
      if (this.fencing) {
        this.lock = (tag) => this.takeLock(tag);
        this.unlock = () => this.dropLock();
        this.getLockTag = () => this.lockTag();
        this.getLockState = async () => (this.held ? 'locked' : 'unlocked');
      } else {
        dev.log.warn(`${describe(config)}: the volume does not enforce mandatory locks: no fencing, HA (ALUA failover between gateways) is not safe`);
      }
      if (dev.ring) this.ring = mapShared(dev.ring.mapFd, dev.ring.mapSize);
    } catch (e) {
      void this.file.close();
      this.volume.release();
      throw e;
    }
  }

  // ------------------------------------------------------------ IO

  read(io: BlockIo): Callout<void> {
    return this.transfer(io, false);
  }

  write(io: BlockIo): Callout<void> {
    if (!io.fua) return this.transfer(io, true);
    return this.chain(this.transfer(io, true), () => this.file.fdatasync());
  }

  /**
   * The ring's pages go to gfapi as they are; the op is its own thenable, so
   * nothing is allocated per command. Buffers outside a ring (a direct
   * caller) go through an aligned bounce buffer, O_DIRECT wanting alignment.
   */
  private transfer(io: BlockIo, write: boolean): Callout<void> {
    const ring = this.ring;
    if (ring !== undefined && io.iovecs !== undefined && io.iovecs.length <= MAX_IOVECS) {
      return write ? this.file.writev(io.iovecs, ring.address, io.offset, io.length) : this.file.readv(io.iovecs, ring.address, io.offset, io.length);
    }
    return this.bounced(io, write);
  }

  private async bounced(io: BlockIo, write: boolean): Promise<void> {
    const bounce = new NativeBuffer(io.length);
    try {
      if (write) {
        copyFromBuffers(io.buffers, bounce.bytes);
        await this.file.writev(bounce.iovecs, bounce.address, io.offset, io.length);
      } else {
        await this.file.readv(bounce.iovecs, bounce.address, io.offset, io.length);
        copyToBuffers(io.buffers, bounce.bytes);
      }
    } finally {
      bounce.free();
    }
  }

  /** Two calls in order (a FUA write, then fdatasync): the slow path, one promise. */
  private async chain(first: Callout<void>, next: () => GlfsOp): Promise<void> {
    await first;
    await next();
  }

  flush(): Callout<void> {
    return this.file.fdatasync();
  }

  /** discard punches holes: a range discarded reads back zeros. */
  async unmap(ranges: readonly LbaRange[]): Promise<void> {
    const bs = this.dev.blockSize;
    for (const r of ranges) await this.file.discard(r.lba * bs, r.blocks * bs);
  }

  writeSame(io: BlockIo, pattern: Uint8Array): Callout<void> {
    if (isZero([pattern])) return io.fua ? this.chain(this.file.zerofill(io.offset, io.length), () => this.file.fdatasync()) : this.file.zerofill(io.offset, io.length);
    return writeSameViaWrite(this, io, pattern);
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    if (change.kind === 'size') {
      const size = await this.file.sizeAsync();
      const bs = this.dev.blockSize;
      if (Math.floor(size / bs) * bs !== change.devSize) {
        throw errnoError('EINVAL', `${describe(this.config)} is ${size} bytes, not ${change.devSize}: resize the file first`);
      }
      return;
    }
    if (change.kind === 'writecache') return;
    throw errnoError('EOPNOTSUPP', 'a new cfgstring needs the device reopened');
  }

  /** tcmu-runner's glfs_async_cbk: what a failed call means for the initiator. */
  private failure(e: GlfsError, what: string, offset: number, length: number): Error {
    const at = length ? ` at byte ${offset} (${length} bytes)` : '';
    if (e.code === 'ETIMEDOUT') {
      this.dev.log.error(`${what}${at} timed out`);
      return errnoError('ETIMEDOUT', `${what} timed out`);
    }
    if (e.code === 'EBADFD') {
      // The brick went away while we held locks: the client will not use this fd again.
      this.lostLock(what, at, e.code);
      this.reopen();
      return errnoError('EBUSY', `${what}${at}: the brick restarted, reopening the file`);
    }
    if (this.fencing && LOCK_ERRNOS.has(e.code)) {
      if (this.held) {
        this.lostLock(what, at, e.code);
      } else {
        this.selfLock(e.code);
      }
      return errnoError('EBUSY', `${what}${at}: ${e.code === 'ENOTCONN' ? 'the brick is not connected' : 'this gateway does not hold the file\'s lock'}`);
    }
    if (e.code === 'ENOTCONN') return errnoError('EBUSY', `${what}${at}: the brick is not connected`);
    if (e.code === 'EINVAL') return ScsiError.invalidField();
    this.dev.log.error(`${what}${at} failed: ${e.message}`);
    return errnoError(e.code === 'ENOSPC' || e.code === 'EDQUOT' ? e.code : 'EIO', e.message);
  }

  private lostLock(what: string, at: string, code: string): void {
    if (!this.held) return;
    this.held = false;
    this.lockLostCount++;
    this.dev.log.warn(`${what}${at} refused (${code}): this gateway lost the file's lock`);
    this.dev.notifyLockLost?.();
  }

  private reopening: Promise<void> | undefined;
  private reopen(): void {
    if (this.reopening) return;
    this.dev.log.warn(`reopening ${describe(this.config)}: the brick dropped our file handle`);
    this.reopening = this.file.reopen().then(
      () => this.dev.log.info(`reopened ${describe(this.config)}`),
      (e: unknown) => this.dev.log.warn(`reopening failed (will try again on the next IO): ${e instanceof Error ? e.message : String(e)}`),
    ).finally(() => { this.reopening = undefined; });
  }

  /**
   * IO found we do not hold the lock and nobody said we lost it: take it in
   * the background so the initiator's retry goes through (a LUN served
   * without ALUA groups never gets lock() from the engine).
   */
  private selfLock(why: string): void {
    if (this.selfLocking) return;
    this.dev.log.info(`taking the file's lock (IO refused with ${why} while not holding it)`);
    this.selfLocking = this.file.lock(true).then(
      () => { this.held = true; },
      (e: unknown) => this.dev.log.warn(`taking the file's lock failed: ${e instanceof Error ? e.message : String(e)}`),
    ).finally(() => { this.selfLocking = undefined; });
  }

  // ------------------------------------------------------------ lock API

  private async takeLock(tag: number): Promise<void> {
    try {
      await this.file.lock(true);
      this.held = true;
      await this.file.setXattr(LOCK_TAG_XATTR, String(tag === NO_LOCK_TAG ? '' : tag));
      this.dev.log.info('acquired the file\'s mandatory lock');
    } catch (e) {
      throw lockError(e, 'taking the file\'s lock');
    }
  }

  private async dropLock(): Promise<void> {
    try {
      await this.file.lock(false);
      this.held = false;
    } catch (e) {
      throw lockError(e, 'releasing the file\'s lock');
    }
  }

  private async lockTag(): Promise<number | null> {
    try {
      const v = await this.file.getXattr(LOCK_TAG_XATTR);
      return v && /^\d+$/.test(v) ? Number(v) : null;
    } catch (e) {
      throw lockError(e, 'reading the lock tag');
    }
  }

  get stats(): { lockLost: number; held: boolean; fencing: boolean; inFlight: number } {
    return { lockLost: this.lockLostCount, held: this.held, fencing: this.fencing, inFlight: this.file.inFlight };
  }

  async close(): Promise<void> {
    await this.selfLocking;
    await this.reopening;
    await this.file.close();
    this.volume.release();
    this.ring?.unmap();
    this.ring = undefined;
  }
}

/** gfapi's lock answers as the lock API's errno codes: ENOTCONN (tcmu-runner's FENCED) and EBUSY/EAGAIN are retryable. */
function lockError(e: unknown, what: string): Error {
  if (!(e instanceof GlfsError)) return e instanceof Error ? e : new Error(String(e));
  const code = e.code === 'ENOTCONN' ? 'ESTALE' : LOCK_ERRNOS.has(e.code) || e.code === 'ETIMEDOUT' ? e.code : 'EIO';
  return errnoError(code, `${what}: ${e.message}`);
}

/** Run probeFile on a worker thread: glfs_init blocks until the server answers or gives up. */
function probeOffThread(config: GlfsConfig): Promise<ConfigCheck> {
  return probeOnWorker(new URL('./glfs-probe.js', import.meta.url), { config } satisfies ProbeRequest, 'the file', true);
}

export const glfsHandler = defineHandler({
  name: 'Gluster glfs',
  subtype: 'glfs',
  configDescription: 'glfs/<volume>@<host>[:port]/<path>, or glfs/<volume>@unix/<path>;socket=<glusterd socket>',
  checkConfig(config: string): ConfigCheck {
    const c = parseGlfsConfig(config);
    return typeof c === 'string' ? configError(c) : configOk;
  },
  probeConfig(config: string): Promise<ConfigCheck> {
    const c = parseGlfsConfig(config);
    return typeof c === 'string' ? Promise.resolve(configError(c)) : probeOffThread(c);
  },
  async open(dev: HandlerDevice): Promise<DeviceHandler> {
    const c = parseGlfsConfig(dev.cfgstring);
    if (typeof c === 'string') throw errnoError('EINVAL', c);
    return new GlfsDevice(dev, c);
  },
});

export type { GlfsDevice };
