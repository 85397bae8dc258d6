// Results a scenario leaves in its run directory, turned into report sections
// by run.mjs (plain Node, no build):
//
//   fio/<job>.json              fio --output-format=json --output=...: IOPS, bandwidth, latency
//   iscsi-test-cu/<suite>.log   iscsi-test-cu output (default verbose mode): per test passed/failed/skipped;
//                               a line 'iscsi-test-cu exit status: N' appended by the scenario
//   compare.tsv                 label, job A, job B: side-by-side ratios of two fio jobs (A / B)
//   responses/<set>.tsv         scsi-compare.mjs diff: the same CDBs to tcmu-runner and tcmu-ts, field by field
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const round = (x, d = 1) => (Number.isFinite(x) ? Number(x.toFixed(d)) : null);

function fioSide(s) {
  if (!s || !s.total_ios || !s.iops) return null; // verify_only jobs report phantom writes with 0 IOPS
  const clat = s.clat_ns ?? {};
  const p = clat.percentile ?? {};
  return {
    ios: s.total_ios,
    iops: round(s.iops),
    bwKiBs: round(s.bw),
    clatMeanUs: round((clat.mean ?? NaN) / 1000),
    clatP50Us: round((p['50.000000'] ?? NaN) / 1000),
    clatP99Us: round((p['99.000000'] ?? NaN) / 1000),
    latMeanUs: round((s.lat_ns?.mean ?? NaN) / 1000),
  };
}

/** fio/<job>.json -> { job: { read, write, error, runtimeMs, options } } */
export function readFio(runDir) {
  const dir = join(runDir, 'fio');
  const out = {};
  if (!existsSync(dir)) return out;
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.json')).sort()) {
    const name = f.replace(/\.json$/, '');
    const text = readFileSync(join(dir, f), 'utf8');
    const start = text.indexOf('{');
    let j;
    try {
      j = JSON.parse(text.slice(start));
    } catch (e) {
      out[name] = { error: `unreadable fio output: ${e.message}` };
      continue;
    }
    const jobs = j.jobs ?? [];
    const job = jobs[0] ?? {};
    const o = { ...(j['global options'] ?? {}), ...(job['job options'] ?? {}) };
    out[name] = {
      error: jobs.reduce((n, x) => n + (x.error ?? 0), 0),
      runtimeMs: job.job_runtime ?? null,
      options: Object.fromEntries(['rw', 'bs', 'iodepth', 'size', 'runtime', 'verify', 'numjobs', 'filename'].filter((k) => o[k] !== undefined).map((k) => [k, o[k]])),
      read: fioSide(job.read),
      write: fioSide(job.write),
    };
  }
  return out;
}

/**
 * iscsi-test-cu logs -> suites with per-test results. A test that printed
 * [SKIPPED] and still "passed" (how iscsi-test-cu skips) counts as skipped.
 */
