/**
 * The supervisor: owns the device table, one worker per device (a thread,
 * or a child process for a device isolated that way), and the decisions a
 * worker cannot make for itself (restart after a crash, reset a broken
 * ring, stop in order). It reads each device's counters from shared memory,
 * never by message.
 */
import { EventEmitter } from 'node:events';
import { readdirSync } from 'node:fs';
import { hexBytes, naaDesignator } from '@tcmu-ts/core';
import { closeFd, mapShared, memfdCreate, setThreadNice, wake, wakeFdCreate, type SharedMap } from '@tcmu-ts/ring';

import { COUNTER_BYTES, createCounterBuffer, readCounters, type CounterBlock, type CounterSnapshot } from './counters.js';
import type { DeviceSpec, LogLevelName, PeerBlocks, PeerIoDone, RingEndpoint, SupervisorCommand, WireError, WorkerEvent } from './device-spec.js';
import { startDeviceWorker, type DeviceWorkerHandle, type Isolation } from './device-worker-handle.js';

export type { DeviceWorkerHandle, Isolation } from './device-worker-handle.js';

/** The kernel side of one device: a real UIO/configfs device or the simulator. */
export interface DeviceBackend {
  readonly endpoint: RingEndpoint;
  /** action/block_dev=1: the kernel stops queueing new commands. */
  block(): void | Promise<void>;
  unblock(): void | Promise<void>;
  /** action/reset_ring: the kernel fails what is on the ring and empties it. */
  resetRing(): void | Promise<void>;
  /** What the kernel knows beyond the spec (tcmur_cmd_time_out, ALUA groups), when it has a configfs. */
  readDeviceExtras?(): Promise<DeviceExtras>;
  /** Record an ALUA state change in the kernel, as tcmu-runner does. */
  writeAluaState?(group: string, state: number, status: number): Promise<void>;
}

export type DeviceExtras = Partial<Pick<DeviceSpec, 'cmdTimeOut' | 'alua'>>;

export type DeviceState = 'starting' | 'running' | 'restarting' | 'stopping' | 'stopped' | 'failed';

export interface ManagedDevice {
  spec: DeviceSpec;
  readonly backend: DeviceBackend;
  readonly isolation: Isolation;
  /** Written by the worker, read here: a SharedArrayBuffer, or for a process a memfd mapping both share. */
  readonly counters: CounterBlock;
  state: DeviceState;
  restarts: number;
  numLbas: number;
  worker?: DeviceWorkerHandle;
  lastError?: string;
}

export interface SupervisorLog {
  (level: LogLevelName, device: string, msg: string): void;
}

export interface SupervisorOptions {
  log?: SupervisorLog;
  /** More restarts than this inside `restartWindowMs` mark the device failed. */
  maxRestarts?: number;
  /**
   * A worker that dies again within `restartWindowMs` is restarted after
   * this delay, doubled for each further death (250, 500, 1000, 2000 ms
   * with the defaults); the first restart is immediate. The device stays
   * blocked meanwhile, so keep the sum well below the kernel's
   * cmd_time_out (30 s). Default 250; 0: no delay.
   */
  restartBackoffMs?: number;
  restartWindowMs?: number;
  /** Log every CDB (tcmu-runner's log level 5); costs a message per command. */
  logCdbs?: boolean;
  /**
   * JS heap limit of each device worker in MiB (its resourceLimits'
   * maxOldGenerationSizeMb). A handler leaking JS objects then ends only its
   * own worker (ERR_WORKER_OUT_OF_MEMORY), which is restarted like any other
   * dead worker, instead of growing the process until the system kills it.
   * ArrayBuffer memory lies outside the JS heap and is not bounded by this.
   * Default 1024; 0: V8's default (several GiB per worker). A device
   * process gets it as --max-old-space-size (out of heap, V8 aborts it).
   */
  workerHeapMb?: number;
  /**
   * How long removing a device waits for its worker to answer what is in
   * flight before ending it (a hung handler never answers). Default 30 s.
   */
  stopGraceMs?: number;
  /** Where device workers run unless addDevice() says otherwise (Isolation). Default 'thread'. */
  isolation?: Isolation;
  /**
   * The CPU nice value a misbehaving device worker steps down to, so that on
   * shared cores it yields to the LUNs that behave: a worker started after
   * its device's last one died (from its start, module loading included,
   * back to normal once it has stayed up for `restartWindowMs`), and one
   * whose JS heap passes half its limit. Default 10 (about a tenth of the
   * CPU of a nice-0 thread it competes with); 0: never.
   */
  demotedNice?: number;
}

