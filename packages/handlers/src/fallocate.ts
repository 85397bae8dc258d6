/**
 * fallocate(2), and lseek(2)'s SEEK_DATA / SEEK_HOLE, through koffi: Node's
 * fs offers neither.
 */
import koffi from 'koffi';
import { errnoName } from '@tcmu-ts/ring';

export const FALLOC_FL_KEEP_SIZE = 0x01;
export const FALLOC_FL_PUNCH_HOLE = 0x02;
export const FALLOC_FL_ZERO_RANGE = 0x10;

type FallocateFn = ((fd: number, mode: number, offset: number, len: number) => number) & {
  async(fd: number, mode: number, offset: number, len: number, cb: (err: unknown, rc: number) => void): void;
};

let fn: FallocateFn | null | undefined;

function binding(): FallocateFn | null {
  if (fn === undefined) {
    try {
      fn = koffi.load('libc.so.6').func('int fallocate(int fd, int mode, int64_t offset, int64_t len)') as FallocateFn;
    } catch {
      fn = null;
    }
  }
  return fn;
}

function errnoException(errno: number): NodeJS.ErrnoException {
  const code = errnoName(errno) ?? (errno === 38 ? 'ENOSYS' : `E${errno}`);
  const e = new Error(`${code}: fallocate failed (errno ${errno})`) as NodeJS.ErrnoException;
  e.code = code;
  e.errno = -errno;
  e.syscall = 'fallocate';
  return e;
}

/**
 * Resolves to 0 on success or to the error (not rejected: callers branch on
 * EOPNOTSUPP to fall back). The call runs on a koffi worker so a slow hole
 * punch does not stall the event loop. errno is thread-local to that worker
 * and lost by the time we are called back, so on failure the call is made
 * once more synchronously to learn why; punching or zeroing twice is
 * harmless, and failures are rare (usually the first and only EOPNOTSUPP).
 */
export function fallocate(fd: number, mode: number, offset: number, len: number): Promise<0 | NodeJS.ErrnoException> {
  const f = binding();
  if (f === null) return Promise.resolve(errnoException(38));
  return new Promise((resolve) => {
    f.async(fd, mode, offset, len, (err, rc) => {
      if (!err && rc === 0) return resolve(0);
      const again = f(fd, mode, offset, len);
      resolve(again === 0 ? 0 : errnoException(koffi.errno()));
    });
  });
}

/**
 * The same call made on the calling thread, for handlers whose every callout
 * finishes in place (zbc: a zone reset must be done before the next command
 * is looked at). Returns 0 or the error, as fallocate() resolves.
 */
export function fallocateSync(fd: number, mode: number, offset: number, len: number): 0 | NodeJS.ErrnoException {
  const f = binding();
  if (f === null) return errnoException(38);
  return f(fd, mode, offset, len) === 0 ? 0 : errnoException(koffi.errno());
}

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;
type LseekFn = (fd: number, offset: number, whence: number) => number;
let lseekFn: LseekFn | null | undefined;

/**
 * The extents of data and holes of a file over [from, to), in bytes, in
 * order (a filesystem without SEEK_DATA reports everything as data, which
 * is never wrong). Synchronous: a lookup in the filesystem's extent map.
 */
export function fileExtents(fd: number, from: number, to: number, maxExtents: number): { start: number; end: number; data: boolean }[] {
  if (lseekFn === undefined) {
    try {
      lseekFn = koffi.load('libc.so.6').func('int64_t lseek(int fd, int64_t offset, int whence)') as unknown as LseekFn;
    } catch {
      lseekFn = null;
    }
  }
  if (!lseekFn) return [{ start: from, end: to, data: true }];
  const out: { start: number; end: number; data: boolean }[] = [];
  for (let at = from; at < to && out.length < maxExtents;) {
    let data = lseekFn(fd, at, SEEK_DATA);
    if (data < 0) {
      if (koffi.errno() !== ENXIO) return [...out, { start: at, end: to, data: true }];
      data = to; // no data after `at`: a hole to the end
    }
    if (data > at) {
      out.push({ start: at, end: Math.min(data, to), data: false });
      at = Math.min(data, to);
      continue;
    }
    const hole = lseekFn(fd, at, SEEK_HOLE);
    const end = hole < 0 ? to : Math.min(hole, to);
    out.push({ start: at, end, data: true });
    at = end;
  }
  return out;
}
