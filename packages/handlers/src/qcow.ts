/**
 * qcow backstore: a qcow2 (v2 or v3) or qcow v1 image file, with its
 * backing chain, as tcmu-runner's `qcow` handler serves it; any other file
 * that is not a known image format is served raw, as the `file` handler
 * would. cfgstring: `qcow/<path>[;l2cache=<size>]`.
 *
 * The callout table reads like tcmu-runner's file_example.c: open, read,
 * write, flush, unmap, writeSame, close, and checkConfig with a reason
 * for every refusal. The on-disk formats live in qcow-format.ts; its header
 * comment says in which order metadata reaches the disk and why an image
 * killed at any point still passes `qemu-img check` (leaks at most).
 *
 * All IO is synchronous, positional and on the device thread, so every
 * callout has finished when it returns (the engine's fast path) and no two
 * callouts ever interleave inside the format code.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  configError,
  configOk,
  defineHandler,
  errnoError,
  isZeroRange,
  mergeExtents,
  parseOptions,
  parseSize,
  type BlockIo,
  type Callout,
  type ConfigCheck,
  type DeviceHandler,
  type Handler,
  type HandlerDevice,
  type LbaProvisioning,
  type LbaRange,
  type LbaStatusExtent,
  type ReconfigChange,
} from '@tcmu-ts/core';
import { openFileDevice } from './file.js';
import { openImage, probeFormat, type ImageLayer, type WritableImage } from './qcow-format.js';

export interface QcowConfig {
  path: string;
  /** Bytes of L2 tables kept in memory; undefined: the format's default (4 MiB). */
  l2CacheBytes?: number;
}

const QCOW_OPTIONS = new Set(['l2cache']);

/** Parse "<path>[;l2cache=<size>]" (the part after "qcow/"). */
export function parseQcowConfig(cfg: string): QcowConfig | string {
  const { main, options } = parseOptions(cfg);
  for (const key of options.keys()) {
    if (!QCOW_OPTIONS.has(key)) return `unknown option "${key}" (qcow accepts: ${[...QCOW_OPTIONS].join(', ')})`;
  }
  if (main.trim() === '') return 'no path given: expected qcow/<path>[;l2cache=<size>]';
  const out: QcowConfig = { path: path.resolve(main) };
  const c = options.get('l2cache');
  if (c !== undefined) {
    const n = parseSize(c);
    if (n === undefined || n < 0) return `l2cache=${c} is not a size (e.g. 4M)`;
    out.l2CacheBytes = n;
  }
  return out;
}

function describeError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.message?.replace(/^E[A-Z]+: /, '') ?? String(e);
}

/**
 * Everything open() would refuse, found without writing anything: the file
 * exists and is writable, its format is one we serve, its features are
 * ones we support, and its backing chain opens.
 */
function checkQcowConfig(cfg: QcowConfig): string | undefined {
  const p = cfg.path;
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return `"${p}" does not exist (create it first, e.g. qemu-img create -f qcow2 ${p} 10G)`;
    return `cannot stat "${p}": ${describeError(e)}`;
  }
  if (st.isDirectory()) return `"${p}" is a directory, not an image file`;
  if (!st.isFile() && !st.isBlockDevice()) return `"${p}" is neither a regular file nor a block device`;
  let fd = -1;
  try {
    fd = fs.openSync(p, fs.constants.O_RDWR);
  } catch (e) {
    return `"${p}" cannot be opened read-write: ${describeError(e)}`;
  } finally {
    if (fd >= 0) fs.closeSync(fd);
  }
  try {
    openImage(p, { writable: false, ...(cfg.l2CacheBytes !== undefined ? { l2CacheBytes: cfg.l2CacheBytes } : {}) }).close();
  } catch (e) {
    return describeError(e);
  }
  return undefined;
}

/** A qcow2 or qcow image served as a device. */
export class QcowDevice implements DeviceHandler {
  private writeCache: boolean;
  private staging: Uint8Array | undefined;

