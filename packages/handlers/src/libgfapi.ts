/**
 * libgfapi through koffi: the calls the glfs handler makes, one glfs_t per
 * server and volume shared by every device of the process, and the
 * completion machinery of asynchronous IO.
 *
 * Completions: gfapi calls a C callback on one of its own threads
 * (glfs_io_cbk); a koffi.register'ed JS function there is queued to the
 * event loop of the thread that registered it, and the gfapi thread waits
 * until it has run. gfapi has no notification fd (librbd's
 * rbd_set_image_notification) to reap from a poll loop instead, and a C
 * trampoline writing to a pipe would mean a native build for the handler;
 * measured (bench/glfs-bench.ts) the callbacks keep up with direct gfapi
 * IO. Two consequences (../shared/gluster.md): no synchronous gfapi call
 * may run on a thread whose completions are due (the callback would wait
 * for that thread and the call for the callback), so every call made while
 * IO can be in flight goes through koffi's `.async()` form, on the libuv
 * pool; and errno is not readable in the callback (it is thread-local to
 * gfapi's thread), so a failed call is issued again synchronously on the
 * pool to learn it.
 *
 * The per-command path allocates nothing once warm: an operation is a
 * pooled record that is its own thenable (the engine calls
 * `then(cmd.succeed, cmd.failed)` with callbacks bound once per command),
 * its iovecs live in native memory owned by the record, pointers cross as
 * plain numbers, and the callback finds the record by the index passed as
 * the callback's `data`.
 */
import { constants } from 'node:os';
import { getEnvironmentData, setEnvironmentData } from 'node:worker_threads';
import koffi from 'koffi';
import { ErrnoError, type IoVec } from '@tcmu-ts/core';
import { errnoName } from '@tcmu-ts/ring';


/** A gfapi call failed: `code` is its errno name ('ENOTCONN', 'EBUSY', 'EBADFD', ...). */
export class GlfsError extends ErrnoError {
  constructor(readonly call: string, readonly errno: number, detail = '') {
    super(errnoName(errno) ?? 'EIO', `${call} failed: ${errnoName(errno) ?? `errno ${errno}`}${detail ? ` (${detail})` : ''}`);
    this.name = 'GlfsError';
  }
}

const { EIO } = constants.errno;
export const O_RDWR = 0o2;
export const O_CREAT = 0o100;
export const O_DIRECT = 0o40000;
export const O_LARGEFILE = 0o100000;
const F_SETLK = 6;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const GLFS_LK_MANDATORY = 1;
/** sizeof(struct flock) and sizeof(struct stat) on x86_64; st_size is at 48. */
const FLOCK_SIZE = 32;
const STAT_SIZE = 144;
const STAT_SIZE_AT = 48;
/** The xattr that makes the brick enforce mandatory locks on this file (tcmu-runner's GF_ENFORCE_MANDATORY_LOCK). */
export const ENFORCE_MANDATORY_LOCK = 'trusted.glusterfs.enforce-mandatory-lock';

type Fn = ((...args: unknown[]) => unknown) & { async(...args: unknown[]): void };

interface Binding {
  glfs_new: Fn; glfs_set_volfile_server: Fn; glfs_set_logging: Fn; glfs_init: Fn; glfs_fini: Fn;
  glfs_open: Fn; glfs_creat: Fn; glfs_close: Fn; glfs_fstat: Fn; glfs_stat: Fn; glfs_ftruncate: Fn; glfs_unlink: Fn;
  glfs_preadv: Fn; glfs_pwritev: Fn; glfs_fdatasync: Fn; glfs_discard: Fn; glfs_zerofill: Fn;
  glfs_preadv_async: Fn; glfs_pwritev_async: Fn; glfs_fdatasync_async: Fn; glfs_discard_async: Fn; glfs_zerofill_async: Fn;
  glfs_file_lock: Fn; glfs_fsetxattr: Fn; glfs_fgetxattr: Fn;
  /** This thread's completion callback (a koffi.register'ed function pointer, as a number). */
  callback: number;
}

let binding: Binding | undefined;
/** Per thread: the files whose operations this thread's callback completes, by id. */
const files: (GlfsFile | undefined)[] = [];
const freeFileIds: number[] = [];

