import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Initiator, KernelSimulator, ScsiStatus, cdbRead16 } from '@tcmu-ts/ring';
import { Supervisor, SimulatedBackend, VerifyingLoad, LATENCY_BUCKETS_S, OP_CLASSES, type DeviceBackend, type DeviceSpec } from '@tcmu-ts/workers';
import { startMetricsServer, createMetrics, parseMetricsAddress, type MetricsServer } from '@tcmu-ts/workers/metrics';

// ---------------------------------------------------------------------------
// A strict parser for the Prometheus text exposition format 0.0.4: anything
// the Prometheus server would refuse, or that is legal but wrong for a
// well-formed exporter (a TYPE after samples, a family split in two, the same
// series twice, a histogram that is not cumulative), throws.

type FamilyType = 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface Family {
  name: string;
  help?: string;
  type: FamilyType;
  samples: Sample[];
}
type Exposition = Map<string, Family>;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(s: string, where: string): number {
  if (/^[+-]?(inf|infinity)$/i.test(s)) return s.startsWith('-') ? -Infinity : Infinity;
  if (/^nan$/i.test(s)) return NaN;
  if (!/^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/.test(s)) throw new Error(`${where}: bad value '${s}'`);
  return Number(s);
}

function unescapeHelp(s: string, where: string): string {
  return s.replace(/\\(.?)/g, (_, c: string) => {
    if (c === '\\') return '\\';
    if (c === 'n') return '\n';
    throw new Error(`${where}: bad escape in HELP`);
  });
}

