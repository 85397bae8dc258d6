/**
 * LIO configfs for TCMU ("user") backstores and tcm_loop exports, the parts
 * that do no I/O: where things are, what may be written there, and how the
 * kernel's text reads. host/configfs.ts reads and writes them (its comment
 * has the layout).
 */
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

/** A configfs/sysfs operation failed; `code` is the errno name when the kernel refused. */
export class ConfigfsError extends Error {
  readonly code: string | undefined;
  constructor(readonly op: string, readonly path: string, cause: unknown) {
    const code = (cause as NodeJS.ErrnoException | undefined)?.code;
    super(`${op} ${path}: ${code ?? (cause as Error)?.message ?? String(cause)}`, { cause });
    this.name = 'ConfigfsError';
    this.code = code;
  }
}

/** A value that cannot be written as asked (bad characters, out of range). */
export class ConfigfsValueError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigfsValueError';
  }
}

export function targetDir(root = '/'): string {
  return join(root, 'sys', 'kernel', 'config', 'target');
}
export function userHbaDir(hba: number, root = '/'): string {
  return join(targetDir(root), 'core', `user_${hba}`);
}
export function userDeviceDir(hba: number, dev: string, root = '/'): string {
  return join(userHbaDir(hba, root), dev);
}
export function tcmuModuleParamDir(root = '/'): string {
  return join(root, 'sys', 'module', 'target_core_user', 'parameters');
}

/** An attribute's text as an integer; a ConfigfsError('parse') when it is not one. */
export function parseConfigfsInt(text: string, path: string): number {
  const t = text.trim();
  if (!/^-?\d+$/.test(t)) throw new ConfigfsError('parse', path, new Error(`not an integer: ${JSON.stringify(text)}`));
  const n = Number(t);
  if (!Number.isSafeInteger(n)) throw new ConfigfsError('parse', path, new Error(`integer out of range: ${t}`));
  return n;
}

/** Names that become configfs directory or link names. */
export function checkConfigfsName(what: string, s: string): void {
  if (!/^[A-Za-z0-9_.:-]+$/.test(s) || s === '.' || s === '..') {
    throw new ConfigfsValueError(`${what} ${JSON.stringify(s)} must be made of letters, digits and _ . : -`);
  }
}
export function checkHba(hba: number): void {
  if (!Number.isInteger(hba) || hba < 0 || hba > 0xffffffff) throw new ConfigfsValueError(`hba ${hba} is not a u32`);
}
export function checkPositiveInt(what: string, v: number, max = 0x7fffffff): void {
  if (!Number.isInteger(v) || v <= 0 || v > max) throw new ConfigfsValueError(`${what} must be an integer in 1..${max}, got ${v}`);
}

/** wwn/vpd_unit_serial text ("T10 VPD Unit Serial Number: <serial>\n") to the serial. */
export function parseUnitSerial(text: string): string {
  const m = /Serial Number: (.*)/.exec(text);
  return m ? m[1].trim() : text.trim();
}

/** The text of one write to a device's control file, `key=value`, after checking both. */
export function controlWrite(key: string, value: string | number | bigint): string {
  const v = String(value);
  if (!/^[a-z_]+$/.test(key)) throw new ConfigfsValueError(`control key ${JSON.stringify(key)} is not valid`);
  if (/[,\n\0]/.test(v)) throw new ConfigfsValueError(`control value for ${key} may not contain ',', newline or NUL: ${JSON.stringify(v)}`);
  return `${key}=${v}`;
}

/** A device attribute name (attrib/<name>) that can be written. */
export function checkAttributeName(name: string): void {
  if (!/^[a-z_]+$/.test(name)) throw new ConfigfsValueError(`attribute ${JSON.stringify(name)} is not valid`);
}

/** Where a LUN link points (its readlink text), as `{ hba, name }`, or null if it is not a user backstore. */
export function parseLunTarget(target: string): { hba: number; name: string } | null {
  const m = /(?:^|\/)core\/user_(\d+)\/([^/]+)\/?$/.exec(target);
  return m ? { hba: Number(m[1]), name: m[2] } : null;
}

/** The device `info` file, parsed for the fields TCMU prints. */
export interface TcmuDeviceInfo {
  raw: string;
  status?: string;
  config?: string;
  size?: number;
  maxDataAreaMb?: number;
  dataPagesPerBlk?: number;
  cmdRingSizeMb?: number;
}

export function parseDeviceInfo(raw: string): TcmuDeviceInfo {
  const info: TcmuDeviceInfo = { raw };
  const status = /Status: (\S+)/.exec(raw);
  if (status) info.status = status[1];
  // "Config: %s " (may contain spaces) up to " Size: ", as tcm_show_configfs_dev_params prints it.
  const config = /(?:^|\s)Config: (.*?) Size: /s.exec(raw);
  if (config) info.config = config[1] === 'NULL' ? '' : config[1];
  const num = (key: string): number | undefined => {
    const m = new RegExp(`(?:^|\\s)${key}: (\\d+)`).exec(raw);
    return m ? Number(m[1]) : undefined;
  };
  info.size = num('Size');
  info.maxDataAreaMb = num('MaxDataAreaMB');
  info.dataPagesPerBlk = num('DataPagesPerBlk');
  info.cmdRingSizeMb = num('CmdRingSizeMB');
  for (const k of Object.keys(info) as (keyof TcmuDeviceInfo)[]) if (info[k] === undefined) delete info[k];
  return info;
}

