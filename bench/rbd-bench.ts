/**
 * rbd-bench: tcmu-ts's rbd handler against `rbd bench` on the same image of
 * the same cluster, in one run, jobs alternating, best of `--repeat`.
 *
 *   npm run bench -- --rbd [--repeat 3] [--seconds 4]
 *
 * The cluster is the tests' own (test/fixtures/ceph.ts: one mon, one
 * memstore OSD on 127.0.0.1). tcmu-ts is driven by the bench's load
 * generator through the kernel simulator and a device worker, as any LUN;
 * `rbd bench` is librbd with its own threads and no SCSI at all, so the
 * ratio is what the whole daemon costs on top of librbd. fio's rbd engine
 * (when fio is installed) is a second reference. Results go to
 * bench/results/rbd.json.
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { handlerLoad } from './lib/handler-load.js';
import { BENCH_DIR } from './lib/native.js';

const BLOCK = 512;
const IMAGE_MB = 256;

interface Job {
  name: string;
  ioBytes: number;
  queueDepth: number;
  read: boolean;
}

const JOBS: Job[] = [
  { name: '4k-randread-qd32', ioBytes: 4096, queueDepth: 32, read: true },
  { name: '4k-randwrite-qd32', ioBytes: 4096, queueDepth: 32, read: false },
  { name: '128k-randread-qd32', ioBytes: 128 << 10, queueDepth: 32, read: true },
  { name: '128k-randwrite-qd32', ioBytes: 128 << 10, queueDepth: 32, read: false },
];

interface Cluster {
  pool: string;
  confPath: string;
  rbd(args: string[]): string;
  createImage(name: string, sizeBytes: number): void;
  stop(): Promise<void>;
}

/** `rbd bench` for about `seconds`: it runs a fixed amount of IO, sized from a first short probe. */
function rbdBench(c: Cluster, image: string, job: Job, seconds: number, opsHint: number): number {
  const total = Math.max(job.ioBytes * 2000, Math.round(opsHint * seconds) * job.ioBytes);
  const out = c.rbd([
    'bench', '--io-type', job.read ? 'read' : 'write', '--io-size', String(job.ioBytes), '--io-threads', String(job.queueDepth),
    '--io-total', String(total), '--io-pattern', 'rand', `${c.pool}/${image}`,
  ]);
  const m = /elapsed:\s*([\d.]+)\s+ops:\s*(\d+)\s+ops\/sec:\s*([\d.]+)/.exec(out);
  if (!m) throw new Error(`cannot read rbd bench's result from: ${out.slice(-300)}`);
  return Number(m[3]);
}

/** fio's rbd engine (Debian builds fio with it), when fio is installed: librbd again, driven the way users benchmark images. */
function fioRbd(c: Cluster, image: string, job: Job, seconds: number): number | undefined {
  let out: string;
  try {
    out = execFileSync('fio', [
      '--name=rbd', '--ioengine=rbd', '--clientname=admin', `--pool=${c.pool}`, `--rbdname=${image}`, `--rw=${job.read ? 'randread' : 'randwrite'}`,
      `--bs=${job.ioBytes}`, `--iodepth=${job.queueDepth}`, `--runtime=${seconds}`, '--time_based', '--ramp_time=0.5', '--output-format=json',
    ], { encoding: 'utf8', env: { ...process.env, CEPH_CONF: c.confPath }, stdio: ['ignore', 'pipe', 'pipe'], timeout: (seconds + 60) * 1000 });
  } catch (e) {
    const err = e as { code?: string };
    if (err.code === 'ENOENT') return undefined;
    throw e;
  }
  const j = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { read: { iops: number }; write: { iops: number } }[] };
  return Math.round(job.read ? j.jobs[0].read.iops : j.jobs[0].write.iops);
}

function tcmuBench(c: Cluster, image: string, job: Job, seconds: number): Promise<{ iops: number; errors: number; p99Us: number }> {
  return handlerLoad({
    bench: 'rbd-bench', device: 'rbd0', subtype: 'rbd', cfgstring: `${c.pool}/${image};conf=${c.confPath}`, blockSize: BLOCK, numLbas: (IMAGE_MB << 20) / BLOCK,
    ioBytes: job.ioBytes, queueDepth: job.queueDepth, read: job.read, seconds, warmupMs: 500,
  });
}

