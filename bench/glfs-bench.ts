/**
 * glfs-bench: tcmu-ts's glfs handler against direct gfapi IO on the same
 * file of the same volume, in one run, jobs alternating, best of `--repeat`.
 *
 *   npm run bench -- --glfs [--repeat 3] [--seconds 3]
 *
 * The volume is the tests' own (test/fixtures/gluster.ts: glusterd and one
 * brick on 127.0.0.1, strict O_DIRECT, mandatory locks). "direct" is
 * libgfapi driven from this thread through the same binding (koffi,
 * glfs_preadv_async/glfs_pwritev_async, callbacks), QD16 kept full, no
 * SCSI; tcmu-ts is the bench's load generator through the kernel simulator,
 * a device worker and the glfs handler. Results: bench/results/glfs.json.
 */
import { writeFileSync, mkdirSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { GlfsFile, GlfsVolume } from '@tcmu-ts/handlers';
import { NativeBuffer } from '@tcmu-ts/handlers/libgfapi';
import { handlerLoad } from './lib/handler-load.js';
import { BENCH_DIR } from './lib/native.js';

const BLOCK = 512;
const FILE_MB = 256;
const QD = 16;
const IO = 4096;

interface Gl { volume: string; cfg(file: string): string; stop(): Promise<void> }

/** QD16 random 4 KiB through gfapi from this thread, for `seconds`. */
async function direct(vol: GlfsVolume, path: string, read: boolean, seconds: number): Promise<number> {
  const file = GlfsFile.open(vol, path, (e) => e);
  const bufs = Array.from({ length: QD }, () => new NativeBuffer(IO));
  for (const b of bufs) b.bytes.fill(0x5c);
  await file.lock(true);
  const blocks = (FILE_MB << 20) / IO;
  let done = 0, errors = 0, stop = false;
  let x = 12345;
  const next = () => { x = (x * 1103515245 + 12345) >>> 0; return (x % blocks) * IO; };
  const t0 = performance.now();
  let live = QD;
  await new Promise<void>((resolve) => {
    const go = (b: NativeBuffer): void => {
      if (stop) { if (--live === 0) resolve(); return; }
      const op = read ? file.readv(b.iovecs, b.address, next(), IO) : file.writev(b.iovecs, b.address, next(), IO);
      op.then(() => { done++; go(b); }, () => { errors++; go(b); });
    };
    for (const b of bufs) go(b);
    setTimeout(() => { stop = true; }, seconds * 1000);
  });
  const iops = Math.round(done / ((performance.now() - t0) / 1000));
  await file.lock(false).catch(() => undefined);
  await file.close();
  for (const b of bufs) b.free();
  if (errors) process.stderr.write(`[glfs-bench] direct: ${errors} errors\n`);
  return iops;
}

function tcmu(gl: Gl, file: string, read: boolean, seconds: number): Promise<{ iops: number; errors: number; p99Us: number }> {
  return handlerLoad({
    bench: 'glfs-bench', device: 'glfs0', subtype: 'glfs', cfgstring: gl.cfg(file), blockSize: BLOCK, numLbas: (FILE_MB << 20) / BLOCK,
    ioBytes: IO, queueDepth: QD, read, seconds,
    warmupMs: 700, // the first writes take the file's lock (BUSY meanwhile)
  });
}

export async function main(argv: string[]): Promise<number> {
  const { values: a } = parseArgs({ args: argv, options: { glfs: { type: 'boolean' }, repeat: { type: 'string' }, seconds: { type: 'string' }, quick: { type: 'boolean' } }, strict: false });
  const repeat = Math.max(1, Number(a.repeat ?? (a.quick ? 1 : 3)));
  const seconds = Number(a.seconds ?? (a.quick ? 2 : 3));
  const { startGlusterVolume } = (await import(new URL('../../test/dist/fixtures/gluster.js', import.meta.url).href)) as { startGlusterVolume(): Promise<Gl> };
  process.stderr.write('[glfs-bench] starting glusterd and a one-brick volume on 127.0.0.1\n');
  const gl = await startGlusterVolume();
  const results: { job: string; direct: number[]; tcmu: number[]; ratio: number; tcmuErrors: number; tcmuP99Us: number }[] = [];
  const vol = GlfsVolume.acquire({ transport: 'tcp', host: '127.0.0.1', port: 24007 }, gl.volume);
  try {
    const file = 'bench.img';
    vol.createFile(`/${file}`, FILE_MB << 20);
    // Reads of holes cost the brick nothing: write the file first.
    {
      const f = GlfsFile.open(vol, `/${file}`, (e) => e);
      await f.lock(true);
      const b = new NativeBuffer(1 << 20);
      b.bytes.fill(0x33);
      for (let off = 0; off < FILE_MB << 20; off += 1 << 20) await f.writev(b.iovecs, b.address, off, 1 << 20);
      await f.lock(false);
      await f.close();
      b.free();
    }
    for (const read of [true, false]) {
      const r = { job: `4k-rand${read ? 'read' : 'write'}-qd16`, direct: [] as number[], tcmu: [] as number[], ratio: 0, tcmuErrors: 0, tcmuP99Us: 0 };
      for (let i = 0; i < repeat; i++) {
        for (const who of i % 2 === 0 ? ['direct', 'tcmu'] : ['tcmu', 'direct']) {
          if (who === 'direct') r.direct.push(await direct(vol, `/${file}`, read, seconds));
          else {
            const t = await tcmu(gl, file, read, seconds);
            r.tcmu.push(t.iops);
            r.tcmuErrors += t.errors;
            r.tcmuP99Us = t.p99Us;
          }
          process.stderr.write(`[glfs-bench] ${r.job.padEnd(18)} ${who.padEnd(6)} ${(who === 'direct' ? r.direct : r.tcmu).at(-1)} IOPS\n`);
        }
      }
      r.ratio = Math.round((Math.max(...r.tcmu) / Math.max(...r.direct)) * 1000) / 1000;
      results.push(r);
    }
  } finally {
    vol.release();
    await gl.stop();
  }
  process.stdout.write('\njob                 direct gfapi IOPS  tcmu-ts IOPS  ratio (best of each)\n');
  for (const r of results) {
    process.stdout.write(`${r.job.padEnd(19)} ${String(Math.max(...r.direct)).padStart(17)} ${String(Math.max(...r.tcmu)).padStart(13)}  ${r.ratio.toFixed(2).padStart(5)}${r.tcmuErrors ? `  (${r.tcmuErrors} errors)` : ''}\n`);
  }
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const out = join(dir, 'glfs.json');
  writeFileSync(out, JSON.stringify({
    name: 'glfs', command: `npm run bench -- --glfs --repeat ${repeat} --seconds ${seconds}`, date: new Date().toISOString(),
    machine: { cores: cpus().length, cpu: cpus()[0]?.model ?? 'unknown', node: process.version }, fileMb: FILE_MB, results,
  }, null, 1) + '\n');
  process.stdout.write(`\nwrote ${out}\n`);
  return 0;
}
