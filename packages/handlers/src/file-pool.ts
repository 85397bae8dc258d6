/**
 * The file handler's threaded mode: a per-device piscina pool running the
 * blocking pread/pwrite. Compared with the libuv pool that fs.promises
 * uses, it gives each device its own threads (a slow image cannot starve
 * other devices or the ring polling that shares libuv's pool) and a fixed
 * degree of parallelism per device, like tcmu-runner's nr_threads.
 */
import { Piscina } from 'piscina';
import type { BlockIo, RingMapInfo } from '@tcmu-ts/core';
import type { FileIoResult, FileIoTask, ReleaseTask } from './file-io-worker.js';

const WORKER = new URL('./file-io-worker.js', import.meta.url).href;

export class FileIoPool {
  private readonly pool: Piscina<FileIoTask | ReleaseTask, FileIoResult>;
  private closed = false;

  constructor(
    readonly threads: number,
    private readonly ring: RingMapInfo,
    private readonly fd: number,
  ) {
    // A fixed thread count: the release barrier in close() relies on it.
    this.pool = new Piscina({ filename: WORKER, minThreads: threads, maxThreads: threads, idleTimeout: 2 ** 31 - 1 });
  }

  /** True when the IO carries ring offsets a worker can map. */
  static usable(io: BlockIo): boolean {
    return io.iovecs !== undefined && io.iovecs.length > 0;
  }

  async run(op: 'read' | 'write', io: BlockIo): Promise<void> {
    // Ring iovecs can cover more than the transfer (the engine trims the
    // views but not necessarily the offsets), so cut them to io.length.
    const iovecs = io.iovecs!;
    const iov: number[] = [];
    let left = io.length;
    for (let i = 0; i < iovecs.length && left > 0; i++) {
      const n = Math.min(iovecs[i].length, left);
      iov.push(iovecs[i].offset, n);
      left -= n;
    }
    const r = await this.pool.run({
      op,
      fd: this.fd,
      mapFd: this.ring.mapFd,
      mapSize: this.ring.mapSize,
      iov,
      position: io.offset,
    });
    if (r !== 0) throw Object.assign(new Error(r.message), { code: r.code });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const barrier = new SharedArrayBuffer(4);
    const releases: Promise<FileIoResult>[] = [];
    for (let i = 0; i < this.threads; i++) releases.push(this.pool.run({ op: 'release', barrier, count: this.threads }));
    await Promise.allSettled(releases);
    await this.pool.destroy();
  }
}