/** Load libgfapi on first use (per thread: koffi functions and callbacks belong to an isolate). */
function lib(): Binding {
  if (binding) return binding;
  let g: ReturnType<typeof koffi.load>;
  try {
    g = koffi.load('libgfapi.so.0');
  } catch (e) {
    throw new ErrnoError('ENOPKG', `cannot load libgfapi (install the libgfapi0 package): ${e instanceof Error ? e.message : String(e)}`);
  }
  const f = (sig: string) => g.func(sig) as unknown as Fn;
  const cbType = koffi.proto('void glfs_io_cbk_ts(intptr_t fd, intptr_t ret, intptr_t pre, intptr_t post, intptr_t data)');
  const cb = koffi.register((_fd: number, ret: number, _pre: number, _post: number, data: number) => {
    // data = file id * 2^16 + op index
    const file = files[Math.floor(data / 65536)];
    file?.completed(data % 65536, ret);
  }, koffi.pointer(cbType));
  binding = {
    glfs_new: f('intptr_t glfs_new(const char *volname)'),
    glfs_set_volfile_server: f('int glfs_set_volfile_server(intptr_t fs, const char *transport, const char *host, int port)'),
    glfs_set_logging: f('int glfs_set_logging(intptr_t fs, const char *logfile, int loglevel)'),
    glfs_init: f('int glfs_init(intptr_t fs)'),
    glfs_fini: f('int glfs_fini(intptr_t fs)'),
    glfs_open: f('intptr_t glfs_open(intptr_t fs, const char *path, int flags)'),
    glfs_creat: f('intptr_t glfs_creat(intptr_t fs, const char *path, int flags, uint32_t mode)'),
    glfs_close: f('int glfs_close(intptr_t fd)'),
    glfs_fstat: f('int glfs_fstat(intptr_t fd, _Out_ uint8_t *st)'),
    glfs_stat: f('int glfs_stat(intptr_t fs, const char *path, _Out_ uint8_t *st)'),
    glfs_ftruncate: f('int glfs_ftruncate(intptr_t fd, int64_t length, intptr_t pre, intptr_t post)'),
    glfs_unlink: f('int glfs_unlink(intptr_t fs, const char *path)'),
    glfs_preadv: f('intptr_t glfs_preadv(intptr_t fd, intptr_t iov, int iovcnt, int64_t offset, int flags)'),
    glfs_pwritev: f('intptr_t glfs_pwritev(intptr_t fd, intptr_t iov, int iovcnt, int64_t offset, int flags)'),
    glfs_fdatasync: f('int glfs_fdatasync(intptr_t fd, intptr_t pre, intptr_t post)'),
    glfs_discard: f('int glfs_discard(intptr_t fd, int64_t offset, size_t len)'),
    glfs_zerofill: f('int glfs_zerofill(intptr_t fd, int64_t offset, int64_t len)'),
    glfs_preadv_async: f('int glfs_preadv_async(intptr_t fd, intptr_t iov, int count, int64_t offset, int flags, intptr_t fn, intptr_t data)'),
    glfs_pwritev_async: f('int glfs_pwritev_async(intptr_t fd, intptr_t iov, int count, int64_t offset, int flags, intptr_t fn, intptr_t data)'),
    glfs_fdatasync_async: f('int glfs_fdatasync_async(intptr_t fd, intptr_t fn, intptr_t data)'),
    glfs_discard_async: f('int glfs_discard_async(intptr_t fd, int64_t offset, size_t len, intptr_t fn, intptr_t data)'),
    glfs_zerofill_async: f('int glfs_zerofill_async(intptr_t fd, int64_t offset, int64_t len, intptr_t fn, intptr_t data)'),
    glfs_file_lock: f('int glfs_file_lock(intptr_t fd, int cmd, uint8_t *flock, int mode)'),
    glfs_fsetxattr: f('int glfs_fsetxattr(intptr_t fd, const char *name, const uint8_t *value, size_t size, int flags)'),
    glfs_fgetxattr: f('intptr_t glfs_fgetxattr(intptr_t fd, const char *name, _Out_ uint8_t *value, size_t size)'),
    callback: Number(koffi.address(cb)),
  };
  return binding;
}

