/**
 * librados and librbd through koffi: the calls the rbd handler makes, and
 * the completion machinery of asynchronous IO.
 *
 * Completions follow what ../shared/ceph.md measured fastest from Node:
 * completions without a callback, librbd told to write to a pipe when any
 * finishes (rbd_set_image_notification), and the pipe read on this thread's
 * event loop, where rbd_poll_io_events hands back every finished completion.
 * koffi callbacks would block librbd's own thread until JS runs them and
 * deadlock against synchronous calls made meanwhile.
 *
 * Everything the C side keeps a pointer to after a call returns (iovec
 * arrays of a readv, a compare-and-write's mismatch offset) lives in native
 * memory that belongs to the operation's record, never in JS-owned buffers.
 * Pointers cross as plain numbers (intptr_t), so the IO path creates no
 * External objects. All of it runs on the one thread that opened the image.
 */
import net from 'node:net';
import { constants } from 'node:os';
import koffi from 'koffi';
import { ErrnoError, type IoVec } from '@tcmu-ts/core';
import { errnoName } from '@tcmu-ts/ring';

/** A librados/librbd call failed: `code` is its errno name ('ETIMEDOUT', 'ESHUTDOWN', ...). */
export class RbdError extends ErrnoError {
  constructor(readonly call: string, readonly rc: number) {
    super(errnoName(-rc) ?? 'EIO', `${call} failed (${rc})`);
    this.name = 'RbdError';
  }
}

const { ENOENT } = constants.errno;
const EVENT_TYPE_PIPE = 1;
const LOCK_MODE_EXCLUSIVE = 0;
export const RBD_FEATURE_EXCLUSIVE_LOCK = 1n << 2n;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
/** sizeof(rbd_image_info_t) on x86_64 (size, obj_size, num_objs, order, then deprecated fields). */
const IMAGE_INFO_SIZE = 160;

type Fn = (...args: unknown[]) => unknown;

interface Binding {
  rados_create: Fn; rados_conf_read_file: Fn; rados_conf_set: Fn; rados_conf_get: Fn; rados_connect: Fn;
  rados_shutdown: Fn; rados_ioctx_create: Fn; rados_ioctx_destroy: Fn; rados_mon_command: Fn; rados_buffer_free: Fn;
  rados_service_register: Fn; rados_service_update_status: Fn; rados_getaddrs: Fn;
  rbd_open: Fn; rbd_open_read_only: Fn; rbd_close: Fn; rbd_get_size: Fn; rbd_stat: Fn; rbd_get_features: Fn;
  rbd_set_image_notification: Fn; rbd_poll_io_events: Fn;
  rbd_aio_create_completion: Fn; rbd_aio_get_arg: Fn; rbd_aio_get_return_value: Fn; rbd_aio_release: Fn; rbd_aio_is_complete: Fn;
  rbd_aio_readv: Fn; rbd_aio_writev: Fn; rbd_aio_flush: Fn; rbd_aio_write_zeroes: Fn; rbd_aio_writesame: Fn;
  rbd_aio_compare_and_write: Fn;
  rbd_is_exclusive_lock_owner: Fn; rbd_lock_acquire: Fn; rbd_lock_release: Fn; rbd_lock_get_owners: Fn;
  rbd_lock_get_owners_cleanup: Fn; rbd_lock_break: Fn; rbd_metadata_get: Fn; rbd_metadata_set: Fn;
  rbd_diff_iterate2: Fn; diffCallback: ReturnType<typeof koffi.proto>;
  pipe2: Fn; read: Fn; close: Fn;
}

let binding: Binding | undefined;

/**
 * Load librados and librbd on first use (per thread: koffi functions belong
 * to an isolate). A machine without them gets one clear error, not a crash
 * at import time of everything that imports the handlers.
 */
