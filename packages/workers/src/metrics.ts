/**
 * The Prometheus endpoint: GET /metrics on a node:http server, served from a
 * prom-client Registry of its own (never the global one).
 *
 * Nothing is counted here. Every value is read at scrape time: the per-device
 * figures from the shared counter buffers the device workers publish (one
 * consistent snapshot per device per scrape, taken through the counters'
 * sequence lock, so a histogram's _count always equals commands_total), the
 * daemon-wide ones from the supervisor. prom-client's own Counter and
 * Histogram can only be incremented or observed, not set from totals kept
 * elsewhere, so the families here are small custom metric objects that hand
 * the registry ready values (`get()`); the registry writes the text format.
 *
 * Labels are bounded: device, op (read/write/flush/other), sense_key (16
 * names), state (6), le (the fixed latency buckets). Nothing per LBA or per
 * command.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { LATENCY_BUCKETS_S, OP_CLASSES, readCounters, type CounterSnapshot } from './counters.js';
import { SimulatedBackend } from './demo/sim-backend.js';
import type { DeviceState, ManagedDevice, Supervisor } from './supervisor.js';
import type { SimCounters } from '@tcmu-ts/ring';

/** Sense key names (SPC-4 table 52), the values of the sense_key label. */
export const SENSE_KEY_NAMES = [
  'NO_SENSE', 'RECOVERED_ERROR', 'NOT_READY', 'MEDIUM_ERROR', 'HARDWARE_ERROR', 'ILLEGAL_REQUEST',
  'UNIT_ATTENTION', 'DATA_PROTECT', 'BLANK_CHECK', 'VENDOR_SPECIFIC', 'COPY_ABORTED', 'ABORTED_COMMAND',
  'RESERVED_0C', 'VOLUME_OVERFLOW', 'MISCOMPARE', 'COMPLETED',
] as const;
/** Sense keys every device reports even at zero, so rate() has a series from the start; the others appear once seen. */
const ALWAYS_SENSE_KEYS = new Set([0, 2, 3, 4, 5, 6, 7, 11, 14]);

// A Record, so that a state added to DeviceState fails to compile here until it is listed.
const STATE_ZERO: Record<DeviceState, 0> = { starting: 0, running: 0, restarting: 0, stopping: 0, stopped: 0, failed: 0 };
export const DEVICE_STATES = Object.keys(STATE_ZERO) as readonly DeviceState[];

/** Kinds of generic netlink event, the values of the type label of tcmu_netlink_events_total. */
export const NETLINK_EVENT_KINDS = ['added', 'removed', 'reconfig', 'other'] as const;
export type NetlinkEventKind = (typeof NETLINK_EVENT_KINDS)[number];

export interface MetricsExtra {
  /** Version in tcmu_build_info; default: the version in the project's package.json. */
  version?: string;
  /** Node process metrics from prom-client (CPU, memory, event loop lag, GC), prefixed tcmu_. Default true. */
  processMetrics?: boolean;
  /** Called once with the registry, to add metrics of your own to the same endpoint. */
  register?(registry: Registry): void;
}

export interface MetricsOptions {
  extra?: MetricsExtra;
}

export interface MetricsServerOptions extends MetricsOptions {
  host: string;
  /** 0 picks a free port; `address` tells which. */
  port: number;
}

/** The metrics of one supervisor, without the HTTP server (tests, benches, embedding). */
export interface TcmuMetrics {
  readonly registry: Registry;
  /** Count generic netlink events the daemon received (the supervisor's or CLI's netlink loop calls this). */
  incNetlinkEvents(kind?: NetlinkEventKind, n?: number): void;
  /** The exposition text, as GET /metrics serves it. */
  scrape(): Promise<string>;
  readonly contentType: string;
}

