#!/usr/bin/env node
// `npm run test:kernel`: real-kernel tests in a TCG-emulated Debian guest.
//
//   node test/kernel/run.mjs [--skip-prepare] [--timeout S] [--env NAME=VALUE]... [--live] [-v] [scenario.sh ...]
//
// Prepares the VM (scripts/vm/prepare.sh: cached after the first run, needs
// root), boots it once per scenario (default: test/kernel/smoke.sh) through
// scripts/vm/run.sh, and reports the checks and timings the scenario wrote.
// Reports: .vm-cache/results/<scenario>.json and .md (latest run), plus a copy
// in the run's own directory, with the fio figures, iscsi-test-cu results and
// side-by-side ratios the scenario left there (results.mjs). Exits non-zero
// when a scenario fails, a check fails, or the guest hangs. Plain Node, no
// build needed (scenarios that run our daemon need `npm run build` first).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, copyFileSync } from 'node:fs';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cpus, loadavg } from 'node:os';
import { collectResults, resultsMarkdown } from './results.mjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cache = process.env.TCMU_VM_CACHE ?? join(repo, '.vm-cache');
// The guest writes its results through the 9p share, which is the repo: with a TCMU_VM_CACHE
// outside the repo (a shared VM image), the results stay in the repo's own .vm-cache.
const resultsDir = relative(repo, join(cache, 'results')).startsWith('..') ? join(repo, '.vm-cache', 'results') : join(cache, 'results');

const args = process.argv.slice(2);
let skipPrepare = false;
let verbose = false;
let timeout = 300;
const passThrough = [];
const scenarios = [];
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--skip-prepare') skipPrepare = true;
  else if (a === '-v' || a === '--verbose') verbose = true;
  else if (a === '--timeout') timeout = Number(args[++i]);
  else if (a === '--env') passThrough.push('--env', args[++i]);
  else if (a === '--live') passThrough.push('--live');
  else if (a === '-h' || a === '--help') {
    process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 14).join('\n') + '\n');
    process.exit(0);
  } else if (a.startsWith('-')) {
    process.stderr.write(`run.mjs: unknown option ${a}\n`);
    process.exit(2);
  } else scenarios.push(a);
}
if (scenarios.length === 0) scenarios.push('test/kernel/smoke.sh');

const secs = (t0) => Number(((performance.now() - t0) / 1000).toFixed(2));
const readTsv = (file) => existsSync(file)
  ? readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => l.split('\t'))
  : [];
const readEnv = (file) => Object.fromEntries(existsSync(file)
  ? readFileSync(file, 'utf8').split('\n').filter((l) => l.includes('=')).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)])
  : []);

// Host CPU the run did not use itself: busy time in /proc/stat minus this process and its
// waited-for children (run.sh, qemu), in USER_HZ ticks, and the steal time (when the host
// is itself a VM). On a shared host the guest's
// figures (fio above all) depend on it: the report shows it next to them.
function hostCpuSample() {
  try {
    const c = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const st = readFileSync('/proc/self/stat', 'utf8');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ').map(Number); // f[0] is field 3 (state)
    return { busy: c[0] + c[1] + c[2] + c[5] + c[6], steal: c[7] || 0, own: f[11] + f[12] + f[13] + f[14], t: performance.now(), load1: loadavg()[0] };
  } catch {
    return null;
  }
}
function hostLoad(a, b) {
  if (!a || !b) return null;
  const s = (b.t - a.t) / 1000;
  return { cores: cpus().length, load1Start: Number(a.load1.toFixed(2)), load1End: Number(b.load1.toFixed(2)),
    otherCpuCores: s > 0 ? Number(Math.max(0, (b.busy - a.busy - (b.own - a.own)) / 100 / s).toFixed(2)) : null,
    stealCores: s > 0 ? Number(((b.steal - a.steal) / 100 / s).toFixed(2)) : null };
}

if (process.platform !== 'linux' || process.getuid?.() !== 0) {
  process.stderr.write('test:kernel needs Linux and root (apt-get, debootstrap and a VM image owned by root)\n');
  process.exit(1);
}

