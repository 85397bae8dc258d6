/**
 * The soak (issue 17, item 5): `npm run bench -- --soak [--minutes N] [--seed S] [--qd N] [--events kind,...]`.
 * Load on a `file` and a `qcow` LUN for N minutes (default 10) while workers
 * and the whole daemon are killed with -9, rings are reset, LUNs grow and get
 * a new dev_config; then every sector is checked against the journal of
 * acknowledged writes (packages/workers/src/soak/). Prints a progress line
 * every 10 s and a summary, writes bench/results/soak.json, exits 1 unless
 * nothing acknowledged was lost or torn and every event went as it should.
 * A short version runs in `npm test` (test/soak.test.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { SOAK_EVENTS, runSoak, type SoakEvent } from '@tcmu-ts/workers/soak/soak';
import { BENCH_DIR } from './lib/native.js';

function wholeNumber(name: string, v: string | boolean | undefined, dflt: number, min: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (typeof v !== 'string' || !(n >= min) || !Number.isFinite(n)) throw new Error(`--${name} must be a number >= ${min}, got '${String(v)}'`);
  return n;
}

export async function main(argv: string[]): Promise<number> {
  const { values: a } = parseArgs({
    args: argv, strict: false,
    options: { soak: { type: 'boolean' }, minutes: { type: 'string' }, seed: { type: 'string' }, qd: { type: 'string' }, events: { type: 'string' } },
  });
  const minutes = wholeNumber('minutes', a.minutes, 10, 0.1);
  const seed = Math.floor(wholeNumber('seed', a.seed, 17, 0));
  const queueDepth = Math.floor(wholeNumber('qd', a.qd, 16, 1));
  const events = typeof a.events === 'string' ? a.events.split(',') : undefined;
  const unknown = events?.find((e) => !(SOAK_EVENTS as readonly string[]).includes(e));
  if (unknown !== undefined) throw new Error(`--events: unknown kind '${unknown}' (kinds: ${SOAK_EVENTS.join(', ')})`);
  process.stderr.write(`[soak] ${minutes} min, seed ${seed}, QD ${queueDepth} per LUN, LUNs file (4 KiB blocks) and qcow (512 B blocks)\n`);
  const r = await runSoak({ durationMs: minutes * 60_000, seed, queueDepth, ...(events ? { events: events as SoakEvent[] } : {}), progress: (l) => process.stderr.write(`${l}\n`), progressEveryMs: 10_000 });
  const out = process.stdout;
  out.write(`\nsoak, seed ${r.seed}: ${(r.seconds / 60).toFixed(1)} min, ${r.commands} commands (${r.iops} IOPS), ${r.ackedWrites} writes acknowledged, ${r.daemons} daemons\n`);
  out.write(`${'event'.padEnd(13)}${'count'.padStart(6)}   recovery ms (min / median / max)\n`);
  for (const e of SOAK_EVENTS) {
    const f = r.recovery[e];
    out.write(`${e.padEnd(13)}${String(r.events[e]).padStart(6)}   ${f.minMs} / ${f.medianMs} / ${f.maxMs}\n`);
  }
  for (const l of r.luns) {
    out.write(`${l.name} (${l.subtype}, ${l.blockSize} B blocks, ${l.startBytes >> 20} -> ${l.endBytes >> 20} MiB): ${l.commands} commands, ` +
      `${l.writes} writes (${l.fuaWrites} FUA, ${l.ackedWrites} acknowledged), ${l.verifiedReads} reads verified, ${l.syncs} SYNCHRONIZE CACHE; ` +
      `not GOOD: ${Object.entries(l.failures).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'}\n`);
  }
  for (const [what, c] of [['reads during the run', r.duringRun], ['final check', r.final]] as const) {
    out.write(`${what}: ${c.sectors} sectors, ${c.lostWrites} lost, ${c.tornWrites} torn, ${c.staleSectors} stale sectors, ${c.mismatches} mismatches; ${c.indeterminate} sectors left indeterminate by an admin's ring reset\n`);
    for (const s of c.samples) out.write(`  ${s}\n`);
  }
  if (r.qcowCheck) out.write(`qemu-img check: ${JSON.stringify(r.qcowCheck)}\n`);
  out.write(`daemon fds at start -> end: ${r.daemonFds.map((f) => `${f.atStart}->${f.atEnd}${f.workerRestarts ? ` (${f.workerRestarts} worker kills)` : ''}`).join(', ')}\n`);
  for (const s of r.anomalies) out.write(`ANOMALY ${s}\n`);
  out.write(r.passed ? 'PASSED\n' : `FAILED (images and daemon.log kept in ${r.dir})\n`);
  const dir = join(BENCH_DIR, 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'soak.json');
  writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, minutes, queueDepth, ...r }, null, 2)}\n`);
  out.write(`wrote ${file}\n`);
  return r.passed ? 0 : 1;
}