/** A synchronous call's result, with errno read on the same thread right after it. */
function sync(call: string, rc: unknown, detail = ''): number {
  const n = Number(rc);
  if (n < 0) throw new GlfsError(call, koffi.errno() || EIO, detail);
  return n;
}

/**
 * A blocking call run on a libuv pool thread (koffi's `.async()`): the JS
 * thread stays free for completions. errno is read on that thread by koffi
 * and handed back with the result.
 */
function onPool(fn: Fn, args: unknown[]): Promise<{ rc: number; errno: number }> {
  return new Promise((resolve, reject) => {
    fn.async(...args, (err: unknown, rc: unknown) => {
      if (err) reject(err instanceof Error ? err : new Error(String(err)));
      else resolve({ rc: Number(rc), errno: koffi.errno() });
    });
  });
}

async function poolCall(call: string, fn: Fn, args: unknown[], detail = ''): Promise<number> {
  const { rc, errno } = await onPool(fn, args);
  if (rc < 0) throw new GlfsError(call, errno || EIO, detail);
  return rc;
}

// ---------------------------------------------------------------- volumes

/** Where a volume's volfile comes from: glusterd over TCP, or its unix socket. */
export type VolfileServer = { transport: 'tcp'; host: string; port: number } | { transport: 'unix'; socket: string };

export function volumeKey(server: VolfileServer, volume: string): string {
  return server.transport === 'tcp' ? `tcp:${server.host}:${server.port}/${volume}` : `unix:${server.socket}/${volume}`;
}

/**
 * The process-wide table of initialised glfs_t: every device thread of the
 * process finds the same one for a server and volume, as tcmu-runner's
 * glfs_cache. It lives in a SharedArrayBuffer that the first thread to load
 * this module puts into the worker environment data, so threads started
 * after it (the device workers) see the same table. An entry is never
 * finalised: glfs_fini takes about 10 s (../shared/gluster.md) and a later
 * device on the same volume reuses the connection; a process serves few
 * volumes.
 *
 * Layout: Int32 [0] the table's mutex, then per entry: state (0 free,
 * 1 being initialised, 2 ready), users, address (two Int32 halves), key
 * length; the keys in a byte area after the control words.
 */
const ENTRIES = 64;
const WORDS = 5;
const KEY_BYTES = 512;
const REGISTRY_KEY = 'tcmu-ts:glfs-volumes';

function registry(): { ctl: Int32Array; keys: Uint8Array } {
  let sab = getEnvironmentData(REGISTRY_KEY) as SharedArrayBuffer | undefined;
  if (!(sab instanceof SharedArrayBuffer)) {
    sab = new SharedArrayBuffer(4 * (1 + ENTRIES * WORDS) + ENTRIES * KEY_BYTES);
    setEnvironmentData(REGISTRY_KEY, sab);
  }
  return { ctl: new Int32Array(sab, 0, 1 + ENTRIES * WORDS), keys: new Uint8Array(sab, 4 * (1 + ENTRIES * WORDS)) };
}
const table = registry();

function tableLock(): void {
  while (Atomics.compareExchange(table.ctl, 0, 0, 1) !== 0) Atomics.wait(table.ctl, 0, 1, 1);
}
function tableUnlock(): void {
  Atomics.store(table.ctl, 0, 0);
  Atomics.notify(table.ctl, 0);
}

function keyAt(i: number): string {
  const len = table.ctl[1 + i * WORDS + 4];
  return Buffer.from(table.keys.subarray(i * KEY_BYTES, i * KEY_BYTES + len)).toString('utf8');
}

/** What the table holds: for tests and status. */
export function volumeTable(): { key: string; users: number; ready: boolean }[] {
  const out: { key: string; users: number; ready: boolean }[] = [];
  for (let i = 0; i < ENTRIES; i++) {
    const state = Atomics.load(table.ctl, 1 + i * WORDS);
    if (state !== 0) out.push({ key: keyAt(i), users: Atomics.load(table.ctl, 1 + i * WORDS + 1), ready: state === 2 });
  }
  return out;
}

export interface VolumeOptions {
  /** gfapi's log file ('/dev/null' to drop it); default: gfapi's own (stderr-less, /var/log/glusterfs). */
  logFile?: string;
  logLevel?: number;
}

