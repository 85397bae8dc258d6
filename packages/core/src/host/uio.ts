/**
 * Discovery of TCMU devices through sysfs UIO entries: `<root>/sys/class/uio`
 * listed and read. What the names mean is control/uio.ts.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type TcmuUioName, UIO_NAME_PREFIX, UioDeviceError, UioNameError, parseMapSize, parseUioName } from '../control/uio.js';

/** A TCMU UIO device found in sysfs. */
export interface UioDevice {
  /** `uio<N>`. */
  uio: string;
  minor: number;
  /** The character device to open and mmap (under the injected root). */
  devPath: string;
  /** The sysfs directory (under the injected root). */
  sysPath: string;
  name: TcmuUioName;
  /** Size in bytes of map 0 (mailbox + command ring + data area). */
  mapSize: number;
}

export interface UioScanOptions {
  /** Filesystem root, '/' by default; tests point it at a fake tree. */
  root?: string;
}

export interface UioScanResult {
  devices: UioDevice[];
  /** TCMU entries (name starting with "tcm-user") that could not be used, and why. */
  errors: { uio: string; error: UioNameError | UioDeviceError }[];
}

const UIO_DIR_RE = /^uio(\d+)$/;

function uioClassDir(root: string): string {
  return join(root, 'sys', 'class', 'uio');
}

/** Read a sysfs text file, dropping one trailing newline (like tcmu-runner's read_uio_name). */
async function readSysfsText(path: string): Promise<string> {
  const s = await readFile(path, 'utf8');
  return s.endsWith('\n') ? s.slice(0, -1) : s;
}

export async function readUioName(uio: string, opts: UioScanOptions = {}): Promise<string> {
  const path = join(uioClassDir(opts.root ?? '/'), uio, 'name');
  try {
    return await readSysfsText(path);
  } catch (e) {
    throw new UioDeviceError(uio, `cannot read ${path}: ${(e as Error).message}`, e);
  }
}

export async function readUioMapSize(uio: string, opts: UioScanOptions = {}): Promise<number> {
  const path = join(uioClassDir(opts.root ?? '/'), uio, 'maps', 'map0', 'size');
  let text: string;
  try {
    text = await readSysfsText(path);
  } catch (e) {
    throw new UioDeviceError(uio, `cannot read ${path}: ${(e as Error).message}`, e);
  }
  return parseMapSize(text, uio);
}

/** Read one device by its uio entry name (`uio3`) or minor (3). */
export async function readUioDevice(which: string | number, opts: UioScanOptions = {}): Promise<UioDevice> {
  const root = opts.root ?? '/';
  const uio = typeof which === 'number' ? `uio${which}` : which;
  const m = UIO_DIR_RE.exec(uio);
  if (!m) throw new UioDeviceError(uio, 'not a uio<N> name');
  const raw = await readUioName(uio, opts);
  const name = parseUioName(raw);
  const mapSize = await readUioMapSize(uio, opts);
  return {
    uio,
    minor: Number(m[1]),
    devPath: join(root, 'dev', uio),
    sysPath: join(uioClassDir(root), uio),
    name,
    mapSize,
  };
}

/**
 * List TCMU devices under `<root>/sys/class/uio`. Non-TCMU UIO devices are
 * skipped silently; TCMU ones that cannot be used are reported in `errors`.
 * A missing class directory (uio not loaded) gives an empty result.
 * Devices come back sorted by minor.
 */
export async function scanUioDevices(opts: UioScanOptions = {}): Promise<UioScanResult> {
  const dir = uioClassDir(opts.root ?? '/');
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { devices: [], errors: [] };
    throw e;
  }
  const uios = entries
    .map((e) => ({ e, m: UIO_DIR_RE.exec(e) }))
    .filter((x): x is { e: string; m: RegExpExecArray } => x.m !== null)
    .sort((a, b) => Number(a.m[1]) - Number(b.m[1]))
    .map((x) => x.e);
  const result: UioScanResult = { devices: [], errors: [] };
  for (const uio of uios) {
    let raw: string;
    try {
      raw = await readUioName(uio, opts);
    } catch (e) {
      // The entry may have gone away between readdir and now.
      if (e instanceof UioDeviceError && (e.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') continue;
      throw e;
    }
    if (!raw.startsWith(UIO_NAME_PREFIX)) continue;
    try {
      result.devices.push(await readUioDevice(uio, opts));
    } catch (e) {
      if (e instanceof UioNameError || e instanceof UioDeviceError) result.errors.push({ uio, error: e });
      else throw e;
    }
  }
  return result;
}
