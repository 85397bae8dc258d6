/**
 * Entry point of a device worker thread: map the ring, open the handler,
 * run the engine until told to stop. Anything thrown here that the engine
 * did not catch ends this thread only; the supervisor restarts it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { mapShared, errnoName } from '@tcmu-ts/ring';
import { loadHandler, ScsiError, type DeviceHandler, type HandlerDevice, type ScsiDeviceInfo } from '@tcmu-ts/core';
import { CounterWriter } from './counters.js';
import { DeviceEngine } from './device-engine.js';
import { scsiInfoFromSpec } from './scsi-info.js';
import type { DeviceSpec, SupervisorCommand, WorkerEvent } from './device-spec.js';

interface WorkerInput {
  spec: DeviceSpec;
  counters: SharedArrayBuffer;
  reopen: boolean;
  logCdbs: boolean;
}

const port = parentPort!;
const { spec, counters, reopen, logCdbs } = workerData as WorkerInput;
const post = (e: WorkerEvent) => port.postMessage(e);
const log = {
  scsi: (msg: string) => post({ type: 'log', level: 'scsi', msg }),
  debug: (msg: string) => post({ type: 'log', level: 'debug', msg }),
  info: (msg: string) => post({ type: 'log', level: 'info', msg }),
  warn: (msg: string) => post({ type: 'log', level: 'warn', msg }),
  error: (msg: string) => post({ type: 'log', level: 'error', msg }),
};

async function main(): Promise<void> {
  const map = mapShared(spec.ring.mapFd, spec.ring.mapSize);
  const handler = await loadHandler(spec.handlerSpec);
  const dev: HandlerDevice = {
    name: spec.name,
    cfgstring: spec.cfgstring,
    blockSize: spec.blockSize,
    numLbas: spec.numLbas,
    maxXferBlocks: spec.maxXferBlocks,
    writeCache: spec.writeCache,
    log,
    ring: { mapFd: spec.ring.mapFd, mapSize: spec.ring.mapSize },
  };
  let opened;
  try {
    opened = await handler.open(dev, reopen);
  } catch (e) {
    const code = (e as { code?: string }).code;
    const errno = code ? errnoFromCode(code) : 5;
    post({ type: 'open-failed', reason: e instanceof Error ? e.message : String(e), errno });
    map.unmap();
    return;
  }
  const info = scsiInfoFromSpec(spec, dev.numLbas);
  const engine = new DeviceEngine({
    map: map.buffer,
    eventFd: spec.ring.eventFd,
    handler: opened,
    info,
    counters: new CounterWriter(counters),
    log,
    onRingBroken: (reason) => post({ type: 'ring-broken', reason }),
  });
  engine.logCdbs = logCdbs;
  port.on('message', (m: SupervisorCommand) => {
    switch (m.type) {
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
  post({ type: 'ready', numLbas: dev.numLbas });
  await engine.run();
  await opened.close();
  map.unmap();
  post({ type: 'stopped' });
  port.close();
}

/**
 * A size or write-cache change: the handler may refuse it (then nothing
 * changes); once accepted, initiators learn about it through a unit attention.
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
}

function errnoFromCode(code: string): number {
  for (let n = 1; n < 200; n++) if (errnoName(n) === code) return n;
  return 5; // EIO
}

main().catch((e) => {
  // Rethrown so the thread dies with an 'error' event the supervisor sees.
  setImmediate(() => { throw e; });
});