/** One glfs_t, counted by its users in this process. */
export class GlfsVolume {
  private released = false;

  private constructor(readonly key: string, readonly fs: number, private readonly entry: number) {}

  /**
   * The process's glfs_t for this server and volume, initialised by the
   * first caller (glfs_init blocks until the volume's graph is up or the
   * server refuses). Blocks: no IO of this thread may be in flight.
   */
  static acquire(server: VolfileServer, volume: string, opts: VolumeOptions = {}): GlfsVolume {
    const key = volumeKey(server, volume);
    const kb = Buffer.from(key, 'utf8');
    if (kb.length > KEY_BYTES) throw new ErrnoError('ENAMETOOLONG', `volume key too long: ${key}`);
    for (;;) {
      tableLock();
      let found = -1, free = -1;
      for (let i = 0; i < ENTRIES; i++) {
        const state = table.ctl[1 + i * WORDS];
        if (state === 0) { if (free < 0) free = i; continue; }
        if (keyAt(i) === key) { found = i; break; }
      }
      if (found >= 0) {
        const base = 1 + found * WORDS;
        if (table.ctl[base] === 2) {
          table.ctl[base + 1]++;
          const fs = (table.ctl[base + 2] >>> 0) + (table.ctl[base + 3] >>> 0) * 0x100000000;
          tableUnlock();
          return new GlfsVolume(key, fs, found);
        }
        // Another thread is initialising it: wait for its outcome, then look again.
        tableUnlock();
        Atomics.wait(table.ctl, base, 1, 100);
        continue;
      }
      if (free < 0) {
        tableUnlock();
        throw new ErrnoError('EMFILE', `more than ${ENTRIES} Gluster volumes in one process`);
      }
      const base = 1 + free * WORDS;
      table.ctl[base] = 1;
      table.ctl[base + 1] = 0;
      table.ctl[base + 4] = kb.length;
      table.keys.set(kb, free * KEY_BYTES);
      tableUnlock();
      let fs: number;
      try {
        fs = initVolume(server, volume, opts);
      } catch (e) {
        tableLock();
        table.ctl[base] = 0;
        tableUnlock();
        Atomics.notify(table.ctl, base);
        throw e;
      }
      tableLock();
      table.ctl[base + 1] = 1;
      table.ctl[base + 2] = fs % 0x100000000 | 0;
      table.ctl[base + 3] = Math.floor(fs / 0x100000000) | 0;
      table.ctl[base] = 2;
      tableUnlock();
      Atomics.notify(table.ctl, base);
      return new GlfsVolume(key, fs, free);
    }
  }

  /** One user fewer; the glfs_t stays for the next (see the table above). */
  release(): void {
    if (this.released) return;
    this.released = true;
    tableLock();
    table.ctl[1 + this.entry * WORDS + 1]--;
    tableUnlock();
  }

  /** stat(2)'s size of a path, or a GlfsError (ENOENT...). Blocks. */
  sizeOf(path: string): number {
    const st = new Uint8Array(STAT_SIZE);
    sync(`stat ${path}`, lib().glfs_stat(this.fs, path, st));
    return Number(new DataView(st.buffer).getBigInt64(STAT_SIZE_AT, true));
  }

  /** Create (or truncate to) a file of `size` bytes: for tests, benchmarks and tools. Blocks. */
  createFile(path: string, size: number): void {
    const b = lib();
    const fd = Number(b.glfs_creat(this.fs, path, O_RDWR | O_CREAT, 0o644));
    if (!fd) throw new GlfsError(`creating ${path}`, koffi.errno() || EIO);
    try {
      sync(`truncating ${path}`, b.glfs_ftruncate(fd, size, 0, 0));
    } finally {
      b.glfs_close(fd);
    }
  }

  unlink(path: string): void {
    sync(`unlink ${path}`, lib().glfs_unlink(this.fs, path));
  }
}

