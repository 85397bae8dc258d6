/**
 * Serve one device ring with a handler on the calling thread: map the ring,
 * open the handler, run a DeviceEngine. The device worker thread does this
 * for the daemon's own devices (openRingDevice below); serveDevice() is the
 * same thing for a process that serves its devices itself, as a libtcmu user
 * does: an external handler registered over DBus
 * (org.kernel.TCMUService1.HandlerManager1.RegisterHandler), whose devices
 * the daemon leaves alone.
 */
import { mapShared, type SharedMap } from '@tcmu-ts/ring';
import type { AluaGroupInfo, DeviceHandler, Handler, HandlerDevice, ScsiDeviceInfo } from '@tcmu-ts/core';
import type { PeerLink } from './executor.js';
import { CounterWriter, createCounterBuffer } from '../counters.js';
import { DeviceEngine, type EngineLog } from './device-engine.js';
import { scsiInfoFromSpec } from './scsi-info.js';
import type { DeviceSpec, RingEndpoint } from '../device-spec.js';

/** What openRingDevice needs besides the spec and the handler. */
export interface RingDeviceHooks {
  counters: CounterWriter;
  log: EngineLog;
  onRingBroken(reason: string): void;
  peers?: PeerLink;
  onAluaChange?(groups: readonly AluaGroupInfo[]): void;
  /** The eventfd the message sender signals (EngineOptions.wakeFd). */
  wakeFd?: number;
}

/** A device whose handler is open and whose engine is built but not yet running. */
export interface RingDevice {
  readonly map: SharedMap;
  readonly dev: HandlerDevice;
  readonly handler: DeviceHandler;
  readonly info: ScsiDeviceInfo;
  readonly engine: DeviceEngine;
}

/** Thrown by openRingDevice when the handler's open() failed (the ring is unmapped again). */
export class HandlerOpenFailed extends Error {
  constructor(override readonly cause: unknown) {
    super(cause instanceof Error ? cause.message : String(cause));
    this.name = 'HandlerOpenFailed';
  }
}

/**
 * Map `spec.ring`, open `handler` on it and build the engine. A failing
 * open() unmaps the ring and throws HandlerOpenFailed with the handler's
 * error as `cause`.
 */
export async function openRingDevice(spec: DeviceSpec, handler: Handler, reopen: boolean, hooks: RingDeviceHooks): Promise<RingDevice> {
  const map = mapShared(spec.ring.mapFd, spec.ring.mapSize);
  let engine: DeviceEngine | undefined;
  const dev: HandlerDevice = {
    ...(spec.cmdTimeOut ? { cmdTimeOut: spec.cmdTimeOut } : {}),
    notifyLockLost: () => engine?.notifyLockLost(),
    name: spec.name,
    cfgstring: spec.cfgstring,
    blockSize: spec.blockSize,
    numLbas: spec.numLbas,
    maxXferBlocks: spec.maxXferBlocks,
    writeCache: spec.writeCache,
    log: hooks.log,
    ring: { mapFd: spec.ring.mapFd, mapSize: spec.ring.mapSize },
  };
  let opened: DeviceHandler;
  try {
    opened = await handler.open(dev, reopen);
  } catch (e) {
    map.unmap();
    throw new HandlerOpenFailed(e);
  }
  const info = scsiInfoFromSpec(spec, dev.numLbas, opened);
  engine = new DeviceEngine({
    map: map.buffer,
    eventFd: spec.ring.eventFd,
    ...(hooks.wakeFd !== undefined ? { wakeFd: hooks.wakeFd } : {}),
    handler: opened,
    info,
    counters: hooks.counters,
    log: hooks.log,
    onRingBroken: hooks.onRingBroken,
    ...(hooks.peers ? { peers: hooks.peers } : {}),
    cmdTimeOutMs: spec.cmdTimeOut ? spec.cmdTimeOut * 1000 : 0,
    kernelCmdTimeOutMs: spec.kernelCmdTimeOut ? spec.kernelCmdTimeOut * 1000 : 0,
    ...(hooks.onAluaChange ? { onAluaChange: hooks.onAluaChange } : {}),
    unsafeNoCawLock: spec.unsafeNoCawLock,
  });
  return { map, dev, handler: opened, info, engine };
}

