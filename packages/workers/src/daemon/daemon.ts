/**
 * The daemon on a real (or stand-in) kernel: adopts the TCMU devices already
 * present, follows netlink ADDED/REMOVED/RECONFIG_DEVICE events and answers
 * each with its *_DONE, and hands every device to the supervisor.
 *
 * Events are handled one at a time, in arrival order: the kernel blocks the
 * configfs writer until it has our answer, and a REMOVED that overtook its
 * ADDED would leave a device behind.
 */
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { constants as osConstants } from 'node:os';
import { extractDaemonOptions, probeConfig, splitCfgstring, type HandlerRegistry, type TcmuEvent } from '@tcmu-ts/core';
import {
  TcmuConfigfsDevice, TcmuNetlink, readUioDevice, scanUioDevices, type ConfigfsIo, type Logger, type UioDevice,
} from '@tcmu-ts/core/host';
import { KernelBackend } from './kernel-backend.js';
import { DeviceOpenError, Supervisor, type Isolation } from '../supervisor.js';
import type { DeviceSpec, RingEndpoint } from '../device-spec.js';
import { AnotherDaemonError, acquireDaemonLock, describeProcess, findOpener, type DaemonLock } from './exclusive.js';

export interface DaemonOptions {
  logger: Logger;
  /** Handlers by subtype, and where a worker thread loads each from. */
  registry: HandlerRegistry;
  handlerSources: ReadonlyMap<string, string>;
  /** Filesystem root for sysfs and configfs (tests use a stand-in tree). */
  root?: string;
  configfsIo?: ConfigfsIo;
  /** How to reach the kernel's TCM-USER netlink family; the real socket by default. */
  openNetlink?: () => Promise<TcmuNetlink>;
  /** How to open a UIO device; /dev/uioN by default. */
  openUio?: (uio: UioDevice) => RingEndpoint & { close?(): void };
  supervisor?: Supervisor;
  /** The lock only one TCMU daemon holds: tcmu-runner's /run/tcmu.lock (under root) by default. */
  lockFile?: string;
  /** Where the Supervisor runs device workers (SupervisorOptions.isolation); unused with `supervisor`. */
  isolation?: Isolation;
}

type UioEndpoint = RingEndpoint & { close?(): void };

interface Served {
  uio: UioDevice;
  name: string;
  backend: KernelBackend;
}

const errno = osConstants.errno;

export class Daemon {
  readonly supervisor: Supervisor;
  private readonly served = new Map<number, Served>(); // by minor
  private netlink?: TcmuNetlink;
  private lock?: DaemonLock;
  /** UIO devices opened before netlink (to find another daemon first), handed to adopt(). */
  private readonly preopened = new Map<number, UioEndpoint>();
  private queue: Promise<void> = Promise.resolve();
  private stopping = false;
  netlinkEvents = 0;
  /** Told of every netlink event (metrics count them by kind). */
  onNetlinkEvent?: (kind: TcmuEvent['kind']) => void;

  constructor(private readonly o: DaemonOptions) {
    this.supervisor = o.supervisor ?? new Supervisor({
      log: (level, dev, msg) => {
        const l = o.logger.forDevice(dev);
        if (level === 'scsi') l.debugScsiCmd(msg);
        else l[level](msg);
      },
      logCdbs: o.logger.level >= 5,
      ...(o.isolation ? { isolation: o.isolation } : {}),
    });
  }

  get devices(): ReadonlyMap<number, Served> {
    return this.served;
  }

  get lockFile(): string {
    return this.o.lockFile ?? join(this.o.root ?? '/', 'run', 'tcmu.lock');
  }

