/**
 * LIO configfs for TCMU ("user") backstores and tcm_loop exports: the reads
 * and writes. Paths, value checks and text parsing are in control/configfs.ts.
 *
 * Layout (target_core_configfs.c, target_core_user.c, tcm_loop.c):
 *   <root>/sys/kernel/config/target/core/user_<hba>/<dev>/
 *     control   write-only, "key=value" (kernel splits on ',' and '\n'):
 *               dev_config, dev_size, hw_block_size, hw_max_sectors,
 *               nl_reply_supported, max_data_area_mb, data_pages_per_blk,
 *               cmd_ring_size_mb
 *     enable    write 1 to configure: the kernel registers the UIO device,
 *               multicasts ADDED_DEVICE and, with reply support, blocks this
 *               write until the daemon answers
 *     info      "... Config: <cfg> Size: <bytes> MaxDataAreaMB: ..."
 *     attrib/   core attributes (hw_block_size, hw_max_sectors,
 *               emulate_write_cache, ...) plus TCMU's own: cmd_time_out,
 *               qfull_time_out, max_data_area_mb, data_pages_per_blk,
 *               cmd_ring_size_mb, dev_config, dev_size, emulate_write_cache,
 *               tmr_notification, nl_reply_supported. dev_size lives here
 *               (and in info as " Size: "; tcmu-runner reads info).
 *     action/   block_dev (1/0), reset_ring (1: fail in-flight cmds with
 *               BUSY, 2: with CHECK CONDITION), free_kept_buf (cmd id)
 *     alua/     target port groups (default_tg_pt_gp and user-made ones)
 *     wwn/      vpd_unit_serial, ...
 *   <root>/sys/kernel/config/target/loopback/<naa wwn>/tpgt_<n>/
 *     nexus     write an initiator WWN to create the SCSI host, "NULL" to drop it
 *     lun/lun_<m>/<link> -> core/user_<hba>/<dev>
 *   <root>/sys/module/target_core_user/parameters/
 *     block_netlink (0/1), reset_netlink (write 1), global_max_data_area_mb
 *
 * Writes to enable, to attrib/dev_size|dev_config|emulate_write_cache of an
 * enabled device, and rmdir of a device, block in the kernel until the
 * daemon answers the netlink event they cause. Node's fs runs them on the
 * libuv pool, which the netlink socket's poll also uses: do not keep more
 * than UV_THREADPOOL_SIZE - 2 such operations in flight in the daemon's own
 * process (or run them from another process, as targetcli does).
 */
import { open, readFile, readdir, mkdir, rmdir, symlink, unlink, lstat, readlink, constants as fsConstants } from 'node:fs/promises';
import { join, dirname, resolve } from 'node:path';
import {
  type LoopExportSpec, type TcmuDeviceInfo, type UserBackstoreSpec, ConfigfsError, ConfigfsValueError, checkAttributeName,
  checkConfigfsName, checkHba, checkPositiveInt, controlWrite, loopExportPaths, parseConfigfsInt, parseDeviceInfo,
  parseLunTarget, parseUnitSerial, randomNaaWwn, targetDir, tcmuModuleParamDir, userDeviceDir, userHbaDir,
  validateUserBackstoreSpec,
} from '../control/configfs.js';

/** The filesystem calls this module makes; tests substitute a kernel stand-in. */
export interface ConfigfsIo {
  /** Read a whole attribute. */
  readFile(path: string): Promise<string>;
  /** One write() of `data` to an existing attribute (no create, no truncate semantics relied on). */
  writeFile(path: string, data: string): Promise<void>;
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  symlink(target: string, path: string): Promise<void>;
  unlink(path: string): Promise<void>;
  readdir(path: string): Promise<string[]>;
  readlink(path: string): Promise<string>;
  /** 'dir' | 'file' | 'link', or null when nothing is there. */
  kind(path: string): Promise<'dir' | 'file' | 'link' | null>;
}

