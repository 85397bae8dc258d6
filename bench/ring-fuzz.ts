/**
 * Ring fuzz (issue 17, item 4): `npm run bench -- --fuzz [--entries N] [--seed S]`.
 * Not a timed test: it writes >= 1 M malformed or adversarial entries into a
 * real shared mapping and has the real RingConsumer and DeviceEngine (the
 * ram handler behind) take them; see packages/workers/src/fuzz/ring-fuzz.ts
 * for the classes and what each must lead to. Prints the figures and writes
 * bench/results/ring-fuzz.json. Exit status 1 on any crash or mismatch.
 * A short version runs in `npm test` (test/ring-fuzz.test.ts).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { FUZZ_CLASSES, runRingFuzz, type FuzzReport } from '@tcmu-ts/workers/fuzz/ring-fuzz';

export async function fuzzMain(opts: { entries: number; seed?: number; resultsDir: string }): Promise<number> {
  process.stderr.write(`[fuzz] ${opts.entries} adversarial entries, seed ${opts.seed ?? 'random'}\n`);
  const r: FuzzReport = await runRingFuzz({
    entries: opts.entries,
    ...(opts.seed !== undefined ? { seed: opts.seed } : {}),
    progress: (n) => process.stderr.write(`[fuzz] ${n} entries\n`),
  });
  const out = process.stdout;
  out.write(`ring fuzz, seed ${r.seed}: ${r.entries} adversarial entries + ${r.fillers} well-formed in ${(r.ms / 1000).toFixed(1)} s ` +
    `(${r.entriesPerSec} adversarial entries/s)\n`);
  out.write(`crashes ${r.crashes}, malformed reports ${r.malformedReports}, ring-broken reports ${r.ringBrokenReports}, ring resets ${r.ringResets}\n\n`);
  out.write(`${'class'.padEnd(22)}${'expect'.padEnd(10)}${'injected'.padStart(10)}${'reported'.padStart(10)}${'mismatch'.padStart(10)}\n`);
  for (const [c, v] of Object.entries(r.classes)) {
    out.write(`${c.padEnd(22)}${FUZZ_CLASSES[c as keyof typeof FUZZ_CLASSES].padEnd(10)}${String(v.injected).padStart(10)}${String(v.reported).padStart(10)}${String(v.mismatches).padStart(10)}\n`);
  }
  out.write(`\nmalformed reports by reason: ${Object.entries(r.reasons).map(([k, v]) => `${k} ${v}`).join(', ')}\n`);
  for (const s of r.crashSamples) out.write(`CRASH ${s}\n`);
  for (const s of r.mismatchSamples) out.write(`MISMATCH ${s}\n`);
  mkdirSync(opts.resultsDir, { recursive: true });
  const file = join(opts.resultsDir, 'ring-fuzz.json');
  writeFileSync(file, `${JSON.stringify({ date: new Date().toISOString(), node: process.version, ...r }, null, 2)}\n`);
  out.write(`wrote ${file}\n`);
  const mismatches = Object.values(r.classes).reduce((n, v) => n + v.mismatches, 0);
  return r.crashes === 0 && mismatches === 0 ? 0 : 1;
}
