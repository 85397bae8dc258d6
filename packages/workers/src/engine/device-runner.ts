/**
 * What a device worker does, whichever way it is isolated: map the ring,
 * open the handler, run the engine until told to stop. The worker thread
 * (device-worker.ts) and the child process (device-process.ts) differ only
 * in the SupervisorLink they hand to runDeviceWorker().
 */
import { PerformanceObserver } from 'node:perf_hooks';
import { getHeapStatistics } from 'node:v8';
import { errnoNumber, setThreadNice, threadTid } from '@tcmu-ts/ring';
import { errnoError, loadHandler, ScsiError, type DeviceHandler, type ScsiDeviceInfo } from '@tcmu-ts/core';
import { fromWire, toWire, type PeerLink } from './executor.js';
import { CounterWriter } from '../counters.js';
import type { DeviceEngine } from './device-engine.js';
import { LogRateLimit } from './log-rate-limit.js';
import { HandlerOpenFailed, openRingDevice } from './serve-device.js';
import type { DeviceSpec, PeerBlocks, PeerInfo, SupervisorCommand, WorkerEvent } from '../device-spec.js';

/** What the supervisor gives a device worker at start. */
export interface WorkerInput {
  spec: DeviceSpec;
  /** The counter block (counters.ts): a SharedArrayBuffer, or in a child process its mapping of the supervisor's memfd. */
  counters: SharedArrayBuffer | ArrayBuffer;
  reopen: boolean;
  logCdbs: boolean;
  /** Signalled by the supervisor after each message it posts (EngineOptions.wakeFd). */
  wakeFd: number;
  /**
   * The nice value this worker starts at (0: the supervisor's), set by its
   * entry before the engine loads: a worker restarted after its device's
   * last one died.
   */
  nice: number;
  /** Take this nice value once the JS heap passes half its limit (0: never). */
  heapNice: number;
  /** The JS heap limit (old generation) the supervisor gave this worker in MiB; 0: V8's own. */
  heapMb: number;
}

/** The worker's end of its channel to the supervisor. */
export interface SupervisorLink {
  /** True when a SharedArrayBuffer posted here reaches the supervisor as the same memory (a thread, not a process). */
  readonly sharesMemory: boolean;
  post(e: WorkerEvent): void;
  onMessage(listener: (m: SupervisorCommand) => void): void;
  /** The worker is done: let its event loop end. */
  close(): void;
}

/** Runs the device until the supervisor stops it; rejects on what the engine did not catch (the worker then dies). */
export async function runDeviceWorker(input: WorkerInput, link: SupervisorLink): Promise<void> {
  const { spec, counters, reopen, logCdbs, wakeFd } = input;
  const post = (e: WorkerEvent) => link.post(e);
  const tid = threadTid();
  const limit = new LogRateLimit((level, msg) => post({ type: 'log', level, msg }));
  const log = {
    scsi: (msg: string) => post({ type: 'log', level: 'scsi', msg }),
    debug: (msg: string) => post({ type: 'log', level: 'debug', msg }),
    info: (msg: string) => limit.log('info', msg),
    warn: (msg: string) => limit.log('warn', msg),
    error: (msg: string) => limit.log('error', msg),
  };

  /** EXTENDED COPY to and from other LUNs: requests go to the supervisor, which forwards them. */
  let nextPeerId = 1;
  const peerLookups = new Map<number, (p: PeerInfo | undefined) => void>();
  const peerIos = new Map<number, { resolve: (data?: Uint8Array) => void; reject: (e: Error) => void }>();
  const peers: PeerLink = {
    lookup(naa) {
      const id = nextPeerId++;
      return new Promise((resolve) => {
        peerLookups.set(id, resolve);
        post({ type: 'peer-lookup', id, naa });
      });
    },
    io(device, op, lba, blocks, buf, offset) {
      const id = nextPeerId++;
      // Both ends of a copy have this LUN's block size (the executor checks).
      const bytes = blocks * spec.blockSize;
      const blocksOut: PeerBlocks = link.sharesMemory
        ? { buf, offset, bytes }
        : { offset: 0, bytes, ...(op === 'write' ? { data: new Uint8Array(buf, offset, bytes).slice() } : {}) };
      return new Promise<Uint8Array | undefined>((resolve, reject) => {
        peerIos.set(id, { resolve, reject });
        post({ type: 'peer-io', id, device, op, lba, blocks, ...blocksOut });
      }).then((data) => {
        if (data) new Uint8Array(buf, offset, bytes).set(data.subarray(0, bytes));
      });
    },
  };

  const handler = await loadHandler(spec.handlerSpec);
  let device;
  try {
    device = await openRingDevice(spec, handler, reopen, {
      counters: new CounterWriter(counters),
      log,
      onRingBroken: (reason) => post({ type: 'ring-broken', reason }),
      peers,
      wakeFd,
      onAluaChange: (groups) => post({ type: 'alua-state', groups: groups.map((g) => ({ name: g.name, state: g.state, status: g.status })) }),
    });
  } catch (err) {
    if (!(err instanceof HandlerOpenFailed)) throw err;
    const e = err.cause;
    const code = (e as { code?: string }).code;
    const errno = code ? errnoFromCode(code) : 5;
    limit.flush();
    post({ type: 'open-failed', reason: e instanceof Error ? e.message : String(e), errno });
    link.close();
    return;
  }
  const { map, dev, handler: opened, info, engine: eng } = device;
  eng.logCdbs = logCdbs;
  if (spec.cmdTimeOut) log.info(`tcmur_cmd_time_out ${spec.cmdTimeOut} s`);
  link.onMessage((m: SupervisorCommand) => {
    const engine = eng;
    switch (m.type) {
      case 'peer-lookup-result': {
        const r = peerLookups.get(m.id);
        peerLookups.delete(m.id);
        r?.(m.peer);
        break;
      }
      case 'peer-io-done': {
        const p = peerIos.get(m.id);
        peerIos.delete(m.id);
        if (m.error) p?.reject(fromWire(m.error));
        else p?.resolve(m.data);
        break;
      }
      case 'peer-io':
        servePeerIo(engine, m).then(
          (data) => post({ type: 'peer-io-done', id: m.id, ...(data ? { data } : {}) }),
          (e) => post({ type: 'peer-io-done', id: m.id, error: toWire(e) }),
        );
        break;
      case 'log-cdbs':
        engine.logCdbs = m.enabled;
        break;
      case 'stop':
        engine.stop();
        break;
      case 'reconfig':
        void reconfigure(m, opened, engine, info).then(
          () => post({ type: 'reconfig-done', id: m.id, errno: 0 }),
          (e) => post({ type: 'reconfig-done', id: m.id, errno: errnoFromCode((e as { code?: string }).code ?? 'EINVAL'), reason: e instanceof Error ? e.message : String(e) }),
        );
        break;
    }
  });
  post({ type: 'ready', numLbas: dev.numLbas, tid });
  const heapWatch = input.heapNice > input.nice ? watchHeap(tid, input.heapNice, input.heapMb, log) : undefined;
  await eng.run();
  heapWatch?.disconnect();
  await opened.close();
  map.unmap();
  limit.flush();
  post({ type: 'stopped' });
  link.close();
}