export const nodeConfigfsIo: ConfigfsIo = {
  readFile: (p) => readFile(p, 'utf8'),
  async writeFile(p, data) {
    const buf = Buffer.from(data, 'utf8');
    const fh = await open(p, fsConstants.O_WRONLY);
    try {
      const { bytesWritten } = await fh.write(buf, 0, buf.length, null);
      if (bytesWritten !== buf.length) {
        throw Object.assign(new Error(`short write to ${p}: ${bytesWritten} of ${buf.length} bytes`), { code: 'EIO' });
      }
    } finally {
      await fh.close();
    }
  },
  mkdir: (p) => mkdir(p).then(() => undefined),
  rmdir: (p) => rmdir(p),
  symlink: (t, p) => symlink(t, p),
  unlink: (p) => unlink(p),
  readdir: (p) => readdir(p),
  readlink: (p) => readlink(p),
  async kind(p) {
    try {
      const st = await lstat(p);
      return st.isSymbolicLink() ? 'link' : st.isDirectory() ? 'dir' : 'file';
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  },
};

export interface ConfigfsOptions {
  /** Filesystem root, '/' by default. */
  root?: string;
  io?: ConfigfsIo;
}

async function wrap<T>(op: string, path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ConfigfsError || e instanceof ConfigfsValueError) throw e;
    throw new ConfigfsError(op, path, e);
  }
}

/** Attributes of a TCMU device; optional ones are absent on older kernels. */
export interface TcmuDeviceAttributes {
  hwBlockSize: number;
  hwMaxSectors: number;
  /** Bytes; from attrib/dev_size, or info " Size: " on kernels without it. */
  devSize: number;
  emulateWriteCache: boolean;
  /** Seconds; 0 disables the kernel's command timer. */
  cmdTimeOut: number;
  /** Seconds; -1: fail at once when the ring is full; 0: wait forever. */
  qfullTimeOut: number;
  maxDataAreaMb: number;
  dataPagesPerBlk?: number;
  cmdRingSizeMb?: number;
  /** >0: the kernel waits for DONE replies for this device; <0: never. */
  nlReplySupported: number;
  devConfig?: string;
  tmrNotification?: boolean;
}

/** One ALUA target port group, as far as its attributes exist. */
export interface AluaGroup {
  name: string;
  tgPtGpId?: number;
  accessState?: number;
  accessType?: string;
  preferred?: number;
  members?: string[];
}

/** A TCMU backstore device in configfs. */
export class TcmuConfigfsDevice {
  readonly root: string;
  readonly io: ConfigfsIo;
  readonly path: string;

  constructor(readonly hba: number, readonly name: string, opts: ConfigfsOptions = {}) {
    checkHba(hba);
    checkConfigfsName('device name', name);
    this.root = resolve(opts.root ?? '/');
    this.io = opts.io ?? nodeConfigfsIo;
    this.path = userDeviceDir(hba, name, this.root);
  }

  /** The device a parsed UIO name refers to. */
  static fromUio(name: { hba: number; devName: string }, opts: ConfigfsOptions = {}): TcmuConfigfsDevice {
    return new TcmuConfigfsDevice(name.hba, name.devName, opts);
  }

  async exists(): Promise<boolean> {
    return (await this.io.kind(this.path)) === 'dir';
  }

  async readAttribute(name: string): Promise<string> {
    const p = join(this.path, 'attrib', name);
    const s = await wrap('read', p, () => this.io.readFile(p));
    return s.endsWith('\n') ? s.slice(0, -1) : s;
  }

  async readIntAttribute(name: string): Promise<number> {
    const p = join(this.path, 'attrib', name);
    return parseConfigfsInt(await this.readAttribute(name), p);
  }

  private async optionalInt(name: string): Promise<number | undefined> {
    try {
      return await this.readIntAttribute(name);
    } catch (e) {
      if (e instanceof ConfigfsError && e.code === 'ENOENT') return undefined;
      throw e;
    }
  }

  async readInfo(): Promise<TcmuDeviceInfo> {
    const p = join(this.path, 'info');
    return parseDeviceInfo(await wrap('read', p, () => this.io.readFile(p)));
  }

