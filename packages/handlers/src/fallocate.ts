/**
 * fallocate(2) through koffi, which Node's fs does not offer.
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