function initVolume(server: VolfileServer, volume: string, opts: VolumeOptions): number {
  const b = lib();
  const fs = Number(b.glfs_new(volume));
  if (!fs) throw new GlfsError(`glfs_new(${volume})`, koffi.errno() || EIO);
  const where = server.transport === 'tcp' ? `${server.host}:${server.port}` : server.socket;
  try {
    if (server.transport === 'tcp') sync('glfs_set_volfile_server', b.glfs_set_volfile_server(fs, 'tcp', server.host, server.port));
    else sync('glfs_set_volfile_server', b.glfs_set_volfile_server(fs, 'unix', server.socket, 0));
    if (opts.logFile) sync('glfs_set_logging', b.glfs_set_logging(fs, opts.logFile, opts.logLevel ?? 4));
    sync(`connecting to volume "${volume}" on ${where}`, b.glfs_init(fs));
  } catch (e) {
    // Nothing was served from it: no fini (10 s), its threads stop when the process does.
    throw e;
  }
  return fs;
}

// ---------------------------------------------------------------- files and IO

const enum Kind { Read, Write, Flush, Discard, Zerofill }
const KIND_NAMES = ['read', 'write', 'flush', 'discard', 'zerofill'];

export const MAX_IOVECS = 256;
const SLOT_BYTES = MAX_IOVECS * 16;

/** What turns a failed call into the error the command fails with (the handler's policy: EBUSY means fenced...). */
export type FailurePolicy = (e: GlfsError, what: string, offset: number, length: number) => Error;

/**
 * One asynchronous call in flight, and its own thenable: `then` keeps the
 * two callbacks, the completion calls one of them and puts the record back
 * in its file's pool. One consumer per operation (the engine, or an await).
 */
export class GlfsOp implements PromiseLike<void> {
  kind = Kind.Read;
  offset = 0;
  length = 0;
  iovcnt = 0;
  private ok: ((v: void) => unknown) | undefined;
  private fail: ((e: unknown) => unknown) | undefined;
  /** 0 in flight, 1 done, 2 failed (result waiting for `then`). */
  private state = 0;
  private error: unknown;

  constructor(readonly file: GlfsFile, readonly index: number, readonly slot: number) {}

  then<T1 = void, T2 = never>(ok?: ((v: void) => T1 | PromiseLike<T1>) | null, fail?: ((e: unknown) => T2 | PromiseLike<T2>) | null): PromiseLike<T1 | T2> {
    this.ok = ok ?? undefined;
    this.fail = fail ?? undefined;
    if (this.state !== 0) this.deliver();
    // The engine and `await` ignore what then() returns; nothing else chains on an op.
    return this as unknown as PromiseLike<T1 | T2>;
  }

  /** @internal */
  settle(error: unknown): void {
    this.state = error === undefined ? 1 : 2;
    this.error = error;
    if (this.ok !== undefined || this.fail !== undefined) this.deliver();
  }

  private deliver(): void {
    const { ok, fail, state, error } = this;
    this.ok = this.fail = undefined;
    this.error = undefined;
    this.state = 0;
    this.file.recycle(this);
    if (state === 1) ok?.();
    else fail?.(error);
  }
}

/** The JS thread's loop is kept alive while IO is in flight: koffi's queued callbacks do not hold it. */
let keepAlive: NodeJS.Timeout | undefined;
let inFlightOnThread = 0;
function busy(): void {
  if (inFlightOnThread++ === 0) {
    keepAlive ??= setInterval(() => {}, 1 << 30);
    keepAlive.ref();
  }
}
function idle(): void {
  if (--inFlightOnThread === 0) keepAlive!.unref();
}

/** An open glfs_fd_t with its pool of operation records and their native iovec slots. */
export class GlfsFile {
  private fd: number;
  private readonly id: number;
  private readonly ops: GlfsOp[] = [];
  private readonly free: GlfsOp[] = [];
  private arena = 0n;
  private arenaAddr = 0;
  private arenaView = new DataView(new ArrayBuffer(0));
  private readonly retired: bigint[] = [];
  private pending = 0;
  private closing: (() => void) | undefined;

  private constructor(readonly volume: GlfsVolume, readonly path: string, fd: number, private readonly policy: FailurePolicy) {
    this.fd = fd;
    this.id = freeFileIds.pop() ?? files.length;
    files[this.id] = this;
    this.grow(32);
  }