  constructor(
    private readonly dev: HandlerDevice,
    readonly image: WritableImage,
  ) {
    this.writeCache = dev.writeCache;
  }

  read(io: BlockIo): Callout<void> {
    this.image.read(io.buffers, 0, io.offset, io.length);
  }

  write(io: BlockIo): Callout<void> {
    this.image.write(io.buffers, 0, io.offset, io.length);
    // Without a write cache (or with FUA) completion promises stable media.
    if (io.fua || !this.writeCache) this.image.flush();
  }

  flush(): Callout<void> {
    this.image.flush();
  }

  /** Whole clusters are released (they read as zeros, or as zero clusters over a backing file). */
  /** Clusters that hold nothing of their own and read zeros are deallocated; a format that cannot tell (qcow v1) says mapped. */
  lbaStatus(lba: number, blocks: number, maxExtents: number): readonly LbaStatusExtent[] {
    const bs = this.dev.blockSize;
    const image = this.image;
    if (!image.provisioningRun) return [{ lba, blocks, status: 'mapped' }];
    function* runs(): Generator<[number, number, LbaProvisioning]> {
      for (let at = lba * bs, end = (lba + blocks) * bs; at < end;) {
        const r = image.provisioningRun!(at, end);
        yield [at / bs, r.length / bs, r.deallocated ? 'deallocated' : 'mapped'];
        at += r.length;
      }
    }
    return mergeExtents(runs(), maxExtents);
  }

  unmap(ranges: readonly LbaRange[]): Callout<void> {
    const bs = this.dev.blockSize;
    for (const r of ranges) if (r.blocks > 0) this.image.zero(r.lba * bs, r.blocks * bs, true);
  }

  /** Zeros become zero clusters; any other pattern is written through a staging buffer. */
  writeSame(io: BlockIo, pattern: Uint8Array): Callout<void> {
    if (isZeroRange(pattern, 0, pattern.byteLength)) this.image.zero(io.offset, io.length, false);
    else {
      const bs = pattern.byteLength;
      const per = Math.max(1, Math.min(io.blocks, Math.floor((1 << 20) / bs)));
      if (this.staging === undefined || this.staging.byteLength < per * bs) this.staging = new Uint8Array(per * bs);
      const staging = this.staging.subarray(0, per * bs);
      for (let i = 0; i < per; i++) staging.set(pattern, i * bs);
      for (let lba = io.lba, left = io.blocks; left > 0;) {
        const n = Math.min(left, per);
        this.image.write([staging], 0, lba * bs, n * bs);
        lba += n;
        left -= n;
      }
    }
    if (io.fua || !this.writeCache) this.image.flush();
  }

  async reconfig(change: ReconfigChange): Promise<void> {
    switch (change.kind) {
      case 'size':
        if (change.devSize > this.image.size) {
          throw errnoError('EOPNOTSUPP', `qcow: ${this.image.path} has a virtual size of ${this.image.size} bytes; grow it with 'qemu-img resize' first`);
        }
        this.dev.numLbas = change.numLbas;
        return;
      case 'writecache':
        if (this.writeCache && !change.enabled) this.image.flush();
        this.writeCache = change.enabled;
        return;
      case 'config':
        throw errnoError('EOPNOTSUPP', 'qcow: the image cannot change while the device is open');
    }
  }

  async close(): Promise<void> {
    this.image.close();
  }
}

/** Size the device from the image, or check the kernel's size fits in it. */
function fitDevice(dev: HandlerDevice, size: number, what: string): void {
  const fits = Math.floor(size / dev.blockSize);
  if (dev.numLbas === 0) {
    if (fits === 0) throw errnoError('EINVAL', `qcow: ${what} is smaller than one block and the device has no size`);
    dev.numLbas = fits;
  } else if (dev.numLbas > fits) {
    throw errnoError('EINVAL', `qcow: the device (${dev.numLbas * dev.blockSize} bytes) is larger than ${what} (${size} bytes); grow the image with 'qemu-img resize' first`);
  } else if (dev.numLbas < fits) {
    dev.log.info(`qcow: the device uses ${dev.numLbas * dev.blockSize} of the ${size} bytes of ${what}`);
  }
}