/** name{a="b",...} value [timestamp] */
function parseSampleLine(line: string, where: string): Sample {
  let i = 0;
  const nameEnd = line.search(/[{ \t]/);
  if (nameEnd <= 0) throw new Error(`${where}: no value`);
  const name = line.slice(0, nameEnd);
  if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name '${name}'`);
  i = nameEnd;
  const labels: Record<string, string> = {};
  if (line[i] === '{') {
    i++;
    for (;;) {
      if (line[i] === '}') {
        i++;
        break;
      }
      const eq = line.indexOf('=', i);
      if (eq < 0) throw new Error(`${where}: label without '='`);
      const ln = line.slice(i, eq);
      if (!LABEL_NAME.test(ln) || ln.startsWith('__')) throw new Error(`${where}: bad label name '${ln}'`);
      if (ln in labels) throw new Error(`${where}: label ${ln} twice`);
      i = eq + 1;
      if (line[i] !== '"') throw new Error(`${where}: label value not quoted`);
      i++;
      let v = '';
      for (;;) {
        const ch = line[i];
        if (ch === undefined) throw new Error(`${where}: unterminated label value`);
        if (ch === '"') break;
        if (ch === '\\') {
          const e = line[i + 1];
          if (e === '\\') v += '\\';
          else if (e === '"') v += '"';
          else if (e === 'n') v += '\n';
          else throw new Error(`${where}: bad escape \\${e} in label value`);
          i += 2;
          continue;
        }
        v += ch;
        i++;
      }
      i++; // closing quote
      labels[ln] = v;
      if (line[i] === ',') i++;
      else if (line[i] !== '}') throw new Error(`${where}: expected ',' or '}' after label ${ln}`);
    }
  }
  if (line[i] !== ' ' && line[i] !== '\t') throw new Error(`${where}: no blank before the value`);
  const rest = line.slice(i).trim().split(/[ \t]+/);
  if (rest.length < 1 || rest.length > 2) throw new Error(`${where}: expected value [timestamp]`);
  const value = parseValue(rest[0], where);
  if (rest.length === 2 && !/^-?\d+$/.test(rest[1])) throw new Error(`${where}: bad timestamp`);
  return { name, labels, value };
}

function familyOf(sampleName: string, types: Map<string, FamilyType>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (!sampleName.endsWith(suffix)) continue;
    const base = sampleName.slice(0, -suffix.length);
    const t = types.get(base);
    if (t === 'histogram' || (t === 'summary' && suffix !== '_bucket')) return base;
  }
  return sampleName;
}

function seriesKey(s: Sample): string {
  return `${s.name}{${Object.keys(s.labels).sort().map((k) => `${k}=${JSON.stringify(s.labels[k])}`).join(',')}}`;
}

function parseExposition(text: string): Exposition {
  if (text.length && !text.endsWith('\n')) throw new Error('exposition does not end with a newline');
  const fams: Exposition = new Map();
  const types = new Map<string, FamilyType>();
  const seen = new Set<string>();
  const closed = new Set<string>();
  let current: string | undefined;
  const family = (name: string): Family => {
    let f = fams.get(name);
    if (!f) {
      f = { name, type: 'untyped', samples: [] };
      fams.set(name, f);
    }
    return f;
  };
  const enter = (name: string, where: string) => {
    if (current === name) return;
    if (closed.has(name)) throw new Error(`${where}: family ${name} appears in two places`);
    if (current !== undefined) closed.add(current);
    current = name;
  };
  text.split('\n').forEach((line, n) => {
    const where = `line ${n + 1}`;
    if (line === '') return;
    if (line.startsWith('#')) {
      const m = /^#[ \t]+(HELP|TYPE)[ \t]+(\S+)(?:[ \t]+(.*))?$/.exec(line);
      if (!m) return; // a plain comment
      const [, kw, name, rest = ''] = m;
      if (!METRIC_NAME.test(name)) throw new Error(`${where}: bad metric name '${name}'`);
      enter(name, where);
      const f = family(name);
      if (kw === 'HELP') {
        if (f.help !== undefined) throw new Error(`${where}: second HELP for ${name}`);
        f.help = unescapeHelp(rest, where);
      } else {
        if (types.has(name)) throw new Error(`${where}: second TYPE for ${name}`);
        if (f.samples.length) throw new Error(`${where}: TYPE for ${name} after its samples`);
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest)) throw new Error(`${where}: unknown type '${rest}'`);
        types.set(name, rest as FamilyType);
        f.type = rest as FamilyType;
      }
      return;
    }
    const s = parseSampleLine(line, where);
    const fname = familyOf(s.name, types);
    enter(fname, where);
    const key = seriesKey(s);
    if (seen.has(key)) throw new Error(`${where}: series ${key} twice`);
    seen.add(key);
    const f = family(fname);
    if (f.type === 'histogram') {
      if (s.name === `${fname}_bucket`) {
        if (s.labels.le === undefined) throw new Error(`${where}: bucket without le`);
        parseValue(s.labels.le, where);
      } else if (s.labels.le !== undefined) throw new Error(`${where}: le on ${s.name}`);
    }
    if (f.type === 'counter' && !(s.value >= 0)) throw new Error(`${where}: counter ${s.name} is ${s.value}`);
    f.samples.push(s);
  });
  for (const f of fams.values()) if (f.type === 'histogram') checkHistogram(f);
  return fams;
}

/** Per label set: buckets ascending by le and cumulative, +Inf present and equal to _count, _sum present. */
function checkHistogram(f: Family): void {
  const groups = new Map<string, { buckets: [number, number][]; sum?: number; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const k = seriesKey({ name: '', labels: rest, value: 0 });
    const g = groups.get(k) ?? { buckets: [] };
    groups.set(k, g);
    if (s.name.endsWith('_bucket')) g.buckets.push([parseValue(le, f.name), s.value]);
    else if (s.name.endsWith('_sum')) g.sum = s.value;
    else g.count = s.value;
  }
  for (const [k, g] of groups) {
    const les = g.buckets.map(([le]) => le);
    for (let i = 1; i < les.length; i++) if (!(les[i] > les[i - 1])) throw new Error(`${f.name}${k}: le not ascending`);
    for (let i = 1; i < g.buckets.length; i++) if (g.buckets[i][1] < g.buckets[i - 1][1]) throw new Error(`${f.name}${k}: buckets not cumulative`);
    const inf = g.buckets[g.buckets.length - 1];
    if (!inf || inf[0] !== Infinity) throw new Error(`${f.name}${k}: no +Inf bucket`);
    if (g.count === undefined || g.sum === undefined) throw new Error(`${f.name}${k}: _sum or _count missing`);
    if (g.count !== inf[1]) throw new Error(`${f.name}${k}: _count ${g.count} != +Inf bucket ${inf[1]}`);
  }
}

function value(e: Exposition, name: string, labels: Record<string, string>, sampleName = name): number {
  const f = e.get(name);
  if (!f) throw new Error(`no family ${name}`);
  const hit = f.samples.filter((s) => s.name === sampleName && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hit.length !== 1) throw new Error(`${sampleName}${JSON.stringify(labels)}: ${hit.length} samples`);
  return hit[0].value;
}

function sumOf(e: Exposition, name: string, labels: Record<string, string>): number {
  return (e.get(name)?.samples ?? []).filter((s) => Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((a, s) => a + s.value, 0);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------

describe('strict Prometheus text parser (test helper)', () => {
  it('accepts a well-formed exposition and refuses broken ones', () => {
    const ok = '# HELP a_total A.\n# TYPE a_total counter\na_total{x="1\\"\\n\\\\"} 3\n\n# TYPE h histogram\nh_bucket{le="0.1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 0.3\nh_count 2\n';
    const e = parseExposition(ok);
    expect(value(e, 'a_total', {})).to.equal(3);
    expect(e.get('a_total')!.samples[0].labels.x).to.equal('1"\n\\');
    const bad = [
      'a 1', // no newline at the end
      'a{x="y} 1\n',
      'a{x=y} 1\n',
      'a{x="\\t"} 1\n',
      'a 1\nb 2\na 3\n',
      'a 1\na 2\n',
      'a 1\n# TYPE a counter\n',
      '# TYPE a counter\n# TYPE a counter\n',
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
      '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
      '1a 2\n',
      'a 1x\n',
      '# TYPE a counter\na -1\n',
    ];
    for (const b of bad) expect(() => parseExposition(b), JSON.stringify(b)).to.throw();
  });
});

describe('metrics endpoint', function () {
  this.timeout(60000);
  const BS = 512;
  const LUN_MB = 16;
  const numLbas = (LUN_MB << 20) / BS;
  let dir: string;
  let sup: Supervisor;
  let server: MetricsServer;
  const backends = new Map<string, SimulatedBackend>();
  const pkgVersion = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tcmu-metrics-'));
    sup = new Supervisor({ log: () => {} });
    for (const [name, handler, cfg] of [['ram0', 'ram', `${LUN_MB}M`], ['file0', 'file', join(dir, 'file0.img')]] as const) {
      const b = new SimulatedBackend({ name, cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 20 });
      backends.set(name, b);
      const spec: DeviceSpec = {
        name, subtype: handler, cfgstring: cfg, handlerSpec: handler, blockSize: BS, numLbas, maxXferBlocks: 2048,
        writeCache: true, serial: `s-${name}`, wwn: `w-${name}`, ring: b.endpoint,
      };
      await sup.addDevice(spec, b);
    }
    server = await startMetricsServer(sup, { host: '127.0.0.1', port: 0 });
  });
  after(async () => {
    await server?.close();
    await sup?.stop();
    for (const b of backends.values()) await b.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function scrape(): Promise<Exposition> {
    const res = await fetch(server.url);
    expect(res.status).to.equal(200);
    expect(res.headers.get('content-type')).to.match(/^text\/plain; version=0\.0\.4/);
    return parseExposition(await res.text());
  }

  it('listens where it says and answers 404 elsewhere, 405 for other methods', async () => {
    expect(server.address).to.match(/^127\.0\.0\.1:\d+$/);
    expect(server.url).to.equal(`http://${server.address}/metrics`);
    expect((await fetch(`http://${server.address}/`)).status).to.equal(404);
    expect((await fetch(`http://${server.address}/metricsx`)).status).to.equal(404);
    expect((await fetch(server.url, { method: 'POST', body: 'x' })).status).to.equal(405);
    const head = await fetch(server.url, { method: 'HEAD' });
    expect(head.status).to.equal(200);
    expect(await head.text()).to.equal('');
    expect((await fetch(`${server.url}?x=1`)).status).to.equal(200);
  });

  it('serves valid text format, every name prefixed tcmu_, with the daemon-wide families', async () => {
    const e = await scrape();
    for (const f of e.values()) {
      expect(f.name).to.match(/^tcmu_/);
      expect(f.help, f.name).to.be.a('string');
      expect(f.type, f.name).to.not.equal('untyped');
    }
    expect(value(e, 'tcmu_devices', { state: 'running' })).to.equal(2);
    expect(value(e, 'tcmu_devices', { state: 'failed' })).to.equal(0);
    expect(value(e, 'tcmu_worker_restarts_total', {})).to.equal(0);
    const bi = e.get('tcmu_build_info')!.samples[0];
    expect(bi.value).to.equal(1);
    expect(bi.labels).to.deep.equal({ version: pkgVersion, node_version: process.version });
    expect(value(e, 'tcmu_device_info', { device: 'file0' })).to.equal(1);
    expect(e.get('tcmu_device_info')!.samples.find((s) => s.labels.device === 'file0')!.labels.subtype).to.equal('file');
    // Process metrics come along, with the same prefix.
    expect(e.has('tcmu_process_cpu_seconds_total')).to.equal(true);
    for (const dev of ['ram0', 'file0']) {
      const sim = backends.get(dev)!.sim;
      expect(value(e, 'tcmu_ring_size_bytes', { device: dev })).to.equal(sim.layout.cmdrSize);
      expect(value(e, 'tcmu_data_blocks', { device: dev })).to.equal(sim.layout.maxBlocks);
      expect(value(e, 'tcmu_in_flight_commands', { device: dev })).to.equal(0);
    }
  });

  it('counts netlink events by type through the hook it exposes', async () => {
    const before = await scrape();
    expect(value(before, 'tcmu_netlink_events_total', { type: 'added' })).to.equal(0);
    server.incNetlinkEvents('added');
    server.incNetlinkEvents('added');
    server.incNetlinkEvents('reconfig', 3);
    server.incNetlinkEvents();
    const e = await scrape();
    expect(value(e, 'tcmu_netlink_events_total', { type: 'added' })).to.equal(2);
    expect(value(e, 'tcmu_netlink_events_total', { type: 'reconfig' })).to.equal(3);
    expect(value(e, 'tcmu_netlink_events_total', { type: 'other' })).to.equal(1);
    expect(value(e, 'tcmu_netlink_events_total', { type: 'removed' })).to.equal(0);
  });

  it('moves with a verifying load; histograms are cumulative and _count equals commands_total', async () => {
    const loads = [...backends].map(([name, b]) => {
      const l = new VerifyingLoad({ name, blockSize: BS, numLbas, submit: (cdb, o) => b.sim.submit(cdb, o) },
        { queueDepth: 8, ioBytes: 4096, readPercent: 50, flushEvery: 20 });
      l.start();
      return l;
    });
    let stats;
    const scrapes: Exposition[] = [];
    try {
      await sleep(400);
      scrapes.push(await scrape());
      await sleep(600);
      scrapes.push(await scrape());
    } finally {
      stats = await Promise.all(loads.map((l) => l.stop()));
    }
    const [a, b] = scrapes;
    for (const s of stats) {
      expect(s.errors, s.firstProblem).to.equal(0);
      expect(s.verifyFailures, s.firstProblem).to.equal(0);
    }
    for (const dev of ['ram0', 'file0']) {
      for (const op of ['read', 'write', 'flush']) {
        expect(value(b, 'tcmu_commands_total', { device: dev, op }), `${dev} ${op}`).to.be.greaterThan(value(a, 'tcmu_commands_total', { device: dev, op }));
      }
      for (const op of ['read', 'write']) {
        expect(value(b, 'tcmu_bytes_total', { device: dev, op })).to.be.greaterThan(value(a, 'tcmu_bytes_total', { device: dev, op }));
      }
      expect(value(b, 'tcmu_kicks_total', { device: dev })).to.be.greaterThan(value(a, 'tcmu_kicks_total', { device: dev }));
      expect(value(b, 'tcmu_command_latency_seconds', { device: dev, op: 'read' }, 'tcmu_command_latency_seconds_sum'))
        .to.be.greaterThan(value(a, 'tcmu_command_latency_seconds', { device: dev, op: 'read' }, 'tcmu_command_latency_seconds_sum'));
    }
    // Every scrape, every (device, op): exactly the fixed buckets, and _count is commands_total of the same scrape.
    const les = [...LATENCY_BUCKETS_S.map(String), '+Inf'];
    for (const e of scrapes) {
      const h = e.get('tcmu_command_latency_seconds')!;
      expect(h.type).to.equal('histogram');
      for (const dev of ['ram0', 'file0']) {
        for (const op of OP_CLASSES) {
          const bucketLes = h.samples.filter((s) => s.name.endsWith('_bucket') && s.labels.device === dev && s.labels.op === op).map((s) => s.labels.le);
          expect(bucketLes.map((l) => parseValue(l, 'le'))).to.deep.equal(les.map((l) => parseValue(l, 'le')));
          const count = value(e, 'tcmu_command_latency_seconds', { device: dev, op }, 'tcmu_command_latency_seconds_count');
          expect(count, `${dev} ${op}`).to.equal(value(e, 'tcmu_commands_total', { device: dev, op }));
        }
      }
    }
    // Once the load has stopped and the workers have published: totals match what the initiator saw.
    let c: Exposition;
    const deadline = Date.now() + 5000;
    for (;;) {
      c = await scrape();
      const done = stats.every((s, i) => sumOf(c, 'tcmu_commands_total', { device: [...backends.keys()][i] }) === s.commands);
      if (done || Date.now() > deadline) break;
      await sleep(20);
    }
    [...backends.keys()].forEach((dev, i) => {
      expect(sumOf(c, 'tcmu_commands_total', { device: dev }), dev).to.equal(stats[i].commands);
      expect(value(c, 'tcmu_in_flight_commands', { device: dev })).to.equal(0);
      expect(value(c, 'tcmu_data_blocks_used', { device: dev })).to.equal(0);
      for (const op of ['read', 'write']) {
        expect(value(c, 'tcmu_bytes_total', { device: dev, op })).to.equal(4096 * value(c, 'tcmu_commands_total', { device: dev, op }));
      }
      expect(value(c, 'tcmu_bytes_total', { device: dev, op: 'flush' })).to.equal(0);
      expect(sumOf(c, 'tcmu_command_errors_total', { device: dev })).to.equal(0);
    });
    // Bounded cardinality: the same series before and after (no per-LBA or per-command labels).
    const own = (e: Exposition) => [...e.values()].filter((f) => !/^tcmu_(process|nodejs)_/.test(f.name))
      .flatMap((f) => f.samples.map(seriesKey)).sort();
    expect(own(c)).to.deep.equal(own(a));
    const labelNames = new Set([...c.values()].filter((f) => !/^tcmu_(process|nodejs)_/.test(f.name)).flatMap((f) => f.samples.flatMap((s) => Object.keys(s.labels))));
    expect([...labelNames].sort()).to.deep.equal(['device', 'le', 'node_version', 'op', 'sense_key', 'source', 'state', 'subtype', 'type', 'version']);
  });

  it('counts errors by sense key name', async () => {
    const a = await scrape();
    expect(value(a, 'tcmu_errors_total', { device: 'ram0', sense_key: 'ILLEGAL_REQUEST' })).to.equal(0);
    const r = await backends.get('ram0')!.sim.submit(cdbRead16(numLbas, 8), { dataInLength: 8 * BS });
    expect(r.status).to.equal(2);
    let b: Exposition;
    const deadline = Date.now() + 3000;
    do {
      b = await scrape();
    } while (value(b, 'tcmu_errors_total', { device: 'ram0', sense_key: 'ILLEGAL_REQUEST' }) === 0 && Date.now() < deadline && (await sleep(10), true));
    expect(value(b, 'tcmu_errors_total', { device: 'ram0', sense_key: 'ILLEGAL_REQUEST' })).to.equal(1);
    expect(sumOf(b, 'tcmu_command_errors_total', { device: 'ram0' }) - sumOf(a, 'tcmu_command_errors_total', { device: 'ram0' })).to.equal(1);
    expect(value(b, 'tcmu_errors_total', { device: 'file0', sense_key: 'ILLEGAL_REQUEST' })).to.equal(0);
  });

  it('registry without the server: one snapshot per scrape, extra metrics, no process metrics when asked', async () => {
    const m = createMetrics(sup, {
      extra: {
        version: '9.9.9', processMetrics: false,
        register: (reg) => reg.registerMetric(new (class { name = 'tcmu_extra'; help = 'x'; type = 'gauge'; aggregator = 'sum'; get = async () => ({ name: 'tcmu_extra', help: 'x', type: 'gauge', aggregator: 'sum', values: [{ value: 7, labels: {} }] }); reset() {} })() as never),
      },
    });
    const e = parseExposition(await m.scrape());
    expect(e.has('tcmu_process_cpu_seconds_total')).to.equal(false);
    expect(value(e, 'tcmu_extra', {})).to.equal(7);
    expect(e.get('tcmu_build_info')!.samples[0].labels.version).to.equal('9.9.9');
  });

  it('the Grafana dashboard only queries metrics the endpoint serves', async () => {
    const dash = readFileSync(new URL('../../docs/grafana-dashboard.json', import.meta.url), 'utf8');
    JSON.parse(dash);
    const used = new Set(dash.match(/tcmu_[a-z0-9_]+/g) ?? []);
    const e = await scrape();
    const served = new Set([...e.values()].flatMap((f) => f.samples.map((s) => s.name)));
    for (const f of e.values()) served.add(f.name);
    expect(used.size).to.be.greaterThan(15);
    for (const name of used) expect(served.has(name), name).to.equal(true);
  });

  it('parses --metrics-address forms', () => {
    expect(parseMetricsAddress('127.0.0.1:9100')).to.deep.equal({ host: '127.0.0.1', port: 9100 });
    expect(parseMetricsAddress('[::1]:9100')).to.deep.equal({ host: '::1', port: 9100 });
    expect(parseMetricsAddress(':9100')).to.deep.equal({ host: '0.0.0.0', port: 9100 });
    expect(parseMetricsAddress('localhost:0')).to.deep.equal({ host: 'localhost', port: 0 });
    for (const bad of ['9100', 'host:', 'host:70000', '::1:9100', 'a:b']) expect(() => parseMetricsAddress(bad), bad).to.throw(RangeError);
  });

  it('refuses an address already in use', async () => {
    const port = Number(server.address.split(':').pop());
    let err: unknown;
    try {
      const s2 = await startMetricsServer(sup, { host: '127.0.0.1', port });
      await s2.close();
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string })?.code).to.equal('EADDRINUSE');
  });
});