let prepareSeconds = null;
if (!skipPrepare) {
  const t0 = performance.now();
  const r = spawnSync('bash', [join(repo, 'scripts/vm/prepare.sh')], { cwd: repo, stdio: ['ignore', 'inherit', 'inherit'] });
  prepareSeconds = secs(t0);
  if (r.status !== 0) {
    process.stderr.write(`test:kernel: prepare.sh failed (exit ${r.status ?? r.signal}) after ${prepareSeconds}s\n`);
    process.exit(1);
  }
}
const manifest = readEnv(join(cache, 'vm', 'manifest.env'));
// which tree the figures belong to (the guest runs a frozen copy of its dist/, made at boot)
function gitState() {
  const git = (...a) => spawnSync('git', a, { cwd: repo, encoding: 'utf8' });
  const head = git('rev-parse', '--short=12', 'HEAD');
  if (head.status !== 0) return null;
  const dirty = git('status', '--porcelain', '--', 'packages').stdout.split('\n').filter(Boolean).length;
  return { head: head.stdout.trim(), packagesChanged: dirty };
}

mkdirSync(resultsDir, { recursive: true });
const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '').replace('T', '-');
const reports = [];
for (const scen of scenarios) {
  const name = basename(scen).replace(/\.sh$/, '');
  const runRel = relative(repo, join(resultsDir, 'runs', `${stamp}-${process.pid}-${name}`));
  const runDir = join(repo, runRel);
  const t0 = performance.now();
  const cpu0 = hostCpuSample();
  const tree = gitState();
  const r = spawnSync('bash', [join(repo, 'scripts/vm/run.sh'), '--timeout', String(timeout), '--out', runRel, ...passThrough, ...(verbose ? ['-v'] : []), scen],
    { cwd: repo, stdio: ['ignore', 'inherit', 'inherit'] });
  const wall = secs(t0);
  const load = hostLoad(cpu0, hostCpuSample());
  const status = r.status ?? 128;
  const checks = readTsv(join(runDir, 'checks.tsv')).map(([s, check, detail]) => ({ ok: s === 'ok', check, detail: detail ?? '' }));
  const timings = Object.fromEntries(readTsv(join(runDir, 'timings.tsv')).map(([k, v]) => [k, Number(v)]));
  const modules = readTsv(join(runDir, 'modules.tsv')).map(([module, s]) => ({ module, seconds: Number(s) }));
  const host = Object.fromEntries(readTsv(join(runDir, 'host.tsv')).map(([k, v]) => [k, Number(v)]));
  const passed = checks.filter((c) => c.ok).length;
  const failed = checks.length - passed;
  const verdict = status === 0 && failed === 0 ? 'pass' : status === 124 ? 'hung' : 'fail';
  const report = {
    scenario: relative(repo, resolve(repo, scen)),
    verdict, status, passed, failed,
    date: new Date().toISOString(),
    kernel: manifest.KVER ?? null, kernelPackage: manifest.KPKG ?? null, node: manifest.NODE_VERSION ?? null,
    prepareSeconds,
    hostWallSeconds: host.host_wall_boot_to_exit ?? wall,
    hostLoad: load,
    git: tree,
    timings, modules, checks,
    ...collectResults(runDir),
    runDir: runRel,
  };
  reports.push(report);
  const md = toMarkdown(report);
  const json = JSON.stringify(report, null, 2) + '\n';
  writeFileSync(join(runDir, 'report.json'), json);
  writeFileSync(join(runDir, 'report.md'), md);
  copyFileSync(join(runDir, 'report.json'), join(resultsDir, `${name}.json`));
  copyFileSync(join(runDir, 'report.md'), join(resultsDir, `${name}.md`));
  printSummary(report);
}

const allPassed = reports.reduce((n, r) => n + r.passed, 0);
const allFailed = reports.reduce((n, r) => n + r.failed + (r.verdict !== 'pass' && r.failed === 0 ? 1 : 0), 0);
process.stdout.write(`kernel: ${allPassed} passed, ${allFailed} failed\n`);
process.exit(reports.every((r) => r.verdict === 'pass') ? 0 : 1);

