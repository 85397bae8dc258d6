/**
 * An experiment, not the product: the ring layer of tcmu-ts (RingConsumer,
 * the koffi event fd calls) in a worker thread with the RAM work inlined
 * (Uint8Array.set between the data area and one buffer), without the engine,
 * the SCSI core or the handler API. It separates what the engine and handler
 * layers cost from what waiting for the kernel costs, with two ways to wait:
 *
 *   pool  like DeviceEngine: poll() on the libuv pool (koffi async), kick at
 *         setImmediate after a drain
 *   sync  poll() blocking on the worker's own thread (there is nothing else
 *         for its event loop to do while no command is in flight), kick right
 *         after the drain
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { RingConsumer, mapShared, pollIn, pollInSync, readEvent, writeEvent, type UioEndpoint } from '@tcmu-ts/ring';

export type JsWaitMode = 'pool' | 'sync';

interface Input {
  ep: UioEndpoint;
  lunBytes: number;
  blockSize: number;
  mode: JsWaitMode;
  stop: SharedArrayBuffer;
}

export interface JsConsumerStats {
  commands: number;
  drains: number;
  kicks: number;
  waits: number;
}

export interface JsConsumer {
  stop(): Promise<JsConsumerStats>;
}

export function startJsConsumer(ep: UioEndpoint, o: { lunBytes: number; blockSize: number; mode: JsWaitMode }): Promise<JsConsumer> {
  const stop = new SharedArrayBuffer(4);
  const w = new Worker(new URL(import.meta.url), { workerData: { ep, ...o, stop } satisfies Input });
  const result = new Promise<JsConsumerStats>((resolve, reject) => {
    w.on('message', (m: { type: string; stats?: JsConsumerStats }) => { if (m.type === 'stats') resolve(m.stats!); });
    w.once('error', reject);
  });
  return new Promise((resolve, reject) => {
    w.once('error', reject);
    w.once('message', () => resolve({
      async stop() {
        Atomics.store(new Int32Array(stop), 0, 1);
        const s = await result;
        await w.terminate();
        return s;
      },
    }));
  });
}

async function main(): Promise<void> {
  const { ep, lunBytes, blockSize, mode, stop } = workerData as Input;
  const flag = new Int32Array(stop);
  const map = mapShared(ep.mapFd, ep.mapSize);
  const rc = new RingConsumer(map.buffer);
  const u8 = new Uint8Array(map.buffer);
  const ram = new Uint8Array(lunBytes);
  const fd = ep.eventFd;
  const stats: JsConsumerStats = { commands: 0, drains: 0, kicks: 0, waits: 0 };

  const drain = (): number => {
    let n = 0;
    for (let e = rc.next(); e !== null; e = rc.next()) {
      if (e.kind !== 'cmd') {
        if (e.kind === 'malformed' && e.cmdId) rc.complete(e.cmdId, 2);
        continue;
      }
      const c = e.cdb;
      const op = c[0];
      let status = 0;
      let readLen: number | undefined;
      if (op === 0x88 || op === 0x8a) {
        const lba = ((c[6] << 24) | (c[7] << 16) | (c[8] << 8) | c[9]) >>> 0;
        const len = (((c[10] << 24) | (c[11] << 16) | (c[12] << 8) | c[13]) >>> 0) * blockSize;
        let off = lba * blockSize;
        if (off + len > lunBytes) status = 2;
        else {
          let left = len;
          for (let i = 0; i < e.iovs.length && left > 0; i++) {
            const l = Math.min(e.iovs[i].length, left);
            const at = e.iovs[i].offset;
            if (op === 0x8a) ram.set(u8.subarray(at, at + l), off);
            else u8.set(ram.subarray(off, off + l), at);
            off += l;
            left -= l;
          }
          if (op === 0x88) readLen = len;
        }
      }
      rc.complete(e.cmdId, status, readLen !== undefined ? { readLen } : undefined);
      n++;
    }
    stats.commands += n;
    stats.drains++;
    return n;
  };

  parentPort!.postMessage({ type: 'ready' });
  if (mode === 'sync') {
    while (!Atomics.load(flag, 0)) {
      if (drain()) {
        writeEvent(fd);
        stats.kicks++;
      }
      if (rc.hasWork()) continue;
      stats.waits++;
      if (pollInSync(fd, 50)) while (readEvent(fd) !== null) { /* take them all */ }
    }
  } else {
    while (!Atomics.load(flag, 0)) {
      if (drain()) {
        await new Promise<void>((r) => setImmediate(r));
        writeEvent(fd);
        stats.kicks++;
      }
      if (rc.hasWork()) continue;
      stats.waits++;
      if (await pollIn(fd, 50)) while (readEvent(fd) !== null) { /* take them all */ }
    }
  }
  map.unmap();
  parentPort!.postMessage({ type: 'stats', stats });
}

if (!isMainThread && (workerData as Partial<Input> | null)?.stop) void main();