  /**
   * Make sure no other TCMU daemon serves this kernel, before touching
   * anything: take the lock, then open every UIO device we would serve
   * (EBUSY: another process serves it). Throws AnotherDaemonError.
   */
  private async exclusive(): Promise<void> {
    this.lock = acquireDaemonLock(this.lockFile);
    const { devices } = await scanUioDevices({ root: this.o.root });
    const busy: string[] = [];
    let pid: number | undefined;
    for (const uio of devices) {
      if (!this.o.registry.get(uio.name.subtype) || !this.o.handlerSources.has(uio.name.subtype)) continue;
      try {
        this.preopened.set(uio.minor, (this.o.openUio ?? KernelBackend.openUio)(uio));
      } catch (e) {
        if ((e as { errno?: number }).errno !== errno.EBUSY) continue; // adopt() says what is wrong with it
        pid ??= findOpener(uio.devPath);
        busy.push(`${uio.uio} (${uio.name.devName})`);
      }
    }
    if (busy.length === 0) return;
    const who = pid === undefined ? 'another process' : `${describeProcess(pid)} (pid ${pid})`;
    throw new AnotherDaemonError(`${busy.join(', ')} ${busy.length === 1 ? 'is' : 'are'} open in ${who}: another TCMU daemon serves this kernel`, pid);
  }

  private releaseExclusive(): void {
    for (const ep of this.preopened.values()) ep.close?.();
    this.preopened.clear();
    this.lock?.release();
    this.lock = undefined;
  }

  /**
   * Make sure we are the only TCMU daemon, open netlink (so no event is
   * missed), then adopt what the kernel already has.
   */
  async start(): Promise<void> {
    const log = this.o.logger;
    try {
      await this.exclusive();
      this.netlink = await (this.o.openNetlink ?? (() => TcmuNetlink.open()))();
    } catch (e) {
      this.releaseExclusive();
      throw e;
    }
    this.netlink.listen({
      onEvent: (ev) => this.enqueue(() => this.onEvent(ev)),
      onError: (e) => log.error(`netlink: ${e.message}`),
      onOverrun: () => this.enqueue(() => this.rescan()),
    });
    log.info(`netlink: TCM-USER family ${this.netlink.family.id}, ${this.netlink.kernCmdReply ? 'the kernel waits for our replies' : 'no reply support'}`);
    await this.enqueue(() => this.rescan(true));
    for (const ep of this.preopened.values()) ep.close?.(); // devices gone since
    this.preopened.clear();
  }

  /** SIGTERM: answer what is in flight, close handlers, leave the devices for the next daemon. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.queue;
    for (const minor of [...this.served.keys()]) await this.release(minor);
    await this.netlink?.close();
    this.releaseExclusive();
  }

  private enqueue(job: () => Promise<void>): Promise<void> {
    const run = this.queue.then(job, job).catch((e) => this.o.logger.error(`event handling failed: ${e instanceof Error ? e.stack : String(e)}`));
    this.queue = run;
    return run;
  }

  /** Adopt every TCMU UIO device not yet served (at start, and after a netlink overrun). */
  private async rescan(atStart = false): Promise<void> {
    const { devices, errors } = await scanUioDevices({ root: this.o.root });
    for (const e of errors) this.o.logger.warn(`uio scan: ${e.uio}: ${e.error.message}`);
    for (const uio of devices) {
      if (this.served.has(uio.minor)) continue;
      await this.adopt(uio, atStart).catch((e) => this.o.logger.forDevice(uio.name.devName).error(`${uio.uio}: ${e instanceof Error ? e.message : String(e)}`));
    }
  }

  private async onEvent(ev: TcmuEvent): Promise<void> {
    this.netlinkEvents++;
    this.onNetlinkEvent?.(ev.kind);
    const nl = this.netlink!;
    let status = 0;
    try {
      switch (ev.kind) {
        case 'added': {
          if (this.stopping) {
            status = -108; // ESHUTDOWN: we are going away
            break;
          }
          const uio = await readUioDevice(ev.minor, { root: this.o.root });
          status = await this.adopt(uio, false);
          break;
        }
        case 'removed':
          await this.release(ev.minor);
          break;
        case 'reconfig':
          status = await this.reconfigure(ev);
          break;
      }
    } catch (e) {
      this.o.logger.error(`netlink ${ev.kind} of ${ev.device}: ${e instanceof Error ? e.message : String(e)}`);
      status = -(((e as { errno?: number }).errno) ?? errno.EIO);
    }
    await nl.reply(ev, status);
  }