function printSummary(r) {
  const t = r.timings;
  const out = [];
  out.push(`\n== ${r.scenario}: ${r.verdict.toUpperCase()} (exit ${r.status}), ${r.passed} checks passed, ${r.failed} failed`);
  out.push(`   kernel ${r.kernel}, node ${r.node}; prepare ${r.prepareSeconds === null ? 'skipped' : `${r.prepareSeconds} s`}, boot+scenario+poweroff ${r.hostWallSeconds} s host wall clock`);
  if (r.git) out.push(`   tree: ${r.git.head}${r.git.packagesChanged ? ` + ${r.git.packagesChanged} changed paths under packages/` : ''}`);
  if (r.hostLoad) out.push(`   host: ${r.hostLoad.cores} cores; other processes used ${r.hostLoad.otherCpuCores} cores on average during the run, hypervisor steal ${r.hostLoad.stealCores}, 1-min load ${r.hostLoad.load1Start} -> ${r.hostLoad.load1End}`);
  if (t.kernel_to_stage1 !== undefined) {
    out.push(`   guest uptime: /init ${t.kernel_to_stage1} s, root switched ${t.kernel_to_stage2} s, modules loaded ${t.modules_loaded_at ?? '-'} s, scenario ${t.scenario_start ?? '-'}..${t.scenario_end ?? '-'} s`);
  }
  const steps = Object.entries(t).filter(([k]) => /^[A-Z]_/.test(k) || !/^(kernel_to|modules_loaded|scenario_|guest_uptime)/.test(k));
  if (steps.length) out.push(`   steps: ${steps.map(([k, v]) => `${k} ${v}s`).join(', ')}`);
  for (const c of r.checks.filter((c) => !c.ok)) out.push(`   FAIL ${c.check}: ${c.detail}`);
  for (const c of r.comparisons ?? []) out.push(`   ${c.label}: IOPS ${c.iopsA} vs ${c.iopsB} (A/B ${c.iopsRatio}), mean clat ${c.clatMeanUsA} vs ${c.clatMeanUsB} us (A/B ${c.clatRatio}); read/write A/B: IOPS ${c.readIopsRatio}/${c.writeIopsRatio}, clat ${c.readClatRatio}/${c.writeClatRatio}${c.rounds ? `; ${c.rounds} rounds, per-round IOPS A/B ${c.iopsRatioRange?.join('-')}, clat A/B ${c.clatRatioRange?.join('-')}` : ''}${c.target === null ? '' : c.target ? '; target met' : '; target NOT met'}`);
  if (r.iscsiTestCu) {
    const c = r.iscsiTestCu;
    out.push(`   iscsi-test-cu: ${c.suites} suites, ${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped${c.incomplete ? `, ${c.incomplete} incomplete` : ''}`);
    for (const f of c.bySuite.flatMap((s) => s.failures)) out.push(`     failed ${f.test}: ${f.why}`);
  }
  out.push(`   report: ${relative(repo, join(resultsDir, basename(r.scenario).replace(/\.sh$/, '') + '.md'))}, logs: ${r.runDir}/`);
  process.stdout.write(out.join('\n') + '\n');
}

function toMarkdown(r) {
  const lines = [
    `# Kernel scenario ${r.scenario}: ${r.verdict}`,
    '',
    `- date: ${r.date}`,
    `- kernel: ${r.kernel} (${r.kernelPackage}), node ${r.node}, qemu TCG (no KVM), 2 vCPUs, 2 GiB`,
    `- exit status: ${r.status}; checks: ${r.passed} passed, ${r.failed} failed`,
    `- prepare: ${r.prepareSeconds === null ? 'skipped' : `${r.prepareSeconds} s`}; boot + scenario + power-off: ${r.hostWallSeconds} s (host wall clock)`,
    ...(r.git ? [`- tree: ${r.git.head}${r.git.packagesChanged ? ` + ${r.git.packagesChanged} changed paths under packages/ (uncommitted)` : ''}`] : []),
    ...(r.hostLoad ? [`- host: ${r.hostLoad.cores} cores; other processes used ${r.hostLoad.otherCpuCores} cores on average during the run, hypervisor steal ${r.hostLoad.stealCores} (1-min load ${r.hostLoad.load1Start} -> ${r.hostLoad.load1End}); timings and fio figures depend on it`] : []),
    `- logs: \`${r.runDir}/\` (console.log, scenario.log, dmesg.txt)`,
    '',
    '## Timings (seconds; guest uptime for boot phases)',
    '',
    '| step | s |',
    '|---|---|',
    ...Object.entries(r.timings).map(([k, v]) => `| ${k} | ${v} |`),
    '',
  ];
  if (r.modules.length) {
    lines.push('## Module load order (insmod)', '', '| # | module | s |', '|---|---|---|',
      ...r.modules.map((m, i) => `| ${i + 1} | ${m.module} | ${m.seconds} |`), '');
  }
  lines.push('## Checks', '', '| | check | detail |', '|---|---|---|',
    ...r.checks.map((c) => `| ${c.ok ? 'ok' : '**FAIL**'} | ${c.check} | ${String(c.detail).replace(/\|/g, '\\|')} |`), '');
  lines.push(...resultsMarkdown(r));
  return lines.join('\n');
}