export interface MetricsServer extends TcmuMetrics {
  /** host:port actually bound ("[::1]:9100" for IPv6). */
  readonly address: string;
  /** http://address/metrics */
  readonly url: string;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------

type MetricType = 'counter' | 'gauge' | 'histogram';
interface Sample {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

/**
 * A family whose values are computed at scrape time. It carries what the
 * prom-client Registry uses from a metric (name, help, type, aggregator,
 * get(), reset()), so the registry formats it like its own.
 */
class CollectedMetric {
  readonly aggregator = 'sum' as const;
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: MetricType,
    private readonly values: () => Sample[],
  ) {}
  // get() runs synchronously up to the return, so every family of one scrape sees the same snapshot.
  get(): Promise<{ name: string; help: string; type: MetricType; aggregator: 'sum'; values: Sample[] }> {
    return Promise.resolve({ name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values: this.values() });
  }
  reset(): void {
    /* values live in the workers' counters */
  }
  collect(): void {
    /* nothing to do: get() computes */
  }
}

interface DeviceView {
  name: string;
  dev: ManagedDevice;
  c: CounterSnapshot;
  sim?: SimCounters;
}

function projectVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

/** Build the registry for a supervisor. Values are read from it at every scrape. */
export function createMetrics(sup: Supervisor, opts: MetricsOptions = {}): TcmuMetrics {
  const extra = opts.extra ?? {};
  const registry = new Registry();
  const netlink = new Map<NetlinkEventKind, number>(NETLINK_EVENT_KINDS.map((k) => [k, 0]));
  const version = extra.version ?? projectVersion();

  // One snapshot per scrape: taken by the first family asked, dropped once the
  // registry has asked them all (they are all asked in the same synchronous turn).
  let cached: DeviceView[] | undefined;
  const devices = (): DeviceView[] => {
    if (cached) return cached;
    const views: DeviceView[] = [];
    for (const [name, dev] of sup.devices) {
      let sim: SimCounters | undefined;
      if (dev.backend instanceof SimulatedBackend && !dev.backend.sim.isClosed) sim = dev.backend.sim.counters();
      views.push({ name, dev, c: readCounters(dev.counters), sim });
    }
    cached = views;
    queueMicrotask(() => { cached = undefined; });
    return views;
  };

  const add = (name: string, help: string, type: MetricType, values: () => Sample[]): void => {
    registry.registerMetric(new CollectedMetric(name, help, type, values) as unknown as Metric);
  };
  const perDevice = (name: string, help: string, type: MetricType, pick: (d: DeviceView) => number | undefined): void =>
    add(name, help, type, () => devices().flatMap((d) => {
      const v = pick(d);
      return v === undefined ? [] : [{ value: v, labels: { device: d.name } }];
    }));
  const perOp = (name: string, help: string, pick: (s: CounterSnapshot['ops'][keyof CounterSnapshot['ops']]) => number): void =>
    add(name, help, 'counter', () => devices().flatMap((d) =>
      OP_CLASSES.map((op) => ({ value: pick(d.c.ops[op]), labels: { device: d.name, op } }))));

  // --- per device and operation class -------------------------------------------------
  perOp('tcmu_commands_total', 'Commands completed, by device and operation class.', (o) => o.commands);
  perOp('tcmu_bytes_total', 'Data bytes transferred by completed commands (read: data-in, write: data-out).', (o) => o.bytes);
  perOp('tcmu_command_errors_total', 'Commands completed with a status other than GOOD, by operation class.', (o) => o.errors);

  const bounds = LATENCY_BUCKETS_S.map(String);
  add('tcmu_command_latency_seconds', 'Time from reading a command off the ring to writing its completion.', 'histogram', () => {
    const out: Sample[] = [];
    for (const d of devices()) {
      for (const op of OP_CLASSES) {
        const o = d.c.ops[op];
        let acc = 0;
        for (let i = 0; i < o.buckets.length; i++) {
          acc += o.buckets[i];
          const le = i < bounds.length ? bounds[i] : '+Inf';
          out.push({ metricName: 'tcmu_command_latency_seconds_bucket', value: acc, labels: { device: d.name, op, le } });
        }
        out.push({ metricName: 'tcmu_command_latency_seconds_sum', value: o.latencySumS, labels: { device: d.name, op } });
        // _count is the +Inf bucket, which is the class's command count: one snapshot holds both.
        out.push({ metricName: 'tcmu_command_latency_seconds_count', value: acc, labels: { device: d.name, op } });
      }
    }
    return out;
  });

  // --- per device ----------------------------------------------------------------------
  add('tcmu_errors_total', 'Commands answered CHECK CONDITION, by sense key (NO_SENSE also counts other non-GOOD statuses such as BUSY).', 'counter', () =>
    devices().flatMap((d) => d.c.errorsBySenseKey.flatMap((v, key) =>
      v > 0 || ALWAYS_SENSE_KEYS.has(key) ? [{ value: v, labels: { device: d.name, sense_key: SENSE_KEY_NAMES[key] } }] : [])));
  perDevice('tcmu_in_flight_commands', 'Commands read from the ring and not yet completed.', 'gauge', (d) => d.c.inFlight);
  perDevice('tcmu_ring_used_bytes', 'Command ring bytes between the mailbox tail and head.', 'gauge', (d) => d.c.ringBytesUsed);
  perDevice('tcmu_ring_size_bytes', 'Command ring size, from the mailbox the device worker mapped.', 'gauge', (d) => d.c.ringSize || d.sim?.ringSize);
  perDevice('tcmu_data_area_bytes', 'Data area size (the map past the command ring).', 'gauge', (d) => d.c.dataAreaBytes || undefined);
  perDevice('tcmu_data_bytes_in_flight', 'Data area bytes named by the iovecs of commands read from the ring and not yet completed.', 'gauge', (d) => d.c.dataBytesInFlight);
  perDevice('tcmu_data_blocks_used', 'Data area blocks the kernel holds for commands, kept buffers included (simulated devices: the kernel\'s own count).', 'gauge', (d) => d.sim?.dataBlocksUsed);
  perDevice('tcmu_data_blocks', 'Data area blocks in total (simulated devices).', 'gauge', (d) => d.sim?.dataBlocksTotal);
  add('tcmu_qfull_total', 'Commands held back for want of resources: source="handler" are BUSY replies for a handler out of resources, source="kernel" are commands the kernel queued because the ring or data area was full (simulated devices).', 'counter', () =>
    devices().flatMap((d) => {
      const s: Sample[] = [{ value: d.c.qfullReplies, labels: { device: d.name, source: 'handler' } }];
      if (d.sim) s.push({ value: d.sim.qfullQueued, labels: { device: d.name, source: 'kernel' } });
      return s;
    }));
  perDevice('tcmu_timeouts_total', 'Commands the kernel failed because userspace did not answer within cmd_time_out (simulated devices: the kernel\'s own count; real ones: commands the daemon held longer than the device\'s cmd_time_out).', 'counter',
    (d) => (d.sim ? d.sim.cmdTimeouts : d.c.timeouts));
  perDevice('tcmu_cmd_time_out_exceeded_total', 'Commands that ran longer than the device\'s tcmur_cmd_time_out (dev_config option; each counted once, when it passes the limit, whether or not it completes later).', 'counter',
    (d) => d.c.cmdTimeOutExceeded);
  perDevice('tcmu_malformed_entries_total', 'Ring entries that could not be parsed.', 'counter', (d) => d.c.malformedEntries);
  perDevice('tcmu_tmr_total', 'Task management entries seen on the ring.', 'counter', (d) => d.c.tmrSeen);
  perDevice('tcmu_kicks_total', 'Completion batches signalled to the kernel (one write to the UIO fd each).', 'counter', (d) => d.c.kicks);
  perDevice('tcmu_wakeups_total', 'Times the device worker woke up on a kernel event.', 'counter', (d) => d.c.wakeups);
  perDevice('tcmu_handler_errors_total', 'Handler failures that were not SCSI errors (mapped to sense data).', 'counter', (d) => d.c.handlerErrors);
  perDevice('tcmu_device_restarts_total', 'Times this device\'s worker was restarted.', 'counter', (d) => d.dev.restarts);
  add('tcmu_device_info', 'One per device: its handler subtype.', 'gauge', () =>
    devices().map((d) => ({ value: 1, labels: { device: d.name, subtype: d.dev.spec.subtype } })));

  // --- daemon-wide ---------------------------------------------------------------------------
  add('tcmu_devices', 'Devices by state.', 'gauge', () => {
    const n = new Map<DeviceState, number>(DEVICE_STATES.map((s) => [s, 0]));
    for (const d of devices()) n.set(d.dev.state, (n.get(d.dev.state) ?? 0) + 1);
    return [...n].map(([state, value]) => ({ value, labels: { state } }));
  });
  add('tcmu_worker_restarts_total', 'Device worker restarts, all devices.', 'counter', () => [{ value: sup.workerRestarts, labels: {} }]);
  add('tcmu_netlink_events_total', 'Generic netlink events received from the kernel, by type.', 'counter', () =>
    [...netlink].map(([type, value]) => ({ value, labels: { type } })));
  add('tcmu_build_info', 'Always 1; the labels tell the build.', 'gauge', () =>
    [{ value: 1, labels: { version, node_version: process.version } }]);

  if (extra.processMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'tcmu_' });
  extra.register?.(registry);

