/**
 * The daemon's /metrics through a real Prometheus server (Debian's package):
 * `tcmu-ts --simulate` (two simulated LUNs under the built-in verifying load,
 * exactly what `npm start` runs) is scraped once a second by a prometheus of
 * our own (test/fixtures/prometheus.ts), and everything is asked through its
 * HTTP API: the target is up, rate() of tcmu_commands_total matches what the
 * daemon counted in the same window, a p99 comes out of the latency
 * histogram, and every query of docs/grafana-dashboard.json is valid and,
 * where it should under load, has data.
 */
import { expect } from 'chai';
import { readFileSync } from 'node:fs';
import { Child } from './fixtures/child.js';
import { startPrometheus, prometheusBinary, PROMETHEUS_INSTALL_ADVICE, type PrometheusServer, type VectorSample } from './fixtures/prometheus.js';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../packages/workers/dist/cli/main.js', import.meta.url));
const DASHBOARD = new URL('../../docs/grafana-dashboard.json', import.meta.url);
const SCRAPE_INTERVAL_S = 1;

/**
 * Grafana's template variables as a dashboard user would get them here:
 * - $device: the "All" choice, which the dashboard's allValue makes `.*`
 *   (every query is also run with one device, `file0`, as a single choice);
 * - $__rate_interval: Grafana's max($__interval + scrape interval, 4 x scrape
 *   interval) with our 1 s scrape interval (and the data source set to it): 4s;
 * - $__interval: 2s (a short time range on a wide panel); $__range: 1m.
 * A variable not listed here fails the test, so a new one gets a decision.
 */
function substitute(expr: string, device: string): string {
  const vars: Record<string, string> = {
    device, __rate_interval: `${4 * SCRAPE_INTERVAL_S}s`, __interval: `${2 * SCRAPE_INTERVAL_S}s`, __range: '1m',
  };
  return expr.replace(/\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]/g, (all, a?: string, b?: string, c?: string) => {
    const name = a ?? b ?? c!;
    if (!(name in vars)) throw new Error(`dashboard query uses $${name}, which the test does not know how to fill: ${expr}`);
    return vars[name];
  });
}

interface DashboardQuery { panel: string; expr: string }

/** Every `expr` in the dashboard, with the title of the panel it belongs to. */
function dashboardQueries(): { queries: DashboardQuery[]; variables: { name: string; query: string }[] } {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Record<string, unknown>;
  const queries: DashboardQuery[] = [];
  const walk = (o: unknown, panel: string): void => {
    if (Array.isArray(o)) {
      for (const v of o) walk(v, panel);
    } else if (o && typeof o === 'object') {
      const rec = o as Record<string, unknown>;
      const title = typeof rec.title === 'string' && Array.isArray(rec.targets) ? rec.title : panel;
      for (const [k, v] of Object.entries(rec)) {
        if (k === 'expr' && typeof v === 'string') queries.push({ panel: title, expr: v });
        else if (k !== 'templating') walk(v, title);
      }
    }
  };
  walk(dash, '(dashboard)');
  const list = ((dash.templating as { list?: { name: string; type: string; query?: unknown; definition?: string }[] })?.list ?? []);
  const variables = list.filter((v) => v.type === 'query').map((v) => ({
    name: v.name,
    query: typeof v.query === 'string' ? v.query : (v.query as { query?: string })?.query ?? v.definition ?? '',
  }));
  return { queries, variables };
}

const total = (v: VectorSample[]): number => v.reduce((a, s) => a + Number(s.value[1]), 0);

/** Sum of the samples of `name` in an exposition text (all label sets). */
function sumSamples(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)/.exec(line);
    if (m && m[1] === name) sum += Number(m[2]);
  }
  return sum;
}

