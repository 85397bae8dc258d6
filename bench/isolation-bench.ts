/**
 * `npm run bench -- --isolation`: does a misbehaving LUN slow down another
 * one of the same daemon? (issue 17, item 3)
 *
 * One supervisor with its default restart policy (5 restarts a minute, then
 * the device is marked failed) and demotion (a restarted worker, and one
 * past half its heap limit, run at nice 10), and a 64 MiB JS heap per
 * device worker. LUN B
 * (ram, 64 MiB) is under a constant load (4 KiB random, 50 % reads, QD16)
 * for the whole bench. Runs alternate: a baseline (B alone) and a fault run,
 * in which LUN A (its own worker and simulated kernel) is added with one of
 * the faults below and driven by a paced initiator (QD4, 1 ms pause after
 * each answer, 64 KiB writes), then removed; and a control run, A with the
 * same load and a handler that behaves. B's IOPS are measured over the same
 * window after the same warm-up in all; per fault, the median of its runs
 * over the median of the baselines (B alone) and of the control runs (the
 * cost of A merely being busy, which on 2 cores and with every initiator on
 * the main thread is not nothing).
 *
 *   throw  A's handler throws synchronously on every IO (the engine answers
 *          CHECK CONDITION and logs each one through the supervisor)
 *   hang   fault/ram/64M;hang=1: every IO of A hangs; the simulated kernel
 *          times them out after cmd_time_out (1 s) and queues the rest
 *   leak   A's handler keeps a JS-heap copy of every IO's data; its worker
 *          reaches the 64 MiB heap limit (ERR_WORKER_OUT_OF_MEMORY) and is
 *          restarted, again and again until the restart policy gives up
 *   crash  an uncaught exception in A's worker on its first IO: restarted on
 *          a reset ring, crashes again, until the policy gives up
 *   exit   process.exit() in A's worker: the same
 *   abort  native abort, process isolation: A's worker is a child process
 *          (isolation 'process') whose handler calls process.abort() on its
 *          first IO, as a native abort() or SIGSEGV would end it; restarted
 *          on a reset ring, again and again until the policy gives up. (In
 *          a worker thread this would end the bench, B included.)
 *   leakp  the leak, with A in a device process: its garbage collection
 *          runs on its own process's threads, which a restart starts at
 *          the demoted nice value, not on V8 threads B's process shares
 */
import './lib/env.js';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, release } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Initiator, ScsiStatus } from '@tcmu-ts/ring';
import { SimulatedBackend, Supervisor, type DeviceSpec } from '@tcmu-ts/workers';
import { LoadDriver, prefill } from './lib/load.js';
import { BENCH_DIR } from './lib/native.js';
import { fileURLToPath } from 'node:url';

const BLOCK = 512;
const LUN_MB = 64;
const NUM_LBAS = (LUN_MB << 20) / BLOCK;
const HEAP_MB = 64;
const MISBEHAVING = fileURLToPath(new URL('../../test/dist/fixtures/misbehaving-handler.js', import.meta.url));

const FAULTS = ['throw', 'hang', 'leak', 'crash', 'exit', 'abort', 'leakp'] as const;
/** The faults whose A runs in a device process; the rest in a worker thread. */
const IN_A_PROCESS: ReadonlySet<string> = new Set(['abort', 'leakp']);
/** How each fault is described in the results. */
const FAULT_NAMES: Record<Fault, string> = {
  throw: 'handler throws', hang: 'handler hangs', leak: 'JS heap leak', crash: 'uncaught exception', exit: 'process.exit in the worker',
  abort: 'native abort, process isolation',
  leakp: 'JS heap leak, process isolation',
};
type Fault = (typeof FAULTS)[number];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2) : NaN;
};
const round = (x: number, d = 3) => Math.round(x * 10 ** d) / 10 ** d;

function spec(name: string, subtype: string, handlerSpec: string, cfgstring: string, b: SimulatedBackend, cmdTimeOut?: number): DeviceSpec {
  return {
    name, subtype, handlerSpec, cfgstring, blockSize: BLOCK, numLbas: NUM_LBAS, maxXferBlocks: 2048, writeCache: true,
    serial: name, wwn: name, ring: b.endpoint, ...(cmdTimeOut ? { cmdTimeOut } : {}),
  };
}