function lib(): Binding {
  if (binding) return binding;
  let rados: ReturnType<typeof koffi.load>, rbd: ReturnType<typeof koffi.load>;
  try {
    rados = koffi.load('librados.so.2');
    rbd = koffi.load('librbd.so.1');
  } catch (e) {
    throw new ErrnoError('ENOPKG', `cannot load librbd (install the librbd1 package): ${e instanceof Error ? e.message : String(e)}`);
  }
  const libc = koffi.load('libc.so.6');
  const diffCallback = koffi.proto('int rbd_diff_iterate_cb(uint64_t off, size_t len, int exists, void *arg)');
  binding = {
    rados_create: rados.func('int rados_create(_Out_ intptr_t *cluster, const char *id)'),
    rados_conf_read_file: rados.func('int rados_conf_read_file(intptr_t cluster, const char *path)'),
    rados_conf_set: rados.func('int rados_conf_set(intptr_t cluster, const char *option, const char *value)'),
    rados_conf_get: rados.func('int rados_conf_get(intptr_t cluster, const char *option, _Out_ uint8_t *buf, size_t len)'),
    rados_connect: rados.func('int rados_connect(intptr_t cluster)'),
    rados_shutdown: rados.func('void rados_shutdown(intptr_t cluster)'),
    rados_ioctx_create: rados.func('int rados_ioctx_create(intptr_t cluster, const char *pool, _Out_ intptr_t *io)'),
    rados_ioctx_destroy: rados.func('void rados_ioctx_destroy(intptr_t io)'),
    rados_mon_command: rados.func('int rados_mon_command(intptr_t cluster, const char **cmd, size_t cmdlen, const char *inbuf, size_t inbuflen, _Out_ intptr_t *outbuf, _Out_ size_t *outbuflen, _Out_ intptr_t *outs, _Out_ size_t *outslen)'),
    rados_buffer_free: rados.func('void rados_buffer_free(intptr_t buf)'),
    rados_service_register: rados.func('int rados_service_register(intptr_t cluster, const char *service, const char *daemon, const uint8_t *metadata)'),
    rados_service_update_status: rados.func('int rados_service_update_status(intptr_t cluster, const uint8_t *status)'),
    rados_getaddrs: rados.func('int rados_getaddrs(intptr_t cluster, _Out_ intptr_t *addrs)'),
    rbd_open: rbd.func('int rbd_open(intptr_t io, const char *name, _Out_ intptr_t *image, const char *snap)'),
    rbd_open_read_only: rbd.func('int rbd_open_read_only(intptr_t io, const char *name, _Out_ intptr_t *image, const char *snap)'),
    rbd_close: rbd.func('int rbd_close(intptr_t image)'),
    rbd_get_size: rbd.func('int rbd_get_size(intptr_t image, _Out_ uint64_t *size)'),
    rbd_stat: rbd.func('int rbd_stat(intptr_t image, _Out_ uint8_t *info, size_t infosize)'),
    rbd_get_features: rbd.func('int rbd_get_features(intptr_t image, _Out_ uint64_t *features)'),
    rbd_set_image_notification: rbd.func('int rbd_set_image_notification(intptr_t image, int fd, int type)'),
    rbd_poll_io_events: rbd.func('int rbd_poll_io_events(intptr_t image, intptr_t comps, int numcomp)'),
    rbd_aio_create_completion: rbd.func('int rbd_aio_create_completion(intptr_t arg, intptr_t cb, _Out_ intptr_t *c)'),
    rbd_aio_get_arg: rbd.func('intptr_t rbd_aio_get_arg(intptr_t c)'),
    rbd_aio_get_return_value: rbd.func('int64_t rbd_aio_get_return_value(intptr_t c)'),
    rbd_aio_release: rbd.func('void rbd_aio_release(intptr_t c)'),
    rbd_aio_is_complete: rbd.func('int rbd_aio_is_complete(intptr_t c)'),
    rbd_aio_readv: rbd.func('int rbd_aio_readv(intptr_t image, intptr_t iov, int iovcnt, uint64_t off, intptr_t c)'),
    rbd_aio_writev: rbd.func('int rbd_aio_writev(intptr_t image, intptr_t iov, int iovcnt, uint64_t off, intptr_t c)'),
    rbd_aio_flush: rbd.func('int rbd_aio_flush(intptr_t image, intptr_t c)'),
    rbd_aio_write_zeroes: rbd.func('int rbd_aio_write_zeroes(intptr_t image, uint64_t off, size_t len, intptr_t c, int zero_flags, int op_flags)'),
    rbd_aio_writesame: rbd.func('int rbd_aio_writesame(intptr_t image, uint64_t off, size_t len, intptr_t buf, size_t data_len, intptr_t c, int op_flags)'),
    rbd_aio_compare_and_write: rbd.func('int64_t rbd_aio_compare_and_write(intptr_t image, uint64_t off, size_t len, intptr_t cmp_buf, intptr_t buf, intptr_t c, intptr_t mismatch_off, int op_flags)'),
    rbd_is_exclusive_lock_owner: rbd.func('int rbd_is_exclusive_lock_owner(intptr_t image, _Out_ int *is_owner)'),
    rbd_lock_acquire: rbd.func('int rbd_lock_acquire(intptr_t image, int mode)'),
    rbd_lock_release: rbd.func('int rbd_lock_release(intptr_t image)'),
    rbd_lock_get_owners: rbd.func('int rbd_lock_get_owners(intptr_t image, _Out_ int *mode, _Out_ intptr_t *owners, _Inout_ size_t *max_owners)'),
    rbd_lock_get_owners_cleanup: rbd.func('void rbd_lock_get_owners_cleanup(intptr_t *owners, size_t count)'),
    rbd_lock_break: rbd.func('int rbd_lock_break(intptr_t image, int mode, const char *owner)'),
    rbd_metadata_get: rbd.func('int rbd_metadata_get(intptr_t image, const char *key, _Out_ uint8_t *value, _Inout_ size_t *len)'),
    rbd_metadata_set: rbd.func('int rbd_metadata_set(intptr_t image, const char *key, const char *value)'),
    rbd_diff_iterate2: rbd.func('int rbd_diff_iterate2(intptr_t image, const char *fromsnapname, uint64_t ofs, uint64_t len, uint8_t include_parent, uint8_t whole_object, rbd_diff_iterate_cb *cb, intptr_t arg)'),
    diffCallback,
    pipe2: libc.func('int pipe2(_Out_ int *fds, int flags)'),
    read: libc.func('long read(int fd, _Out_ uint8_t *buf, size_t count)'),
    close: libc.func('int close(int fd)'),
  };
  return binding;
}