export function readIscsiTestCu(runDir) {
  const dir = join(runDir, 'iscsi-test-cu');
  if (!existsSync(dir)) return null;
  const suites = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.log')).sort()) {
    const text = readFileSync(join(dir, f), 'utf8');
    const re = /Suite: (\S+)|Test: (\S+) (?=\.\.\.)|(\[SKIPPED\][^\n]*)|(?:^|\.\.\.)\s*(passed|FAILED)\b|Run Summary/gm;
    let suite = null;
    let test = null;
    let m;
    let summary = false;
    const tests = [];
    while ((m = re.exec(text))) {
      if (m[1]) suite = m[1];
      else if (m[2]) test = { suite, name: m[2], result: null, skipReason: null };
      else if (m[3] && test && !test.skipReason) test.skipReason = m[3].replace(/^\[SKIPPED\]\s*/, '').trim();
      else if (m[4] && test) {
        test.result = m[4] === 'FAILED' ? 'failed' : test.skipReason ? 'skipped' : 'passed';
        tests.push(test);
        test = null;
      } else if (m[0] === 'Run Summary') summary = true;
    }
    if (test) tests.push({ ...test, result: 'incomplete' });
    const name = f.replace(/\.log$/, '');
    const failures = [];
    for (const t of tests.filter((t) => t.result === 'failed')) {
      // the first [FAILED] line or assertion after the test's name, as evidence
      const at = text.indexOf(`Test: ${t.name} ...`);
      const seg = at >= 0 ? text.slice(at, at + 4000) : '';
      const why = /\[FAILED\][^\n]*/.exec(seg)?.[0] ?? /\d+\. [^\n]*CU_ASSERT[^\n]*/.exec(seg)?.[0] ?? '';
      failures.push({ test: `${t.suite}.${t.name}`, why: why.trim().slice(0, 240) });
    }
    const rc = /^iscsi-test-cu exit status: (\d+)/m.exec(text)?.[1];
    suites.push({
      suite: name,
      complete: summary,
      passed: tests.filter((t) => t.result === 'passed').length,
      failed: tests.filter((t) => t.result === 'failed').length,
      skipped: tests.filter((t) => t.result === 'skipped').length,
      incomplete: tests.filter((t) => t.result === 'incomplete').length,
      skippedTests: tests.filter((t) => t.result === 'skipped').map((t) => ({ test: `${t.suite}.${t.name}`, why: t.skipReason })),
      failures,
      ...(rc !== undefined ? { exit: Number(rc) } : {}),
    });
  }
  const sum = (k) => suites.reduce((n, s) => n + s[k], 0);
  return { suites: suites.length, passed: sum('passed'), failed: sum('failed'), skipped: sum('skipped'), incomplete: sum('incomplete'), bySuite: suites };
}

/**
 * compare.tsv: label, job A, job B -> ratios A/B of IOPS and of mean completion latency
 * (fio clat), for reads and writes separately and together (total IOPS; mean over every
 * I/O, weighted by count). `target`: A has at least B's IOPS and at most its mean latency;
 * `goal`: 1.3x the IOPS and at most 1/1.3 of the latency (at a fixed queue depth 1.3x the
 * IOPS means 1/1.3 of the latency, Little's law).
 */
export function readComparisons(runDir, fio) {
  const f = join(runDir, 'compare.tsv');
  if (!existsSync(f)) return [];
  const ratio = (x, y) => (x && y ? round(x / y, 3) : null);
  const figures = (j) => {
    if (!j) return null;
    const sides = [j.read, j.write].filter(Boolean);
    const ios = sides.reduce((n, s) => n + s.ios, 0);
    return {
      iops: sides.reduce((n, s) => n + s.iops, 0),
      readIops: j.read?.iops ?? null,
      writeIops: j.write?.iops ?? null,
      clatMeanUs: ios ? round(sides.reduce((n, s) => n + s.clatMeanUs * s.ios, 0) / ios) : null,
      readClatMeanUs: j.read?.clatMeanUs ?? null,
      writeClatMeanUs: j.write?.clatMeanUs ?? null,
      latMeanUs: ios ? round(sides.reduce((n, s) => n + s.latMeanUs * s.ios, 0) / ios) : null,
    };
  };
  const keys = ['iops', 'readIops', 'writeIops', 'clatMeanUs', 'readClatMeanUs', 'writeClatMeanUs', 'latMeanUs'];
  const rows = readFileSync(f, 'utf8').split('\n').filter(Boolean).map((l) => {
    const [label, a, b, group] = l.split('\t');
    const A = figures(fio[a]);
    const B = figures(fio[b]);
    const c = { label, a, b, ...(group ? { group } : {}) };
    for (const k of keys) {
      c[`${k}A`] = A ? round(A[k]) : null;
      c[`${k}B`] = B ? round(B[k]) : null;
    }
    return c;
  });
  // a group (4th column): the same job in several rounds; its row has the means over the
  // rounds (same runtime each: mean IOPS = total I/O over total time) and the range of
  // the per-round ratios
  const groups = new Map();
  for (const c of rows) if (c.group) groups.set(c.group, [...(groups.get(c.group) ?? []), c]);
  const mean = (xs) => (xs.every((x) => Number.isFinite(x)) && xs.length ? xs.reduce((n, x) => n + x, 0) / xs.length : null);
  const summaries = [...groups].filter(([, g]) => g.length > 1).map(([label, g]) => {
    const c = { label, a: g.map((x) => x.a).join(' '), b: g.map((x) => x.b).join(' '), rounds: g.length };
    for (const k of keys) {
      c[`${k}A`] = round(mean(g.map((x) => x[`${k}A`])));
      c[`${k}B`] = round(mean(g.map((x) => x[`${k}B`])));
    }
    return c;
  });
  return [...rows, ...summaries].map((c) => {
    c.iopsRatio = ratio(c.iopsA, c.iopsB);
    c.readIopsRatio = ratio(c.readIopsA, c.readIopsB);
    c.writeIopsRatio = ratio(c.writeIopsA, c.writeIopsB);
    c.clatRatio = ratio(c.clatMeanUsA, c.clatMeanUsB);
    c.readClatRatio = ratio(c.readClatMeanUsA, c.readClatMeanUsB);
    c.writeClatRatio = ratio(c.writeClatMeanUsA, c.writeClatMeanUsB);
    c.latRatio = ratio(c.latMeanUsA, c.latMeanUsB);
    const met = (iops, lat) => (c.iopsRatio === null || c.clatRatio === null ? null : c.iopsRatio >= iops && c.clatRatio <= lat);
    c.target = met(1, 1);
    c.goal = met(1.3, 1 / 1.3);
    return c;
  }).map((c, _, all) => {
    if (!c.rounds) return c;
    const per = all.filter((x) => x.group === c.label);
    const range = (k) => {
      const v = per.map((x) => x[k]).filter((x) => x !== null);
      return v.length ? [Math.min(...v), Math.max(...v)] : null;
    };
    return { ...c, iopsRatioRange: range('iopsRatio'), clatRatioRange: range('clatRatio') };
  });
}

