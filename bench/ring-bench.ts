/**
 * The ring-tuning bench: the same simulated TCMU rings served by tcmu-ts (the
 * real engine: Supervisor, one worker thread per LUN, ram or file handler)
 * and by a native C consumer (bench/native/consumer.c) in the same run, so
 * every figure comes with its ratio to native.
 *
 *   npm run bench -- --quick          about a minute; bench/results/quick.json
 *   npm run bench                     the full sweep; bench/results/full.json
 *   npm run bench -- --help
 *
 * The initiator and the simulator (the "kernel") run on this main thread and
 * can be the bottleneck; the null consumer (native, no data copies) measures
 * how fast they go alone, and each entry says when a figure is within 10 %
 * of that ceiling.
 */
import './lib/env.js';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, release } from 'node:os';
import { join } from 'node:path';
import { fuzzMain } from './ring-fuzz.js';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { SimulatedBackend, Supervisor, diffBuckets, quantileFromBuckets, type CounterSnapshot, type DeviceSpec } from '@tcmu-ts/workers';
import type { SimCounters } from '@tcmu-ts/ring';
import { LoadDriver, prefill } from './lib/load.js';
import { BENCH_DIR, buildNative, memcpyBandwidth, startNative, type NativeConsumer, type NativeStats } from './lib/native.js';
import { measureLayers, type LayerCosts } from './lib/layers.js';
import { startJsConsumer, type JsConsumer } from './lib/js-consumer.js';
import { cpuDelta, sampleCpu, sampleThreads, threadCores } from './lib/cpu.js';
import { lineChart, si, type Series } from './lib/svg.js';

// ---------------------------------------------------------------------------
// Configurations

type Consumer = 'tcmu' | 'native' | 'null' | 'jsPool' | 'jsSync';
type Handler = 'ram' | 'file';

interface Params {
  ioBytes: number;
  queueDepth: number;
  readPercent: number;
  luns: number;
  handler: Handler;
  /** auto: refills share an irq (plug) and the native consumer kicks once per pass; 1: an irq per command and a kick per completion. */
  batch: 'auto' | '1';
  /** cmd_ring_size_mb */
  ringMb: number;
  /** max_data_area_mb; 0 = enough for the queue depth (no qfull). */
  dataMb: number;
  /** data_pages_per_blk */
  pagesPerBlk: number;
}

interface Plan {
  group: string;
  params: Params;
  consumers: Consumer[];
}

const BLOCK = 512;
const LUN_MB = 64;
const CORES = cpus().length;

const BASE: Params = { ioBytes: 4096, queueDepth: 32, readPercent: 50, luns: 1, handler: 'ram', batch: 'auto', ringMb: 8, dataMb: 0, pagesPerBlk: 1 };
const BASE128: Params = { ...BASE, ioBytes: 128 << 10 };

function dataMbFor(p: Params): number {
  if (p.dataMb) return p.dataMb;
  const blk = 4096 * p.pagesPerBlk;
  const need = p.queueDepth * Math.ceil(p.ioBytes / blk) * blk;
  return Math.min(2048, Math.max(16, 2 ** Math.ceil(Math.log2((need * 1.25) / (1 << 20)))));
}

function id(p: Params): string {
  const io = p.ioBytes >= 1 << 20 ? `${p.ioBytes >> 20}M` : `${p.ioBytes >> 10}k`;
  return `${io} qd${p.queueDepth} r${p.readPercent} ${p.luns}x${p.handler} b=${p.batch} ring${p.ringMb}M data${dataMbFor(p)}M ppb${p.pagesPerBlk}`;
}

