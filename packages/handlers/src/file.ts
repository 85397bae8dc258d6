/**
 * File backstore: a regular file (sparse image) or a block device.
 *
 * Data moves between the file and the ring's data area with positional
 * readv/writev on the views the engine hands us, so no byte is copied in
 * JavaScript. Errors keep their errno `code`; the engine turns EIO into a
 * medium error and ENOSPC into a space-allocation failure.
 */
import * as fs from 'node:fs';
import { open as openAsync, type FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import {
  configError,
  configOk,
  defineHandler,
  errnoError,
  isZeroRange,
  mergeExtents,
  parseOptions,
  sliceBuffers,
  writeSameViaWrite,
  zeroBuffers,
  type BlockIo,
  type Callout,
  type ConfigCheck,
  type DeviceHandler,
  type Handler,
  type HandlerDevice,
  type LbaProvisioning,
  type LbaRange,
  type LbaStatusExtent,
  type ReconfigChange,
} from '@tcmu-ts/core';
import { fallocate, fileExtents, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } from './fallocate.js';
import { FileIoPool } from './file-pool.js';

export interface FileConfig {
  path: string;
  /** Open with O_DIRECT: bypass the page cache. */
  direct: boolean;
  /** Worker threads for blocking IO; undefined: the handler's default. */
  threads?: number;
  /** Page-cache IO through the libuv pool instead of on the device thread. */
  async: boolean;
}

export const MAX_FILE_THREADS = 64;
const FILE_OPTIONS = new Set(['direct', 'threads', 'async']);

/** Parse "<path>[;direct][;async][;threads=N]" (the part after "file/"). */
export function parseFileConfig(cfg: string): FileConfig | string {
  const { main, options } = parseOptions(cfg);
  for (const key of options.keys()) {
    if (!FILE_OPTIONS.has(key)) return `unknown option "${key}" (file accepts: ${[...FILE_OPTIONS].join(', ')})`;
  }
  if (main.trim() === '') return 'no path given: expected file/<path>[;direct][;threads=N]';
  const out: FileConfig = { path: path.resolve(main), direct: options.has('direct'), async: options.has('async') };
  const t = options.get('threads');
  if (t !== undefined) {
    const n = Number(t);
    if (t === '' || !Number.isInteger(n) || n < 0 || n > MAX_FILE_THREADS) {
      return `threads=${t} must be an integer from 0 to ${MAX_FILE_THREADS}`;
    }
    out.threads = n;
  }
  return out;
}

function describe(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ? `${err.code}: ${err.message.replace(/^\w+: /, '')}` : String(e);
}

/**
 * What would stop open() from working, found without creating anything.
 * Only an open O_RDWR tells the truth about writability: as root access(W_OK)
 * says yes to read-only sysfs files and the like.
 */
function checkFileConfig(cfg: FileConfig): string | undefined {
  const p = cfg.path;
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTDIR') return `a component of "${p}" is not a directory`;
    if (code !== 'ENOENT') return `cannot stat "${p}": ${describe(e)}`;
    const dir = path.dirname(p);
    let dst: fs.Stats;
    try {
      dst = fs.statSync(dir);
    } catch (e2) {
      const c2 = (e2 as NodeJS.ErrnoException).code;
      if (c2 === 'ENOENT') return `directory "${dir}" does not exist`;
      return `cannot use directory "${dir}": ${describe(e2)}`;
    }
    if (!dst.isDirectory()) return `"${dir}" is not a directory`;
    try {
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (e2) {
      return `cannot create "${p}": directory "${dir}" is not writable (${describe(e2)})`;
    }
    return undefined;
  }
  if (st.isDirectory()) return `"${p}" is a directory, not a file`;
  if (!st.isFile() && !st.isBlockDevice()) return `"${p}" is neither a regular file nor a block device`;
  let fd = -1;
  try {
    fd = fs.openSync(p, fs.constants.O_RDWR | (cfg.direct ? fs.constants.O_DIRECT : 0));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM' || code === 'ETXTBSY') {
      return `"${p}" is not writable (${describe(e)})`;
    }
    if (code === 'EINVAL' && cfg.direct) return `"${p}" is on a filesystem without O_DIRECT support`;
    return `cannot open "${p}": ${describe(e)}`;
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
  return undefined;
}

/** Quota exhaustion is a space problem to the initiator, same as a full disk. */

const ZERO_BYTES = 1 << 20;
let zeroBuf: Uint8Array | undefined;

export class FileDevice implements DeviceHandler {
  private writeCache: boolean;
  /** Once fallocate said EOPNOTSUPP there is no point asking again. */
  private canPunch = true;
  private canZeroRange = true;
  /**
   * A page-cache fd next to an O_DIRECT one, for IO whose buffers break the
   * alignment rules (zero-fill fallback, odd test buffers). Direct IO
   * flushes and invalidates the page cache over its range, so mixing the two
   * stays coherent.
   */
  private buffered: Promise<FileHandle> | undefined;
  /**
   * Page-cache reads and writes done right here on the device thread, as
   * tcmu-runner's per-device thread does them: a cached 4 KiB pread costs a few
   * microseconds, a hop through the libuv pool and back costs several times
   * that. O_DIRECT, `;async` and `;threads=N` keep the IO off this thread,
   * where a slow medium must not hold up the ring.
   */
  private readonly inline: boolean;
  /** The fdatasync under way, and the one queued behind it (see datasync()). */
  private syncRunning: Promise<void> | undefined;
  private syncQueued: Promise<void> | undefined;

  constructor(
    private readonly dev: HandlerDevice,
    readonly fh: FileHandle,
    readonly config: FileConfig,
    /** Present in threaded mode; IOs without ring offsets still take the libuv path. */
    readonly pool?: FileIoPool,
  ) {
    this.writeCache = dev.writeCache;
    this.inline = !config.direct && !config.async && pool === undefined;
  }

  get fd(): number {
    return this.fh.fd;
  }

  /** Page-cache IO finishes here and returns nothing; the other modes return their promise. */
  read(io: BlockIo): Callout<void> {
    if (this.inline) {
      transferSync('read', this.fd, io.buffers, io.offset, io.length, this.config.path);
      return;
    }
    return this.readOffThread(io);
  }

  write(io: BlockIo): Callout<void> {
    if (this.inline) {
      transferSync('write', this.fd, io.buffers, io.offset, io.length, this.config.path);
      // Without a write cache (or with FUA) completion promises stable media.
      if (io.fua || !this.writeCache) return this.flush();
      return;
    }
    return this.writeOffThread(io);
  }

  private async readOffThread(io: BlockIo): Promise<void> {
    try {
      if (this.pool !== undefined && FileIoPool.usable(io)) await this.pool.run('read', io);
      else await this.readAt(this.fh, io.buffers, io.offset, io.length);
    } catch (e) {
      if (!this.config.direct || (e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      await this.readAt(await this.bufferedHandle(), io.buffers, io.offset, io.length);
    }
  }

  private async writeOffThread(io: BlockIo): Promise<void> {
    try {
      if (this.pool !== undefined && FileIoPool.usable(io)) await this.pool.run('write', io);
      else await this.writeAt(this.fh, io.buffers, io.offset, io.length);
    } catch (e) {
      if (!this.config.direct || (e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      await this.writeAt(await this.bufferedHandle(), io.buffers, io.offset, io.length);
    }
    if (io.fua || !this.writeCache) await this.datasync();
  }

  flush(): Promise<void> {
    return this.datasync();
  }

  /**
   * fdatasync with group commit: every write whose data reached the file
   * before a sync started is stable when that sync ends, so one sync in
   * flight and one queued behind it serve any number of callers. A caller
   * arriving while a sync runs joins the queued one, which starts only after
   * the running one ends, i.e. after the caller's own write.
   */
  private datasync(): Promise<void> {
    if (this.syncRunning === undefined) return this.startSync();
    const start = () => {
      this.syncQueued = undefined;
      return this.startSync();
    };
    return (this.syncQueued ??= this.syncRunning.then(start, start));
  }

  private startSync(): Promise<void> {
    const sync: Promise<void> = this.fh.datasync().finally(() => {
      if (this.syncRunning === sync) this.syncRunning = undefined;
    });
    this.syncRunning = sync;
    return sync;
  }

  async unmap(ranges: readonly LbaRange[]): Promise<void> {
    const bs = this.dev.blockSize;
    for (const r of ranges) {
      const off = r.lba * bs;
      const len = r.blocks * bs;
      if (len === 0) continue;
      if (this.canPunch) {
        const err = await fallocate(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
        if (err === 0) continue;
        if (!isUnsupported(err)) throw err;
        this.canPunch = false;
        this.dev.log.info(`file: ${this.config.path} cannot punch holes (${err.code}); unmap writes zeros instead`);
      }
      await this.writeZeros(off, len);
    }
  }

  /**
   * Holes are deallocated, data extents mapped. A hole is only reported for
   * whole blocks (a block the filesystem's hole covers in part holds data).
   */
  lbaStatus(lba: number, blocks: number, maxExtents: number): readonly LbaStatusExtent[] {
    const bs = this.dev.blockSize;
    const runs = fileExtents(this.fd, lba * bs, (lba + blocks) * bs, maxExtents + 1).map(({ start, end, data }) => {
      const first = data ? Math.floor(start / bs) : Math.ceil(start / bs);
      const last = data ? Math.ceil(end / bs) : Math.floor(end / bs);
      return [first, last - first, data ? 'mapped' : 'deallocated'] as const;
    });
    // Rounding may make neighbours overlap or leave gaps; whatever a hole does not cover whole is mapped.
    const fixed: [number, number, LbaProvisioning][] = [];
    let at = lba;
    for (const [first, n, status] of runs) {
      const s = Math.max(first, at);
      const e = first + n;
      if (s > at) fixed.push([at, s - at, 'mapped']);
      if (e > s) fixed.push([s, e - s, status]);
      at = Math.max(at, e);
    }
    if (at < lba + blocks && fixed.length < maxExtents) fixed.push([at, lba + blocks - at, 'mapped']);
    return mergeExtents(fixed, maxExtents);
  }

  async writeSame(io: BlockIo, pattern: Uint8Array): Promise<void> {
    if (isZeroRange(pattern, 0, pattern.byteLength)) {
      // ZERO_RANGE keeps the blocks allocated (WRITE SAME without UNMAP
      // asks for provisioned blocks) but skips writing them.
      if (this.canZeroRange) {
        const err = await fallocate(this.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, io.offset, io.length);
        if (err === 0) {
          if (io.fua || !this.writeCache) await this.datasync();
          return;
        }
        if (!isUnsupported(err)) throw err;
        this.canZeroRange = false;
      }
      await this.writeZeros(io.offset, io.length);
      if (io.fua || !this.writeCache) await this.datasync();
      return;
    }
    await writeSameViaWrite(this, io, pattern);
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    switch (change.kind) {
      case 'size': {
        const st = await this.fh.stat();
        // Only ever grow the file: shrinking the device must not destroy
        // data an administrator may still want after undoing the resize.
        if (st.isFile() && st.size < change.devSize) await this.fh.truncate(change.devSize);
        this.dev.numLbas = change.numLbas;
        return;
      }
      case 'writecache':
        if (this.writeCache && !change.enabled) await this.datasync();
        this.writeCache = change.enabled;
        return;
      case 'config':
        throw errnoError('EOPNOTSUPP', 'file: the backing path cannot change while the device is open');
    }
  }

  async close(): Promise<void> {
    const b = this.buffered;
    this.buffered = undefined;
    if (b) await (await b).close().catch(() => {});
    // Workers go first: they use the image fd and must unmap the ring.
    if (this.pool) await this.pool.close();
    await this.fh.close();
  }

  private bufferedHandle(): Promise<FileHandle> {
    this.buffered ??= openAsync(this.config.path, fs.constants.O_RDWR);
    return this.buffered;
  }

  private async writeZeros(off: number, len: number): Promise<void> {
    zeroBuf ??= new Uint8Array(ZERO_BYTES);
    const fh = this.config.direct ? await this.bufferedHandle() : this.fh;
    for (let done = 0; done < len;) {
      const n = Math.min(ZERO_BYTES, len - done);
      const { bytesWritten } = await fh.write(zeroBuf, 0, n, off + done);
      done += bytesWritten;
    }
  }

  /** Fill the buffers from `pos`; past the end of the file reads as zeros. */
  private async readAt(fh: FileHandle, buffers: readonly Uint8Array[], pos: number, length: number): Promise<void> {
    let done = 0;
    let bufs = buffers;
    for (;;) {
      const n =
        bufs.length === 1
          ? (await fh.read(bufs[0], 0, bufs[0].byteLength, pos + done)).bytesRead
          : (await fh.readv(bufs, pos + done)).bytesRead;
      done += n;
      if (done >= length) return;
      if (n === 0) {
        // Someone truncated the image under us; the device still has its size.
        zeroBuffers(buffers, done);
        return;
      }
      bufs = sliceBuffers(buffers, done);
    }
  }

  private async writeAt(fh: FileHandle, buffers: readonly Uint8Array[], pos: number, length: number): Promise<void> {
    let done = 0;
    let bufs = buffers;
    for (;;) {
      const n =
        bufs.length === 1
          ? (await fh.write(bufs[0], 0, bufs[0].byteLength, pos + done)).bytesWritten
          : (await fh.writev(bufs, pos + done)).bytesWritten;
      done += n;
      if (done >= length) return;
      if (n === 0) throw errnoError('EIO', `write to ${this.config.path} made no progress at ${pos + done}`);
      bufs = sliceBuffers(buffers, done);
    }
  }
}

/**
 * readAt / writeAt on the calling thread: loop until `length` bytes moved. A
 * read that hits the end of the file zero-fills the rest; a write that makes
 * no progress is an EIO.
 */
function transferSync(kind: 'read' | 'write', fd: number, buffers: readonly Uint8Array[], pos: number, length: number, what: string): void {
  let done = 0;
  let bufs = buffers;
  for (;;) {
    const n = kind === 'read'
      ? (bufs.length === 1 ? fs.readSync(fd, bufs[0], 0, bufs[0].byteLength, pos + done) : fs.readvSync(fd, bufs, pos + done))
      : (bufs.length === 1 ? fs.writeSync(fd, bufs[0], 0, bufs[0].byteLength, pos + done) : fs.writevSync(fd, bufs, pos + done));
    done += n;
    if (done >= length) return;
    if (n === 0) {
      if (kind === 'write') throw errnoError('EIO', `write to ${what} made no progress at ${pos + done}`);
      zeroBuffers(buffers, done);
      return;
    }
    bufs = sliceBuffers(buffers, done);
  }
}

function isUnsupported(err: NodeJS.ErrnoException): boolean {
  return err.code === 'EOPNOTSUPP' || err.code === 'ENOTSUP' || err.code === 'ENOSYS' || err.code === 'EINVAL';
}

/** `defaultThreads` applies when the cfgstring has no threads= option. */
export async function openFileDevice(dev: HandlerDevice, defaultThreads = 0): Promise<FileDevice> {
  const cfg = parseFileConfig(dev.cfgstring);
  if (typeof cfg === 'string') throw errnoError('EINVAL', `file: ${cfg}`);
  const flags = fs.constants.O_RDWR | fs.constants.O_CREAT | (cfg.direct ? fs.constants.O_DIRECT : 0);
  const fh = await openAsync(cfg.path, flags, 0o600);
  try {
    const st = await fh.stat();
    if (st.isFile()) {
      const want = dev.numLbas * dev.blockSize;
      if (dev.numLbas === 0) {
        // No size from the kernel: the image decides, as with an existing disk file.
        if (st.size < dev.blockSize) throw errnoError('EINVAL', `file: ${cfg.path} is empty and the device has no size`);
        dev.numLbas = Math.floor(st.size / dev.blockSize);
      } else if (st.size < want) {
        await fh.truncate(want);
      }
    } else if (!st.isBlockDevice()) {
      throw errnoError('EINVAL', `file: ${cfg.path} is neither a regular file nor a block device`);
    }
    const threads = cfg.threads ?? defaultThreads;
    let pool: FileIoPool | undefined;
    if (threads > 0) {
      if (dev.ring) pool = new FileIoPool(threads, dev.ring, fh.fd);
      else dev.log.info(`file: no ring map to share with worker threads; ${cfg.path} uses the libuv pool`);
    }
    return new FileDevice(dev, fh, cfg, pool);
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/**
 * A file handler whose devices run their IO on `nrThreads` worker threads
 * by default (each device may still say threads=N in its cfgstring).
 */
export function createFileHandler(opts: { nrThreads?: number } = {}): Handler {
  const defaultThreads = opts.nrThreads ?? 0;
  if (!Number.isInteger(defaultThreads) || defaultThreads < 0 || defaultThreads > MAX_FILE_THREADS) {
    throw new RangeError(`nrThreads must be an integer from 0 to ${MAX_FILE_THREADS}`);
  }
  return defineHandler({
    name: 'File-backed handler',
    subtype: 'file',
    configDescription:
      'file/<path>[;direct][;async][;threads=N]. The image file is created if missing and grown (sparse) to the device ' +
      'size; with no device size an existing image sets it. A block device path works too. ' +
      'By default reads and writes go through the page cache on the device\'s own thread. ' +
      '";direct" opens with O_DIRECT (bypassing the page cache; the filesystem must support it) and does the IO on ' +
      'Node\'s libuv pool; ";async" uses that pool for page-cache IO too (for slow media, so cache misses overlap). ' +
      `";threads=N" (0-${MAX_FILE_THREADS}) runs reads and writes on N worker threads of this device that map ` +
      'the ring themselves. ' +
      'UNMAP punches holes, or writes zeros where the filesystem cannot.',
    ...(defaultThreads > 0 ? { nrThreads: defaultThreads } : {}),
    checkConfig(cfgstring: string): ConfigCheck {
      const cfg = parseFileConfig(cfgstring);
      if (typeof cfg === 'string') return configError(cfg);
      const problem = checkFileConfig(cfg);
      return problem === undefined ? configOk : configError(problem);
    },
    open(dev: HandlerDevice): Promise<DeviceHandler> {
      return openFileDevice(dev, defaultThreads);
    },
  });
}

export const fileHandler: Handler = createFileHandler();