/** 64-bit little-endian fields as two halves: no BigInt per IO. Addresses and lengths stay below 2^53. */
function putU64(dv: DataView, at: number, v: number): void {
  dv.setUint32(at, v >>> 0, true);
  dv.setUint32(at + 4, Math.floor(v / 0x100000000), true);
}
function getU64(dv: DataView, at: number): number {
  return dv.getUint32(at, true) + dv.getUint32(at + 4, true) * 0x100000000;
}

function check(call: string, rc: unknown): number {
  const n = Number(rc);
  if (n < 0) throw new RbdError(call, n);
  return n;
}

/** A C string librados allocated, read and freed. */
function takeString(ptr: number, len?: number): string {
  if (!ptr) return '';
  const s = len === undefined ? (koffi.decode(ptr, 'char', -1) as string) : Buffer.from(koffi.view(ptr, len) as ArrayBuffer).toString('utf8');
  lib().rados_buffer_free(ptr);
  return s;
}

/** "k\0v\0k\0v\0\0", the dictionary rados_service_register and _update_status take. */
function nulDict(entries: Record<string, string>): Uint8Array {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(entries)) parts.push(k, v);
  return Buffer.from(parts.map((p) => `${p}\0`).join('') + '\0', 'utf8');
}

export interface ClusterOptions {
  /** Ceph user without "client." (tcmu-runner's id=); default: librados' default (admin). */
  id?: string;
  /** ceph.conf path; default: librados' search path (CEPH_CONF, /etc/ceph/ceph.conf). */
  conf?: string;
  /** rados_osd_op_timeout in seconds, as a string (tcmu-runner passes it through). */
  osdOpTimeout?: string;
  /** More librados options (client_mount_timeout, ...). */
  settings?: Record<string, string>;
}

/** One rados_t: a connection to a cluster. */
export class RadosCluster {
  private handle: number;