  /** The device size in bytes: attrib/dev_size, else info's " Size: " (what tcmu-runner reads). */
  async readDevSize(): Promise<number> {
    const v = await this.optionalInt('dev_size');
    if (v !== undefined) return v;
    const info = await this.readInfo();
    if (info.size === undefined) throw new ConfigfsError('parse', join(this.path, 'info'), new Error('no " Size: " in info'));
    return info.size;
  }

  async readAttributes(): Promise<TcmuDeviceAttributes> {
    const a: TcmuDeviceAttributes = {
      hwBlockSize: await this.readIntAttribute('hw_block_size'),
      hwMaxSectors: await this.readIntAttribute('hw_max_sectors'),
      devSize: await this.readDevSize(),
      emulateWriteCache: (await this.readIntAttribute('emulate_write_cache')) !== 0,
      cmdTimeOut: await this.readIntAttribute('cmd_time_out'),
      qfullTimeOut: await this.readIntAttribute('qfull_time_out'),
      maxDataAreaMb: await this.readIntAttribute('max_data_area_mb'),
      nlReplySupported: await this.readIntAttribute('nl_reply_supported'),
    };
    const dpb = await this.optionalInt('data_pages_per_blk');
    if (dpb !== undefined) a.dataPagesPerBlk = dpb;
    const ring = await this.optionalInt('cmd_ring_size_mb');
    if (ring !== undefined) a.cmdRingSizeMb = ring;
    const tmr = await this.optionalInt('tmr_notification');
    if (tmr !== undefined) a.tmrNotification = tmr !== 0;
    try {
      a.devConfig = await this.readAttribute('dev_config');
    } catch (e) {
      if (!(e instanceof ConfigfsError && e.code === 'ENOENT')) throw e;
    }
    return a;
  }

  async readUnitSerial(): Promise<string | undefined> {
    const p = join(this.path, 'wwn', 'vpd_unit_serial');
    try {
      return parseUnitSerial(await wrap('read', p, () => this.io.readFile(p)));
    } catch (e) {
      if (e instanceof ConfigfsError && e.code === 'ENOENT') return undefined;
      throw e;
    }
  }

  /** Names of the ALUA target port groups (directories under alua/). */
  async listAluaGroups(): Promise<string[]> {
    const p = join(this.path, 'alua');
    let names: string[];
    try {
      names = await wrap('readdir', p, () => this.io.readdir(p));
    } catch (e) {
      if (e instanceof ConfigfsError && e.code === 'ENOENT') return [];
      throw e;
    }
    const out: string[] = [];
    for (const n of names.sort()) if ((await this.io.kind(join(p, n))) === 'dir') out.push(n);
    return out;
  }

  async readAluaGroup(name: string): Promise<AluaGroup> {
    checkConfigfsName('ALUA group', name);
    const dir = join(this.path, 'alua', name);
    if ((await this.io.kind(dir)) !== 'dir') throw new ConfigfsError('read', dir, Object.assign(new Error('no such group'), { code: 'ENOENT' }));
    const g: AluaGroup = { name };
    const read = async (f: string): Promise<string | undefined> => {
      const p = join(dir, f);
      try {
        return await this.io.readFile(p);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw new ConfigfsError('read', p, e);
      }
    };
    const int = (s: string | undefined): number | undefined => (s !== undefined && /^\s*-?\d+\s*$/.test(s) ? Number(s.trim()) : undefined);
    const id = int(await read('tg_pt_gp_id'));
    if (id !== undefined) g.tgPtGpId = id;
    const st = int(await read('alua_access_state'));
    if (st !== undefined) g.accessState = st;
    const type = await read('alua_access_type');
    if (type !== undefined) g.accessType = type.trim();
    const pref = int(await read('preferred'));
    if (pref !== undefined) g.preferred = pref;
    const members = await read('members');
    if (members !== undefined) g.members = members.split('\n').map((s) => s.trim()).filter(Boolean);
    return g;
  }

  private async action(name: string, value: string): Promise<void> {
    const p = join(this.path, 'action', name);
    await wrap('write', p, () => this.io.writeFile(p, value));
  }

