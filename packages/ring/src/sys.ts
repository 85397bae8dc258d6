/**
 * The few libc calls the ring needs, through koffi. Kept in one module so
 * every thread binds the same signatures; each worker thread loads its own
 * copy (koffi function objects are per isolate).
 */
import koffi from 'koffi';
import { errnoName } from './errno.js';

const libc = koffi.load('libc.so.6');

const PROT_READ = 0x1;
const PROT_WRITE = 0x2;
const MAP_SHARED = 0x01;
const MFD_CLOEXEC = 0x1;
const F_GETFL = 3;
const F_SETFL = 4;
const O_NONBLOCK = 0o4000;
export const POLLIN = 0x001;
export const POLLERR = 0x008;
export const POLLHUP = 0x010;
export const EAGAIN = 11;
export const EINTR = 4;
const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const MAP_FAILED = 0xffffffffffffffffn;

const c = {
  memfd_create: libc.func('int memfd_create(const char *name, unsigned int flags)'),
  ftruncate: libc.func('int ftruncate(int fd, int64_t length)'),
  mmap: libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)'),
  munmap: libc.func('int munmap(void *addr, size_t length)'),
  read: libc.func('long read(int fd, _Out_ uint8_t *buf, size_t count)'),
  write: libc.func('long write(int fd, const uint8_t *buf, size_t count)'),
  close: libc.func('int close(int fd)'),
  fcntl: libc.func('int fcntl(int fd, int cmd, int arg)'),
  socketpair: libc.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)'),
  poll: libc.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)'),
  open: libc.func('int open(const char *path, int flags, int mode)'),
  eventfd: libc.func('int eventfd(unsigned int initval, int flags)'),
  fcntlLock: libc.func('fcntl', 'int', ['int', 'int', koffi.inout(koffi.pointer('uint8_t'))]),
  pwrite: libc.func('long pwrite(int fd, const uint8_t *buf, size_t count, int64_t offset)'),
  gettid: libc.func('int gettid()'),
  setpriority: libc.func('int setpriority(int which, int who, int prio)'),
};