export interface ServeDeviceOptions {
  /** The device's ring: the /dev/uioN fd (mapFd === eventFd) and its map size, or a simulator's endpoint. */
  ring: RingEndpoint;
  handler: Handler;
  /** The handler's part of the cfgstring, after "<subtype>/". */
  cfgstring: string;
  /** Device name for log messages (e.g. "uio0"). */
  name: string;
  blockSize: number;
  numLbas: number;
  /** Largest transfer in blocks (the kernel's hw_max_sectors). Default 1024. */
  maxXferBlocks?: number;
  /** Volatile write cache shown to initiators. Default true. */
  writeCache?: boolean;
  /** Unit serial number (VPD 0x80). Default: `name`. */
  serial?: string;
  /** NAA designator source (VPD 0x83). Default: the serial. */
  wwn?: string;
  /** tcmur_cmd_time_out in seconds (0/absent: off). */
  cmdTimeOut?: number;
  /** Passed to handler.open(): the device was open before. Default false. */
  reopen?: boolean;
  /** Default: warnings and errors to stderr. */
  log?: Partial<EngineLog>;
  /** Counter block (createCounterBuffer()) to read the engine's counters from. Default: a private one. */
  counters?: SharedArrayBuffer;
  /** The ring cannot be trusted any more: the engine stops (and `done` resolves). Default: log an error. */
  onRingBroken?(reason: string): void;
}

export interface ServedDevice {
  /** Capacity in blocks after open() (a handler may set it). */
  readonly numLbas: number;
  readonly engine: DeviceEngine;
  /** Resolves when the engine has stopped, the handler is closed and the ring unmapped. */
  readonly done: Promise<void>;
  /** Answer what is on the ring now, then close the handler and unmap the ring. */
  stop(): Promise<void>;
}

/**
 * Serve a device ring with `handler` on the calling thread, until stop().
 * What an external handler process (the libtcmu equivalent) calls for each
 * device of its subtype. The engine polls the ring in short slices between
 * turns of the event loop, so the thread stays free for other work (DBus,
 * other devices). Rejects when the handler's open() fails.
 */
export async function serveDevice(opts: ServeDeviceOptions): Promise<ServedDevice> {
  const noop = () => {};
  const log: EngineLog = {
    scsi: opts.log?.scsi ?? noop,
    debug: opts.log?.debug ?? noop,
    info: opts.log?.info ?? noop,
    warn: opts.log?.warn ?? ((m: string) => process.stderr.write(`${opts.name}: warning: ${m}\n`)),
    error: opts.log?.error ?? ((m: string) => process.stderr.write(`${opts.name}: error: ${m}\n`)),
  };
  const maxXferBlocks = opts.maxXferBlocks ?? 1024;
  const serial = opts.serial ?? opts.name;
  const spec: DeviceSpec = {
    name: opts.name,
    subtype: opts.handler.subtype,
    cfgstring: opts.cfgstring,
    handlerSpec: opts.handler.subtype,
    blockSize: opts.blockSize,
    numLbas: opts.numLbas,
    maxXferBlocks,
    writeCache: opts.writeCache ?? true,
    serial,
    wwn: opts.wwn ?? serial,
    ring: { mapFd: opts.ring.mapFd, eventFd: opts.ring.eventFd, mapSize: opts.ring.mapSize },
    ...(opts.cmdTimeOut ? { cmdTimeOut: opts.cmdTimeOut } : {}),
  };
  let d: RingDevice;
  try {
    d = await openRingDevice(spec, opts.handler, opts.reopen ?? false, {
      counters: new CounterWriter(opts.counters ?? createCounterBuffer()),
      log,
      onRingBroken: opts.onRingBroken ?? ((reason) => log.error(`ring broken: ${reason}`)),
    });
  } catch (e) {
    throw e instanceof HandlerOpenFailed ? e.cause : e;
  }
  const { engine, map, handler } = d;
  const done = (async () => {
    try {
      await engine.run();
      await handler.close();
    } finally {
      map.unmap();
    }
  })();
  // Errors surface through `done` and stop(); keep an unobserved failure from killing the process.
  done.catch(noop);
  return {
    numLbas: d.dev.numLbas,
    engine,
    done,
    stop() {
      engine.stop();
      return done;
    },
  };
}