/** Best effort: without the right to (a seccomp filter, say) the worker runs on at its priority. */
function lowerPriority(tid: number, nice: number, warn: (msg: string) => void): void {
  try {
    setThreadNice(tid, nice);
  } catch (e) {
    warn(`cannot lower this worker's CPU priority: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/**
 * A worker whose JS heap passes half its limit is leaking, most likely, and
 * will be ended when it reaches it; until then its garbage collector takes
 * CPU the other LUNs need, so it steps down to `nice`. Looked at after each
 * garbage collection, which a growing heap cannot skip (a timer can be
 * outrun by a fast leak), and never per command: a worker that allocates
 * nothing per command seldom collects.
 */
function watchHeap(tid: number, nice: number, heapMb: number, log: { warn(msg: string): void }): PerformanceObserver {
  // heap_size_limit also counts the young generation's reserve: twice the old generation's limit, or more.
  const limit = heapMb > 0 ? heapMb * 2 ** 20 : getHeapStatistics().heap_size_limit / 2;
  const obs = new PerformanceObserver(() => {
    const used = getHeapStatistics().used_heap_size;
    if (used < limit / 2) return;
    obs.disconnect();
    log.warn(`JS heap at ${used >> 20} MiB of its ${limit >> 20} MiB limit (a leak?): running at CPU nice ${nice} from now on`);
    lowerPriority(tid, nice, log.warn);
  });
  obs.observe({ entryTypes: ['gc'] });
  return obs;
}

/**
 * Another LUN's copy IO on this one. Without a shared buffer the blocks
 * arrived in the message (a write) or go back in the answer (a read).
 */
async function servePeerIo(engine: DeviceEngine, m: Extract<SupervisorCommand, { type: 'peer-io' }>): Promise<Uint8Array | undefined> {
  if (m.buf) {
    await engine.servePeerIo(m.op, m.lba, m.blocks, m.buf, m.offset);
    return undefined;
  }
  const sab = new SharedArrayBuffer(m.bytes);
  if (m.data) new Uint8Array(sab).set(m.data.subarray(0, m.bytes));
  await engine.servePeerIo(m.op, m.lba, m.blocks, sab, 0);
  return m.op === 'read' ? new Uint8Array(sab).slice() : undefined;
}

/**
 * A size or write-cache change: the handler may refuse it (then nothing
 * changes); once accepted, initiators learn about it through a unit attention.
 * A new cfgstring the handler applies in place (fault options) needs none.
 */
async function reconfigure(m: Extract<SupervisorCommand, { type: 'reconfig' }>, handler: DeviceHandler, engine: DeviceEngine, info: ScsiDeviceInfo): Promise<void> {
  if (m.numLbas !== undefined && m.numLbas !== info.numLbas) {
    await handler.reconfig?.({ kind: 'size', numLbas: m.numLbas, devSize: m.numLbas * info.blockSize });
    info.numLbas = m.numLbas;
    engine.raiseUnitAttention(ScsiError.capacityChanged());
  }
  if (m.writeCache !== undefined && m.writeCache !== info.writeCache) {
    await handler.reconfig?.({ kind: 'writecache', enabled: m.writeCache });
    info.writeCache = m.writeCache;
    engine.raiseUnitAttention(ScsiError.modeParametersChanged());
  }
  if (m.cfgstring !== undefined) {
    // In place or not at all: a handler without reconfig() gets reopened by the supervisor.
    if (!handler.reconfig) throw errnoError('EOPNOTSUPP', 'the handler cannot change its config in place');
    await handler.reconfig({ kind: 'config', cfgstring: m.cfgstring });
  }
}

/** The errno a code stands for; EIO for one the platform does not know. */
function errnoFromCode(code: string): number {
  return errnoNumber(code) ?? 5;
}