  /**
   * Serve one UIO device. Returns 0 or -errno (the ADDED_DEVICE_DONE status).
   * At start the device may have commands from a previous daemon on its ring:
   * block it, reset the ring (the kernel fails those, initiators retry), serve, unblock.
   */
  private async adopt(uio: UioDevice, recover: boolean): Promise<number> {
    const log = this.o.logger.forDevice(uio.name.devName);
    const subtype = uio.name.subtype;
    const handler = this.o.registry.get(subtype);
    const source = this.o.handlerSources.get(subtype);
    if (!handler || !source) {
      log.error(`${uio.uio}: no handler for subtype "${subtype}" (have: ${[...this.o.handlerSources.keys()].join(', ') || 'none'}); leaving it alone`);
      return -errno.ENOENT;
    }
    const check = await probeConfig(handler, uio.name.cfgstring);
    if (!check.ok) {
      log.error(`${uio.uio}: bad configuration "${uio.name.cfgstring}": ${check.reason}`);
      return -errno.EINVAL;
    }
    const configfs = TcmuConfigfsDevice.fromUio(uio.name, { root: this.o.root, io: this.o.configfsIo });
    let attrs;
    try {
      attrs = await configfs.readAttributes();
      if (attrs.hwBlockSize <= 0 || attrs.devSize % attrs.hwBlockSize !== 0 || attrs.hwMaxSectors <= 0) {
        throw Object.assign(new Error(`dev_size ${attrs.devSize}, hw_block_size ${attrs.hwBlockSize}, hw_max_sectors ${attrs.hwMaxSectors} do not make a device`), { errno: errno.EINVAL });
      }
    } catch (e) {
      log.error(`${uio.uio}: cannot read its configfs attributes: ${e instanceof Error ? e.message : String(e)}; leaving it alone`);
      const { errno: n, code } = e as { errno?: number; code?: string };
      return -(typeof n === 'number' ? n : (code && (errno as Record<string, number>)[code]) || errno.EINVAL);
    }
    const serial = (await configfs.readUnitSerial().catch(() => undefined)) ?? randomUUID();
    // The kernel defaults attrib/tmr_notification to 0: ABORT TASK and LUN RESET then never reach
    // the ring, and a command the initiator gave up on stays invisible until it completes late.
    // Older kernels have no such attribute (undefined): nothing to turn on there.
    if (attrs.tmrNotification === false) {
      try {
        await configfs.writeAttribute('tmr_notification', 1);
      } catch (e) {
        log.warn(`${uio.uio}: cannot turn on tmr_notification (task management will not reach the ring): ${e instanceof Error ? e.message : String(e)}`);
      }
    }
    let endpoint = this.preopened.get(uio.minor);
    this.preopened.delete(uio.minor);
    try {
      endpoint ??= (this.o.openUio ?? KernelBackend.openUio)(uio);
    } catch (e) {
      const code = (e as { errno?: number }).errno ?? errno.EIO;
      if (code === errno.EBUSY) {
        const pid = findOpener(uio.devPath);
        log.error(`${uio.uio}: ${uio.devPath} is open in ${pid === undefined ? 'another process' : `${describeProcess(pid)} (pid ${pid})`}: another TCMU daemon serves it; leaving it alone`);
      } else {
        log.error(`${uio.uio}: cannot open ${uio.devPath}: ${(e as Error).message}`);
      }
      return -code;
    }
    const backend = new KernelBackend(endpoint, configfs);
    const name = this.uniqueName(uio);
    const spec: DeviceSpec = {
      name,
      subtype,
      cfgstring: uio.name.cfgstring,
      handlerSpec: source,
      blockSize: attrs.hwBlockSize,
      numLbas: Math.floor(attrs.devSize / attrs.hwBlockSize),
      maxXferBlocks: attrs.hwMaxSectors,
      writeCache: attrs.emulateWriteCache,
      kernelCmdTimeOut: attrs.cmdTimeOut,
      serial,
      wwn: serial,
      ring: { mapFd: endpoint.mapFd, eventFd: endpoint.eventFd, mapSize: endpoint.mapSize },
    };
    if (uio.name.daemonOptions.cmdTimeOut !== undefined) log.info(`tcmur_cmd_time_out=${uio.name.daemonOptions.cmdTimeOut} s`);
    try {
      if (recover) {
        await backend.block();
        await backend.resetRing();
      }
      await this.supervisor.addDevice(spec, backend);
    } catch (e) {
      backend.close();
      if (recover) await backend.unblock().catch(() => {});
      const err = e instanceof DeviceOpenError ? e.errno : errno.EIO;
      log.error(`${uio.uio}: ${e instanceof DeviceOpenError ? `handler open failed: ${e.reason}` : e instanceof Error ? e.message : String(e)}`);
      return -err;
    }
    if (recover) await backend.unblock();
    this.served.set(uio.minor, { uio, name, backend });
    log.info(`${uio.uio}: serving ${subtype}/${uio.name.cfgstring}, ${spec.numLbas} blocks of ${spec.blockSize} bytes${recover ? ' (adopted, ring reset)' : ''}`);
    return 0;
  }