  private constructor(handle: number) {
    this.handle = handle;
  }

  /** rados_create + conf + connect; the rbd cache is off, as tcmu-runner has it, so every acknowledged write is on the OSDs. */
  static connect(o: ClusterOptions): RadosCluster {
    const b = lib();
    const out = [0];
    check('rados_create', b.rados_create(out, o.id ?? null));
    const cluster = new RadosCluster(out[0]);
    try {
      const rc = Number(b.rados_conf_read_file(cluster.handle, o.conf ?? null));
      if (o.conf && rc < 0) throw new RbdError(`reading ceph config ${o.conf}`, rc);
      b.rados_conf_set(cluster.handle, 'rbd_cache', 'false');
      if (o.osdOpTimeout) check('rados_conf_set(rados_osd_op_timeout)', b.rados_conf_set(cluster.handle, 'rados_osd_op_timeout', o.osdOpTimeout));
      for (const [k, v] of Object.entries(o.settings ?? {})) check(`rados_conf_set(${k})`, b.rados_conf_set(cluster.handle, k, v));
      check('rados_connect', b.rados_connect(cluster.handle));
    } catch (e) {
      cluster.shutdown();
      throw e;
    }
    return cluster;
  }

  get raw(): number {
    return this.handle;
  }

  confGet(option: string): string | undefined {
    const buf = new Uint8Array(256);
    if (Number(lib().rados_conf_get(this.handle, option, buf, buf.length)) < 0) return undefined;
    const end = buf.indexOf(0);
    return Buffer.from(buf.subarray(0, end < 0 ? buf.length : end)).toString('utf8');
  }

  openPool(pool: string): number {
    const out = [0];
    check(`rados_ioctx_create(${pool})`, lib().rados_ioctx_create(this.handle, pool, out));
    return out[0];
  }

  closePool(io: number): void {
    lib().rados_ioctx_destroy(io);
  }

  /** A monitor command (JSON), e.g. {"prefix": "osd blocklist", "blocklistop": "rm", ...}; returns its output. */
  monCommand(cmd: Record<string, unknown>): string {
    const b = lib();
    const outbuf = [0], outbuflen = [0], outs = [0], outslen = [0];
    const rc = Number(b.rados_mon_command(this.handle, [JSON.stringify(cmd)], 1, '', 0, outbuf, outbuflen, outs, outslen));
    const out = takeString(outbuf[0], outbuflen[0]);
    const status = takeString(outs[0], outslen[0]);
    if (rc < 0) throw new RbdError(`mon command ${String(cmd.prefix)}${status ? `: ${status}` : ''}`, rc);
    return out;
  }

  /** rados_service_register: the gateway shows in `ceph -s` / the service map (no mgr needed to call it). */
  serviceRegister(service: string, daemon: string, metadata: Record<string, string>): void {
    check('rados_service_register', lib().rados_service_register(this.handle, service, daemon, nulDict(metadata)));
  }

  serviceUpdateStatus(status: Record<string, string>): void {
    check('rados_service_update_status', lib().rados_service_update_status(this.handle, nulDict(status)));
  }

  /** This client's addresses, as the OSD blocklist names them. */
  addresses(): string {
    const out = [0];
    check('rados_getaddrs', lib().rados_getaddrs(this.handle, out));
    return takeString(out[0]);
  }

  shutdown(): void {
    if (!this.handle) return;
    lib().rados_shutdown(this.handle);
    this.handle = 0;
  }
}

export interface ImageInfo {
  size: number;
  objectSize: number;
}

/** One extent rbd_diff_iterate2 reported, in bytes of the image. */
export interface DiffExtent {
  offset: number;
  length: number;
  exists: boolean;
}

/** Who holds an image's exclusive lock, as rbd_lock_get_owners names them (the client's address, "127.0.0.1:0/<nonce>"). */
export type LockOwner = string;

/** What an op record reports back. */
type Settle = (rc: number, mismatchOffset: number) => void;

/**
 * One in-flight asynchronous call: its completion's cb_arg is the record's
 * index. The native memory for what librbd reads after submission (iovecs,
 * the mismatch offset) is the record's own slot, reused by the next call.
 */