/** A's initiator: `qd` lanes of 64 KiB writes, each pausing `pauseMs` after an answer (and after a refusal, so a blocked LUN cannot spin the loop). */
function pacedLoad(ini: Initiator, qd: number, pauseMs: number): { stop(): Promise<{ good: number; bad: number }> } {
  let stopped = false;
  const n = { good: 0, bad: 0 };
  const data = new Uint8Array(128 * BLOCK).fill(0x11);
  const lanes = Array.from({ length: qd }, async (_, k) => {
    for (let i = 0; !stopped; i++) {
      const r = await ini.write(((k * 131 + i * 17) % (NUM_LBAS / 128)) * 128, data);
      if (r.status === ScsiStatus.GOOD) n.good++;
      else n.bad++;
      await sleep(pauseMs);
    }
  });
  return { stop: async () => { stopped = true; await Promise.all(lanes); return n; } };
}

interface Run {
  kind: 'baseline' | 'control' | Fault;
  iops: number;
  p99Us: number;
  errors: number;
  a?: { good: number; bad: number; restarts: number; state: string; kernelTimeouts: number; qfullTimeouts: number };
}

export async function main(argv: string[]): Promise<number> {
  const { values: a } = parseArgs({
    args: argv, strict: false,
    options: { isolation: { type: 'boolean' }, repeat: { type: 'string' }, seconds: { type: 'string' }, only: { type: 'string' } },
  });
  const repeat = Math.max(1, Number(a.repeat ?? 2));
  const seconds = Number(a.seconds ?? 2);
  const warmupMs = 500;
  const faults = FAULTS.filter((f) => !a.only || new RegExp(String(a.only)).test(f));
  const started = performance.now();
  const logs = new Map<string, number>();
  const sup = new Supervisor({
    workerHeapMb: HEAP_MB,
    log: (level, dev, msg) => {
      const k = `${level} ${dev.replace(/-\d+$/, '')}`;
      logs.set(k, (logs.get(k) ?? 0) + 1);
      if (process.env.ISOLATION_DEBUG) process.stderr.write(`${level} ${dev}: ${msg}\n`);
    },
  });
  const backendB = new SimulatedBackend({ cmdRingSizeMb: 8, maxDataAreaMb: 64, cmdTimeOutSec: 30 });
  const runs: Run[] = [];
  let seq = 0;
  try {
    await sup.addDevice(spec('B', 'ram', 'ram', `${LUN_MB}M`, backendB), backendB);
    await prefill(backendB.sim, NUM_LBAS, BLOCK);
    const driver = new LoadDriver([backendB.sim], { ioBytes: 4096, queueDepth: 16, readPercent: 50, blockSize: BLOCK, numLbas: NUM_LBAS, plug: true });
    driver.start();
    await sleep(warmupMs);

    const measure = async (kind: Run['kind']): Promise<Run> => {
      let A: { name: string; backend: SimulatedBackend; load: ReturnType<typeof pacedLoad> } | undefined;
      if (kind !== 'baseline') {
        const name = `A-${kind}-${++seq}`; // a new name each run: a fresh restart budget
        const backend = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 1 });
        const s = kind === 'hang'
          ? spec(name, 'fault', 'fault', `ram/${LUN_MB}M;hang=1`, backend, 1)
          : spec(name, 'misbehave', MISBEHAVING, `${kind === 'control' ? 'ok' : kind === 'leakp' ? 'leak' : kind}/${LUN_MB}M`, backend);
        await sup.addDevice(s, backend, { isolation: IN_A_PROCESS.has(kind) ? 'process' : 'thread' });
        A = { name, backend, load: pacedLoad(new Initiator(backend.sim, { blockSize: BLOCK }), 4, 1) };
      }
      await sleep(warmupMs);
      driver.take();
      const t0 = performance.now();
      await sleep(seconds * 1000);
      const p99Us = driver.hist.quantileUs(0.99);
      const w = driver.take();
      const run: Run = { kind, iops: Math.round(w.commands / ((performance.now() - t0) / 1000)), p99Us: Math.round(p99Us), errors: w.errors };
      if (A) {
        // Release held commands (hang) so the worker can stop, then remove A.
        if (kind === 'hang') await sup.reconfigure(A.name, { cfgstring: `ram/${LUN_MB}M` });
        const n = await A.load.stop();
        const dev = sup.devices.get(A.name)!;
        const c = A.backend.sim.counters();
        run.a = { ...n, restarts: dev.restarts, state: dev.state, kernelTimeouts: c.cmdTimeouts, qfullTimeouts: c.qfullTimeouts };
        await sup.removeDevice(A.name);
        await A.backend.close();
      }
      process.stderr.write(`[isolation ${((performance.now() - started) / 1000).toFixed(0)}s] ${kind.padEnd(8)} B ${run.iops} IOPS p99 ${run.p99Us} us${run.errors ? ` ${run.errors} errors` : ''}${run.a ? `  A: ${run.a.good} good ${run.a.bad} failed, ${run.a.restarts} restarts, ${run.a.state}` : ''}\n`);
      return run;
    };

    for (let r = 0; r < repeat; r++) {
      for (const f of faults) {
        runs.push(await measure('baseline'));
        runs.push(await measure('control'));
        runs.push(await measure(f));
      }
    }
    await driver.stop();
  } finally {
    await sup.stop();
    await backendB.close();
  }

  const base = runs.filter((r) => r.kind === 'baseline');
  const baseIops = median(base.map((r) => r.iops));
  const control = runs.filter((r) => r.kind === 'control');
  const controlIops = median(control.map((r) => r.iops));
  const perFault = faults.map((f) => {
    const rs = runs.filter((r) => r.kind === f);
    const iops = median(rs.map((r) => r.iops));
    return {
      fault: f, what: FAULT_NAMES[f], ratio: round(iops / baseIops), within10pct: iops >= 0.9 * baseIops,
      ratioToControl: round(iops / controlIops), within10pctOfControl: iops >= 0.9 * controlIops, bIops: rs.map((r) => r.iops), bP99Us: rs.map((r) => r.p99Us), bErrors: rs.reduce((s, r) => s + r.errors, 0),
      a: rs.map((r) => r.a),
    };
  });
  const out = {
    name: 'isolation',
    command: `npm run bench -- ${argv.join(' ')}`,
    date: new Date().toISOString(),
    durationS: round((performance.now() - started) / 1000, 1),
    machine: { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version, kernel: release() },
    setup: {
      b: `ram ${LUN_MB} MiB, 4 KiB random, 50 % reads, QD16, plugged batches (bench/lib/load.ts)`,
      a: 'QD4 paced writes of 64 KiB (1 ms pause after each answer); its own worker and simulated kernel (cmd_time_out 1 s)',
      workerHeapMb: HEAP_MB, restartPolicy: '5 restarts a minute, then failed (Supervisor defaults)',
      demotion: 'Supervisor default: a restarted worker, and one past half its heap limit, run at nice 10',
      seconds, warmupMs, repeat,
    },
    baseline: { iops: baseIops, runs: base.map((r) => r.iops), p99Us: base.map((r) => r.p99Us) },
    control: { what: 'A present with the same paced load and a handler that behaves (misbehaving-handler ok/)', iops: controlIops, runs: control.map((r) => r.iops), p99Us: control.map((r) => r.p99Us) },
    faults: perFault,
    notMeasured: [{
      fault: 'native crash in a worker thread (the default isolation)',
      why: 'device workers are threads of one process: a native abort ends the process and B with it. The abort row runs A in a device process (isolation \'process\', tcmu-ts --isolate-process), where it ends only A\'s worker.',
    }],
    notes: [
      'The initiators and both simulated kernels run on the bench main thread, so anything A costs that thread (log messages, its own initiator) is charged to B too.',
      'On a shared 2-core machine worker start-up (a restart) competes with B for CPU; the ratio includes that.',
    ],
    supervisorLogLines: Object.fromEntries(logs),
  };
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'isolation.json');
  writeFileSync(file, JSON.stringify(out, null, 1) + '\n');
  process.stdout.write(`\nB alone: ${baseIops} IOPS (median of ${base.length} runs: ${base.map((r) => r.iops).join(', ')})\n`);
  process.stdout.write(`B next to a healthy A under the same load (control): ${controlIops} IOPS (runs: ${control.map((r) => r.iops).join(', ')})\n`);
  process.stdout.write(`${'A does'.padEnd(32)} ${'B / alone'.padStart(10)} ${'B / control'.padStart(12)}  A (last run)\n`);
  for (const p of perFault) {
    const last = p.a.at(-1);
    process.stdout.write(`${p.what.padEnd(32)} ${p.ratio.toFixed(3).padStart(10)} ${p.ratioToControl.toFixed(3).padStart(12)}  ${last ? `${last.good} good, ${last.bad} failed, ${last.restarts} restarts, ${last.state}, ${last.kernelTimeouts} kernel timeouts` : ''}\n`);
  }
  process.stdout.write(`not measured: ${out.notMeasured[0].fault}: ${out.notMeasured[0].why}\nwrote ${file}\n`);
  return 0;
}
