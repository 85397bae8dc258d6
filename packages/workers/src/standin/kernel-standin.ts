/**
 * A stand-in for the parts of a Linux box with target_core_user loaded that
 * the daemon touches: a sysfs/configfs tree in a temp dir, one kernel
 * simulator per device behind its "UIO" device, and a generic netlink
 * transport that emits TCM-USER events and records our *_DONE replies.
 *
 * The daemon may run in this process (test/daemon.test.ts: `configfsIo`,
 * `openUio`, `openNetlink` are handed to it) or in a child process (the soak,
 * ../soak/): then the child reaches the same kernel through `applyAction()`
 * and `genl.receive()`/`genl.forward`, and a kill -9 of the child leaves the
 * rings, the tree and the simulators here, as the real kernel keeps them.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import {
  TcmuNlCmd, decodeGenlMsg, decodeNlMsgs, decodeTcmuDone, encodeTcmuEvent,
  type GenlFamily, type GenlListener, type GenlTransport, type NlMsg, type TcmuDone, type TcmuReconfig,
} from '@tcmu-ts/core';
import { TcmuNetlink, nodeConfigfsIo, type ConfigfsIo, type UioDevice } from '@tcmu-ts/core/host';
import { KernelSimulator, type SimulatorOptions } from '@tcmu-ts/ring';

export const STANDIN_GENL_FAMILY: GenlFamily = { id: 29, name: 'TCM-USER', version: 2, hdrsize: 0, maxattr: 9, groups: { config: 7 } };

export interface StandInDevice {
  hba: number;
  name: string;
  minor: number;
  subtype: string;
  /** The part of dev_config after "<subtype>/"; a successful dev_config change updates it (and the uio name). */
  cfgstring: string;
  /** attrib/dev_size; a successful dev_size change updates it. */
  sizeBytes: number;
  blockSize: number;
  sim: KernelSimulator;
  actions: string[];
  deviceId: number;
}

/** The kernel's end of the TCM-USER family: events out, *_DONE replies in. */
export class StandInGenl implements GenlTransport {
  readonly portId = 777;
  listener: GenlListener | null = null;
  readonly replies: TcmuDone[] = [];
  /** Where events go when the daemon is in another process; unset: to `listener`, in this process. */
  forward: ((bytes: Uint8Array) => void) | undefined;
  /** SET_FEATURES requests seen (a daemon opening the family). */
  featureRequests = 0;
  private waiters: (() => void)[] = [];

  async request(_what: string, build: (seq: number, portId: number) => Uint8Array): Promise<NlMsg[]> {
    this.receive(build(1, this.portId));
    return [];
  }

  /** A message the daemon sent to the kernel. */
  receive(bytes: Uint8Array): void {
    const [m] = decodeNlMsgs(bytes);
    const g = decodeGenlMsg(m);
    if (g.genl.cmd === TcmuNlCmd.SET_FEATURES) {
      this.featureRequests++;
      return;
    }
    this.replies.push(decodeTcmuDone(m));
    for (const w of this.waiters.splice(0)) w();
  }

  /** A multicast event from the kernel. */
  deliver(bytes: Uint8Array): void {
    if (this.forward) return this.forward(bytes);
    if (!this.listener) throw new Error('no daemon listens on the TCM-USER config group');
    for (const m of decodeNlMsgs(bytes)) this.listener.onMessage(m);
  }

  async resolveFamily(): Promise<GenlFamily> {
    return STANDIN_GENL_FAMILY;
  }
  addMembership(): void {}
  listen(l: GenlListener): void {
    this.listener = l;
  }
  async close(): Promise<void> {}
  nextReply(count: number): Promise<TcmuDone> {
    return new Promise((resolve) => {
      const check = () => (this.replies.length >= count ? resolve(this.replies[count - 1]) : this.waiters.push(check));
      check();
    });
  }
}

export interface StandInDeviceOptions {
  hba?: number;
  name: string;
  subtype: string;
  cfgstring: string;
  sizeBytes?: number;
  blockSize?: number;
  serial?: string;
  openElsewhere?: boolean;
  /** The simulator's ring and timeouts; default a 1 MiB ring, 8 MiB of data area, cmd_time_out 10 s. */
  sim?: Pick<SimulatorOptions, 'cmdRingSizeMb' | 'maxDataAreaMb' | 'cmdTimeOutSec' | 'qfullTimeOutSec'>;
}

const ACTION_PATH = /core\/user_(\d+)\/([^/]+)\/(action\/block_dev|action\/reset_ring|attrib\/tmr_notification)$/;