  /**
   * Block (true) or unblock the device's command queueing. Returns false,
   * as tcmu-runner treats it, when the kernel has no action/block_dev.
   */
  async blockDevice(block: boolean): Promise<boolean> {
    try {
      await this.action('block_dev', block ? '1' : '0');
      return true;
    } catch (e) {
      if (e instanceof ConfigfsError && e.code === 'ENOENT') return false;
      throw e;
    }
  }

  /** Reset the ring: 1 fails in-flight commands with BUSY (retryable), 2 with CHECK CONDITION. */
  async resetRing(level: 1 | 2 = 1): Promise<void> {
    if (level !== 1 && level !== 2) throw new ConfigfsValueError(`reset_ring level must be 1 or 2, got ${level}`);
    await this.action('reset_ring', String(level));
  }

  /** Release a command's data area kept with KEEP_BUF. */
  async freeKeptBuf(cmdId: number): Promise<void> {
    checkPositiveInt('cmd id', cmdId, 0xffff);
    await this.action('free_kept_buf', String(cmdId));
  }

  /** Write one `key=value` to control. */
  async control(key: string, value: string | number | bigint): Promise<void> {
    const line = controlWrite(key, value);
    const p = join(this.path, 'control');
    await wrap('write', p, () => this.io.writeFile(p, line));
  }

  async writeAttribute(name: string, value: string | number | bigint): Promise<void> {
    checkAttributeName(name);
    const p = join(this.path, 'attrib', name);
    await wrap('write', p, () => this.io.writeFile(p, String(value)));
  }

  async isEnabled(): Promise<boolean> {
    const p = join(this.path, 'enable');
    const s = await wrap('read', p, () => this.io.readFile(p));
    return s.trim() === '1';
  }
}

/**
 * Create and enable a user backstore: mkdir user_<hba> (if missing) and the
 * device, write dev_config, dev_size, hw_block_size and the optional control
 * keys one per write, the optional attributes, then enable=1. If anything
 * fails after the device directory was made, the directory is removed again
 * (and the hba directory, if this call made it).
 */
export async function createUserBackstore(spec: UserBackstoreSpec, opts: ConfigfsOptions = {}): Promise<TcmuConfigfsDevice> {
  validateUserBackstoreSpec(spec);
  const io = opts.io ?? nodeConfigfsIo;
  const root = resolve(opts.root ?? '/');
  const hbaDir = userHbaDir(spec.hba, root);
  const dev = new TcmuConfigfsDevice(spec.hba, spec.name, { root, io });
  let madeHba = false;
  if ((await io.kind(hbaDir)) !== 'dir') {
    await wrap('mkdir', hbaDir, () => io.mkdir(hbaDir));
    madeHba = true;
  }
  try {
    await wrap('mkdir', dev.path, () => io.mkdir(dev.path));
  } catch (e) {
    if (madeHba) await io.rmdir(hbaDir).catch(() => undefined);
    throw e;
  }
  try {
    await dev.control('dev_config', spec.devConfig);
    await dev.control('dev_size', BigInt(spec.devSize));
    await dev.control('hw_block_size', spec.hwBlockSize ?? 512);
    if (spec.hwMaxSectors !== undefined) await dev.control('hw_max_sectors', spec.hwMaxSectors);
    if (spec.maxDataAreaMb !== undefined) await dev.control('max_data_area_mb', spec.maxDataAreaMb);
    if (spec.dataPagesPerBlk !== undefined) await dev.control('data_pages_per_blk', spec.dataPagesPerBlk);
    if (spec.cmdRingSizeMb !== undefined) await dev.control('cmd_ring_size_mb', spec.cmdRingSizeMb);
    if (spec.nlReplySupported !== undefined) await dev.control('nl_reply_supported', spec.nlReplySupported);
    if (spec.cmdTimeOut !== undefined) await dev.writeAttribute('cmd_time_out', spec.cmdTimeOut);
    if (spec.qfullTimeOut !== undefined) await dev.writeAttribute('qfull_time_out', spec.qfullTimeOut);
    if (spec.unitSerial !== undefined) {
      const p = join(dev.path, 'wwn', 'vpd_unit_serial');
      await wrap('write', p, () => io.writeFile(p, spec.unitSerial!));
    }
    const en = join(dev.path, 'enable');
    await wrap('write', en, () => io.writeFile(en, '1'));
  } catch (e) {
    await io.rmdir(dev.path).catch(() => undefined);
    if (madeHba) await io.rmdir(hbaDir).catch(() => undefined);
    throw e;
  }
  return dev;
}