interface AioOp {
  readonly index: number;
  readonly slot: number;
  settle: Settle | undefined;
  completion: number;
  /** COMPARE AND WRITE's completion never reaches the pipe on librbd 16: it is polled. */
  polled: boolean;
}

/** Bytes of native memory per op: iovecs (16 bytes each) plus 8 for a mismatch offset. */
export const MAX_IOVECS = 256;
const SLOT_BYTES = MAX_IOVECS * 16 + 16;
/** rbd_poll_io_events takes this many at a time. */
const EVENTS_PER_POLL = 64;

/** One rbd_image_t with its completion pipe. */
export class RbdImage {
  private handle: number;
  private readonly ops: AioOp[] = [];
  private readonly free: AioOp[] = [];
  private readonly polled = new Set<AioOp>();
  private pollTimer: NodeJS.Timeout | undefined;
  private pending = 0;
  private readonly notify: CompletionPipe;
  private readonly ownPipe: boolean;
  /** Reads the notification pipe on this thread's event loop, when the image owns its pipe. */
  private readonly watcher: net.Socket | undefined;
  /** Native memory: op slots, then the poll-events array. */
  private arena: bigint;
  private arenaBytes: number;
  private arenaView: DataView;
  private arenaAddr: number;
  private readonly completionOut = [0];

  /**
   * `pipe`: a notification pipe the caller owns and reaps (reap() from its
   * own poll loop); without one the image makes its own and reaps it from
   * this thread's event loop.
   */
  private constructor(handle: number, pipe?: CompletionPipe) {
    this.handle = handle;
    const b = lib();
    this.ownPipe = pipe === undefined;
    this.notify = pipe ?? CompletionPipe.create();
    try {
      check('rbd_set_image_notification', b.rbd_set_image_notification(handle, this.notify.writeFd, EVENT_TYPE_PIPE));
    } catch (e) {
      if (this.ownPipe) this.notify.close();
      throw e;
    }
    if (this.ownPipe) {
      this.watcher = new net.Socket({ fd: this.notify.readFd, readable: true, writable: false });
      this.watcher.on('data', () => this.reap());
      this.watcher.on('error', () => {});
      this.watcher.unref();
    }
    this.arenaBytes = 0;
    this.arena = 0n;
    this.arenaAddr = 0;
    this.arenaView = new DataView(new ArrayBuffer(0));
    this.grow(32);
  }

  static open(io: number, name: string, snap: string | undefined, readOnly: boolean, pipe?: CompletionPipe): RbdImage {
    const out = [0];
    const open = readOnly ? lib().rbd_open_read_only : lib().rbd_open;
    check(`opening image ${name}${snap ? `@${snap}` : ''}`, open(io, name, out, snap ?? null));
    try {
      return new RbdImage(out[0], pipe);
    } catch (e) {
      lib().rbd_close(out[0]);
      throw e;
    }
  }

  size(): number {
    const out = [0];
    check('rbd_get_size', lib().rbd_get_size(this.handle, out));
    return Number(out[0]);
  }

  info(): ImageInfo {
    const buf = new Uint8Array(IMAGE_INFO_SIZE);
    check('rbd_stat', lib().rbd_stat(this.handle, buf, buf.length));
    const dv = new DataView(buf.buffer);
    return { size: Number(dv.getBigUint64(0, true)), objectSize: Number(dv.getBigUint64(8, true)) };
  }

  features(): bigint {
    const out = [0n];
    check('rbd_get_features', lib().rbd_get_features(this.handle, out));
    return BigInt(out[0]);
  }

  // ------------------------------------------------------------ asynchronous IO

  readv(iov: readonly IoVec[], base: number, offset: number, settle: Settle): void {
    const op = this.take(settle);
    const n = this.putIovecs(op, iov, base);
    this.submit(op, 'rbd_aio_readv', lib().rbd_aio_readv(this.handle, this.arenaAddr + op.slot, n, offset, op.completion));
  }

  writev(iov: readonly IoVec[], base: number, offset: number, settle: Settle): void {
    const op = this.take(settle);
    const n = this.putIovecs(op, iov, base);
    this.submit(op, 'rbd_aio_writev', lib().rbd_aio_writev(this.handle, this.arenaAddr + op.slot, n, offset, op.completion));
  }

