/**
 * Per-command cost of each layer, on one thread and with no waiting: the
 * simulator gets a batch of commands onto the ring (plugged, one irq), then
 * a consumer takes and answers the whole batch, then the simulator reaps the
 * completions. The two halves are timed separately, best of several rounds,
 * so scheduling (which dominates the threaded figures on a busy 2-core
 * machine) is out of the picture.
 *
 *   generator    the simulator + the bench initiator, per command
 *   ring         RingConsumer.next/complete + one readEvent/writeEvent per batch, no data work
 *   ring+copy    the same + the RAM handler's copies, inlined (Uint8Array.set per iovec)
 *   engine       DeviceEngine's drain with the real ram handler, SCSI core and counters, one kick per batch
 *
 * The engine is driven through its private drain()/flushKick() (see `EngineInternals`):
 * this measures the engine, it does not change it.
 */
import { performance } from 'node:perf_hooks';
import { KernelSimulator, RingConsumer, cdbRead16, cdbWrite16, readEvent, writeEvent } from '@tcmu-ts/ring';
import { loadHandler, type DeviceHandler } from '@tcmu-ts/core';
import { CounterWriter, createCounterBuffer, type DeviceSpec } from '@tcmu-ts/workers';
import { DeviceEngine } from '@tcmu-ts/workers/engine/device-engine';
import { scsiInfoFromSpec } from '@tcmu-ts/workers/engine/scsi-info';

export interface LayerCosts {
  ioBytes: number;
  batch: number;
  /** Microseconds per command. */
  generatorUs: number;
  ringUs: number;
  ringCopyUs: number;
  engineUs: number;
}

interface EngineInternals {
  drain(): void;
  flushKick(): void;
}

const BLOCK = 512;

const cdb = (read: boolean, lba: number, blocks: number): Uint8Array => (read ? cdbRead16(lba, blocks) : cdbWrite16(lba, blocks));

type Consume = () => void | Promise<void>;

async function timeLayer(sim: KernelSimulator, ioBytes: number, lunBytes: number, batch: number, consume: Consume, rounds: number, batchesPerRound: number): Promise<{ gen: number; cons: number }> {
  const blocks = ioBytes / BLOCK;
  const extents = Math.floor(lunBytes / ioBytes);
  const out = new Uint8Array(ioBytes).fill(7);
  let bestGen = Infinity;
  let bestCons = Infinity;
  for (let r = 0; r < rounds; r++) {
    let gen = 0;
    let cons = 0;
    for (let b = 0; b < batchesPerRound; b++) {
      const t0 = performance.now();
      sim.plug();
      const results: Promise<unknown>[] = [];
      for (let i = 0; i < batch; i++) {
        const read = (i & 1) === 0;
        const c = cdb(read, Math.floor(Math.random() * extents) * blocks, blocks);
        results.push(read ? sim.submit(c, { dataInLength: ioBytes }) : sim.submit(c, { dataOut: out }));
      }
      sim.unplug();
      const t1 = performance.now();
      await consume();
      const t2 = performance.now();
      if (sim.processKicks() === 0) throw new Error('consumer did not kick');
      await Promise.all(results);
      const t3 = performance.now();
      gen += t1 - t0 + (t3 - t2);
      cons += t2 - t1;
    }
    bestGen = Math.min(bestGen, (gen * 1000) / (batch * batchesPerRound));
    bestCons = Math.min(bestCons, (cons * 1000) / (batch * batchesPerRound));
  }
  return { gen: bestGen, cons: bestCons };
}

/** Write the whole LUN once through the layer under test, so no page is first touched while timing. */
async function prefill(sim: KernelSimulator, lunBytes: number, consume: Consume): Promise<void> {
  const chunk = 1 << 20;
  const data = new Uint8Array(chunk).fill(0x5a);
  sim.plug();
  const results: Promise<unknown>[] = [];
  for (let off = 0; off < lunBytes; off += chunk) results.push(sim.submit(cdb(false, off / BLOCK, chunk / BLOCK), { dataOut: data }));
  sim.unplug();
  await consume();
  sim.processKicks();
  await Promise.all(results);
}

