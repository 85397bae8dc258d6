/**
 * errno numbers and names, both ways, from the platform's own table
 * (os.constants.errno) and the few Linux codes it lacks: the one errno table
 * of the project. Loads no koffi.
 */
import { constants } from 'node:os';

/**
 * Linux codes that C storage libraries return (gfapi, librados) and Node's
 * table leaves out; the numbers are asm-generic/errno.h's, shared by x86_64 and arm64.
 */
const LINUX_ONLY: Record<string, number> = process.platform === 'linux' ? { EBADFD: 77, ESHUTDOWN: 108, EREMOTEIO: 121, ENOMEDIUM: 123, EMEDIUMTYPE: 124 } : {};
const BY_NAME: Record<string, number> = { ...LINUX_ONLY, ...(constants.errno as Record<string, number>) };

const BY_NUMBER = new Map<number, string>();
for (const [name, n] of Object.entries(BY_NAME)) if (!BY_NUMBER.has(n)) BY_NUMBER.set(n, name);
// Where Linux has two names for one number, the one its headers and tools print.
for (const name of ['EAGAIN', 'EOPNOTSUPP', 'EDEADLK']) {
  const n = BY_NAME[name];
  if (n !== undefined) BY_NUMBER.set(n, name);
}

/** 'EIO' for 5 (the sign is ignored: the kernel's replies carry -errno); undefined when unknown. */
export function errnoName(errno: number): string | undefined {
  return BY_NUMBER.get(Math.abs(errno));
}

/** 5 for 'EIO'; undefined when the platform has no such code. */
export function errnoNumber(code: string): number | undefined {
  return BY_NAME[code];
}