export class KernelStandIn {
  readonly root = mkdtempSync(join(tmpdir(), 'tcmu-standin-'));
  readonly devices = new Map<number, StandInDevice>();
  readonly genl = new StandInGenl();
  private nextMinor = 0;
  private nextDeviceId = 1;

  constructor() {
    mkdirSync(join(this.root, 'sys/module/target_core_user/parameters'), { recursive: true });
    mkdirSync(join(this.root, 'sys/class/uio'), { recursive: true });
    mkdirSync(join(this.root, 'dev'), { recursive: true });
  }

  /**
   * A write to action/block_dev, action/reset_ring or attrib/tmr_notification
   * reaches the device's simulator, as it would reach the kernel. `path` may be
   * absolute or relative to the root (a daemon in a child process sends it as
   * it wrote it). Returns whether the path was one of those.
   */
  applyAction(path: string, data: string): boolean {
    const m = ACTION_PATH.exec(path.startsWith('/') ? relative(this.root, path) : path);
    const dev = m && [...this.devices.values()].find((d) => d.hba === Number(m[1]) && d.name === m[2]);
    if (!dev) return false;
    const value = data.trim();
    const what = m![3];
    if (what === 'attrib/tmr_notification') {
      dev.sim.setTmrNotification(value === '1');
      return true;
    }
    dev.actions.push(`${what.slice('action/'.length)}=${value}`);
    if (what === 'action/block_dev') (value === '1' ? dev.sim.block() : dev.sim.unblock());
    else dev.sim.resetRing(Number(value) === 2 ? 2 : 1);
    return true;
  }

  /** configfs writes to action/* reach the device's simulator, as they would reach the kernel. */
  readonly configfsIo: ConfigfsIo = {
    ...nodeConfigfsIo,
    writeFile: async (path: string, data: string) => {
      this.applyAction(path, data);
      await nodeConfigfsIo.writeFile(path, data);
    },
  };

  /** Minors whose "/dev/uioN" is open: target_core_user lets one process at a time open it (EBUSY). */
  readonly opened = new Set<number>();

  openUio = (uio: UioDevice) => {
    const d = this.devices.get(uio.minor);
    if (!d) throw Object.assign(new Error(`no device behind ${uio.devPath}`), { errno: 19 });
    if (this.opened.has(uio.minor)) throw Object.assign(new Error(`open(${uio.devPath}) failed: errno 16 (EBUSY)`), { errno: 16 });
    this.opened.add(uio.minor);
    return { ...d.sim.endpoint, close: () => this.released(uio.minor) };
  };

  /** The daemon closed /dev/uioN, or died with it open (tcmu_release): kept buffers go. */
  released(minor: number): void {
    this.opened.delete(minor);
    const d = this.devices.get(minor);
    if (d && !d.sim.isClosed) d.sim.releaseUio();
  }

  /** How many times a daemon opened the netlink family (SET_FEATURES, joined the group). */
  netlinkOpens = 0;

  openNetlink = () => {
    this.netlinkOpens++;
    return TcmuNetlink.attach(this.genl);
  };

  /** Create a device the way `enable=1` does: configfs attributes, then the UIO device. */
  addDevice(o: StandInDeviceOptions): StandInDevice {
    const hba = o.hba ?? 0;
    const minor = this.nextMinor++;
    const bs = o.blockSize ?? 512;
    const size = o.sizeBytes ?? 4 << 20;
    const simOpts = { cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 10, ...o.sim };
    // tmr_notification off, as the kernel creates a device: the daemon has to turn it on.
    const sim = new KernelSimulator({ name: o.name, ...simOpts, tmrNotification: false });
    const dir = this.configfsDir({ hba, name: o.name });
    mkdirSync(join(dir, 'attrib'), { recursive: true });
    mkdirSync(join(dir, 'action'), { recursive: true });
    mkdirSync(join(dir, 'wwn'), { recursive: true });
    const attrs: Record<string, string | number> = {
      hw_block_size: bs, hw_max_sectors: 1024, dev_size: size, emulate_write_cache: 1, cmd_time_out: simOpts.cmdTimeOutSec,
      qfull_time_out: simOpts.qfullTimeOutSec ?? -1, max_data_area_mb: simOpts.maxDataAreaMb, data_pages_per_blk: 1,
      cmd_ring_size_mb: simOpts.cmdRingSizeMb, nl_reply_supported: 0, dev_config: `${o.subtype}/${o.cfgstring}`, tmr_notification: 0,
    };
    for (const [k, v] of Object.entries(attrs)) writeFileSync(join(dir, 'attrib', k), `${v}\n`);
    for (const a of ['block_dev', 'reset_ring', 'free_kept_buf']) writeFileSync(join(dir, 'action', a), '');
    writeFileSync(join(dir, 'wwn/vpd_unit_serial'), `T10 VPD Unit Serial Number: ${o.serial ?? `serial-${o.name}`}\n`);
    const d: StandInDevice = {
      hba, name: o.name, minor, subtype: o.subtype, cfgstring: o.cfgstring, sizeBytes: size, blockSize: bs, sim, actions: [], deviceId: this.nextDeviceId++,
    };
    this.writeInfo(d);
    const uioDir = join(this.root, `sys/class/uio/uio${minor}`);
    mkdirSync(join(uioDir, 'maps/map0'), { recursive: true });
    writeFileSync(join(uioDir, 'maps/map0/size'), `0x${sim.layout.mapSize.toString(16)}\n`);
    this.writeUioName(d);
    writeFileSync(join(this.root, `dev/uio${minor}`), '');
    this.devices.set(minor, d);
    if (o.openElsewhere) this.opened.add(minor);
    return d;
  }