/** An OS error from a libc call, with the errno that explains it. */
export class SysError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: errno ${errno}${errnoName(errno) ? ` (${errnoName(errno)})` : ''}`);
    this.name = 'SysError';
  }
}


function check(call: string, rc: number | bigint): number {
  const n = Number(rc);
  if (n < 0) throw new SysError(call, koffi.errno());
  return n;
}

/** Anonymous shared memory, the stand-in for the pages the kernel gives a UIO map. */
export function memfdCreate(name: string, size: number): number {
  const fd = check('memfd_create', c.memfd_create(name, MFD_CLOEXEC));
  try {
    check('ftruncate', c.ftruncate(fd, BigInt(size)));
  } catch (e) {
    c.close(fd);
    throw e;
  }
  return fd;
}

/** A MAP_SHARED mapping exposed as an ArrayBuffer over the same pages (no copy). */
export interface SharedMap {
  readonly buffer: ArrayBuffer;
  readonly size: number;
  /** Where the mapping starts in this process, for native libraries handed pointers into it (librbd's iovecs). */
  readonly address: number;
  unmap(): void;
}

export function mapShared(fd: number, size: number): SharedMap {
  const addr = c.mmap(null, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0n);
  const address = typeof addr === 'bigint' ? addr : BigInt(koffi.address(addr));
  if (address === MAP_FAILED || address === 0n) throw new SysError('mmap', koffi.errno());
  const buffer = koffi.view(addr, size) as ArrayBuffer;
  let mapped = true;
  return {
    buffer,
    size,
    address: Number(address),
    unmap() {
      if (!mapped) return;
      mapped = false;
      c.munmap(addr, size);
    },
  };
}

/**
 * A connected pair of datagram sockets. One end behaves like a UIO fd from
 * the consumer's side: write 4 bytes to kick the peer, poll for POLLIN and
 * read 4 bytes to take an event.
 */
export function socketPair(): [number, number] {
  const sv = [0, 0];
  check('socketpair', c.socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv));
  return [sv[0], sv[1]];
}

export function setNonBlocking(fd: number): void {
  const flags = check('fcntl(F_GETFL)', c.fcntl(fd, F_GETFL, 0));
  check('fcntl(F_SETFL)', c.fcntl(fd, F_SETFL, flags | O_NONBLOCK));
}

export function openFile(path: string, flags: number): number {
  return check(`open(${path})`, c.open(path, flags, 0));
}
export const O_RDWR = 0o2;
export { O_NONBLOCK };
export const O_CLOEXEC = 0o2000000;

export function closeFd(fd: number): void {
  c.close(fd);
}

const u32Event = new Uint8Array(4);
const u32EventView = new DataView(u32Event.buffer);
/** Write one 4-byte event (a UIO kick / irq count). Returns false when the peer is gone or full. */
export function writeEvent(fd: number, value = 1): boolean {
  u32EventView.setUint32(0, value, true);
  const n = Number(c.write(fd, u32Event, 4));
  if (n === 4) return true;
  const err = koffi.errno();
  if (err === EAGAIN) return false;
  throw new SysError('write', err);
}

const eventIn = new Uint8Array(4);
const eventInView = new DataView(eventIn.buffer);
/**
 * Read one 4-byte event; null when none is pending on a non-blocking fd.
 * Exactly 4 bytes: the UIO driver refuses any other read size with EINVAL.
 */
export function readEvent(fd: number): number | null {
  const n = Number(c.read(fd, eventIn, 4));
  if (n >= 4) return eventInView.getUint32(0, true);
  if (n < 0) {
    const err = koffi.errno();
    if (err === EAGAIN || err === EINTR) return null;
    throw new SysError('read', err);
  }
  return null;
}

/** Set in what pollIn/pollInSync return when the wake fd (an eventfd) was signalled. */
export const WOKEN = 0x10000;
/** Set in what pollInSync returns when the third fd (a handler's completion fd) is readable or closed. */
export const READY = 0x20000;

/** struct pollfd[3]: the fd, the wake fd, a handler's fd (-1 for none, which poll() skips). */
function fillPollfds(dv: DataView, fd: number, wakeFd: number, extraFd = -1): void {
  dv.setInt32(0, fd, true);
  dv.setInt16(4, POLLIN, true);
  dv.setInt16(6, 0, true);
  dv.setInt32(8, wakeFd, true);
  dv.setInt16(12, POLLIN, true);
  dv.setInt16(14, 0, true);
  dv.setInt32(16, extraFd, true);
  dv.setInt16(20, POLLIN, true);
  dv.setInt16(22, 0, true);
}
function reventsOf(dv: DataView): number {
  return (dv.getInt16(6, true) & 0xffff) | (dv.getInt16(14, true) & POLLIN ? WOKEN : 0) | (dv.getInt16(22, true) & (POLLIN | POLLHUP | POLLERR) ? READY : 0);
}

/** One pollfd set per thread for the blocking poll: it is never in use twice at once. */
const syncPollfds = new Uint8Array(24);
const syncPollView = new DataView(syncPollfds.buffer);

/**
 * Blocking poll for POLLIN on `fd` (and on `wakeFd`, `extraFd` when >= 0);
 * returns fd's revents, with WOKEN set when wakeFd fired and READY when
 * extraFd did (0 on timeout). Only for threads that may block.
 */
export function pollInSync(fd: number, timeoutMs: number, wakeFd = -1, extraFd = -1): number {
  fillPollfds(syncPollView, fd, wakeFd, extraFd);
  const rc = Number(c.poll(syncPollfds, 3, timeoutMs));
  if (rc < 0) {
    const err = koffi.errno();
    if (err === EINTR) return 0;
    throw new SysError('poll', err);
  }
  return rc === 0 ? 0 : reventsOf(syncPollView);
}

/**
 * poll() for POLLIN on a libuv pool thread, so the calling thread's event loop
 * keeps running. Resolves as pollInSync returns.
 */
export function pollIn(fd: number, timeoutMs: number, wakeFd = -1): Promise<number> {
  const p = new Uint8Array(24);
  const dv = new DataView(p.buffer);
  fillPollfds(dv, fd, wakeFd);
  return new Promise((resolve, reject) => {
    c.poll.async(p, 3, timeoutMs, (err: unknown, rc: number) => {
      if (err) return reject(err);
      if (rc < 0) return resolve(0);
      resolve(rc === 0 ? 0 : reventsOf(dv));
    });
  });
}

const EFD_NONBLOCK = 0o4000;
const EFD_CLOEXEC = 0o2000000;
const wakeValue = new BigUint64Array([1n]);
const wakeBuf = new Uint8Array(wakeValue.buffer);
const wakeSink = new Uint8Array(8);

/**
 * An eventfd another thread signals to cut a poll short: the supervisor
 * wakes a device worker sleeping in poll() when it posts it a message.
 */
export function wakeFdCreate(): number {
  return check('eventfd', c.eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
}
export function wake(fd: number): void {
  c.write(fd, wakeBuf, 8);
}
/** Take the wake-ups (an eventfd read returns and clears the count). */
export function clearWake(fd: number): void {
  c.read(fd, wakeSink, 8);
}

// ---------------------------------------------------------------- CPU priority of one thread

const PRIO_PROCESS = 0;

/** The calling thread's kernel id (gettid): what setThreadNice() takes to name one thread. */
export function threadTid(): number {
  return c.gettid();
}

/**
 * Set the nice value of one thread (Linux keeps it per thread: with a tid,
 * PRIO_PROCESS names that thread only). Any thread may lower its own or
 * another's priority; raising it back needs CAP_SYS_NICE (EACCES otherwise).
 */
export function setThreadNice(tid: number, nice: number): void {
  check(`setpriority(${tid}, ${nice})`, c.setpriority(PRIO_PROCESS, tid, nice));
}

// ---------------------------------------------------------------- the daemon's lock file

const O_CREAT = 0o100;
const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_WRLCK = 1;
const F_UNLCK = 2;
const SEEK_SET = 0;
/** struct flock on 64-bit Linux: short l_type, short l_whence, (pad), off_t l_start, off_t l_len, pid_t l_pid, (pad). */
const FLOCK_SIZE = 32;

function flockBuf(type: number): Uint8Array {
  const b = new Uint8Array(FLOCK_SIZE);
  const v = new DataView(b.buffer);
  v.setInt16(0, type, true);
  v.setInt16(2, SEEK_SET, true);
  // l_start = 0, l_len = 0: the whole file, as tcmu-runner locks /run/tcmu.lock
  return b;
}

/** Who holds a conflicting lock: a pid for a classic POSIX lock (tcmu-runner's), -1 for an OFD lock (ours). */
export interface LockHolder {
  pid: number;
}

/**
 * An exclusive open-file-description lock (F_OFD_SETLK, Linux >= 3.15) on the
 * whole file, created if missing, with our pid written into it. It lives as
 * long as the returned fd, so it dies with the process however that ends.
 * OFD locks conflict with classic fcntl(F_SETLK) locks of other processes,
 * so the same file excludes tcmu-runner both ways, and unlike classic locks
 * two opens in one process conflict too (tests start two daemons in one process).
 * Returns the fd, or the holder when the file is locked already.
 */
export function lockFileExclusive(path: string): { fd: number } | { held: LockHolder } {
  const fd = check(`open(${path})`, c.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644));
  const lk = flockBuf(F_WRLCK);
  if (Number(c.fcntlLock(fd, F_OFD_SETLK, lk)) === 0) {
    const pid = new TextEncoder().encode(`${process.pid}\n`);
    c.ftruncate(fd, 0n);
    c.pwrite(fd, pid, pid.length, 0n);
    return { fd };
  }
  const err = koffi.errno();
  if (err !== EAGAIN && err !== 13 /* EACCES */) {
    c.close(fd);
    throw new SysError(`fcntl(F_OFD_SETLK, ${path})`, err);
  }
  const q = flockBuf(F_WRLCK);
  let pid = -1;
  if (Number(c.fcntlLock(fd, F_OFD_GETLK, q)) === 0 && new DataView(q.buffer).getInt16(0, true) !== F_UNLCK) {
    pid = new DataView(q.buffer).getInt32(24, true);
  }
  c.close(fd);
  return { held: { pid } };
}