  /** glfs_open with O_DIRECT (acknowledged means on the brick). Blocks. */
  static open(volume: GlfsVolume, path: string, policy: FailurePolicy): GlfsFile {
    const fd = Number(lib().glfs_open(volume.fs, path, O_RDWR | O_DIRECT | O_LARGEFILE));
    if (!fd) throw new GlfsError(`opening ${path}`, koffi.errno() || EIO);
    return new GlfsFile(volume, path, fd, policy);
  }

  /**
   * A new glfs_fd_t for the same file (on the pool), the old one closed once
   * its calls are back. The client marks an fd that held locks bad (EBADFD)
   * when its brick went away: locks cannot be restored on reconnect.
   */
  async reopen(): Promise<void> {
    const b = lib();
    const { rc, errno } = await onPool(b.glfs_open, [this.volume.fs, this.path, O_RDWR | O_DIRECT | O_LARGEFILE]);
    if (!rc) throw new GlfsError(`reopening ${this.path}`, errno || EIO);
    if (!this.fd) {
      await onPool(b.glfs_close, [rc]);
      return;
    }
    const old = this.fd;
    this.fd = rc;
    this.stale.push(old);
    if (this.pending === 0) await this.closeStale();
  }

  private readonly stale: number[] = [];

  private async closeStale(): Promise<void> {
    for (const fd of this.stale.splice(0)) await onPool(lib().glfs_close, [fd]).catch(() => undefined);
  }

  // ------------------------------------------------------------ setup (blocking, before any IO)

  size(): number {
    const st = new Uint8Array(STAT_SIZE);
    sync(`fstat ${this.path}`, lib().glfs_fstat(this.fd, st));
    return Number(new DataView(st.buffer).getBigInt64(STAT_SIZE_AT, true));
  }

  /** Ask the brick to enforce mandatory locks on this file: false when the volume does not support it (EINVAL). */
  enforceMandatoryLocks(): boolean {
    const value = Buffer.from('set\0');
    const rc = Number(lib().glfs_fsetxattr(this.fd, ENFORCE_MANDATORY_LOCK, value, value.length, 0));
    if (rc === 0) return true;
    const errno = koffi.errno();
    if (errno === constants.errno.EINVAL) return false;
    throw new GlfsError(`setting ${ENFORCE_MANDATORY_LOCK}`, errno || EIO);
  }

  // ------------------------------------------------------------ calls that may overlap IO (on the pool)

  async sizeAsync(): Promise<number> {
    const st = new Uint8Array(STAT_SIZE);
    await poolCall(`fstat ${this.path}`, lib().glfs_fstat, [this.fd, st]);
    return Number(new DataView(st.buffer).getBigInt64(STAT_SIZE_AT, true));
  }

  /** A whole-file mandatory lock (F_SETLK, GLFS_LK_MANDATORY): preempts another client's; `false` unlocks. */
  async lock(take: boolean): Promise<void> {
    const fl = new Uint8Array(FLOCK_SIZE);
    // tcmu-runner asks for F_WRLCK | F_RDLCK, which is F_WRLCK; start 0, length 0: the whole file.
    new DataView(fl.buffer).setInt16(0, take ? F_WRLCK | F_RDLCK : F_UNLCK, true);
    await poolCall(take ? 'glfs_file_lock(F_WRLCK)' : 'glfs_file_lock(F_UNLCK)', lib().glfs_file_lock, [this.fd, F_SETLK, fl, GLFS_LK_MANDATORY]);
  }

  async setXattr(name: string, value: string): Promise<void> {
    const v = Buffer.from(value, 'utf8');
    await poolCall(`setting ${name}`, lib().glfs_fsetxattr, [this.fd, name, v, v.length, 0]);
  }

  /** undefined when the file has no such attribute. */
  async getXattr(name: string): Promise<string | undefined> {
    const buf = new Uint8Array(256);
    const { rc, errno } = await onPool(lib().glfs_fgetxattr, [this.fd, name, buf, buf.length]);
    if (rc < 0) {
      if (errno === constants.errno.ENODATA) return undefined;
      throw new GlfsError(`reading ${name}`, errno || EIO);
    }
    return Buffer.from(buf.subarray(0, rc)).toString('utf8');
  }

  // ------------------------------------------------------------ asynchronous IO