  private configfsDir(d: { hba: number; name: string }): string {
    return join(this.root, `sys/kernel/config/target/core/user_${d.hba}/${d.name}`);
  }

  private uioName(d: StandInDevice): string {
    return `tcm-user/${d.hba}/${d.name}/${d.subtype}/${d.cfgstring}`;
  }

  private writeUioName(d: StandInDevice): void {
    writeFileSync(join(this.root, `sys/class/uio/uio${d.minor}/name`), `${this.uioName(d)}\n`);
  }

  private writeInfo(d: StandInDevice): void {
    const s = d.sim.layout;
    writeFileSync(join(this.configfsDir(d), 'info'), `Status: ACTIVATED  Max Queue Depth: 128  SectorSize: ${d.blockSize}  HwMaxSectors: 1024\n` +
      `        Config: ${d.subtype}/${d.cfgstring} Size: ${d.sizeBytes} MaxDataAreaMB: ${(s.dataSize / (1 << 20)) | 0} DataPagesPerBlk: 1 CmdRingSizeMB: 1\n`);
  }

  private emit(cmd: number, d: StandInDevice, reconfig?: TcmuReconfig): void {
    this.genl.deliver(encodeTcmuEvent({ cmd, device: this.uioName(d), minor: d.minor, deviceId: d.deviceId, reconfig }, { family: STANDIN_GENL_FAMILY.id }));
  }

  /** ADDED_DEVICE for a new device; resolves with the daemon's ADDED_DEVICE_DONE. */
  async added(o: StandInDeviceOptions): Promise<{ dev: StandInDevice; done: TcmuDone }> {
    const dev = this.addDevice(o);
    const n = this.genl.replies.length + 1;
    this.emit(TcmuNlCmd.ADDED_DEVICE, dev);
    return { dev, done: await this.genl.nextReply(n) };
  }

  async removed(dev: StandInDevice): Promise<TcmuDone> {
    const n = this.genl.replies.length + 1;
    this.emit(TcmuNlCmd.REMOVED_DEVICE, dev);
    const done = await this.genl.nextReply(n);
    rmSync(join(this.root, `sys/class/uio/uio${dev.minor}`), { recursive: true, force: true });
    return done;
  }

  /**
   * RECONFIG_DEVICE; resolves with the daemon's RECONFIG_DEVICE_DONE. As the
   * kernel does, a new dev_size or dev_config is kept only when the daemon
   * answered 0 (attrib/dev_size, attrib/dev_config and the uio name then
   * show it, so the next daemon adopts the device as it is now).
   */
  async reconfig(dev: StandInDevice, r: TcmuReconfig): Promise<TcmuDone> {
    const n = this.genl.replies.length + 1;
    this.emit(TcmuNlCmd.RECONFIG_DEVICE, dev, r);
    const done = await this.genl.nextReply(n);
    if (done.status !== 0) return done;
    const attrib = join(this.configfsDir(dev), 'attrib');
    if (r.what === 'dev_size') {
      dev.sizeBytes = Number(r.devSize);
      writeFileSync(join(attrib, 'dev_size'), `${dev.sizeBytes}\n`);
    } else if (r.what === 'dev_config') {
      const slash = r.devConfig.indexOf('/');
      dev.cfgstring = r.devConfig.slice(slash + 1);
      writeFileSync(join(attrib, 'dev_config'), `${r.devConfig}\n`);
      this.writeUioName(dev);
    } else if (r.what === 'write_cache') {
      writeFileSync(join(attrib, 'emulate_write_cache'), `${r.writeCache ? 1 : 0}\n`);
    }
    this.writeInfo(dev);
    return done;
  }

  async close(): Promise<void> {
    for (const d of this.devices.values()) await d.sim.close();
    rmSync(this.root, { recursive: true, force: true });
  }
}
