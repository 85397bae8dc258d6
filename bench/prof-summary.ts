/**
 * Where the time goes, from V8 CPU profiles (node --cpu-prof writes one per
 * thread: CPU.<date>.<time>.<pid>.<thread>.<seq>.cpuprofile, thread 0 is the
 * main thread, the others are the device workers):
 *
 *   node --cpu-prof --cpu-prof-dir=/tmp/prof bench/dist/ring-bench.js --only '^4k qd32 r50 1xram' --consumers tcmu --measure-ms 4000
 *   node bench/dist/prof-summary.js /tmp/prof [top]
 *
 * Prints, per profile, the busy share (not idle) and the functions with the
 * most self time, plus the inclusive time of a few functions of interest.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

function label(n: Node): string {
  const f = n.callFrame;
  const file = f.url ? f.url.replace(/^file:\/\//, '').replace(/.*\/(packages|bench|node_modules)\//, '$1/') : '';
  return `${f.functionName || '(anonymous)'}${file ? ` ${file}:${f.lineNumber + 1}` : ''}`;
}

function summarize(file: string, top: number): void {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<number, number>();
  for (let i = 0; i < p.samples.length; i++) self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + (p.timeDeltas[i] ?? 0));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  let total = 0;
  let idle = 0;
  const bySelf = new Map<string, number>();
  const incl = new Map<string, number>();
  for (const [id, us] of self) {
    const n = byId.get(id)!;
    total += us;
    if (n.callFrame.functionName === '(idle)') {
      idle += us;
      continue;
    }
    const l = label(n);
    bySelf.set(l, (bySelf.get(l) ?? 0) + us);
    // inclusive: count once per distinct function on the stack
    const seen = new Set<string>();
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const lx = label(byId.get(x)!);
      if (seen.has(lx)) continue;
      seen.add(lx);
      incl.set(lx, (incl.get(lx) ?? 0) + us);
    }
  }
  const busy = total - idle;
  const thread = basename(file).split('.')[4];
  process.stdout.write(`\n== ${basename(file)} (thread ${thread === '0' ? '0: main' : `${thread}: worker`}): ${(total / 1e6).toFixed(2)} s profiled, busy ${(busy / 1e6).toFixed(2)} s (${((busy / total) * 100).toFixed(0)} %)\n`);
  process.stdout.write('  self time, share of busy:\n');
  for (const [l, us] of [...bySelf].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`  ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${l}\n`);
  }
  process.stdout.write('  inclusive, share of busy (top by inclusive time, excluding roots):\n');
  for (const [l, us] of [...incl].filter(([l]) => !l.startsWith('(root)')).sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`  ${((us / busy) * 100).toFixed(1).padStart(5)} %  ${l}\n`);
  }
}

const dir = process.argv[2];
const top = Number(process.argv[3] ?? 25);
if (!dir) {
  process.stderr.write('usage: node bench/dist/prof-summary.js <dir with .cpuprofile files> [top]\n');
  process.exit(2);
}
for (const f of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile')).sort()) summarize(join(dir, f), top);
