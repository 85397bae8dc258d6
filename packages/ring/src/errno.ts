/**
 * errno numbers and names, both ways, from the platform's own table
 * (os.constants.errno): the one errno table of the project. Loads no koffi.
 */
import { constants } from 'node:os';

const BY_NUMBER = new Map<number, string>();
for (const [name, n] of Object.entries(constants.errno)) if (!BY_NUMBER.has(n)) BY_NUMBER.set(n, name);
// Where Linux has two names for one number, the one its headers and tools print.
for (const name of ['EAGAIN', 'EOPNOTSUPP', 'EDEADLK']) {
  const n = (constants.errno as Record<string, number>)[name];
  if (n !== undefined) BY_NUMBER.set(n, name);
}

/** 'EIO' for 5 (the sign is ignored: the kernel's replies carry -errno); undefined when unknown. */
export function errnoName(errno: number): string | undefined {
  return BY_NUMBER.get(Math.abs(errno));
}

/** 5 for 'EIO'; undefined when the platform has no such code. */
export function errnoNumber(code: string): number | undefined {
  return (constants.errno as Record<string, number>)[code];
}