  flush(settle: Settle): void {
    const op = this.take(settle);
    this.submit(op, 'rbd_aio_flush', lib().rbd_aio_flush(this.handle, op.completion));
  }

  writeZeroes(offset: number, length: number, settle: Settle): void {
    const op = this.take(settle);
    this.submit(op, 'rbd_aio_write_zeroes', lib().rbd_aio_write_zeroes(this.handle, offset, length, op.completion, 0, 0));
  }

  /** `pattern` is native memory the caller keeps until `settle` runs. */
  writeSame(offset: number, length: number, pattern: number, patternLength: number, settle: Settle): void {
    const op = this.take(settle);
    this.submit(op, 'rbd_aio_writesame', lib().rbd_aio_writesame(this.handle, offset, length, pattern, patternLength, op.completion, 0));
  }

  /**
   * One sector, both buffers native memory kept by the caller until `settle`;
   * a miscompare settles with -EILSEQ and the mismatch offset librbd gives
   * (counted from the start of its object).
   */
  compareAndWrite(offset: number, length: number, compare: number, data: number, settle: Settle): void {
    const op = this.take(settle);
    op.polled = true;
    this.arenaView.setBigUint64(op.slot + MAX_IOVECS * 16, 0n, true);
    this.submit(op, 'rbd_aio_compare_and_write', lib().rbd_aio_compare_and_write(
      this.handle, offset, length, compare, data, op.completion, this.arenaAddr + op.slot + MAX_IOVECS * 16, 0));
    if (op.settle === undefined) return;
    this.polled.add(op);
    this.pollTimer ??= setInterval(() => this.reapPolled(), 1);
  }

  /** Calls in flight. */
  get inFlight(): number {
    return this.pending;
  }

  private take(settle: Settle): AioOp {
    let op = this.free.pop();
    if (!op) {
      if (this.ops.length * SLOT_BYTES >= this.arenaBytes - EVENTS_PER_POLL * 8) this.grow(this.ops.length * 2);
      op = { index: this.ops.length, slot: this.ops.length * SLOT_BYTES, settle: undefined, completion: 0, polled: false };
      this.ops.push(op);
    }
    check('rbd_aio_create_completion', lib().rbd_aio_create_completion(op.index, 0, this.completionOut));
    op.completion = this.completionOut[0];
    op.settle = settle;
    op.polled = false;
    if (this.pending++ === 0) this.watcher?.ref();
    return op;
  }

  /** A submit that failed at once never completes: its completion is released here and the error thrown. */
  private submit(op: AioOp, call: string, rc: unknown): void {
    const n = Number(rc);
    if (n >= 0) return;
    this.finish(op);
    throw new RbdError(call, n);
  }

  private putIovecs(op: AioOp, iov: readonly IoVec[], base: number): number {
    if (iov.length > MAX_IOVECS) {
      this.finish(op);
      throw new ErrnoError('EINVAL', `${iov.length} iovecs in one IO (at most ${MAX_IOVECS})`);
    }
    const dv = this.arenaView;
    let at = op.slot;
    for (let i = 0; i < iov.length; i++, at += 16) {
      putU64(dv, at, base + iov[i].offset);
      putU64(dv, at + 8, iov[i].length);
    }
    return iov.length;
  }

  private finish(op: AioOp): Settle | undefined {
    lib().rbd_aio_release(op.completion);
    op.completion = 0;
    const settle = op.settle;
    op.settle = undefined;
    this.free.push(op);
    if (--this.pending === 0) this.watcher?.unref();
    return settle;
  }

  /** Every completion librbd has finished: take its result, release it, settle its op. */
  reap(): void {
    if (!this.handle) return;
    if (!this.ownPipe) this.notify.drain();
    const b = lib();
    const events = this.arenaAddr + this.arenaBytes - EVENTS_PER_POLL * 8;
    const eventsAt = this.arenaBytes - EVENTS_PER_POLL * 8;
    for (;;) {
      const n = Number(b.rbd_poll_io_events(this.handle, events, EVENTS_PER_POLL));
      if (n <= 0) break;
      for (let i = 0; i < n; i++) {
        const c = getU64(this.arenaView, eventsAt + i * 8);
        const op = this.ops[Number(b.rbd_aio_get_arg(c))];
        if (!op || op.completion !== c) continue;
        this.complete(op);
      }
      if (n < EVENTS_PER_POLL) break;
    }
  }