  /** iovecs are offsets from `base` (an address: the ring mapping, or a native buffer). */
  readv(iov: readonly IoVec[], base: number, offset: number, length: number): GlfsOp {
    const op = this.take(Kind.Read, offset, length);
    this.putIovecs(op, iov, base);
    this.submit(op, lib().glfs_preadv_async(this.fd, this.arenaAddr + op.slot, op.iovcnt, offset, 0, binding!.callback, this.id * 65536 + op.index));
    return op;
  }

  writev(iov: readonly IoVec[], base: number, offset: number, length: number): GlfsOp {
    const op = this.take(Kind.Write, offset, length);
    this.putIovecs(op, iov, base);
    this.submit(op, lib().glfs_pwritev_async(this.fd, this.arenaAddr + op.slot, op.iovcnt, offset, 0, binding!.callback, this.id * 65536 + op.index));
    return op;
  }

  fdatasync(): GlfsOp {
    const op = this.take(Kind.Flush, 0, 0);
    this.submit(op, lib().glfs_fdatasync_async(this.fd, binding!.callback, this.id * 65536 + op.index));
    return op;
  }

  discard(offset: number, length: number): GlfsOp {
    const op = this.take(Kind.Discard, offset, length);
    this.submit(op, lib().glfs_discard_async(this.fd, offset, length, binding!.callback, this.id * 65536 + op.index));
    return op;
  }

  zerofill(offset: number, length: number): GlfsOp {
    const op = this.take(Kind.Zerofill, offset, length);
    this.submit(op, lib().glfs_zerofill_async(this.fd, offset, length, binding!.callback, this.id * 65536 + op.index));
    return op;
  }

  get inFlight(): number {
    return this.pending;
  }

  private take(kind: Kind, offset: number, length: number): GlfsOp {
    if (!this.fd) throw new ErrnoError('EBADF', `${this.path} is closed`);
    let op = this.free.pop();
    if (!op) {
      if (this.ops.length >= 65536) throw new ErrnoError('ENOMEM', 'too many operations in flight');
      if ((this.ops.length + 1) * SLOT_BYTES > this.arenaView.byteLength) this.grow(this.ops.length * 2);
      op = new GlfsOp(this, this.ops.length, this.ops.length * SLOT_BYTES);
      this.ops.push(op);
    }
    op.kind = kind;
    op.offset = offset;
    op.length = length;
    op.iovcnt = 0;
    this.pending++;
    busy();
    return op;
  }

  /** A submission refused at once: find out why (errno is this thread's now) and fail the op. */
  private submit(op: GlfsOp, rc: unknown): void {
    if (Number(rc) >= 0) return;
    const errno = koffi.errno() || EIO;
    this.finish(op, this.policy(new GlfsError(`glfs_${KIND_NAMES[op.kind]}_async`, errno), KIND_NAMES[op.kind], op.offset, op.length));
  }

  private putIovecs(op: GlfsOp, iov: readonly IoVec[], base: number): void {
    if (iov.length > MAX_IOVECS) throw new ErrnoError('EINVAL', `${iov.length} iovecs in one IO (at most ${MAX_IOVECS})`);
    const dv = this.arenaView;
    let at = op.slot;
    for (let i = 0; i < iov.length; i++, at += 16) {
      const addr = base + iov[i].offset;
      dv.setUint32(at, addr >>> 0, true);
      dv.setUint32(at + 4, Math.floor(addr / 0x100000000), true);
      dv.setUint32(at + 8, iov[i].length, true);
      dv.setUint32(at + 12, 0, true);
    }
    op.iovcnt = iov.length;
  }

  /** @internal From this thread's gfapi callback. */
  completed(index: number, ret: number): void {
    const op = this.ops[index];
    if (!op) return;
    const expect = op.kind === Kind.Read || op.kind === Kind.Write ? op.length : -1;
    if (ret >= 0 && (expect < 0 || ret === expect)) {
      this.finish(op, undefined);
      return;
    }
    if (ret >= 0) {
      this.finish(op, this.policy(new GlfsError(`${KIND_NAMES[op.kind]} of ${op.length} bytes`, EIO, `${ret} done`), KIND_NAMES[op.kind], op.offset, op.length));
      return;
    }
    void this.recover(op);
  }