export async function main(argv: string[]): Promise<number> {
  const { values: a } = parseArgs({ args: argv, options: { rbd: { type: 'boolean' }, repeat: { type: 'string' }, seconds: { type: 'string' }, quick: { type: 'boolean' } }, strict: false });
  const repeat = Math.max(1, Number(a.repeat ?? (a.quick ? 1 : 3)));
  const seconds = Number(a.seconds ?? (a.quick ? 2 : 4));
  // The cluster helper is the test suite's (built with it): one recipe for a test cluster, not two.
  const { startCephCluster } = (await import(new URL('../../test/dist/fixtures/ceph.js', import.meta.url).href)) as { startCephCluster(): Promise<Cluster> };
  process.stderr.write('[rbd-bench] starting a one-OSD Ceph cluster on 127.0.0.1\n');
  const c = await startCephCluster();
  const started = performance.now();
  const results: { job: string; rbdBench: number[]; fio: number[]; tcmu: number[]; ratio: number; ratioToFio?: number; tcmuErrors: number; tcmuP99Us: number }[] = [];
  try {
    const image = 'bench';
    c.createImage(image, IMAGE_MB << 20);
    // Reads of objects never written cost the OSD nothing: write every object first.
    c.rbd(['bench', '--io-type', 'write', '--io-size', String(4 << 20), '--io-threads', '8', '--io-total', String(IMAGE_MB << 20), '--io-pattern', 'seq', `${c.pool}/${image}`]);
    for (const job of JOBS) {
      const r: (typeof results)[number] = { job: job.name, rbdBench: [], fio: [], tcmu: [], ratio: 0, tcmuErrors: 0, tcmuP99Us: 0 };
      for (let i = 0; i < repeat; i++) {
        // Alternate who goes first, so a drift of the machine hurts both alike.
        const order = i % 2 === 0 ? ['rbd', 'fio', 'tcmu'] : ['tcmu', 'fio', 'rbd'];
        for (const who of order) {
          if (who === 'rbd') {
            const hint = r.tcmu.length ? r.tcmu[r.tcmu.length - 1] : job.ioBytes > 65536 ? 2000 : 10000;
            r.rbdBench.push(Math.round(rbdBench(c, image, job, seconds, hint)));
          } else if (who === 'fio') {
            const f = fioRbd(c, image, job, seconds);
            if (f === undefined) continue;
            r.fio.push(f);
          } else {
            const t = await tcmuBench(c, image, job, seconds);
            r.tcmu.push(t.iops);
            r.tcmuErrors += t.errors;
            r.tcmuP99Us = t.p99Us;
          }
          process.stderr.write(`[rbd-bench ${((performance.now() - started) / 1000).toFixed(0)}s] ${job.name.padEnd(20)} ${who.padEnd(5)} ${(who === 'rbd' ? r.rbdBench : who === 'fio' ? r.fio : r.tcmu).at(-1)} IOPS\n`);
        }
      }
      r.ratio = Math.round((Math.max(...r.tcmu) / Math.max(...r.rbdBench)) * 1000) / 1000;
      if (r.fio.length) r.ratioToFio = Math.round((Math.max(...r.tcmu) / Math.max(...r.fio)) * 1000) / 1000;
      results.push(r);
    }
  } finally {
    await c.stop();
  }
  process.stdout.write('\njob                  rbd bench IOPS  fio rbd IOPS   tcmu-ts IOPS  vs rbd bench  vs fio (best of each)\n');
  for (const r of results) {
    const fio = r.fio.length ? String(Math.max(...r.fio)) : '-';
    process.stdout.write(`${r.job.padEnd(20)} ${String(Math.max(...r.rbdBench)).padStart(14)} ${fio.padStart(13)} ${String(Math.max(...r.tcmu)).padStart(14)}  ${r.ratio.toFixed(2).padStart(12)}  ${(r.ratioToFio?.toFixed(2) ?? '-').padStart(6)}${r.tcmuErrors ? `  (${r.tcmuErrors} errors)` : ''}\n`);
  }
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'rbd.json');
  writeFileSync(file, JSON.stringify({
    name: 'rbd', command: `npm run bench -- --rbd --repeat ${repeat} --seconds ${seconds}`, date: new Date().toISOString(),
    machine: { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version, ceph: cephVersion() },
    imageMb: IMAGE_MB, target: 'tcmu-ts >= 0.9 x rbd bench', results,
  }, null, 1) + '\n');
  process.stdout.write(`\nwrote ${file}\n`);
  return 0;
}

function cephVersion(): string {
  try {
    return execFileSync('ceph', ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}