  private reapPolled(): void {
    const b = lib();
    for (const op of this.polled) {
      if (!Number(b.rbd_aio_is_complete(op.completion))) continue;
      this.polled.delete(op);
      this.complete(op);
    }
    if (this.polled.size === 0 && this.pollTimer) {
      clearInterval(this.pollTimer);
      this.pollTimer = undefined;
    }
  }

  private complete(op: AioOp): void {
    const rc = Number(lib().rbd_aio_get_return_value(op.completion));
    const mismatch = op.polled ? getU64(this.arenaView, op.slot + MAX_IOVECS * 16) : 0;
    this.finish(op)?.(rc, mismatch);
  }

  /** Room for `ops` op records; the old records keep their slots (in-flight iovecs are copied across). */
  private grow(ops: number): void {
    const bytes = ops * SLOT_BYTES + EVENTS_PER_POLL * 8;
    const arena = koffi.alloc('uint8_t', bytes) as unknown as bigint;
    const view = new DataView(koffi.view(arena, bytes) as ArrayBuffer);
    if (this.arenaBytes) {
      // librbd may still read the old iovecs of a readv in flight: keep the old block until close.
      new Uint8Array(view.buffer).set(new Uint8Array(this.arenaView.buffer, 0, this.ops.length * SLOT_BYTES));
      this.retired.push(this.arena);
    }
    this.arena = arena;
    this.arenaBytes = bytes;
    this.arenaView = view;
    this.arenaAddr = Number(arena);
  }

  private readonly retired: bigint[] = [];

  // ------------------------------------------------------------ exclusive lock

  /** 1 owner, 0 not; throws RbdError (ESHUTDOWN when blocklisted, ETIMEDOUT). */
  isLockOwner(): boolean {
    const out = [0];
    check('rbd_is_exclusive_lock_owner', lib().rbd_is_exclusive_lock_owner(this.handle, out));
    return out[0] !== 0;
  }

  acquireLock(): void {
    check('rbd_lock_acquire', lib().rbd_lock_acquire(this.handle, LOCK_MODE_EXCLUSIVE));
  }

  releaseLock(): void {
    check('rbd_lock_release', lib().rbd_lock_release(this.handle));
  }

  /** The exclusive lock's owner, or undefined when nobody holds it. */
  lockOwner(): LockOwner | undefined {
    const b = lib();
    const mode = [0], owners = [0], max = [1];
    const rc = Number(b.rbd_lock_get_owners(this.handle, mode, owners, max));
    if (rc === -ENOENT || (rc === 0 && max[0] === 0)) return undefined;
    check('rbd_lock_get_owners', rc);
    const owner = koffi.decode(owners[0], 'char', -1) as string;
    b.rbd_lock_get_owners_cleanup(owners, max[0]);
    if (mode[0] !== LOCK_MODE_EXCLUSIVE) throw new RbdError(`lock held in shared mode by ${owner}`, -5);
    return owner;
  }

  /** Break `owner`'s lock: librbd blocklists that client, fencing its IO. */
  breakLock(owner: LockOwner): void {
    check(`rbd_lock_break(${owner})`, lib().rbd_lock_break(this.handle, LOCK_MODE_EXCLUSIVE, owner));
  }

  metadataGet(key: string): string | undefined {
    const buf = new Uint8Array(512);
    const len = [buf.length];
    const rc = Number(lib().rbd_metadata_get(this.handle, key, buf, len));
    if (rc === -ENOENT) return undefined;
    check(`rbd_metadata_get(${key})`, rc);
    const end = buf.indexOf(0);
    return Buffer.from(buf.subarray(0, end < 0 ? Math.min(len[0], buf.length) : end)).toString('utf8');
  }