function plans(quick: boolean): Plan[] {
  const out: Plan[] = [];
  const add = (group: string, base: Params, change: Partial<Params>, consumers: Consumer[] = ['tcmu', 'native']) => {
    const params = { ...base, ...change };
    if (out.some((p) => id(p.params) === id(params))) return;
    out.push({ group, params, consumers });
  };
  const all: Consumer[] = ['tcmu', 'native', 'null'];
  // The bare ring layer in a worker, waiting on the pool (as the engine does) or blocking in place.
  const experiments: Consumer[] = [...all, 'jsPool', 'jsSync'];
  add('base', BASE, {}, experiments);
  add('base', BASE128, {}, experiments);
  if (quick) {
    for (const qd of [1, 8, 128]) add('queue depth', BASE, { queueDepth: qd });
    add('io size', BASE, { ioBytes: 1 << 20 }, all);
    for (let n = 2; n <= CORES; n++) add('luns', BASE, { luns: n }, all);
    for (const r of [0, 100]) add('mix', BASE, { readPercent: r });
    add('handler', BASE, { handler: 'file' });
    add('batching', BASE, { batch: '1' });
    add('ring', BASE128, { pagesPerBlk: 4 });
    add('ring', BASE128, { dataMb: 2 });
    return out;
  }
  for (const qd of [1, 2, 4, 8, 16, 64, 128, 256]) add('queue depth', BASE, { queueDepth: qd }, all);
  for (const qd of [1, 2, 4, 8, 16, 64, 128, 256]) add('queue depth 128k', BASE128, { queueDepth: qd });
  for (const io of [8, 16, 32, 64, 256, 512, 1024]) add('io size', BASE, { ioBytes: io << 10 }, all);
  for (const r of [0, 30, 70, 100]) add('mix', BASE, { readPercent: r });
  for (let n = 2; n <= Math.max(2, CORES); n++) {
    add('luns', BASE, { luns: n }, all);
    add('luns 128k', BASE128, { luns: n }, all);
  }
  add('handler', BASE, { handler: 'file' });
  add('handler', BASE128, { handler: 'file' });
  add('batching', BASE, { batch: '1' });
  add('batching', BASE128, { batch: '1' });
  for (const mb of [1, 2, 4]) add('ring', BASE, { ringMb: mb, queueDepth: 256 });
  add('ring', BASE, { queueDepth: 256 });
  for (const mb of [1, 2, 4, 8]) add('data area', BASE128, { dataMb: mb });
  for (const ppb of [2, 4, 16]) add('pages per block', BASE128, { pagesPerBlk: ppb });
  return out;
}

// ---------------------------------------------------------------------------
// One run

interface RunResult {
  iops: number;
  /** IOPS of every repetition; the other figures are those of the best one. */
  iopsRuns?: number[];
  mbps: number;
  commands: number;
  errors: number;
  firstError?: string;
  /** Initiator-side latency (submit to response), microseconds. */
  latUs: { p50: number; p90: number; p99: number; p999: number; mean: number };
  cdf: [number, number][];
  /** tcmu only: ring-to-completion latency from the workers' counters (the engine's own histogram), microseconds. */
  engineLatUs?: { p50: number; p99: number };
  cpu: {
    /** Cores used by the main thread: initiator + simulator. */
    generatorCores: number;
    /** Cores used by the consumer (tcmu: every other thread of this process; native: the child processes). */
    consumerCores: number;
    generatorUsPerCmd: number;
    consumerUsPerCmd: number;
    /** Cores per thread of this process other than the main one, busiest first (tcmu: device workers, then libuv pool and V8 helpers). */
    otherThreadCores: number[];
  };
  ring: { irqsPerCmd: number; kicksPerCmd: number; qfullQueued: number; cmdTimeouts: number };
  native?: { passesPerCmd: number; maxBatch: number };
  /** tcmu: the engine's own counters over the window. */
  engine?: { wakeupsPerCmd: number; kicksPerCmd: number };
  /** jsPool/jsSync: drains and waits per command. */
  js?: { drainsPerCmd: number; waitsPerCmd: number; kicksPerCmd: number };
  warnings?: string[];
}