  /**
   * The callback says -1 and not why: issue the same call again,
   * synchronously on a pool thread, where errno is readable. Writes and
   * the rest are idempotent; a call that now succeeds has done its work.
   */
  private async recover(op: GlfsOp): Promise<void> {
    const b = lib();
    const iov = this.arenaAddr + op.slot;
    let r: { rc: number; errno: number };
    try {
      switch (op.kind) {
        case Kind.Read: r = await onPool(b.glfs_preadv, [this.fd, iov, op.iovcnt, op.offset, 0]); break;
        case Kind.Write: r = await onPool(b.glfs_pwritev, [this.fd, iov, op.iovcnt, op.offset, 0]); break;
        case Kind.Flush: r = await onPool(b.glfs_fdatasync, [this.fd, 0, 0]); break;
        case Kind.Discard: r = await onPool(b.glfs_discard, [this.fd, op.offset, op.length]); break;
        default: r = await onPool(b.glfs_zerofill, [this.fd, op.offset, op.length]); break;
      }
    } catch (e) {
      r = { rc: -1, errno: EIO };
      void e;
    }
    const expect = op.kind === Kind.Read || op.kind === Kind.Write ? op.length : -1;
    if (r.rc >= 0 && (expect < 0 || r.rc === expect)) this.finish(op, undefined);
    else {
      const errno = r.rc < 0 ? r.errno || EIO : EIO;
      this.finish(op, this.policy(new GlfsError(`glfs_${KIND_NAMES[op.kind]}`, errno), KIND_NAMES[op.kind], op.offset, op.length));
    }
  }

  private finish(op: GlfsOp, error: unknown): void {
    this.pending--;
    idle();
    op.settle(error);
    if (this.pending === 0) {
      if (this.stale.length) void this.closeStale();
      if (this.closing) this.closing();
    }
  }

  /** @internal */
  recycle(op: GlfsOp): void {
    this.free.push(op);
  }

  private grow(ops: number): void {
    const bytes = ops * SLOT_BYTES;
    const arena = koffi.alloc('uint8_t', bytes) as unknown as bigint;
    const view = new DataView(koffi.view(arena, bytes) as ArrayBuffer);
    if (this.arenaAddr) {
      // gfapi may still read iovecs of calls in flight (and a failed call's retry does): keep the old block until close.
      new Uint8Array(view.buffer).set(new Uint8Array(this.arenaView.buffer, 0, this.ops.length * SLOT_BYTES));
      this.retired.push(this.arena);
    }
    this.arena = arena;
    this.arenaAddr = Number(arena);
    this.arenaView = view;
  }

  /** Wait for calls in flight, then glfs_close (on the pool: the volume may be unreachable). */
  async close(): Promise<void> {
    if (!this.fd) return;
    if (this.pending > 0) await new Promise<void>((r) => { this.closing = r; });
    const fd = this.fd;
    this.fd = 0;
    await onPool(lib().glfs_close, [fd]).catch(() => undefined);
    await this.closeStale();
    files[this.id] = undefined;
    freeFileIds.push(this.id);
    koffi.free(this.arena);
    for (const a of this.retired) koffi.free(a);
    this.retired.length = 0;
  }
}

/** Memory gfapi reads or fills after a call returns, outside the ring (buffers of a direct caller, a bench). */
export class NativeBuffer {
  private block: bigint;
  readonly address: number;
  readonly bytes: Uint8Array;
  readonly iovecs: readonly IoVec[];

  constructor(length: number, align = 4096) {
    // O_DIRECT wants aligned memory: over-allocate and align by hand.
    this.block = koffi.alloc('uint8_t', Math.max(1, length) + align) as unknown as bigint;
    const raw = Number(this.block);
    const pad = (align - (raw % align)) % align;
    this.address = raw + pad;
    this.bytes = new Uint8Array(koffi.view(this.block, Math.max(1, length) + align) as ArrayBuffer, pad, length);
    this.iovecs = [{ offset: 0, length }];
  }

  free(): void {
    if (this.block === 0n) return;
    koffi.free(this.block);
    this.block = 0n;
  }
}

/** glfs_fini, for a process that wants to end its volumes cleanly (takes about 10 s). */
export function finiVolume(fs: number): void {
  lib().glfs_fini(fs);
}