export const DEFAULT_DEMOTED_NICE = 10;
const ESRCH = 3;

export interface AddDeviceOptions {
  /** This device's worker: a thread or a child process. Default: SupervisorOptions.isolation. */
  isolation?: Isolation;
}

export const DEFAULT_WORKER_HEAP_MB = 1024;

export class DeviceOpenError extends Error {
  constructor(readonly device: string, readonly reason: string, readonly errno: number) {
    super(`${device}: handler open failed: ${reason}`);
    this.name = 'DeviceOpenError';
  }
}

/**
 * An EXTENDED COPY block IO one worker asked of another, in flight through
 * the supervisor. The blocks are in `buf` from `offset`: the asker's own
 * SharedArrayBuffer (a thread), or one made here for an end that shares no
 * memory (a process), filled from and copied back to its messages.
 */
interface PeerForward {
  readonly from: ManagedDevice;
  readonly id: number;
  readonly to: ManagedDevice;
  readonly op: 'read' | 'write';
  readonly buf: SharedArrayBuffer;
  readonly offset: number;
  readonly bytes: number;
}

export class Supervisor extends EventEmitter {
  readonly devices = new Map<string, ManagedDevice>();
  private readonly log: SupervisorLog;
  private readonly maxRestarts: number;
  private readonly restartWindowMs: number;
  private readonly restartTimes = new Map<string, number[]>();
  workerRestarts = 0;
  private nextReconfigId = 1;
  private logCdbs: boolean;
  private readonly workerHeapMb: number;
  private readonly stopGraceMs: number;
  private readonly forwards = new Map<number, PeerForward>();
  private nextForwardId = 1;
  private readonly naaCache = new WeakMap<DeviceSpec, string>();
  /** Restarts waiting out their back-off, which a removal cuts short. */
  private readonly backOffs = new Map<ManagedDevice, () => void>();
  private readonly restartBackoffMs: number;
  /** Restarts under way, which a removal waits for. */
  private readonly restartsUnderWay = new Map<ManagedDevice, Promise<void>>();
  /** Each worker's wake eventfd (EngineOptions.wakeFd), closed when it exits. */
  private readonly wakeFds = new Map<DeviceWorkerHandle, number>();
  private readonly isolation: Isolation;
  /** The memfd behind each process-isolated device's counters, for its workers to map; closed with the device. */
  private readonly counterMemfds = new Map<ManagedDevice, { fd: number; map: SharedMap }>();
  private readonly demotedNice: number;

  constructor(opts: SupervisorOptions = {}) {
    super();
    this.log = opts.log ?? ((level, dev, msg) => {
      if (level !== 'debug' && level !== 'scsi') process.stderr.write(`${dev}: ${msg}\n`);
    });
    this.maxRestarts = opts.maxRestarts ?? 5;
    this.restartWindowMs = opts.restartWindowMs ?? 60_000;
    this.logCdbs = opts.logCdbs ?? false;
    this.workerHeapMb = opts.workerHeapMb ?? DEFAULT_WORKER_HEAP_MB;
    this.stopGraceMs = opts.stopGraceMs ?? 30_000;
    this.isolation = opts.isolation ?? 'thread';
    this.demotedNice = opts.demotedNice ?? DEFAULT_DEMOTED_NICE;
    this.restartBackoffMs = opts.restartBackoffMs ?? 250;
  }

  /**
   * Start a worker for the device; resolves once the handler has opened it.
   * What the spec leaves out (ALUA groups, tcmur_cmd_time_out) is asked of
   * the backend, which reads it from configfs on a real kernel.
   */
  async addDevice(spec: DeviceSpec, backend: DeviceBackend, opts: AddDeviceOptions = {}): Promise<ManagedDevice> {
    if (this.devices.has(spec.name)) throw new Error(`device ${spec.name} already exists`);
    spec = await this.withBackendExtras(spec, backend);
    if (this.devices.has(spec.name)) throw new Error(`device ${spec.name} already exists`);
    const isolation = opts.isolation ?? this.isolation;
    if (isolation !== 'thread' && isolation !== 'process') throw new Error(`isolation must be 'thread' or 'process', got '${String(isolation)}'`);
    let memfd: { fd: number; map: SharedMap } | undefined;
    if (isolation === 'process') {
      const fd = memfdCreate(`tcmu-ts-counters-${spec.name}`, COUNTER_BYTES);
      memfd = { fd, map: mapShared(fd, COUNTER_BYTES) };
    }
    const dev: ManagedDevice = {
      spec, backend, isolation, counters: memfd ? memfd.map.buffer : createCounterBuffer(), state: 'starting', restarts: 0, numLbas: spec.numLbas,
    };
    if (memfd) this.counterMemfds.set(dev, memfd);
    this.devices.set(spec.name, dev);
    try {
      await this.startWorker(dev, false);
    } catch (e) {
      this.devices.delete(spec.name);
      this.releaseCounters(dev);
      throw e;
    }
    return dev;
  }