interface Timing {
  warmupMs: number;
  measureMs: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (v: number, d = 1) => (Number.isFinite(v) ? Number(v.toFixed(d)) : v);

function sumSim(cs: SimCounters[]): { irqs: number; kicks: number; qfullQueued: number; cmdTimeouts: number } {
  return cs.reduce((a, c) => ({ irqs: a.irqs + c.irqs, kicks: a.kicks + c.kicks, qfullQueued: a.qfullQueued + c.qfullQueued, cmdTimeouts: a.cmdTimeouts + c.cmdTimeouts }),
    { irqs: 0, kicks: 0, qfullQueued: 0, cmdTimeouts: 0 });
}

function rwBuckets(s: CounterSnapshot): number[] {
  return s.ops.read.buckets.map((v, i) => v + s.ops.write.buckets[i]);
}

async function runOne(p: Params, consumer: Consumer, t: Timing, nativeBin: string, workDir: string): Promise<RunResult> {
  const lunBytes = LUN_MB << 20;
  const numLbas = lunBytes / BLOCK;
  const backends: SimulatedBackend[] = [];
  const natives: NativeConsumer[] = [];
  const jsConsumers: JsConsumer[] = [];
  const warnings: string[] = [];
  let sup: Supervisor | undefined;
  const dataMb = dataMbFor(p);
  try {
    for (let i = 0; i < p.luns; i++) {
      backends.push(new SimulatedBackend({
        name: `bench${i}`, cmdRingSizeMb: p.ringMb, maxDataAreaMb: dataMb, dataPagesPerBlk: p.pagesPerBlk, cmdTimeOutSec: 120,
      }));
    }
    if (consumer === 'tcmu') {
      sup = new Supervisor({ log: (level, dev, msg) => { if (level === 'warn' || level === 'error') warnings.push(`${dev}: ${msg}`); } });
      for (let i = 0; i < p.luns; i++) {
        const b = backends[i];
        const spec: DeviceSpec = {
          name: `lun${i}`, subtype: p.handler, handlerSpec: p.handler,
          cfgstring: p.handler === 'ram' ? `${LUN_MB}M` : join(workDir, `tcmu-lun${i}.img`),
          blockSize: BLOCK, numLbas, maxXferBlocks: 2048, writeCache: true, serial: `bench-${i}`, wwn: `bench-${i}`, ring: b.endpoint,
        };
        await sup.addDevice(spec, b);
      }
    } else if (consumer === 'jsPool' || consumer === 'jsSync') {
      for (let i = 0; i < p.luns; i++) {
        jsConsumers.push(await startJsConsumer(backends[i].endpoint, { lunBytes, blockSize: BLOCK, mode: consumer === 'jsPool' ? 'pool' : 'sync' }));
      }
    } else {
      for (let i = 0; i < p.luns; i++) {
        natives.push(startNative(nativeBin, backends[i].endpoint, {
          lunBytes, blockSize: BLOCK, null: consumer === 'null', kickEach: p.batch === '1',
          file: p.handler === 'file' && consumer === 'native' ? join(workDir, `native-lun${i}.img`) : undefined,
        }));
      }
    }
    const sims = backends.map((b) => b.sim);
    if (consumer !== 'null') await Promise.all(sims.map((s) => prefill(s, numLbas, BLOCK)));

    const driver = new LoadDriver(sims, { ioBytes: p.ioBytes, queueDepth: p.queueDepth, readPercent: p.readPercent, blockSize: BLOCK, numLbas, plug: p.batch === 'auto' });
    driver.start();
    await sleep(t.warmupMs);
    driver.take();
    const pids = natives.map((n) => n.child.pid!).filter(Boolean);
    const cpu0 = sampleCpu(pids);
    const thr0 = sampleThreads();
    const sim0 = sumSim(sims.map((s) => s.counters()));
    const eng0 = sup ? [...sup.devices.keys()].map((n) => sup!.snapshot(n)!) : [];
    const t0 = performance.now();
    await sleep(t.measureMs);
    const h = driver.hist;
    const latUs = { p50: h.quantileUs(0.5), p90: h.quantileUs(0.9), p99: h.quantileUs(0.99), p999: h.quantileUs(0.999), mean: h.meanUs() };
    const cdf = h.cdf();
    const w = driver.take();
    const secs = (performance.now() - t0) / 1000;
    const cpu = cpuDelta(cpu0, sampleCpu(pids));
    const otherThreadCores = threadCores(thr0, sampleThreads(), secs);
    const sim1 = sumSim(sims.map((s) => s.counters()));
    let engineLatUs: RunResult['engineLatUs'];
    let engineStats: RunResult['engine'];
    if (sup) {
      const eng1 = [...sup.devices.keys()].map((n) => sup!.snapshot(n)!);
      const b = eng1.map((s, i) => diffBuckets(rwBuckets(eng0[i]), rwBuckets(s))).reduce((a, x) => a.map((v, i) => v + x[i]));
      engineLatUs = { p50: round(quantileFromBuckets(b, 0.5) * 1e6), p99: round(quantileFromBuckets(b, 0.99) * 1e6) };
      const sum = (xs: CounterSnapshot[], f: (s: CounterSnapshot) => number) => xs.reduce((acc, x) => acc + f(x), 0);
      const ecmds = Math.max(1, sum(eng1, (s) => s.ops.read.commands + s.ops.write.commands) - sum(eng0, (s) => s.ops.read.commands + s.ops.write.commands));
      engineStats = {
        wakeupsPerCmd: round((sum(eng1, (s) => s.wakeups) - sum(eng0, (s) => s.wakeups)) / ecmds, 3),
        kicksPerCmd: round((sum(eng1, (s) => s.kicks) - sum(eng0, (s) => s.kicks)) / ecmds, 3),
      };
    }
    await driver.stop();
    let nstats: NativeStats[] = [];
    if (natives.length) nstats = await Promise.all(natives.splice(0).map((n) => n.stop()));
    const jstats = await Promise.all(jsConsumers.splice(0).map((j) => j.stop()));
    const consumerS = consumer === 'native' || consumer === 'null' ? cpu.childrenS : cpu.processS - cpu.mainS;
    const cmds = Math.max(1, w.commands);
    const res: RunResult = {
      iops: Math.round(w.commands / secs),
      mbps: round(w.bytes / secs / 1e6),
      commands: w.commands,
      errors: w.errors,
      firstError: w.firstError,
      latUs: { p50: round(latUs.p50), p90: round(latUs.p90), p99: round(latUs.p99), p999: round(latUs.p999), mean: round(latUs.mean) },
      cdf,
      engineLatUs,
      cpu: {
        generatorCores: round(cpu.mainS / secs, 2),
        consumerCores: round(consumerS / secs, 2),
        generatorUsPerCmd: round((cpu.mainS / cmds) * 1e6, 2),
        consumerUsPerCmd: round((consumerS / cmds) * 1e6, 2),
        otherThreadCores,
      },
      ring: {
        irqsPerCmd: round((sim1.irqs - sim0.irqs) / cmds, 3),
        kicksPerCmd: round((sim1.kicks - sim0.kicks) / cmds, 3),
        qfullQueued: sim1.qfullQueued - sim0.qfullQueued,
        cmdTimeouts: sim1.cmdTimeouts - sim0.cmdTimeouts,
      },
    };
    if (nstats.length) {
      const passes = nstats.reduce((a, s) => a + s.passes, 0);
      const total = nstats.reduce((a, s) => a + s.commands, 0);
      res.native = { passesPerCmd: round(passes / Math.max(1, total), 3), maxBatch: Math.max(...nstats.map((s) => s.maxBatch)) };
    }
    if (engineStats) res.engine = engineStats;
    if (jstats.length) {
      const tot = (f: (s: (typeof jstats)[number]) => number) => jstats.reduce((acc, x) => acc + f(x), 0);
      const jc = Math.max(1, tot((x) => x.commands));
      res.js = { drainsPerCmd: round(tot((x) => x.drains) / jc, 3), waitsPerCmd: round(tot((x) => x.waits) / jc, 3), kicksPerCmd: round(tot((x) => x.kicks) / jc, 3) };
    }
    if (warnings.length) res.warnings = warnings.slice(0, 5);
    return res;
  } finally {
    for (const n of natives) n.child.kill('SIGKILL');
    for (const j of jsConsumers) await j.stop().catch(() => undefined);
    if (sup) await sup.stop();
    for (const b of backends) await b.close();
  }
}

// ---------------------------------------------------------------------------
// Report

interface Entry {
  id: string;
  group: string;
  params: Params & { dataMbEffective: number };
  tcmu?: RunResult;
  native?: RunResult;
  null?: RunResult;
  /** Experiments: the bare ring layer in a worker thread, waiting on the libuv pool (as the engine does) or blocking in place. */
  jsPool?: RunResult;
  jsSync?: RunResult;
  /** Runs that failed (consumer: message). */
  failures?: string[];
  /** tcmu-ts IOPS / native IOPS, same configuration, same run. */
  ratioToNative: number | null;
  /** Share of the generator's own ceiling (null consumer) each consumer reached. */
  ofGeneratorCeiling?: { tcmu?: number; native?: number };
  /** The native figure is within 10 % of the null consumer's: the ratio is capped by the load generator, not by the consumers. */
  generatorBound?: boolean;
}

function pad(s: string | number, n: number, left = false): string {
  const v = String(s);
  return left ? v.padEnd(n) : v.padStart(n);
}

function tableHeader(): string {
  return `${pad('configuration', 52, true)} ${pad('tcmu IOPS', 10)} ${pad('native', 9)} ${pad('ratio', 6)} ${pad('null', 9)} ${pad('MB/s', 8)} ${pad('p50 us', 7)} ${pad('p99 us', 8)} ${pad('nat p99', 8)} ${pad('gen us/c', 8)} ${pad('tcmu us/c', 9)} ${pad('nat us/c', 8)}`;
}

function tableRow(e: Entry): string {
  const t = e.tcmu;
  const n = e.native;
  const f = (v: number | undefined, d = 0) => (v === undefined || !Number.isFinite(v) ? '-' : d ? v.toFixed(d) : si(v));
  return `${pad(e.id, 52, true)} ${pad(f(t?.iops), 10)} ${pad(f(n?.iops), 9)} ${pad(e.ratioToNative === null ? '-' : e.ratioToNative.toFixed(2), 6)} ${pad(f(e.null?.iops), 9)} ${pad(f(t?.mbps), 8)} ${pad(f(t?.latUs.p50), 7)} ${pad(f(t?.latUs.p99), 8)} ${pad(f(n?.latUs.p99), 8)} ${pad(f(t?.cpu.generatorUsPerCmd, 1), 8)} ${pad(f(t?.cpu.consumerUsPerCmd, 1), 9)} ${pad(f(n?.cpu.consumerUsPerCmd, 1), 8)}`;
}

function sameExcept(a: Params, b: Params, key: keyof Params): boolean {
  return (Object.keys(b) as (keyof Params)[]).every((k) => k === key || a[k] === b[k]);
}

function sweep(entries: Entry[], base: Params, key: keyof Params): Entry[] {
  return entries.filter((e) => sameExcept(e.params, base, key)).sort((x, y) => Number(x.params[key]) - Number(y.params[key]));
}

interface Target {
  name: string;
  goal: string;
  measured: string;
  met: boolean | null;
}

function targets(entries: Entry[]): Target[] {
  const find = (p: Params) => entries.find((e) => id(e.params) === id(p));
  const out: Target[] = [];
  const t1 = find(BASE);
  out.push({ name: '4 KiB QD32', goal: 'tcmu-ts >= 0.8 x native', measured: t1?.ratioToNative != null ? `${t1.ratioToNative.toFixed(3)}` : 'n/a', met: t1?.ratioToNative != null ? t1.ratioToNative >= 0.8 : null });
  const t2 = find(BASE128);
  out.push({ name: '128 KiB QD32', goal: 'tcmu-ts >= 0.9 x native', measured: t2?.ratioToNative != null ? `${t2.ratioToNative.toFixed(3)}` : 'n/a', met: t2?.ratioToNative != null ? t2.ratioToNative >= 0.9 : null });
  const one = t1?.tcmu?.iops;
  const oneNative = t1?.native?.iops;
  for (const e of sweep(entries, BASE, 'luns')) {
    const n = e.params.luns;
    if (n < 2 || !one || !e.tcmu) continue;
    const scale = e.tcmu.iops / one;
    const nscale = oneNative && e.native ? e.native.iops / oneNative : NaN;
    out.push({
      name: `${n} LUNs (4 KiB QD32)`, goal: `tcmu-ts >= ${(0.9 * n).toFixed(1)} x one LUN`,
      measured: `${scale.toFixed(2)} x (native ${Number.isFinite(nscale) ? nscale.toFixed(2) : 'n/a'} x, generator ceiling ${e.null && t1?.null ? (e.null.iops / t1.null.iops).toFixed(2) : 'n/a'} x)`,
      met: scale >= 0.9 * n,
    });
  }
  return out;
}

function writeSvgs(dir: string, name: string, entries: Entry[]): string[] {
  const files: string[] = [];
  const write = (file: string, svg: string) => {
    writeFileSync(join(dir, file), svg);
    files.push(join(dir, file));
  };
  // IOPS vs queue depth, 4 KiB and 128 KiB (one chart each: their scales differ by 5x)
  for (const [label, base, suffix] of [['4 KiB', BASE, ''], ['128 KiB', BASE128, '-128k']] as const) {
    const s = sweep(entries, base, 'queueDepth');
    if (s.length < 2) continue;
    const series: Series[] = [
      { name: 'tcmu-ts', points: s.filter((e) => e.tcmu).map((e) => [e.params.queueDepth, e.tcmu!.iops]) },
      { name: 'native', points: s.filter((e) => e.native).map((e) => [e.params.queueDepth, e.native!.iops]), dashed: true },
    ];
    const nul = s.filter((e) => e.null);
    if (nul.length >= 2) series.push({ name: 'generator ceiling', points: nul.map((e) => [e.params.queueDepth, e.null!.iops]), dashed: true, color: '#999' });
    write(`${name}-iops-vs-qd${suffix}.svg`, lineChart({ title: `IOPS vs queue depth, ${label} (1 LUN, ram, 50 % reads)`, subtitle: `${name} run; dashed: native C consumer, and the null consumer (generator ceiling), same ring`, xLabel: 'queue depth', yLabel: 'IOPS', xLog: true, xFmt: String, series }));
  }
  // Latency CDF for the base configurations
  const cdfSeries: Series[] = [];
  for (const [label, base] of [['4k QD32', BASE], ['128k QD32', BASE128]] as const) {
    const e = entries.find((x) => id(x.params) === id(base));
    if (!e) continue;
    if (e.tcmu) cdfSeries.push({ name: `tcmu-ts ${label}`, points: e.tcmu.cdf });
    if (e.native) cdfSeries.push({ name: `native ${label}`, points: e.native.cdf, dashed: true });
  }
  if (cdfSeries.length) {
    write(`${name}-latency-cdf.svg`, lineChart({ title: 'Latency CDF, submit to response (initiator side)', subtitle: 'includes the simulator\'s own work on the main thread', xLabel: 'latency (us)', yLabel: 'fraction of commands', xLog: true, yMin: 0, yMax: 1, step: true, yFmt: (v) => v.toFixed(1), xFmt: (v) => si(v), series: cdfSeries }));
  }
  // Scaling with LUNs
  const luns = sweep(entries, BASE, 'luns');
  if (luns.length >= 2) {
    const one = luns.find((e) => e.params.luns === 1);
    const s: Series[] = [
      { name: 'tcmu-ts', points: luns.filter((e) => e.tcmu).map((e) => [e.params.luns, e.tcmu!.iops]) },
      { name: 'native', points: luns.filter((e) => e.native).map((e) => [e.params.luns, e.native!.iops]), dashed: true },
      { name: 'generator ceiling', points: luns.filter((e) => e.null).map((e) => [e.params.luns, e.null!.iops]), dashed: true, color: '#999' },
    ];
    if (one?.tcmu) s.push({ name: 'target 0.9 x N x 1 LUN', points: luns.map((e) => [e.params.luns, 0.9 * e.params.luns * one.tcmu!.iops]), color: '#2ca02c', dashed: true });
    write(`${name}-scaling-luns.svg`, lineChart({ title: 'Scaling with LUNs (4 KiB QD32 each, ram)', subtitle: `${CORES} cores; one load generator thread for all LUNs`, xLabel: 'LUNs', yLabel: 'IOPS (all LUNs)', xFmt: String, series: s }));
  }
  return files;
}

// ---------------------------------------------------------------------------

const HELP = `ring-bench: tcmu-ts vs a native C consumer on the same simulated TCMU ring

  npm run bench -- [options]

  --quick              a short sweep (under two minutes): results/quick.json
  --name <name>        results/<name>.json and <name>-*.svg (default: quick or full)
  --only <regex>       run only configurations whose id or group matches
  --consumers <list>   comma-separated subset of tcmu,native,null,jsPool,jsSync
  --repeat <n>         run each configuration n times, consumers interleaved, keep
                       the best run of each (default 1)
  --warmup-ms <n>      per run (default 300 quick, 1000 full)
  --measure-ms <n>     per run (default 1000 quick, 3000 full)
  --no-memcpy          skip the memcpy bandwidth measurement
  --no-layers          skip the single-thread per-layer cost measurement
  --replot <json>      only redraw the table, targets and SVGs of an earlier results file
  --rbd                instead: the rbd handler against 'rbd bench' on a test Ceph cluster
                       (4 KiB and 128 KiB, random read and write, QD32; --repeat, --seconds):
                       results/rbd.json
  --fuzz               instead: the ring fuzz (bench/ring-fuzz.ts): --entries <n> adversarial
                       entries (default 1000000) against the consumer and engine,
                       --seed <s>; results/ring-fuzz.json, exit 1 on a crash or mismatch
  --glfs               instead: the glfs handler against direct gfapi IO on a test Gluster
                       volume (4 KiB random read and write, QD16; --repeat, --seconds):
                       results/glfs.json
  --isolation          instead: LUN B's IOPS alone and while LUN A's handler throws,
                       hangs, leaks or kills its worker (faults throw, hang, leak, crash,
                       exit; abort and leakp with A in a device process), alternating
                       (--repeat, --seconds, --only <regex of faults>): results/isolation.json
  --soak               instead: the soak, load on a file and a qcow LUN while workers and
                       the daemon are killed -9, rings reset, LUNs grown and reconfigured,
                       then every sector checked against the acknowledged writes
                       (--minutes <n>, default 10; --seed <s>; --qd <n>; --events <kinds>):
                       results/soak.json
  -h, --help
`;

async function main(): Promise<number> {
  if (process.argv.includes('--rbd')) return (await import('./rbd-bench.js')).main(process.argv.slice(2));
  if (process.argv.includes('--glfs')) return (await import('./glfs-bench.js')).main(process.argv.slice(2));
  if (process.argv.includes('--isolation')) return (await import('./isolation-bench.js')).main(process.argv.slice(2));
  if (process.argv.includes('--soak')) return (await import('./soak.js')).main(process.argv.slice(2));
  const { values: a } = parseArgs({
    options: {
      quick: { type: 'boolean' }, name: { type: 'string' }, only: { type: 'string' }, consumers: { type: 'string' },
      'warmup-ms': { type: 'string' }, 'measure-ms': { type: 'string' }, 'no-memcpy': { type: 'boolean' }, 'no-layers': { type: 'boolean' }, replot: { type: 'string' }, repeat: { type: 'string' }, help: { type: 'boolean', short: 'h' },
      fuzz: { type: 'boolean' }, entries: { type: 'string' }, seed: { type: 'string' },
    },
  });
  if (a.help) {
    process.stdout.write(HELP);
    return 0;
  }
  if (a.fuzz) {
    const entries = Number(a.entries ?? 1_000_000);
    const seed = a.seed !== undefined ? Number(a.seed) : undefined;
    if (!Number.isSafeInteger(entries) || entries <= 0 || (seed !== undefined && !Number.isSafeInteger(seed))) throw new Error('--entries and --seed take whole numbers');
    return fuzzMain({ entries, ...(seed !== undefined ? { seed } : {}), resultsDir: join(BENCH_DIR, 'results') });
  }
  if (a.replot) {
    const old = JSON.parse(readFileSync(a.replot, 'utf8')) as { name: string; entries: Entry[] };
    printReport(old.entries, targets(old.entries));
    for (const f of writeSvgs(join(BENCH_DIR, 'results'), old.name, old.entries)) process.stdout.write(`wrote ${f}\n`);
    return 0;
  }
  const quick = !!a.quick;
  const name = a.name ?? (quick ? 'quick' : 'full');
  const timing: Timing = { warmupMs: Number(a['warmup-ms'] ?? (quick ? 300 : 1000)), measureMs: Number(a['measure-ms'] ?? (quick ? 1000 : 3000)) };
  const consumers = new Set((a.consumers ?? 'tcmu,native,null,jsPool,jsSync').split(',') as Consumer[]);
  const repeat = Math.max(1, Number(a.repeat ?? 1));
  const only = a.only ? new RegExp(a.only) : undefined;
  const resultsDir = join(BENCH_DIR, 'results');
  mkdirSync(resultsDir, { recursive: true });
  const started = performance.now();
  const elapsed = () => `${((performance.now() - started) / 1000).toFixed(0)}s`;

  const native = buildNative();
  process.stderr.write(`[bench] native consumer: ${native.path} (${native.cc})\n`);
  let memcpy: Record<string, number> | undefined;
  if (!a['no-memcpy']) {
    memcpy = {
      nativeDramGBps: memcpyBandwidth(native.path, 256),
      nativeCacheGBps: memcpyBandwidth(native.path, 1),
      jsDramGBps: jsCopyBandwidth(256),
      jsCacheGBps: jsCopyBandwidth(1),
    };
    process.stderr.write(`[bench] memcpy, one thread: ${memcpy.nativeDramGBps} GB/s over 256 MiB, ${memcpy.nativeCacheGBps} GB/s over 1 MiB (JS Uint8Array.set: ${memcpy.jsDramGBps} / ${memcpy.jsCacheGBps})\n`);
  }

  let layers: LayerCosts[] | undefined;
  if (!a['no-layers']) {
    layers = [];
    for (const io of [4096, 128 << 10]) {
      const l = await measureLayers(io);
      layers.push(l);
      process.stderr.write(`[bench] layers, ${io >> 10} KiB, batches of ${l.batch}, us per command on one thread: generator ${l.generatorUs}, ring ${l.ringUs}, ring+copy ${l.ringCopyUs}, engine+ram ${l.engineUs}\n`);
    }
  }

  const list = plans(quick).filter((p) => !only || only.test(id(p.params)) || only.test(p.group));
  const runs = repeat * list.reduce((n, p) => n + p.consumers.filter((c) => consumers.has(c)).length, 0);
  process.stderr.write(`[bench] ${list.length} configurations, ${runs} runs, ${timing.warmupMs} + ${timing.measureMs} ms each, ${CORES} cores\n`);
  const workDir = mkdtempSync(join(tmpdir(), 'tcmu-bench-'));
  const entries: Entry[] = [];
  let k = 0;
  try {
    for (const p of list) {
      const e: Entry = { id: id(p.params), group: p.group, params: { ...p.params, dataMbEffective: dataMbFor(p.params) }, ratioToNative: null };
      for (let rep = 0; rep < repeat; rep++) for (const c of p.consumers) {
        if (!consumers.has(c)) continue;
        k++;
        process.stderr.write(`[${String(k).padStart(3)}/${runs} ${elapsed().padStart(4)}] ${p.group.padEnd(16)} ${e.id.padEnd(52)} ${c.padEnd(6)} `);
        let r: RunResult;
        try {
          r = await runOne(p.params, c, timing, native.path, workDir);
        } catch (err) {
          // One failed run is reported, not fatal: the rest of the sweep still says something.
          const msg = err instanceof Error ? err.message : String(err);
          process.stderr.write(`FAILED: ${msg}\n`);
          (e.failures ??= []).push(`${c}: ${msg}`);
          continue;
        }
        const prev = e[c];
        r.iopsRuns = [...(prev?.iopsRuns ?? []), r.iops];
        if (!prev || r.iops > prev.iops) e[c] = r;
        else prev.iopsRuns = r.iopsRuns;
        process.stderr.write(`${si(r.iops).padStart(6)} IOPS ${String(r.mbps).padStart(7)} MB/s p99 ${String(r.latUs.p99).padStart(7)} us${r.errors ? `  ${r.errors} errors (${r.firstError})` : ''}${r.ring.qfullQueued ? `  qfull ${r.ring.qfullQueued}` : ''}\n`);
      }
      if (e.tcmu && e.native && e.native.iops > 0) e.ratioToNative = round(e.tcmu.iops / e.native.iops, 3);
      if (e.null && e.null.iops > 0) {
        e.ofGeneratorCeiling = { tcmu: e.tcmu ? round(e.tcmu.iops / e.null.iops, 3) : undefined, native: e.native ? round(e.native.iops / e.null.iops, 3) : undefined };
        e.generatorBound = !!e.native && e.native.iops >= 0.9 * e.null.iops;
      }
      entries.push(e);
    }
  } finally {
    rmSync(workDir, { recursive: true, force: true });
  }

  const t = targets(entries);
  const out = {
    name,
    command: `npm run bench --${process.argv.slice(2).map((x) => (/^[\w=.,:/-]+$/.test(x) ? ` ${x}` : ` '${x}'`)).join('')}`,
    date: new Date().toISOString(),
    durationS: round((performance.now() - started) / 1000),
    machine: { cores: CORES, cpu: cpus()[0]?.model ?? 'unknown', node: process.version, kernel: release(), uvThreadpool: Number(process.env.UV_THREADPOOL_SIZE) },
    timing,
    repeat,
    lunMb: LUN_MB,
    blockSize: BLOCK,
    memcpy,
    layers,
    notes: [
      'The initiator and the kernel simulator run on the bench main thread for every consumer; "null" is the native consumer without data copies, i.e. the ceiling of that load generator.',
      'latUs is initiator-side (submit to response, simulator work included); engineLatUs is the engine\'s own ring-to-completion histogram.',
      'cpu.consumerCores for tcmu is every thread of the bench process but the main one (device workers, libuv pool, V8 helpers).',
    ],
    targets: t,
    entries,
  };
  const file = join(resultsDir, `${name}.json`);
  writeFileSync(file, JSON.stringify(out, null, 1) + '\n');
  const svgs = writeSvgs(resultsDir, name, entries);

  printReport(entries, t);
  process.stdout.write(`\nwrote ${file}\n${svgs.map((s) => `wrote ${s}`).join('\n')}\ntook ${elapsed()}\n`);
  return 0;
}

function printReport(entries: Entry[], t: Target[]): void {
  process.stdout.write(`\n${tableHeader()}\n`);
  let group = '';
  for (const e of entries) {
    if (e.group !== group) {
      group = e.group;
      process.stdout.write(`-- ${group}\n`);
    }
    process.stdout.write(`${tableRow(e)}\n`);
  }
  process.stdout.write('\ntargets (reported, not asserted):\n');
  for (const x of t) process.stdout.write(`  ${x.met === null ? '  ?' : x.met ? ' ok' : 'MISS'}  ${x.name.padEnd(22)} ${x.goal.padEnd(28)} measured ${x.measured}\n`);
  const failed = entries.filter((e) => e.failures?.length);
  if (failed.length) process.stdout.write(`\nfailed runs: ${failed.map((e) => `${e.id}: ${e.failures!.join('; ')}`).join('\n  ')}\n`);
  const bound = entries.filter((e) => e.generatorBound).map((e) => e.id);
  if (bound.length) process.stdout.write(`\nload-generator bound (native within 10 % of the null consumer): ${bound.join('; ')}\n`);
}

function jsCopyBandwidth(mib: number): number {
  const n = mib << 20;
  const a = new Uint8Array(n).fill(1);
  const b = new Uint8Array(n).fill(2);
  let best = 0;
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    let reps = 0;
    do {
      (reps & 1 ? a : b).set(reps & 1 ? b : a);
      reps++;
    } while (performance.now() - t0 < 300);
    best = Math.max(best, (n * reps) / ((performance.now() - t0) / 1000) / 1e9);
  }
  return round(best, 2);
}

main().then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`ring-bench: ${e instanceof Error ? e.stack : String(e)}\n`);
  process.exit(1);
});
