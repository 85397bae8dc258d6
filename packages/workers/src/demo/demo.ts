/**
 * `npm start` without a TCMU kernel module: two simulated LUNs (ram and file)
 * served by the real engine, driven by the built-in verifying load, with live
 * figures read from the workers' shared counters once a second.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { Supervisor, type Isolation } from '../supervisor.js';
import { SimulatedBackend } from './sim-backend.js';
import { VerifyingLoad, type LoadStats } from './load.js';
import { diffBuckets, quantileFromBuckets, type CounterSnapshot } from '../counters.js';
import type { DeviceSpec } from '../device-spec.js';
import { startMetricsServer, parseMetricsAddress, type MetricsServer } from '../metrics.js';

export interface DemoOptions {
  /** Where device workers run (SupervisorOptions.isolation). Default 'thread'. */
  isolation?: Isolation;
  durationS?: number;
  queueDepth: number;
  ioBytes: number;
  readPercent: number;
  lunSizeMb: number;
  load: boolean;
  /** host:port for /metrics, or null for none. */
  metricsAddress?: string | null;
  out?: NodeJS.WritableStream;
}

const BLOCK_SIZE = 512;

interface Lun {
  spec: DeviceSpec;
  backend: SimulatedBackend;
  load?: VerifyingLoad;
  last?: CounterSnapshot;
}

function totals(s: CounterSnapshot): { commands: number; bytes: number; errors: number; buckets: number[] } {
  const ops = Object.values(s.ops);
  return {
    commands: ops.reduce((a, o) => a + o.commands, 0),
    bytes: ops.reduce((a, o) => a + o.bytes, 0),
    errors: ops.reduce((a, o) => a + o.errors, 0),
    buckets: ops.reduce<number[]>((acc, o) => (acc.length ? acc.map((v, i) => v + o.buckets[i]) : [...o.buckets]), []),
  };
}

function ms(seconds: number): string {
  return Number.isNaN(seconds) ? '   -  ' : (seconds * 1000).toFixed(3).padStart(7);
}

export async function runDemo(o: DemoOptions): Promise<number> {
  const out = o.out ?? process.stdout;
  const dir = mkdtempSync(join(tmpdir(), 'tcmu-ts-demo-'));
  const numLbas = (o.lunSizeMb << 20) / BLOCK_SIZE;
  const sup = new Supervisor({ isolation: o.isolation ?? 'thread' });
  const luns: Lun[] = [];
  const specs: Omit<DeviceSpec, 'ring'>[] = [
    { name: 'ram0', subtype: 'ram', cfgstring: `${o.lunSizeMb}M`, handlerSpec: 'ram' },
    { name: 'file0', subtype: 'file', cfgstring: join(dir, 'file0.img'), handlerSpec: 'file' },
  ].map((d) => ({
    ...d, blockSize: BLOCK_SIZE, numLbas, maxXferBlocks: 2048, writeCache: true,
    serial: randomUUID(), wwn: randomUUID(),
  }));
  let code = 0;
  let metrics: MetricsServer | undefined;
  const started = Date.now();
  let stopRequested: () => void = () => {};
  const stopped = new Promise<void>((r) => { stopRequested = r; });
  const onSignal = () => stopRequested();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    for (const s of specs) {
      const backend = new SimulatedBackend({ name: s.name, cmdRingSizeMb: 8, maxDataAreaMb: 64 });
      const spec: DeviceSpec = { ...s, ring: backend.endpoint };
      luns.push({ spec, backend });
      await sup.addDevice(spec, backend);
      out.write(`${s.name}: ${s.subtype}/${s.cfgstring}, ${o.lunSizeMb} MiB, ${BLOCK_SIZE}-byte blocks, ring ${backend.sim.layout.cmdrSize} B, data area ${backend.sim.layout.dataSize >> 20} MiB\n`);
    }
    if (o.metricsAddress) {
      try {
        metrics = await startMetricsServer(sup, parseMetricsAddress(o.metricsAddress));
        out.write(`metrics: ${metrics.url}\n`);
      } catch (e) {
        // The simulated LUNs are still worth running without a scrape endpoint.
        process.stderr.write(`tcmu-ts: no /metrics endpoint: ${e instanceof Error ? e.message : String(e)}\n`);
      }
    }
    if (o.load) {
      for (const l of luns) {
        l.load = new VerifyingLoad({
          name: l.spec.name, blockSize: BLOCK_SIZE, numLbas,
          submit: (cdb, opts) => l.backend.sim.submit(cdb, opts),
        }, { queueDepth: o.queueDepth, ioBytes: o.ioBytes, readPercent: o.readPercent, flushEvery: 1000 });
        l.load.start();
      }
      out.write(`load: ${o.readPercent}% reads, ${o.ioBytes} B per IO, queue depth ${o.queueDepth} per LUN${o.durationS ? `, ${o.durationS} s` : ', Ctrl-C to stop'}\n`);
    }
    let lastTick = Date.now();
    const ticker = setInterval(() => {
      const now = Date.now();
      const dt = (now - lastTick) / 1000;
      lastTick = now;
      const t = ((now - started) / 1000).toFixed(0).padStart(4);
      for (const l of luns) {
        const s = sup.snapshot(l.spec.name);
        if (!s) continue;
        const cur = totals(s);
        const prev = l.last ? totals(l.last) : { commands: 0, bytes: 0, errors: 0, buckets: cur.buckets.map(() => 0) };
        l.last = s;
        const window = diffBuckets(prev.buckets, cur.buckets);
        out.write(`[${t}s] ${l.spec.name.padEnd(6)} ${((cur.commands - prev.commands) / dt).toFixed(0).padStart(7)} IOPS ${((cur.bytes - prev.bytes) / dt / 1e6).toFixed(1).padStart(7)} MB/s  p50 ${ms(quantileFromBuckets(window, 0.5))} ms  p99 ${ms(quantileFromBuckets(window, 0.99))} ms  in flight ${String(s.inFlight).padStart(3)}  errors ${cur.errors}${l.load ? `  verify failures ${l.load.stats.verifyFailures}` : ''}\n`);
      }
    }, 1000);
    const timer = o.durationS !== undefined ? setTimeout(() => stopRequested(), o.durationS * 1000) : undefined;
    await stopped;
    clearInterval(ticker);
    if (timer) clearTimeout(timer);
  } catch (e) {
    process.stderr.write(`tcmu-ts: ${e instanceof Error ? e.message : String(e)}\n`);
    code = 1;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  const elapsed = (Date.now() - started) / 1000;
  const stats: LoadStats[] = [];
  for (const l of luns) if (l.load) stats.push(await l.load.stop());
  await metrics?.close();
  await sup.stop();
  for (const l of luns) await l.backend.close();
  rmSync(dir, { recursive: true, force: true });
  const commands = stats.reduce((a, s) => a + s.commands, 0);
  const errors = stats.reduce((a, s) => a + s.errors, 0);
  const verify = stats.reduce((a, s) => a + s.verifyFailures, 0);
  for (const s of stats) if (s.firstProblem) out.write(`first problem: ${s.firstProblem}\n`);
  out.write(`summary: ${commands} commands, ${(commands / elapsed).toFixed(0)} IOPS, ${errors} errors, ${verify} verify failures\n`);
  return code !== 0 || errors > 0 || verify > 0 ? 1 : 0;
}