/** responses/<set>.tsv -> { set: { steps, fields, same, explained, different, rows (the differing ones) } } */
export function readResponses(runDir) {
  const dir = join(runDir, 'responses');
  if (!existsSync(dir)) return undefined;
  const out = {};
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.tsv')).sort()) {
    const [head, ...lines] = readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean);
    const cols = head.split('\t');
    const rows = lines.map((l) => Object.fromEntries(l.split('\t').map((v, i) => [cols[i], v])));
    const count = (v) => rows.filter((r) => r.verdict === v).length;
    out[f.replace(/\.tsv$/, '')] = {
      steps: new Set(rows.map((r) => r.step)).size, fields: rows.length,
      same: count('same'), explained: count('explained'), different: count('DIFFERENT'),
      rows: rows.filter((r) => r.verdict !== 'same'),
    };
  }
  return Object.keys(out).length ? out : undefined;
}

export function collectResults(runDir) {
  const fio = readFio(runDir);
  const r = {};
  if (Object.keys(fio).length) r.fio = fio;
  const cu = readIscsiTestCu(runDir);
  if (cu) r.iscsiTestCu = cu;
  const cmp = readComparisons(runDir, fio);
  if (cmp.length) r.comparisons = cmp;
  const resp = readResponses(runDir);
  if (resp) r.responses = resp;
  return r;
}

const esc = (s) => String(s ?? '').replace(/\|/g, '\\|');