describe('Prometheus scrapes the daemon (real prometheus server)', function () {
  this.timeout(60_000);
  let daemon: Child | undefined;
  let prom: PrometheusServer | undefined;
  let metricsUrl: string;
  let target: string;
  const sel = () => `job="${prom!.job}",instance="${target}"`;
  const stopDaemon = (): void => { daemon?.proc.kill('SIGTERM'); };

  before(async function () {
    if (!prometheusBinary()) {
      process.stderr.write(`      skipped: prometheus is not installed (${PROMETHEUS_INSTALL_ADVICE})\n`);
      this.skip();
    }
    // The daemon as `npm start` runs it, on a port of its choosing; a small queue depth keeps the load polite on a shared machine.
    daemon = new Child('tcmu-ts --simulate', process.execPath, [
      CLI, '--simulate', '--metrics-address', '127.0.0.1:0', '--queue-depth', '4', '--lun-size-mb', '16',
    ]);
    process.once('exit', stopDaemon);
    const line = await daemon.waitFor((l) => l.startsWith('metrics: '), 'its metrics URL', 15_000);
    metricsUrl = line.slice('metrics: '.length).trim();
    target = new URL(metricsUrl).host;
    prom = await startPrometheus({ targets: [target], scrapeIntervalS: SCRAPE_INTERVAL_S });
    process.stderr.write(`      prometheus ready in ${prom.startupMs} ms at ${prom.url}, scraping ${metricsUrl}\n`);
  });

  after(async () => {
    await prom?.stop();
    if (daemon) {
      const d = daemon;
      if (d.proc.exitCode === null && d.proc.signalCode === null) {
        // SIGTERM: the daemon stops its load, prints its summary and removes its temp dir.
        d.proc.kill('SIGTERM');
        const summary = await d.waitFor((l) => l.startsWith('summary: '), 'its summary', 15_000);
        await d.exited();
        expect(summary, d.stderr).to.match(/ 0 errors, 0 verify failures$/);
        expect(d.proc.exitCode, d.stderr).to.equal(0);
      }
      process.off('exit', stopDaemon);
    }
  });

  it('has the daemon up as a target', async () => {
    const up = await prom!.waitForVector(`up{${sel()}}`, (v) => v.length === 1 && v[0].value[1] === '1', 'up == 1');
    expect(up[0].metric).to.include({ job: 'tcmu', instance: target });
  });

  it('rate() of tcmu_commands_total agrees with what the daemon counted in the same window', async () => {
    // Two raw scrapes of /metrics by us, W seconds apart; Prometheus's rate over the same W ending at the second one.
    const W = 5;
    const raw = async () => {
      const r = await fetch(metricsUrl);
      expect(r.status).to.equal(200);
      return { t: Date.now() / 1000, commands: sumSamples(await r.text(), 'tcmu_commands_total') };
    };
    const a = await raw();
    // The window is over once Prometheus holds a sample taken W seconds after the first scrape (an event: its own scrape).
    await prom!.waitForVector(`timestamp(tcmu_build_info{${sel()}})`, (v) => v.length === 1 && Number(v[0].value[1]) >= a.t + W,
      `a scrape ${W} s after ours`, (W + 10) * 1000);
    const b = await raw();
    const window = Math.round(b.t - a.t);
    const daemonRate = (b.commands - a.commands) / (b.t - a.t);
    const byDevice = await prom!.vector(`sum by (device) (rate(tcmu_commands_total{${sel()}}[${window}s]))`, b.t);
    expect(byDevice.map((s) => s.metric.device).sort()).to.deep.equal(['file0', 'ram0']);
    for (const s of byDevice) expect(Number(s.value[1]), s.metric.device).to.be.greaterThan(0);
    const promRate = total(byDevice);
    process.stderr.write(`      commands/s over ${window} s: daemon ${daemonRate.toFixed(0)}, prometheus rate() ${promRate.toFixed(0)}\n`);
    expect(daemonRate).to.be.greaterThan(0);
    // Roughly: Prometheus's scrapes do not fall exactly on ours, and rate() extrapolates to the window's edges.
    expect(promRate / daemonRate).to.be.within(0.7, 1.3);
  });

  it('histogram_quantile(0.99) of the latency histogram is a finite positive number', async () => {
    const q = (p: number) => `histogram_quantile(${p}, sum by (le) (rate(tcmu_command_latency_seconds_bucket{${sel()}}[5s])))`;
    const [p99] = await prom!.waitForVector(q(0.99), (v) => v.length === 1 && Number.isFinite(Number(v[0].value[1])), 'a p99');
    const [p50] = await prom!.vector(q(0.5));
    const v99 = Number(p99.value[1]);
    process.stderr.write(`      latency p50 ${(Number(p50.value[1]) * 1e3).toFixed(3)} ms, p99 ${(v99 * 1e3).toFixed(3)} ms\n`);
    expect(v99).to.be.greaterThan(0);
    expect(v99).to.be.at.most(30); // the highest finite bucket
    expect(v99).to.be.at.least(Number(p50.value[1]));
  });

  it('every query of the Grafana dashboard is valid, and has data where the load gives it some', async () => {
    const { queries, variables } = dashboardQueries();
    expect(queries.length).to.be.greaterThan(20);
    // The template variable: label_values(metric, label) is Grafana's, which it answers from /api/v1/label/<label>/values.
    for (const v of variables) {
      const m = /^label_values\(\s*([^,\s]+)\s*,\s*(\w+)\s*\)$/.exec(v.query);
      expect(m, `variable ${v.name}: ${v.query}`).to.not.equal(null);
      const r = await prom!.api(`label/${m![2]}/values`, { 'match[]': m![1] });
      expect(r.status, `${v.query}: ${JSON.stringify(r)}`).to.equal('success');
      expect(r.data, v.query).to.include.members(['ram0', 'file0']);
    }
    // Data for the 4s windows of $__rate_interval: a few scrapes in.
    await prom!.waitForVector(`count_over_time(tcmu_build_info{${sel()}}[${4 * SCRAPE_INTERVAL_S}s])`, (v) => Number(v[0]?.value[1]) >= 3, 'three scrapes in the rate window');
    const problems: string[] = [];
    const now = Date.now() / 1000;
    for (const { panel, expr } of queries) {
      for (const device of /\$\{?device\b|\[\[device\]\]/.test(expr) ? ['.*', 'file0'] : ['.*']) {
        const q = substitute(expr, device);
        const where = `panel "${panel}" ($device=${device}): ${q}`;
        const r = await prom!.query(q, now);
        if (r.status !== 'success') {
          problems.push(`${where}: ${r.errorType}: ${r.error}`);
          continue;
        }
        if (r.warnings?.length) problems.push(`${where}: warnings ${JSON.stringify(r.warnings)}`);
        // As a time series panel asks it, too.
        const rr = await prom!.api('query_range', { query: q, start: (now - 10).toFixed(3), end: now.toFixed(3), step: '1' });
        if (rr.status !== 'success') problems.push(`${where}: query_range: ${rr.errorType}: ${rr.error}`);
        // "... > 0" panels show only what is not zero: errors, none under a clean load. What they filter must have data.
        const filtered = /\s*>\s*0$/.exec(q);
        const dataExpr = filtered ? q.slice(0, filtered.index) : q;
        const result = filtered ? await prom!.vector(dataExpr, now) : (r.data!.result as VectorSample[]);
        if (!Array.isArray(result) || result.length === 0) problems.push(`${where}: no series${filtered ? ` for ${dataExpr}` : ''}`);
      }
    }
    expect(problems, problems.join('\n')).to.deep.equal([]);
  });
});
