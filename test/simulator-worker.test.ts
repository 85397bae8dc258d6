import { expect } from 'chai';
import { Worker } from 'node:worker_threads';
import { KernelSimulator, Initiator, ScsiStatus, type ScsiResponse } from '@tcmu-ts/ring';
import { randInt, randomBytes, rng } from './simulator-harness.test.js';

/**
 * A daemon in miniature, run in a worker: it maps the memfd itself (worker
 * threads share the process's fds, so the numbers are enough), waits for irqs
 * with a blocking poll, answers READ/WRITE(10) from a RAM disk out of order,
 * and kicks after each batch. A shared flag tells it to stop.
 */
const DAEMON = `
const { parentPort, workerData } = require('node:worker_threads');
import(workerData.mod).then(({ mapShared, RingConsumer, pollInSync, readEvent, writeEvent }) => {
  const { mapFd, eventFd, mapSize, blockSize, blocks, stop } = workerData;
  const map = mapShared(mapFd, mapSize);
  const ring = new RingConsumer(map.buffer);
  const disk = new Uint8Array(blockSize * blocks);
  const flag = new Int32Array(stop);
  let answered = 0, batches = 0, tmrs = 0;
  let seed = 12345;
  const rand = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 4294967296);
  while (Atomics.load(flag, 0) === 0) {
    if (!pollInSync(eventFd, 20)) continue;
    while (readEvent(eventFd) !== null) {}
    const work = [];
    for (let e = ring.next(); e; e = ring.next()) {
      if (e.kind === 'cmd') work.push(e); else if (e.kind === 'tmr') tmrs++;
    }
    // Answer in a scrambled order: the kernel must not care.
    for (let i = work.length - 1; i > 0; i--) { const j = Math.floor(rand() * (i + 1)); [work[i], work[j]] = [work[j], work[i]]; }
    for (const c of work) {
      const dv = new DataView(c.cdb.buffer, c.cdb.byteOffset, c.cdb.byteLength);
      const lba = dv.getUint32(2, false), n = dv.getUint16(7, false);
      let at = lba * blockSize;
      if ((lba + n) * blockSize > disk.length) {
        ring.complete(c.cmdId, 2, { sense: Uint8Array.of(0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0) });
        continue;
      }
      if (c.cdb[0] === 0x2a) {
        for (const v of c.iovs) { disk.set(ring.view(v), at); at += v.length; }
      } else if (c.cdb[0] === 0x28) {
        for (const v of c.iovs) { ring.view(v).set(disk.subarray(at, at + v.length)); at += v.length; }
      } else { ring.unknownOp(c.cmdId); continue; }
      ring.complete(c.cmdId, 0);
    }
    if (work.length) { answered += work.length; batches++; writeEvent(eventFd, 1); }
  }
  map.unmap();
  parentPort.postMessage({ answered, batches, tmrs });
}).catch((e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
`;

describe('kernel simulator with a consumer in a worker thread', () => {
  it('serves random writes and reads from a worker mapping the same memfd, data intact', async function () {
    this.timeout(30000);
    const blockSize = 512;
    const blocks = 8192;
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 4, cmdTimeOutSec: 10 });
    const stop = new SharedArrayBuffer(4);
    const { mapFd, eventFd, mapSize } = sim.endpoint;
    const worker = new Worker(DAEMON, {
      eval: true,
      workerData: { mod: import.meta.resolve('@tcmu-ts/ring'), mapFd, eventFd, mapSize, blockSize, blocks, stop },
    });
    const report = new Promise<{ answered: number; batches: number; tmrs: number; error?: string }>((res, rej) => {
      worker.once('message', res);
      worker.once('error', rej);
    });
    try {
      const ini = new Initiator(sim, { blockSize });
      const shadow = new Uint8Array(blockSize * blocks);
      const r = rng(99);
      let ops = 0;
      for (let round = 0; round < 12; round++) {
        // Up to ~100 writes in flight to disjoint ranges, then as many reads anywhere.
        const used = new Uint8Array(blocks);
        const writes: Promise<ScsiResponse>[] = [];
        for (let i = 0; i < 100; i++) {
          const n = randInt(r, 1, 64);
          const lba = randInt(r, 0, blocks - n);
          if (used.subarray(lba, lba + n).some((x) => x)) continue;
          used.fill(1, lba, lba + n);
          const data = randomBytes(r, n * blockSize);
          shadow.set(data, lba * blockSize);
          writes.push(ini.write(lba, data));
        }
        for (const w of await Promise.all(writes)) expect(w.status).to.equal(ScsiStatus.GOOD);
        const reads = Array.from({ length: randInt(r, 64, 100) }, () => {
          const n = randInt(r, 1, 128);
          const lba = randInt(r, 0, blocks - n);
          return { lba, n, p: ini.read(lba, n) };
        });
        for (const x of reads) {
          const res = await x.p;
          expect(res.status).to.equal(ScsiStatus.GOOD);
          expect(Buffer.from(res.data).equals(Buffer.from(shadow.subarray(x.lba * blockSize, (x.lba + x.n) * blockSize))), `read ${x.lba}+${x.n}`).to.equal(true);
        }
        ops += writes.length + reads.length;
      }
      // Errors from the worker's side come back as the initiator would see them.
      const oob = await ini.read(blocks - 1, 2);
      expect(oob.status).to.equal(ScsiStatus.CHECK_CONDITION);
      expect(oob.senseInfo).to.include({ key: 5, asc: 0x21 });
      const c = sim.counters();
      expect(c).to.include({ inflight: 0, dataBlocksUsed: 0, ringBytesUsed: 0, cmdTimeouts: 0, broken: false });
      expect(c.kicks).to.be.greaterThan(0);
      expect(c.completed).to.equal(ops + 1);
    } finally {
      Atomics.store(new Int32Array(stop), 0, 1);
      const rep = await report;
      await worker.terminate();
      await sim.close();
      expect(rep.error).to.equal(undefined);
      expect(rep.answered).to.be.greaterThan(1000);
    }
  });
});