export async function openQcowDevice(dev: HandlerDevice): Promise<DeviceHandler> {
  const cfg = parseQcowConfig(dev.cfgstring);
  if (typeof cfg === 'string') throw errnoError('EINVAL', `qcow: ${cfg}`);
  // A file that is no image at all is served raw, by the file handler.
  let fd: number;
  try {
    fd = fs.openSync(cfg.path, fs.constants.O_RDONLY);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? 'EIO';
    throw errnoError(code, `qcow: ${code === 'ENOENT' ? `"${cfg.path}" does not exist` : `cannot open "${cfg.path}": ${describeError(e)}`}`);
  }
  let head: Uint8Array;
  try {
    head = new Uint8Array(512);
    head = head.subarray(0, fs.readSync(fd, head, 0, 512, 0));
  } finally {
    fs.closeSync(fd);
  }
  const kind = probeFormat(head);
  if ('refuse' in kind) throw errnoError('EINVAL', `qcow: ${cfg.path} ${kind.refuse}`);
  if (kind.format === 'raw') {
    const size = fs.statSync(cfg.path).size;
    if (fs.statSync(cfg.path).isFile()) fitDevice(dev, size, `raw file ${cfg.path}`);
    dev.log.info(`qcow: ${cfg.path} is not a qcow image; serving it raw`);
    return openFileDevice({
      get name() { return dev.name; },
      cfgstring: cfg.path,
      blockSize: dev.blockSize,
      get numLbas() { return dev.numLbas; },
      set numLbas(n: number) { dev.numLbas = n; },
      maxXferBlocks: dev.maxXferBlocks,
      writeCache: dev.writeCache,
      log: dev.log,
      ...(dev.ring ? { ring: dev.ring } : {}),
    });
  }
  let image: ImageLayer;
  try {
    image = openImage(cfg.path, { writable: true, log: dev.log, ...(cfg.l2CacheBytes !== undefined ? { l2CacheBytes: cfg.l2CacheBytes } : {}) });
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw errnoError(err.code ?? 'EINVAL', `qcow: ${describeError(e)}`);
  }
  try {
    fitDevice(dev, image.size, `the virtual size of ${cfg.path}`);
  } catch (e) {
    image.close();
    throw e;
  }
  dev.log.info(`qcow: ${image.describe()}`);
  return new QcowDevice(dev, image as WritableImage);
}

export const qcowHandler: Handler = defineHandler({
  name: 'qcow/qcow2 image handler',
  subtype: 'qcow',
  configDescription:
    'qcow/<path>[;l2cache=<size>]. An existing qcow2 (v2 or v3) or qcow (v1) image, read-write, with its backing ' +
    'chain (read-only; qcow2, qcow or raw; relative names are relative to the image naming them). ' +
    'Compressed clusters are read and rewritten uncompressed on write; UNMAP frees clusters (zero clusters in v3), ' +
    'WRITE SAME of zeros sets zero clusters. Encryption, external data files, extended L2 entries, zstd ' +
    'compression, unknown incompatible features and dirty or corrupt images are refused. A file that is not a ' +
    'known image format is served raw, like file/<path>. The device size defaults to the virtual size and may not ' +
    'exceed it. ";l2cache" sets how many bytes of L2 tables stay in memory (default 4M).',
  checkConfig(cfgstring: string): ConfigCheck {
    const cfg = parseQcowConfig(cfgstring);
    if (typeof cfg === 'string') return configError(cfg);
    const problem = checkQcowConfig(cfg);
    return problem === undefined ? configOk : configError(problem);
  },
  open(dev: HandlerDevice): Promise<DeviceHandler> {
    return openQcowDevice(dev);
  },
});

/** For loadHandler('@tcmu-ts/handlers/qcow') until core lists "qcow" among its built-ins. */
export default qcowHandler;