  metadataSet(key: string, value: string): void {
    check(`rbd_metadata_set(${key})`, lib().rbd_metadata_set(this.handle, key, value));
  }

  // ------------------------------------------------------------ allocation

  /** The registered diff callback (one per image, made on first use) and where it puts what it is given. */
  private diffCb: bigint | undefined;
  private diffOut: DiffExtent[] | undefined;

  /**
   * rbd_diff_iterate2 from the image's creation (no from-snapshot) over
   * [offset, offset + length): the extents librbd reports, with `exists`
   * false for a hole (an object gone since a snapshot). A clone's parent
   * data counts as there (include_parent). Synchronous: librbd first
   * flushes (waits for the IO in flight), then lists each object of the
   * range (one OSD op per object unless `wholeObject` and the image has
   * fast-diff, which reads the object map once). librbd 16 runs the
   * callback on the calling thread (its OrderedThrottle completes the
   * per-object contexts from start_op/wait_for_ret), which is what makes a
   * koffi callback safe here.
   */
  diff(offset: number, length: number, wholeObject: boolean): DiffExtent[] {
    const b = lib();
    this.diffCb ??= koffi.register((off: number | bigint, len: number | bigint, exists: number): number => {
      this.diffOut?.push({ offset: Number(off), length: Number(len), exists: exists !== 0 });
      return 0;
    }, koffi.pointer(b.diffCallback));
    const out: DiffExtent[] = [];
    this.diffOut = out;
    try {
      check('rbd_diff_iterate2', b.rbd_diff_iterate2(this.handle, null, offset, length, 1, wholeObject ? 1 : 0, this.diffCb, 0));
    } finally {
      this.diffOut = undefined;
    }
    return out;
  }

  /** Close the image; calls still in flight are waited for by librbd. */
  close(): void {
    if (!this.handle) return;
    const b = lib();
    b.rbd_close(this.handle);
    this.handle = 0;
    if (this.pollTimer) clearInterval(this.pollTimer);
    if (this.ownPipe) {
      this.watcher!.destroy();
      b.close(this.notify.writeFd);
    }
    if (this.diffCb !== undefined) koffi.unregister(this.diffCb);
    this.diffCb = undefined;
    koffi.free(this.arena);
    for (const a of this.retired) koffi.free(a);
    this.retired.length = 0;
  }
}

/** The pipe librbd writes a byte to whenever a completion finishes (rbd_set_image_notification). */
export class CompletionPipe {
  private readonly sink = new Uint8Array(4096);
  private closed = false;

  private constructor(readonly readFd: number, readonly writeFd: number) {}

  static create(): CompletionPipe {
    const fds = [0, 0];
    if (Number(lib().pipe2(fds, O_NONBLOCK | O_CLOEXEC)) < 0) throw new RbdError('pipe2', -koffi.errno());
    return new CompletionPipe(fds[0], fds[1]);
  }

  /** Take the notification bytes (non-blocking) so the fd stops polling readable. */
  drain(): void {
    const b = lib();
    while (Number(b.read(this.readFd, this.sink, this.sink.length)) === this.sink.length);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    lib().close(this.readFd);
    lib().close(this.writeFd);
  }
}

/**
 * Memory librbd may keep using after a call returns (a bounce buffer for
 * buffers outside the ring, a WRITE SAME pattern): malloc'd, freed once.
 */
export class NativeBuffer {
  private block: bigint;
  readonly address: number;
  readonly bytes: Uint8Array;
  readonly iovecs: readonly IoVec[];

  constructor(length: number) {
    this.block = koffi.alloc('uint8_t', Math.max(1, length)) as unknown as bigint;
    this.address = Number(this.block);
    this.bytes = new Uint8Array(koffi.view(this.block, Math.max(1, length)) as ArrayBuffer, 0, length);
    this.iovecs = [{ offset: 0, length }];
  }

  static of(data: Uint8Array): NativeBuffer {
    const b = new NativeBuffer(data.byteLength);
    b.bytes.set(data);
    return b;
  }

  free(): void {
    if (this.block === 0n) return;
    koffi.free(this.block);
    this.block = 0n;
  }
}