  return {
    registry,
    contentType: registry.contentType,
    incNetlinkEvents(kind: NetlinkEventKind = 'other', n = 1): void {
      const k = netlink.has(kind) ? kind : 'other';
      netlink.set(k, (netlink.get(k) ?? 0) + n);
    },
    scrape: () => registry.metrics(),
  };
}

/**
 * Serve the supervisor's metrics on http://host:port/metrics. Resolves once
 * listening; rejects if the address cannot be bound.
 */
export async function startMetricsServer(sup: Supervisor, opts: MetricsServerOptions): Promise<MetricsServer> {
  const m = createMetrics(sup, opts);
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found; metrics are at /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { Allow: 'GET, HEAD', 'Content-Type': 'text/plain; charset=utf-8' }).end('method not allowed\n');
      return;
    }
    m.scrape().then(
      (body) => {
        res.writeHead(200, { 'Content-Type': m.contentType, 'Content-Length': Buffer.byteLength(body) });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (e: unknown) => {
        res.writeHead(500, { 'Content-Type': 'text/plain; charset=utf-8' }).end(`scrape failed: ${e instanceof Error ? e.message : String(e)}\n`);
      },
    );
  });
  server.keepAliveTimeout = 65_000; // longer than a scrape interval: Prometheus keeps its connection
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  const address = a.family === 'IPv6' || a.family as unknown === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
  let closing: Promise<void> | undefined;
  return {
    ...m,
    address,
    url: `http://${address}/metrics`,
    close(): Promise<void> {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

/** Parse "host:port", "[v6]:port" or ":port" (all interfaces), as --metrics-address takes it. */
export function parseMetricsAddress(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(s.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m) throw new RangeError(`metrics address '${s}': expected host:port, [v6]:port or :port`);
  if (port > 65535) throw new RangeError(`metrics address '${s}': port ${port} is not in 0..65535`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}