export async function measureLayers(ioBytes: number, batch = 32, rounds = 5, batchesPerRound = 150): Promise<LayerCosts> {
  const lunBytes = 8 << 20;
  const mk = () => new KernelSimulator({ cmdRingSizeMb: 8, maxDataAreaMb: Math.max(32, Math.ceil((batch * ioBytes * 2) / (1 << 20))), autoKicks: false });
  const res: LayerCosts = { ioBytes, batch, generatorUs: NaN, ringUs: NaN, ringCopyUs: NaN, engineUs: NaN };

  // ring, and ring+copy
  for (const copy of [false, true]) {
    const sim = mk();
    try {
      const rc = new RingConsumer(sim.map);
      const u8 = new Uint8Array(sim.map);
      const ram = new Uint8Array(lunBytes);
      const fd = sim.endpoint.eventFd;
      const consume = () => {
        while (readEvent(fd) !== null) { /* the irq */ }
        for (let e = rc.next(); e !== null; e = rc.next()) {
          if (e.kind !== 'cmd') continue;
          const c = e.cdb;
          const read = c[0] === 0x88;
          const len = (((c[10] << 24) | (c[11] << 16) | (c[12] << 8) | c[13]) >>> 0) * BLOCK;
          if (copy) {
            let off = (((c[6] << 24) | (c[7] << 16) | (c[8] << 8) | c[9]) >>> 0) * BLOCK;
            for (const iov of e.iovs) {
              if (read) u8.set(ram.subarray(off, off + iov.length), iov.offset);
              else ram.set(u8.subarray(iov.offset, iov.offset + iov.length), off);
              off += iov.length;
            }
          }
          rc.complete(e.cmdId, 0, read ? { readLen: len } : undefined);
        }
        writeEvent(fd);
      };
      await prefill(sim, lunBytes, consume);
      const t = await timeLayer(sim, ioBytes, lunBytes, batch, consume, rounds, batchesPerRound);
      if (copy) res.ringCopyUs = t.cons;
      else res.ringUs = t.cons;
      res.generatorUs = Math.min(Number.isNaN(res.generatorUs) ? Infinity : res.generatorUs, t.gen);
    } finally {
      await sim.close();
    }
  }

  // the engine with the ram handler
  const sim = mk();
  try {
    const spec: DeviceSpec = {
      name: 'layers', subtype: 'ram', cfgstring: `${lunBytes >> 20}M`, handlerSpec: 'ram', blockSize: BLOCK, numLbas: lunBytes / BLOCK,
      maxXferBlocks: 2048, writeCache: true, serial: 'layers', wwn: 'layers', ring: sim.endpoint,
    };
    const handler = await loadHandler('ram');
    const quiet = { debug() {}, info() {}, warn() {}, error() {} };
    const dev = await handler.open({ name: spec.name, cfgstring: spec.cfgstring, blockSize: BLOCK, numLbas: spec.numLbas, maxXferBlocks: spec.maxXferBlocks, writeCache: true, log: quiet }, false) as DeviceHandler;
    const engine = new DeviceEngine({
      map: sim.map, eventFd: sim.endpoint.eventFd, handler: dev, info: scsiInfoFromSpec(spec, spec.numLbas),
      counters: new CounterWriter(createCounterBuffer()), log: quiet, onRingBroken: (r) => { throw new Error(r); },
    });
    const inner = engine as unknown as EngineInternals;
    const fd = sim.endpoint.eventFd;
    const consume = async () => {
      while (readEvent(fd) !== null) { /* the irq */ }
      inner.drain();
      await Promise.resolve(); // the ram handler's promises settle: completions are written
      inner.flushKick(); // what the engine's setImmediate does
    };
    await prefill(sim, lunBytes, consume);
    const t = await timeLayer(sim, ioBytes, lunBytes, batch, consume, rounds, batchesPerRound);
    res.engineUs = t.cons;
    // The engine's own setImmediate kicks touch the map: let them run before it is unmapped.
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    await dev.close();
  } finally {
    await sim.close();
  }
  for (const k of ['generatorUs', 'ringUs', 'ringCopyUs', 'engineUs'] as const) res[k] = Number(res[k].toFixed(2));
  return res;
}