/**
 * One `fault/ram/4M;hang=1` device behind a backend that is not a
 * SimulatedBackend: like a real kernel's device, only the worker's view of
 * the ring is there for /metrics to report. Every command hangs until the
 * fault options change.
 */
async function withPlainDevice(
  name: string, kernel: { cmdTimeOutSec: number; kernelCmdTimeOut?: number },
  body: (t: { sim: KernelSimulator; sup: Supervisor; init: Initiator; scrape: () => Promise<Exposition> }) => Promise<void>,
): Promise<void> {
  const sim = new KernelSimulator({ name, cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: kernel.cmdTimeOutSec });
  const backend: DeviceBackend = { endpoint: sim.endpoint, block: () => sim.block(), unblock: () => sim.unblock(), resetRing: () => sim.resetRing(1) };
  const sup = new Supervisor({ log: () => {} });
  let server: MetricsServer | undefined;
  try {
    await sup.addDevice({
      name, subtype: 'fault', cfgstring: 'ram/4M;hang=1', handlerSpec: 'fault', blockSize: 512, numLbas: 8192,
      maxXferBlocks: 2048, writeCache: true, serial: `s-${name}`, wwn: `w-${name}`, ring: sim.endpoint,
      ...(kernel.kernelCmdTimeOut ? { kernelCmdTimeOut: kernel.kernelCmdTimeOut } : {}),
    }, backend);
    server = await startMetricsServer(sup, { host: '127.0.0.1', port: 0 });
    const url = server.url;
    await body({ sim, sup, init: new Initiator(sim, { blockSize: 512 }), scrape: async () => parseExposition(await (await fetch(url)).text()) });
  } finally {
    await server?.close();
    await sup.stop();
    await sim.close();
  }
}