/**
 * Remove a user backstore (the kernel multicasts REMOVED_DEVICE and may wait
 * for the daemon's DONE). Its LUN links must be gone first. With
 * removeHbaIfEmpty the user_<hba> directory goes too when no device is left.
 * A device that does not exist is not an error.
 */
export async function deleteUserBackstore(hba: number, name: string, opts: ConfigfsOptions & { removeHbaIfEmpty?: boolean } = {}): Promise<void> {
  const dev = new TcmuConfigfsDevice(hba, name, opts);
  const io = dev.io;
  if ((await io.kind(dev.path)) === 'dir') await wrap('rmdir', dev.path, () => io.rmdir(dev.path));
  if (opts.removeHbaIfEmpty) {
    const hbaDir = userHbaDir(hba, dev.root);
    if ((await io.kind(hbaDir)) !== 'dir') return;
    const left = await wrap('readdir', hbaDir, () => io.readdir(hbaDir));
    const subdirs: string[] = [];
    for (const n of left) if ((await io.kind(join(hbaDir, n))) === 'dir') subdirs.push(n);
    if (subdirs.length === 0) await wrap('rmdir', hbaDir, () => io.rmdir(hbaDir));
  }
}

export interface LoopExport {
  wwn: string;
  tpgt: number;
  lun: number;
  initiatorWwn: string;
  tpgDir: string;
  lunDir: string;
  linkPath: string;
}

/**
 * Export a device through tcm_loop (a local SCSI host): mkdir the WWN and
 * TPG, write the nexus, mkdir lun_<m> and link it to the device. The link
 * makes the kernel scan the LUN, which sends commands to the daemon.
 */
export async function createLoopExport(dev: TcmuConfigfsDevice, spec: LoopExportSpec, opts: ConfigfsOptions = {}): Promise<LoopExport> {
  const root = resolve(opts.root ?? dev.root);
  const io = opts.io ?? dev.io;
  const p = loopExportPaths(spec, root);
  const initiatorWwn = spec.initiatorWwn ?? (p.wwn.startsWith('naa.') ? randomNaaWwn() : p.wwn);
  if (/[\s,]/.test(initiatorWwn) || initiatorWwn === 'NULL' || initiatorWwn.split('.')[0] !== p.wwn.split('.')[0]) {
    throw new ConfigfsValueError(`initiator WWN ${JSON.stringify(initiatorWwn)} must use the target's protocol prefix`);
  }
  const linkName = spec.linkName ?? `tcmu_${dev.hba}_${dev.name}`;
  checkConfigfsName('LUN link name', linkName);
  const linkPath = join(p.lunDir, linkName);
  const loopback = join(targetDir(root), 'loopback');
  for (const d of [loopback, dirname(p.tpgDir), p.tpgDir]) {
    if ((await io.kind(d)) !== 'dir') await wrap('mkdir', d, () => io.mkdir(d));
  }
  const nexus = join(p.tpgDir, 'nexus');
  await wrap('write', nexus, () => io.writeFile(nexus, initiatorWwn));
  await wrap('mkdir', p.lunDir, () => io.mkdir(p.lunDir));
  // configfs resolves the target with kern_path() from the caller's cwd, not
  // from the link's directory: it must be absolute (rtslib does the same).
  await wrap('symlink', linkPath, () => io.symlink(dev.path, linkPath));
  return { wwn: p.wwn, tpgt: p.tpgt, lun: p.lun, initiatorWwn, tpgDir: p.tpgDir, lunDir: p.lunDir, linkPath };
}

/**
 * Tear a tcm_loop export down in the order that keeps LIO consistent:
 * unlink every LUN link of the TPG and rmdir the LUN directories first, then
 * write NULL to nexus (dropping the SCSI host), then rmdir the TPG and the
 * WWN. (Deleting the sd device through sysfs first, or dropping the nexus
 * while LUNs are linked, leaks the TPG port count.) Missing pieces are skipped.
 */
