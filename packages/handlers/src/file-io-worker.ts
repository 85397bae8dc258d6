/**
 * Piscina worker for the file handler's threaded mode: blocking preadv /
 * pwritev between the image and the ring, which this thread maps itself so
 * only offsets cross the thread boundary, never data.
 */
import * as fs from 'node:fs';
import { mapShared, type SharedMap } from '@tcmu-ts/ring';

export interface FileIoTask {
  op: 'read' | 'write';
  fd: number;
  mapFd: number;
  mapSize: number;
  /** Flat [offset, length, offset, length, ...] in the ring map. */
  iov: number[];
  position: number;
}

/** Sent once per worker when the pool closes, so each thread unmaps the ring. */
export interface ReleaseTask {
  op: 'release';
  /** Int32 counter every worker bumps, then waits for all `count` to arrive. */
  barrier: SharedArrayBuffer;
  count: number;
}

/** Errors do not keep `code` across threads, so failures come back as data. */
export type FileIoResult = 0 | { code: string; message: string };

// One mapping per ring fd for the life of the pool. The pool belongs to one
// open device, which outlives neither its ring nor its fd, so an fd number
// cannot come back meaning a different ring while this cache exists.
const maps = new Map<number, SharedMap>();

function ringBuffer(mapFd: number, mapSize: number): ArrayBuffer {
  let m = maps.get(mapFd);
  if (m !== undefined && m.size !== mapSize) {
    m.unmap();
    m = undefined;
  }
  if (m === undefined) {
    m = mapShared(mapFd, mapSize);
    maps.set(mapFd, m);
  }
  return m.buffer;
}

function views(buf: ArrayBuffer, iov: number[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < iov.length; i += 2) {
    let off = iov[i];
    let len = iov[i + 1];
    if (skip >= len) {
      skip -= len;
      continue;
    }
    off += skip;
    len -= skip;
    skip = 0;
    out.push(new Uint8Array(buf, off, len));
  }
  return out;
}

function run(t: FileIoTask): void {
  const buf = ringBuffer(t.mapFd, t.mapSize);
  let total = 0;
  for (let i = 1; i < t.iov.length; i += 2) total += t.iov[i];
  let done = 0;
  while (done < total) {
    const v = views(buf, t.iov, done);
    const n = t.op === 'read' ? fs.readvSync(t.fd, v, t.position + done) : fs.writevSync(t.fd, v, t.position + done);
    if (n === 0) {
      if (t.op === 'write') throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
      // Past the end of the image: the device still has its size, so zeros.
      for (const x of v) x.fill(0);
      return;
    }
    done += n;
  }
}

function release(t: ReleaseTask): void {
  // Hold this thread until every worker has a release task, so no worker
  // takes two and another none (each runs one task at a time).
  const ctr = new Int32Array(t.barrier);
  Atomics.add(ctr, 0, 1);
  Atomics.notify(ctr, 0);
  const deadline = Date.now() + 2000;
  for (let seen = Atomics.load(ctr, 0); seen < t.count && Date.now() < deadline; seen = Atomics.load(ctr, 0)) {
    Atomics.wait(ctr, 0, seen, 50);
  }
  for (const m of maps.values()) m.unmap();
  maps.clear();
}

export default function fileIo(t: FileIoTask | ReleaseTask): FileIoResult {
  try {
    if (t.op === 'release') release(t);
    else run(t);
    return 0;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    return { code: typeof err.code === 'string' ? err.code : 'EIO', message: err.message ?? String(e) };
  }
}