describe('ring and data-area gauges for a device whose kernel side /metrics cannot see', function () {
  this.timeout(60000);

  it('learns ring and data-area sizes from the worker\'s mapping and counts the data bytes of commands in flight', () =>
    withPlainDevice('plain', { cmdTimeOutSec: 120 }, async ({ sim, sup, init, scrape }) => {
      const held = [init.write(0, new Uint8Array(8 * 512).fill(1)), init.write(64, new Uint8Array(4 * 512).fill(2)), init.read(100, 16)];
      let e = await scrape();
      while (value(e, 'tcmu_in_flight_commands', { device: 'plain' }) !== 3) {
        await new Promise((r) => setTimeout(r, 20)); // until the worker has published the three (it does so per drain)
        e = await scrape();
      }
      expect(value(e, 'tcmu_ring_size_bytes', { device: 'plain' })).to.equal(sim.layout.cmdrSize);
      expect(value(e, 'tcmu_data_area_bytes', { device: 'plain' })).to.equal(sim.layout.mapSize - sim.layout.cmdrOff - sim.layout.cmdrSize);
      expect(value(e, 'tcmu_data_bytes_in_flight', { device: 'plain' })).to.equal((8 + 4 + 16) * 512);
      expect(value(e, 'tcmu_ring_used_bytes', { device: 'plain' })).to.be.above(0);
      // The kernel's own block count is not visible for such a device: no made-up figure.
      expect(e.get('tcmu_data_blocks_used')?.samples.some((s) => s.labels.device === 'plain') ?? false).to.equal(false);

      expect(await sup.reconfigure('plain', { cfgstring: 'ram/4M' })).to.equal(0);
      for (const r of await Promise.all(held)) expect(r.status).to.equal(ScsiStatus.GOOD);
      e = await scrape();
      while (value(e, 'tcmu_in_flight_commands', { device: 'plain' }) !== 0) {
        await new Promise((r) => setTimeout(r, 20));
        e = await scrape();
      }
      expect(value(e, 'tcmu_data_bytes_in_flight', { device: 'plain' })).to.equal(0);
      expect(value(e, 'tcmu_timeouts_total', { device: 'plain' })).to.equal(0);
    }));
});