export async function deleteLoopExport(spec: Pick<LoopExportSpec, 'wwn' | 'tpgt'>, opts: ConfigfsOptions = {}): Promise<void> {
  const root = opts.root ?? '/';
  const io = opts.io ?? nodeConfigfsIo;
  const p = loopExportPaths({ wwn: spec.wwn, tpgt: spec.tpgt }, root);
  if ((await io.kind(p.tpgDir)) === 'dir') {
    const lunRoot = join(p.tpgDir, 'lun');
    const luns = (await io.kind(lunRoot)) === 'dir' ? await wrap('readdir', lunRoot, () => io.readdir(lunRoot)) : [];
    for (const l of luns.filter((n) => /^lun_\d+$/.test(n)).sort()) {
      const lunDir = join(lunRoot, l);
      for (const entry of await wrap('readdir', lunDir, () => io.readdir(lunDir))) {
        const e = join(lunDir, entry);
        if ((await io.kind(e)) === 'link') await wrap('unlink', e, () => io.unlink(e));
      }
      await wrap('rmdir', lunDir, () => io.rmdir(lunDir));
    }
    const nexus = join(p.tpgDir, 'nexus');
    if ((await io.kind(nexus)) === 'file') {
      const cur = (await wrap('read', nexus, () => io.readFile(nexus))).trim();
      if (cur !== '' && cur !== 'NULL') await wrap('write', nexus, () => io.writeFile(nexus, 'NULL'));
    }
    await wrap('rmdir', p.tpgDir, () => io.rmdir(p.tpgDir));
  }
  if ((await io.kind(p.wwnDir)) === 'dir') {
    const rest = await wrap('readdir', p.wwnDir, () => io.readdir(p.wwnDir));
    const tpgs: string[] = [];
    for (const n of rest) if (/^tpgt_\d+$/.test(n) && (await io.kind(join(p.wwnDir, n))) === 'dir') tpgs.push(n);
    if (tpgs.length === 0) await wrap('rmdir', p.wwnDir, () => io.rmdir(p.wwnDir));
  }
}

/** Where a LUN link points, as `{ hba, name }`, or null if it is not a user backstore. */
export async function readLunTarget(linkPath: string, opts: ConfigfsOptions = {}): Promise<{ hba: number; name: string } | null> {
  const io = opts.io ?? nodeConfigfsIo;
  return parseLunTarget(await wrap('readlink', linkPath, () => io.readlink(linkPath)));
}

// ---------------------------------------------------------------- module parameters

async function writeModuleParam(name: string, value: string, opts: ConfigfsOptions): Promise<boolean> {
  const io = opts.io ?? nodeConfigfsIo;
  const p = join(tcmuModuleParamDir(opts.root ?? '/'), name);
  try {
    await wrap('write', p, () => io.writeFile(p, value));
    return true;
  } catch (e) {
    if (e instanceof ConfigfsError && e.code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * Block (or unblock) new netlink commands from target_core_user, as
 * tcmu-runner does around a restart. Returns false when the kernel has no
 * such parameter (pre-4.18).
 */
export function setNetlinkBlocked(blocked: boolean, opts: ConfigfsOptions = {}): Promise<boolean> {
  return writeModuleParam('block_netlink', blocked ? '1' : '0', opts);
}

/** Fail netlink commands a previous daemon left unanswered (needs block_netlink=1 first). */
export function resetNetlink(opts: ConfigfsOptions = {}): Promise<boolean> {
  return writeModuleParam('reset_netlink', '1', opts);
}

export async function readModuleParam(name: string, opts: ConfigfsOptions = {}): Promise<string | undefined> {
  const io = opts.io ?? nodeConfigfsIo;
  const p = join(tcmuModuleParamDir(opts.root ?? '/'), name);
  try {
    return (await wrap('read', p, () => io.readFile(p))).trim();
  } catch (e) {
    if (e instanceof ConfigfsError && e.code === 'ENOENT') return undefined;
    throw e;
  }
}