  private uniqueName(uio: UioDevice): string {
    const taken = new Set([...this.served.values()].map((s) => s.name));
    return taken.has(uio.name.devName) ? `user_${uio.name.hba}/${uio.name.devName}` : uio.name.devName;
  }

  private async release(minor: number): Promise<void> {
    const s = this.served.get(minor);
    if (!s) return;
    this.served.delete(minor);
    await this.supervisor.removeDevice(s.name);
    s.backend.close();
    this.o.logger.forDevice(s.uio.name.devName).info(`${s.uio.uio}: released`);
  }

  private async reconfigure(ev: TcmuEvent): Promise<number> {
    const s = this.served.get(ev.minor);
    const r = ev.reconfig;
    if (!s) return -errno.ENODEV;
    if (!r) return -errno.EOPNOTSUPP;
    const log = this.o.logger.forDevice(s.uio.name.devName);
    switch (r.what) {
      case 'dev_size': {
        const bs = BigInt(this.supervisor.devices.get(s.name)!.spec.blockSize);
        if (r.devSize % bs !== 0n) return -errno.EINVAL;
        log.info(`dev_size now ${r.devSize} bytes`);
        return -(await this.supervisor.reconfigure(s.name, { numLbas: Number(r.devSize / bs) }));
      }
      case 'write_cache':
        log.info(`write cache ${r.writeCache ? 'on' : 'off'}`);
        return -(await this.supervisor.reconfigure(s.name, { writeCache: r.writeCache }));
      case 'dev_config': {
        // tcmu-runner's daemon options (;tcmur_cmd_time_out=N;) are ours, not the handler's: taken out as
        // at adopt, or the handler would see another inner config and be reopened (a fault device with them
        // could never swap its faults in place). A changed tcmur_cmd_time_out applies from the next start.
        const { cfgstring: devConfig } = extractDaemonOptions(r.devConfig);
        const { subtype, config } = splitCfgstring(devConfig);
        if (subtype !== s.uio.name.subtype) return -errno.EINVAL; // the kernel keeps the subtype in the uio name
        const known = this.o.registry.get(subtype);
        const check = known ? await probeConfig(known, config) : undefined;
        if (!check?.ok) {
          log.error(`new dev_config "${r.devConfig}" refused: ${check ? check.reason : 'no handler'}`);
          return -errno.EINVAL;
        }
        // A handler that can apply the new config in place (fault options) keeps running, data and all.
        const inPlace = await this.supervisor.reconfigure(s.name, { cfgstring: config });
        if (inPlace === 0) {
          log.info(`dev_config now ${r.devConfig}: applied in place`);
          return 0;
        }
        if (inPlace !== errno.EOPNOTSUPP) return -inPlace;
        log.info(`dev_config now ${r.devConfig}: reopening the handler`);
        try {
          await this.supervisor.reopen(s.name, { subtype, cfgstring: config, handlerSpec: this.o.handlerSources.get(subtype) });
        } catch (e) {
          return -(e instanceof DeviceOpenError ? e.errno : errno.EIO);
        }
        return 0;
      }
    }
    return -errno.EOPNOTSUPP;
  }
}