/** What createUserBackstore writes before enabling. */
export interface UserBackstoreSpec {
  hba: number;
  name: string;
  /** `<handler subtype>/<handler config>`: becomes the uio name's tail. At most 255 bytes, no ',' or newline. */
  devConfig: string;
  /** Bytes. */
  devSize: number | bigint;
  hwBlockSize?: number;
  hwMaxSectors?: number;
  maxDataAreaMb?: number;
  dataPagesPerBlk?: number;
  cmdRingSizeMb?: number;
  /** Set to -1 to keep the kernel from waiting for DONE replies for this device. */
  nlReplySupported?: number;
  /** Written to wwn/vpd_unit_serial before enabling, when given. */
  unitSerial?: string;
  /** Written to attrib/cmd_time_out / qfull_time_out before enabling, when given. */
  cmdTimeOut?: number;
  qfullTimeOut?: number;
}

/** TCMU_CONFIG_LEN in target_core_user.c is 256 with the NUL. */
export const TCMU_CONFIG_LEN = 256;

export function validateUserBackstoreSpec(s: UserBackstoreSpec): void {
  checkHba(s.hba);
  checkConfigfsName('device name', s.name);
  const cfgBytes = Buffer.byteLength(s.devConfig);
  if (cfgBytes === 0 || cfgBytes > TCMU_CONFIG_LEN - 1) throw new ConfigfsValueError(`dev_config must be 1..${TCMU_CONFIG_LEN - 1} bytes, has ${cfgBytes}`);
  if (/[,\n\0]/.test(s.devConfig)) throw new ConfigfsValueError(`dev_config may not contain ',', newline or NUL (the kernel splits control writes on them)`);
  if (!/^[^/]+\//.test(s.devConfig) && !/^[^/]+$/.test(s.devConfig)) throw new ConfigfsValueError(`dev_config must start with "<subtype>/"`);
  const size = BigInt(s.devSize);
  if (size <= 0n || size > 0xffffffffffffffffn) throw new ConfigfsValueError(`dev_size must be positive, got ${s.devSize}`);
  if (s.hwBlockSize !== undefined) {
    checkPositiveInt('hw_block_size', s.hwBlockSize);
    if (![512, 1024, 2048, 4096].includes(s.hwBlockSize)) throw new ConfigfsValueError(`hw_block_size must be 512, 1024, 2048 or 4096`);
    if (size % BigInt(s.hwBlockSize) !== 0n) throw new ConfigfsValueError(`dev_size ${size} is not a multiple of hw_block_size ${s.hwBlockSize}`);
  }
  if (s.hwMaxSectors !== undefined) checkPositiveInt('hw_max_sectors', s.hwMaxSectors);
  if (s.maxDataAreaMb !== undefined) checkPositiveInt('max_data_area_mb', s.maxDataAreaMb);
  if (s.dataPagesPerBlk !== undefined) checkPositiveInt('data_pages_per_blk', s.dataPagesPerBlk);
  if (s.cmdRingSizeMb !== undefined) checkPositiveInt('cmd_ring_size_mb', s.cmdRingSizeMb);
  if (s.nlReplySupported !== undefined && (!Number.isInteger(s.nlReplySupported) || s.nlReplySupported < -128 || s.nlReplySupported > 127)) {
    throw new ConfigfsValueError(`nl_reply_supported must fit an s8, got ${s.nlReplySupported}`);
  }
  if (s.cmdTimeOut !== undefined && (!Number.isInteger(s.cmdTimeOut) || s.cmdTimeOut < 0)) throw new ConfigfsValueError(`cmd_time_out must be >= 0`);
  if (s.qfullTimeOut !== undefined && (!Number.isInteger(s.qfullTimeOut) || s.qfullTimeOut < -1)) throw new ConfigfsValueError(`qfull_time_out must be >= -1`);
  if (s.unitSerial !== undefined && !/^[\x21-\x7e]{1,254}$/.test(s.unitSerial)) throw new ConfigfsValueError(`unit serial must be printable ASCII without spaces`);
}

/** A random NAA (IEEE registered, LIO's OUI 0x001405) WWN, as targetcli makes them. */
export function randomNaaWwn(): string {
  return `naa.5001405${randomBytes(5).toString('hex').slice(0, 9)}`;
}

export interface LoopExportSpec {
  /** The tcm_loop target WWN, e.g. naa.5001405xxxxxxxxx. */
  wwn: string;
  tpgt?: number;
  lun?: number;
  /** The initiator port written to nexus (same protocol prefix as wwn); random naa by default. */
  initiatorWwn?: string;
  /** Name of the LUN's symlink; default `tcmu_<hba>_<dev>`. */
  linkName?: string;
}

/** Validate a tcm_loop export's WWN, TPG and LUN, and name its directories under `root`. */
export function loopExportPaths(spec: LoopExportSpec, root: string) {
  const wwn = spec.wwn;
  if (!/^(naa\.[0-9a-fA-F]{16}|iqn\.[\x21-\x7e]+|fc\.[0-9a-fA-F]{16})$/.test(wwn)) throw new ConfigfsValueError(`loopback WWN ${JSON.stringify(wwn)} is not naa.<16 hex>, fc.<16 hex> or iqn.*`);
  const tpgt = spec.tpgt ?? 1;
  const lun = spec.lun ?? 0;
  if (!Number.isInteger(tpgt) || tpgt < 1 || tpgt > 0xffff) throw new ConfigfsValueError(`tpgt must be 1..65535`);
  if (!Number.isInteger(lun) || lun < 0 || lun > 0x3fff) throw new ConfigfsValueError(`lun must be 0..16383`);
  const wwnDir = join(targetDir(root), 'loopback', wwn);
  const tpgDir = join(wwnDir, `tpgt_${tpgt}`);
  const lunDir = join(tpgDir, 'lun', `lun_${lun}`);
  return { wwn, tpgt, lun, wwnDir, tpgDir, lunDir };
}
