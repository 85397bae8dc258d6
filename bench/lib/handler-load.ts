/**
 * One LUN of a handler on a real cluster (rbd, glfs), served by a device
 * worker behind the kernel simulator and driven by the load generator: the
 * tcmu-ts side of the cluster benches, measured the same way for each.
 */
import { performance } from 'node:perf_hooks';
import { Supervisor, SimulatedBackend } from '@tcmu-ts/workers';
import { LoadDriver } from './load.js';

export interface HandlerLoad {
  /** The bench's name: the backend's, the device's serial and WWN. */
  bench: string;
  device: string;
  subtype: string;
  cfgstring: string;
  blockSize: number;
  numLbas: number;
  ioBytes: number;
  queueDepth: number;
  read: boolean;
  seconds: number;
  /** Load before the measured window (e.g. while the first writes take a lock). */
  warmupMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Random IO for `seconds` after the warm-up: IOPS, errors and the p99 latency. */
export async function handlerLoad(o: HandlerLoad): Promise<{ iops: number; errors: number; p99Us: number }> {
  const backend = new SimulatedBackend({ name: o.bench, cmdRingSizeMb: 8, maxDataAreaMb: 64, cmdTimeOutSec: 120 });
  const sup = new Supervisor({ log: (level, dev, msg) => { if (level === 'error') process.stderr.write(`${dev}: ${msg}\n`); } });
  try {
    await sup.addDevice({
      name: o.device, subtype: o.subtype, handlerSpec: o.subtype, cfgstring: o.cfgstring, blockSize: o.blockSize, numLbas: o.numLbas,
      maxXferBlocks: 2048, writeCache: false, serial: o.bench, wwn: o.bench, ring: backend.endpoint,
    }, backend);
    const driver = new LoadDriver([backend.sim], {
      ioBytes: o.ioBytes, queueDepth: o.queueDepth, readPercent: o.read ? 100 : 0, blockSize: o.blockSize, numLbas: o.numLbas, plug: true,
    });
    driver.start();
    await sleep(o.warmupMs);
    driver.take();
    const t0 = performance.now();
    await sleep(o.seconds * 1000);
    const p99Us = driver.hist.quantileUs(0.99);
    const w = driver.take();
    const secs = (performance.now() - t0) / 1000;
    await driver.stop();
    return { iops: Math.round(w.commands / secs), errors: w.errors, p99Us: Math.round(p99Us) };
  } finally {
    await sup.stop();
    await backend.close();
  }
}
