import { expect } from 'chai';
import {
  KernelSimulator, Initiator, ScsiStatus, cmdEntrySize, cdbRead10, cdbRead16, cdbWrite16,
  type RingCommand, type SimTask,
} from '@tcmu-ts/ring';
import { RamBackend, mbTail, randInt, randomBytes, rng } from './simulator-harness.test.js';

function shuffle<T>(r: () => number, a: T[]): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

describe('kernel simulator: out-of-order completion', () => {
  it('reaps 200 in-flight commands completed in random order and random batches', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 16, autoKicks: false });
    const be = new RamBackend(sim, { blockSize: 512, blocks: 16384 });
    const r = rng(42);
    be.store.set(randomBytes(r, be.store.length));
    try {
      const N = 200;
      const lbas = Array.from({ length: N }, (_, i) => i * 64 + randInt(r, 0, 8));
      const tasks = lbas.map((lba, i) => sim.start(cdbRead10(lba, 1 + (i % 16)), { dataInLength: 512 * (1 + (i % 16)) }));
      expect(tasks.map((t) => t.cmdId)).to.deep.equal(Array.from({ length: N }, (_, i) => i + 1));
      const entry = cmdEntrySize(1, 10);
      expect(sim.counters()).to.include({ inflight: N, ringBytesUsed: N * entry });

      const cmds = shuffle(r, be.takeCommands());
      const answered = new Set<number>();
      let done = 0;
      while (done < N) {
        const batch = cmds.slice(done, done + randInt(r, 1, 17));
        for (const c of batch) be.complete(c.cmdId, be.execute(c));
        done += batch.length;
        be.kick();
        sim.processKicks();
        // Every completion frees the entry at the tail, whichever command it answered.
        expect(sim.counters()).to.include({ inflight: N - done, ringBytesUsed: (N - done) * entry, idsInUse: N - done });
        expect(mbTail(sim)).to.equal(done * entry);
        for (const c of batch) answered.add(c.cmdId);
        // Exactly the answered commands are done (task i had cmd_id i + 1).
        tasks.forEach((t, i) => expect(t.state === 'done', `cmd ${i + 1}`).to.equal(answered.has(i + 1)));
      }
      const res = await Promise.all(tasks.map((t) => t.result));
      res.forEach((x, i) => {
        const len = 512 * (1 + (i % 16));
        expect(x.status).to.equal(ScsiStatus.GOOD);
        expect(x.cmdId).to.equal(i + 1);
        expect(Buffer.from(x.dataIn).equals(Buffer.from(be.store.subarray(lbas[i] * 512, lbas[i] * 512 + len))), `read ${i}`).to.equal(true);
      });
      expect(sim.counters()).to.include({ dataBlocksUsed: 0, completed: N });
    } finally {
      be.close();
      await sim.close();
    }
  });

  it('keeps answering correctly when ids are reused out of order under a steady load', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8, autoKicks: false });
    const be = new RamBackend(sim, { blockSize: 512, blocks: 8192 });
    const r = rng(7);
    be.store.set(randomBytes(r, be.store.length));
    try {
      const live: { task: SimTask; lba: number; n: number }[] = [];
      let pending: RingCommand[] = [];
      let checked = 0;
      let maxId = 0;
      for (let step = 0; step < 3000; step++) {
        // Keep 64..128 in flight.
        while (live.length < randInt(r, 64, 128)) {
          const lba = randInt(r, 0, 8000);
          const n = randInt(r, 1, 8);
          live.push({ task: sim.start(cdbRead10(lba, n), { dataInLength: n * 512 }), lba, n });
        }
        pending.push(...be.takeCommands());
        shuffle(r, pending);
        const k = randInt(r, 1, 12);
        for (const c of pending.slice(0, k)) be.complete(c.cmdId, be.execute(c));
        pending = pending.slice(k);
        be.kick();
        sim.processKicks();
        for (let i = live.length - 1; i >= 0; i--) {
          const x = live[i];
          if (x.task.state !== 'done') continue;
          live.splice(i, 1);
          const res = await x.task.result;
          expect(res.status).to.equal(0);
          expect(Buffer.from(res.dataIn).equals(Buffer.from(be.store.subarray(x.lba * 512, (x.lba + x.n) * 512)))).to.equal(true);
          checked++;
        }
        const ids = sim.inflightIds();
        expect(new Set(ids).size).to.equal(ids.length);
        maxId = Math.max(maxId, ...ids);
      }
      expect(checked).to.be.greaterThan(2000);
      // Lowest-free allocation never goes past the most ids ever held at once (at most 128 here);
      // a cyclic allocator would have climbed into the tens of thousands by now.
      expect(maxId).to.be.at.most(128);
    } finally {
      be.close();
      await sim.close();
    }
  });
});

/** Answer everything on the ring in a random order, again and again until nothing new shows up (qfull drains too). */
function serveShuffled(r: () => number, be: RamBackend): void {
  for (let cmds = be.takeCommands(); cmds.length; cmds = be.takeCommands()) {
    for (const c of shuffle(r, cmds)) be.complete(c.cmdId, be.execute(c));
    be.kick();
    be.sim.processKicks();
  }
}

describe('kernel simulator: data integrity', () => {
  it('random writes then reads, completed out of order, read back byte for byte', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 2, maxDataAreaMb: 8, dataPagesPerBlk: 2, autoKicks: false });
    const blockSize = 4096;
    const blocks = 2048;
    const be = new RamBackend(sim, { blockSize, blocks });
    const ini = new Initiator(sim, { blockSize });
    const shadow = new Uint8Array(blockSize * blocks);
    const r = rng(0xdada);
    try {
      for (let round = 0; round < 25; round++) {
        // Non-overlapping writes in flight together, answered in a random order.
        const taken = new Uint8Array(blocks);
        const writes: Promise<unknown>[] = [];
        for (let i = 0; i < randInt(r, 16, 80); i++) {
          const n = randInt(r, 1, 24);
          const lba = randInt(r, 0, blocks - n);
          if (taken.subarray(lba, lba + n).some((x) => x)) continue;
          taken.fill(1, lba, lba + n);
          const data = randomBytes(r, n * blockSize);
          shadow.set(data, lba * blockSize);
          const sixteen = r() < 0.3;
          writes.push(sixteen ? ini.send(cdbWrite16(lba, n), { dataOut: data }) : ini.write(lba, data));
        }
        serveShuffled(r, be);
        for (const w of await Promise.all(writes)) expect((w as { status: number }).status).to.equal(0);

        const reads: { p: Promise<{ status: number; data: Uint8Array }>; lba: number; n: number }[] = [];
        for (let i = 0; i < randInt(r, 8, 48); i++) {
          const n = randInt(r, 1, 32);
          const lba = randInt(r, 0, blocks - n);
          const sixteen = r() < 0.3;
          reads.push({ p: sixteen ? ini.send(cdbRead16(lba, n), { dataInLength: n * blockSize }) : ini.read(lba, n), lba, n });
        }
        serveShuffled(r, be);
        for (const x of reads) {
          const res = await x.p;
          expect(res.status).to.equal(0);
          const want = shadow.subarray(x.lba * blockSize, (x.lba + x.n) * blockSize);
          expect(Buffer.from(res.data).equals(Buffer.from(want)), `round ${round} read ${x.lba}+${x.n}`).to.equal(true);
        }
      }
      expect(Buffer.from(be.store).equals(Buffer.from(shadow))).to.equal(true);
      expect(sim.counters()).to.include({ dataBlocksUsed: 0, inflight: 0, qfullDepth: 0 });
    } finally {
      be.close();
      await sim.close();
    }
  });
});