  /** A process-isolated device's counter memfd, once the device is gone (its counters read zero from then on). */
  private releaseCounters(dev: ManagedDevice): void {
    const m = this.counterMemfds.get(dev);
    if (!m) return;
    this.counterMemfds.delete(dev);
    m.map.unmap();
    closeFd(m.fd);
  }

  private async withBackendExtras(spec: DeviceSpec, backend: DeviceBackend): Promise<DeviceSpec> {
    if (!backend.readDeviceExtras || (spec.cmdTimeOut !== undefined && spec.alua !== undefined)) return spec;
    let extras: DeviceExtras;
    try {
      extras = await backend.readDeviceExtras();
    } catch (e) {
      this.log('warn', spec.name, `cannot read the device's ALUA groups and daemon options: ${e instanceof Error ? e.message : String(e)}; serving without them`);
      return spec;
    }
    const out = { ...spec, cmdTimeOut: spec.cmdTimeOut ?? extras.cmdTimeOut, alua: spec.alua ?? extras.alua };
    if (out.alua && !spec.alua) {
      this.log('info', spec.name, `ALUA: ${out.alua.failover} failover, groups ${out.alua.groups.map((g) => `${g.name}(${g.id})`).join(', ')}`);
    }
    return out;
  }

  /** Stop taking commands, let those in flight finish, close the handler. */
  async removeDevice(name: string): Promise<void> {
    const dev = this.devices.get(name);
    if (!dev) return;
    dev.state = 'stopping';
    // A restart under way sees 'stopping' and starts no worker, or leaves the one it started to the stop below.
    this.backOffs.get(dev)?.();
    await this.restartsUnderWay.get(dev);
    const w = dev.worker;
    if (w) {
      const exited = new Promise<void>((r) => w.once('exit', () => r()));
      this.send(dev, { type: 'stop' });
      const timer = setTimeout(() => {
        this.log('warn', name, `worker still busy ${this.stopGraceMs / 1000} s after stop: ending it`);
        w.kill();
      }, this.stopGraceMs);
      await exited;
      clearTimeout(timer);
    }
    dev.state = 'stopped';
    this.devices.delete(name);
    this.releaseCounters(dev);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.devices.keys()].map((n) => this.removeDevice(n)));
  }

  snapshot(name: string): CounterSnapshot | undefined {
    const dev = this.devices.get(name);
    return dev && readCounters(dev.counters);
  }

  /**
   * Apply a size or write-cache change (netlink RECONFIG_DEVICE, configfs),
   * or a new handler config in place (`cfgstring`: the part after
   * "<subtype>/"). Resolves to 0 or a positive errno when the handler
   * refused it (95, EOPNOTSUPP, for a cfgstring: it needs reopen()).
   */
  reconfigure(name: string, change: { numLbas?: number; writeCache?: boolean; cfgstring?: string }): Promise<number> {
    const dev = this.devices.get(name);
    if (!dev?.worker) return Promise.resolve(19); // ENODEV
    const id = this.nextReconfigId++;
    const worker = dev.worker;
    return new Promise((resolve) => {
      const onMessage = (e: WorkerEvent) => {
        if (e.type !== 'reconfig-done' || e.id !== id) return;
        worker.off('message', onMessage);
        worker.off('exit', onExit);
        if (e.errno === 0 && change.numLbas !== undefined) dev.numLbas = change.numLbas;
        if (e.errno === 0 && change.writeCache !== undefined) dev.spec = { ...dev.spec, writeCache: change.writeCache };
        // The next worker (a restart) must open the handler with the config now in force.
        if (e.errno === 0 && change.cfgstring !== undefined) dev.spec = { ...dev.spec, cfgstring: change.cfgstring };
        // EOPNOTSUPP for a cfgstring only means "reopen me", which the caller does.
        if (e.errno !== 0 && !(e.errno === 95 && change.cfgstring !== undefined)) this.log('warn', name, `reconfiguration refused: ${e.reason ?? `errno ${e.errno}`}`);
        resolve(e.errno);
      };
      const onExit = () => resolve(5); // EIO
      worker.on('message', onMessage);
      worker.once('exit', onExit);
      this.send(dev, { type: 'reconfig', id, ...change });
    });
  }

  /** A new handler configuration (dev_config): reopen the handler on a new worker, keeping the ring. */
  async reopen(name: string, change: { subtype: string; cfgstring: string; handlerSpec?: string }): Promise<void> {
    const dev = this.devices.get(name);
    if (!dev) throw new Error(`no device ${name}`);
    const old = dev.worker;
    dev.state = 'stopping';
    if (old) {
      const exited = new Promise<void>((r) => old.once('exit', () => r()));
      await dev.backend.block();
      this.send(dev, { type: 'stop' });
      await exited;
    }
    dev.spec = { ...dev.spec, subtype: change.subtype, cfgstring: change.cfgstring, handlerSpec: change.handlerSpec ?? change.subtype };
    dev.state = 'starting';
    try {
      await this.startWorker(dev, true);
    } finally {
      await dev.backend.unblock();
    }
  }

  /** Turn per-command logging on or off in every worker (log level 5 and back). */
  setLogCdbs(enabled: boolean): void {
    this.logCdbs = enabled;
    for (const dev of this.devices.values()) this.send(dev, { type: 'log-cdbs', enabled });
  }

  /** Post, then wake the worker if it sleeps in poll(): it reads the message at once. */
  private send(dev: ManagedDevice, cmd: SupervisorCommand): void {
    const w = dev.worker;
    if (!w) return;
    w.post(cmd);
    const fd = this.wakeFds.get(w);
    if (fd !== undefined) wake(fd);
  }

  /** `afterDeath`: the device's last worker died; this one starts demoted (demotedNice). */
  private startWorker(dev: ManagedDevice, reopen: boolean, afterDeath = false): Promise<void> {
    const spec = { ...dev.spec, numLbas: dev.numLbas };
    const wakeFd = wakeFdCreate();
    const nice = afterDeath ? this.demotedNice : 0;
    let worker: DeviceWorkerHandle;
    let restoreNice: NodeJS.Timeout | undefined;
    try {
      worker = startDeviceWorker(
        dev.isolation, { spec, counters: dev.counters, reopen, logCdbs: this.logCdbs, wakeFd, nice, heapNice: this.demotedNice, heapMb: this.workerHeapMb },
        this.workerHeapMb, this.counterMemfds.get(dev)?.fd,
      );
    } catch (e) {
      closeFd(wakeFd);
      return Promise.reject(e);
    }
    dev.worker = worker;
    this.wakeFds.set(worker, wakeFd);
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      worker.on('message', (e: WorkerEvent) => {
        switch (e.type) {
          case 'ready':
            dev.numLbas = e.numLbas;
            // Not over 'stopping': a removal while this worker started has its stop queued already.
            if (dev.state === 'starting' || dev.state === 'restarting') dev.state = 'running';
            if (nice > 0) restoreNice = this.restorePriorityLater(dev, e.tid);
            settled = true;
            resolve();
            this.emit('device-ready', dev);
            break;
          case 'open-failed':
            dev.state = 'failed';
            dev.lastError = e.reason;
            settled = true;
            reject(new DeviceOpenError(dev.spec.name, e.reason, e.errno));
            break;
          case 'ring-broken':
            // The worker ends its loop; the exit handler below resets the ring and restarts it.
            this.log('error', dev.spec.name, `ring broken: ${e.reason}`);
            break;
          case 'log':
            this.log(e.level, dev.spec.name, e.msg);
            break;
          case 'stopped':
            break;
          case 'alua-state':
            this.onAluaState(dev, e.groups);
            break;
          case 'peer-lookup':
            this.send(dev, { type: 'peer-lookup-result', id: e.id, peer: this.lookupPeer(e.naa) });
            break;
          case 'peer-io':
            this.forwardPeerIo(dev, e);
            break;
          case 'peer-io-done':
            this.peerIoDone(e);
            break;
        }
      });
      worker.on('error', (err: Error) => {
        dev.lastError = err.message;
        this.log('error', dev.spec.name, `worker crashed: ${err.stack ?? err.message}`);
        if (!settled) {
          settled = true;
          dev.state = 'failed';
          reject(err);
        }
      });
      worker.on('exit', (code: number | null, signal: string | null) => {
        clearTimeout(restoreNice);
        this.wakeFds.delete(worker);
        closeFd(wakeFd);
        if (dev.worker === worker) dev.worker = undefined;
        this.dropForwards(dev);
        if (!settled) {
          // Died before saying ready or open-failed (a device process killed by a signal, say).
          settled = true;
          dev.state = 'failed';
          dev.lastError ??= `worker exited (${signal ? `signal ${signal}` : `code ${code}`}) while starting`;
          reject(new Error(`${dev.spec.name}: ${dev.lastError}`));
        }
        if (dev.state === 'running') {
          const restarting = this.restart(dev, signal ? `signal ${signal}` : `code ${code}`);
          this.restartsUnderWay.set(dev, restarting);
          void restarting.finally(() => this.restartsUnderWay.delete(dev));
        }
      });
    });
  }

  /** Wait `ms` before a restart, or less if the device is removed meanwhile. */
  private backOff(dev: ManagedDevice, ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      this.backOffs.set(dev, done);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
    }).finally(() => this.backOffs.delete(dev));
  }

  /** A restarted worker that stays up for a restart window gets its CPU priority back (a device process: every thread of it). */
  private restorePriorityLater(dev: ManagedDevice, tid: number): NodeJS.Timeout {
    const t = setTimeout(() => {
      try {
        const tids = dev.isolation === 'process' ? readdirSync(`/proc/${tid}/task`).map(Number) : [tid];
        for (const id of tids) {
          try {
            setThreadNice(id, 0);
          } catch (e) {
            if ((e as { errno?: number }).errno !== ESRCH) throw e; // a thread that ended meanwhile
          }
        }
        this.log('info', dev.spec.name, `worker up for ${this.restartWindowMs / 1000} s since its restart: back to normal CPU priority`);
      } catch (e) {
        this.log('warn', dev.spec.name, `cannot give the restarted worker its CPU priority back: ${e instanceof Error ? e.message : String(e)}`);
      }
    }, this.restartWindowMs);
    t.unref();
    return t;
  }

  /** Keep the new states for restarts, and write them to configfs as tcmu-runner does. */
  private onAluaState(dev: ManagedDevice, groups: { name: string; state: number; status: number }[]): void {
    const alua = dev.spec.alua;
    if (!alua) return;
    const byName = new Map(groups.map((g) => [g.name, g]));
    dev.spec = {
      ...dev.spec,
      alua: { failover: alua.failover, groups: alua.groups.map((g) => ({ ...g, ...(byName.has(g.name) ? { state: byName.get(g.name)!.state, status: byName.get(g.name)!.status } : {}) })) },
    };
    const write = dev.backend.writeAluaState?.bind(dev.backend);
    if (!write) return;
    for (const g of groups) {
      void write(g.name, g.state, g.status).catch((e) =>
        this.log('error', dev.spec.name, `could not change the kernel's state of ALUA group ${g.name} to ${g.state}: ${e instanceof Error ? e.message : String(e)}`),
      );
    }
  }

  private naaOf(spec: DeviceSpec): string {
    let n = this.naaCache.get(spec);
    if (n === undefined) {
      n = hexBytes(naaDesignator(spec.wwn ?? spec.serial));
      this.naaCache.set(spec, n);
    }
    return n;
  }

  /** The running LUN with this VPD 83h NAA designator, for another one's EXTENDED COPY. */
  private lookupPeer(naa: string): { name: string; blockSize: number; numLbas: number; maxXferBlocks: number } | undefined {
    for (const d of this.devices.values()) {
      if (d.state !== 'running' || !d.worker) continue;
      if (this.naaOf(d.spec) === naa.toLowerCase()) {
        return { name: d.spec.name, blockSize: d.spec.blockSize, numLbas: d.numLbas, maxXferBlocks: d.spec.maxXferBlocks };
      }
    }
    return undefined;
  }

  private forwardPeerIo(from: ManagedDevice, e: Extract<WorkerEvent, { type: 'peer-io' }>): void {
    const to = this.devices.get(e.device);
    if (!to || to.state !== 'running' || !to.worker) {
      const error: WireError = { code: 'ENODEV', message: `device ${e.device} is not running` };
      this.send(from, { type: 'peer-io-done', id: e.id, error });
      return;
    }
    const id = this.nextForwardId++;
    // Between threads the SharedArrayBuffer is shared, not copied: the other worker reads or fills the same memory.
    const buf = e.buf ?? new SharedArrayBuffer(e.bytes);
    const offset = e.buf ? e.offset : 0;
    if (!e.buf && e.data) new Uint8Array(buf, 0, e.bytes).set(e.data.subarray(0, e.bytes));
    this.forwards.set(id, { from, id: e.id, to, op: e.op, buf, offset, bytes: e.bytes });
    const blocks: PeerBlocks = to.worker.isolation === 'thread'
      ? { buf, offset, bytes: e.bytes }
      : { offset: 0, bytes: e.bytes, ...(e.op === 'write' ? { data: new Uint8Array(buf, offset, e.bytes).slice() } : {}) };
    this.send(to, { type: 'peer-io', id, op: e.op, lba: e.lba, blocks: e.blocks, ...blocks });
  }

  /** The serving worker is done: what a process read comes back in the message; the asker gets it the way it can take it. */
  private peerIoDone(e: PeerIoDone): void {
    const f = this.forwards.get(e.id);
    if (!f) return;
    this.forwards.delete(e.id);
    if (e.data) new Uint8Array(f.buf, f.offset, f.bytes).set(e.data.subarray(0, f.bytes));
    const data = !e.error && f.op === 'read' && f.from.isolation === 'process' ? new Uint8Array(f.buf, f.offset, f.bytes).slice() : undefined;
    this.send(f.from, { type: 'peer-io-done', id: f.id, ...(e.error ? { error: e.error } : {}), ...(data ? { data } : {}) });
  }

  /** A worker went away: fail the copy IO it was serving, forget what it asked for. */
  private dropForwards(dev: ManagedDevice): void {
    for (const [id, f] of this.forwards) {
      if (f.to === dev) {
        this.forwards.delete(id);
        this.send(f.from, { type: 'peer-io-done', id: f.id, error: { code: 'ENODEV', message: `device ${dev.spec.name} went away` } });
      } else if (f.from === dev) {
        this.forwards.delete(id);
      }
    }
  }

  /** A worker died under a running device: reset the ring and start a new one. */
  private async restart(dev: ManagedDevice, how: string): Promise<void> {
    const now = Date.now();
    const times = (this.restartTimes.get(dev.spec.name) ?? []).filter((t) => now - t < this.restartWindowMs);
    times.push(now);
    this.restartTimes.set(dev.spec.name, times);
    if (times.length > this.maxRestarts) {
      dev.state = 'failed';
      this.log('error', dev.spec.name, `worker exited (${how}) ${times.length} times in ${this.restartWindowMs / 1000} s; giving up on this device`);
      this.emit('device-failed', dev);
      return;
    }
    dev.state = 'restarting';
    dev.restarts++;
    this.workerRestarts++;
    // The first death in a window restarts at once; a loop of them is spread out, its start-up CPU with it.
    const delayMs = times.length >= 2 ? this.restartBackoffMs * 2 ** (times.length - 2) : 0;
    this.log('warn', dev.spec.name, `worker exited (${how}); resetting the ring and restarting (restart ${dev.restarts}${delayMs ? `, in ${delayMs} ms` : ''})`);
    try {
      await dev.backend.block();
      // Commands that were on the ring were never acknowledged: the kernel fails them and the initiator retries.
      await dev.backend.resetRing();
      // Blocked meanwhile: new commands wait in the kernel, which fails them only after its cmd_time_out.
      if (delayMs > 0) await this.backOff(dev, delayMs);
      if (dev.state !== 'restarting') return; // removed meanwhile
      await this.startWorker(dev, true, true);
      await dev.backend.unblock();
      if ((dev.state as DeviceState) === 'running') this.emit('device-restarted', dev);
    } catch (e) {
      dev.state = 'failed';
      dev.lastError = e instanceof Error ? e.message : String(e);
      this.log('error', dev.spec.name, `restart failed: ${dev.lastError}`);
      this.emit('device-failed', dev);
    }
  }
}