export function resultsMarkdown(r) {
  const lines = [];
  if (r.comparisons?.length) {
    const yn = (x) => (x === null ? '' : x ? 'yes' : 'no');
    lines.push('## Side by side (A / B, same guest, same run)', '',
      'IOPS: read + write; mean clat: over every I/O. Target: IOPS A/B >= 1.0 and clat A/B <= 1.0; goal: >= 1.3 and <= 0.77.', '',
      '| comparison | A | B | IOPS A | IOPS B | IOPS A/B | read / write IOPS A/B | mean clat A µs | mean clat B µs | clat A/B | read / write clat A/B | target | goal |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|',
      ...r.comparisons.filter((c) => !c.rounds).map((c) => `| ${esc(c.label)} | ${c.a} | ${c.b} | ${c.iopsA} | ${c.iopsB} | **${c.iopsRatio}** | ${c.readIopsRatio} / ${c.writeIopsRatio} | ${c.clatMeanUsA} | ${c.clatMeanUsB} | **${c.clatRatio}** | ${c.readClatRatio} / ${c.writeClatRatio} | ${yn(c.target)} | ${yn(c.goal)} |`), '');
    const sums = r.comparisons.filter((c) => c.rounds);
    if (sums.length) {
      lines.push('Across rounds (means of the rounds above; per-round ratio range in brackets):', '',
        '| comparison | rounds | IOPS A | IOPS B | IOPS A/B | read / write IOPS A/B | mean clat A µs | mean clat B µs | clat A/B | read / write clat A/B | target | goal |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
        ...sums.map((c) => `| ${esc(c.label)} | ${c.rounds} | ${c.iopsA} | ${c.iopsB} | **${c.iopsRatio}** [${c.iopsRatioRange?.join('-') ?? ''}] | ${c.readIopsRatio} / ${c.writeIopsRatio} | ${c.clatMeanUsA} | ${c.clatMeanUsB} | **${c.clatRatio}** [${c.clatRatioRange?.join('-') ?? ''}] | ${c.readClatRatio} / ${c.writeClatRatio} | ${yn(c.target)} | ${yn(c.goal)} |`), '');
    }
  }
  if (r.responses) {
    lines.push('## Answers side by side: tcmu-runner and tcmu-ts, the same CDBs', '',
      '| set | steps | fields | same | different, explained | different, unexplained |', '|---|---|---|---|---|---|',
      ...Object.entries(r.responses).map(([set, c]) => `| ${set} | ${c.steps} | ${c.fields} | ${c.same} | ${c.explained} | ${c.different ? `**${c.different}**` : 0} |`), '');
    for (const [set, c] of Object.entries(r.responses)) {
      if (!c.rows.length) continue;
      lines.push(`<details><summary>${set}: the fields that differ</summary>`, '', '| step | field | tcmu-runner | tcmu-ts | why (docs/SCSI.md) |', '|---|---|---|---|---|',
        ...c.rows.map((x) => `| ${esc(x.step)} | ${esc(x.field)} | ${esc(x['tcmu-runner']).slice(0, 80)} | ${esc(x['tcmu-ts']).slice(0, 80)} | ${x.verdict === 'DIFFERENT' ? '**unexplained**' : esc(x.why)} |`), '', '</details>', '');
    }
  }
  if (r.fio) {
    lines.push('## fio', '', '| job | rw | bs | QD | err | read IOPS | read MB/s | read clat mean / p99 µs | write IOPS | write MB/s | write clat mean / p99 µs |',
      '|---|---|---|---|---|---|---|---|---|---|---|');
    const side = (s) => (s ? [s.iops, round(s.bwKiBs / 1024, 2), `${s.clatMeanUs} / ${s.clatP99Us}`] : ['', '', '']);
    for (const [name, j] of Object.entries(r.fio)) {
      lines.push(`| ${name} | ${j.options?.rw ?? ''} | ${j.options?.bs ?? ''} | ${j.options?.iodepth ?? ''} | ${j.error} | ${side(j.read).join(' | ')} | ${side(j.write).join(' | ')} |`);
    }
    lines.push('');
  }
  if (r.iscsiTestCu) {
    const c = r.iscsiTestCu;
    lines.push('## iscsi-test-cu (libiscsi) against the iSCSI export', '',
      `${c.suites} suites: **${c.passed} passed, ${c.failed} failed, ${c.skipped} skipped**${c.incomplete ? `, ${c.incomplete} incomplete` : ''}`, '',
      '| suite | passed | failed | skipped | complete |', '|---|---|---|---|---|',
      ...c.bySuite.map((s) => `| ${s.suite} | ${s.passed} | ${s.failed} | ${s.skipped} | ${s.complete ? 'yes' : '**no**'} |`), '');
    const fails = c.bySuite.flatMap((s) => s.failures);
    if (fails.length) lines.push('Failed tests:', '', ...fails.map((f) => `- \`${f.test}\`: ${esc(f.why)}`), '');
    const skips = c.bySuite.flatMap((s) => s.skippedTests);
    if (skips.length) lines.push('<details><summary>Skipped tests</summary>', '', ...skips.map((s) => `- \`${s.test}\`: ${esc(s.why)}`), '', '</details>', '');
  }
  return lines;
}