describe('kernel timeouts of a device whose kernel side /metrics cannot see', function () {
  this.timeout(60000);

  it('counts the commands held past the kernel\'s cmd_time_out, as many as the kernel failed', () =>
    withPlainDevice('slow', { cmdTimeOutSec: 1, kernelCmdTimeOut: 1 }, async ({ sim, sup, init, scrape }) => {
      const failed = await Promise.all([init.write(0, new Uint8Array(512).fill(1)), init.read(8, 2)]);
      for (const r of failed) expect(r.timedOut).to.equal(true);
      expect(sim.counters().cmdTimeouts).to.equal(2);
      let e = await scrape();
      while (value(e, 'tcmu_timeouts_total', { device: 'slow' }) < 2) {
        await new Promise((r) => setTimeout(r, 50)); // the worker scans its commands every 250 ms
        e = await scrape();
      }
      expect(value(e, 'tcmu_timeouts_total', { device: 'slow' })).to.equal(2);
      // Released, the late completions are the kernel's to drop; the device serves again and counts no more.
      expect(await sup.reconfigure('slow', { cfgstring: 'ram/4M' })).to.equal(0);
      expect((await init.write(16, new Uint8Array(512).fill(3))).status).to.equal(ScsiStatus.GOOD);
      expect(value(await scrape(), 'tcmu_timeouts_total', { device: 'slow' })).to.equal(2);
    }));
});
