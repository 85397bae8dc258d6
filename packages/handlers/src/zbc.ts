/**
 * zbc: a zoned block device (ZBC, host managed or host aware) emulated on a
 * regular file, as tcmu-runner's file_zbc handler does, so that zoned
 * filesystems (f2fs -m, btrfs -O zoned) and zone tools can be tried on any
 * machine.
 *
 * The file holds the zone metadata and then the data, in tcmu-runner's
 * layout, so one file works with both daemons (see ZbcImage below). The
 * zone rules live in zbc-zones.ts; this file is the handler: cfgstring,
 * the file, ZBC IN / ZBC OUT, and READ/WRITE checked against the zones.
 *
 * READ and WRITE stay with the engine's planner, which calls read()/write()
 * once per command with its LBA range: that keeps every READ/WRITE variant
 * (6/10/12/16, FUA, WRITE SAME and COMPARE AND WRITE emulated through them)
 * under the same zone checks with no CDB parsing here. Every callout
 * finishes on the device thread, as tcmu-runner's (nr_threads 0) does: a
 * write's check, its data and its write pointer move happen in one step,
 * with no other command in between.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  configError,
  configOk,
  copyToBuffers,
  defineHandler,
  ScsiError,
  sliceBuffers,
  type BlockIo,
  type ConfigCheck,
  type DeviceHandler,
  type DeviceIdentity,
  type HandlerDevice,
  type RawCommand,
  type RawResult,
} from '@tcmu-ts/core';
import { fallocateSync, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE } from './fallocate.js';
import { openLimit, ZoneCond, ZoneModel, ZoneType, type StaleRange, type Zone, type ZoneGeometry, type ZoneModelKind } from './zbc-zones.js';

const MiB = 1024 * 1024;
const ZBC_OUT = 0x94;
const ZBC_IN = 0x95;
const SA_REPORT_ZONES = 0x00;
const SA_CLOSE_ZONE = 0x01;
const SA_FINISH_ZONE = 0x02;
const SA_OPEN_ZONE = 0x03;
const SA_RESET_WRITE_POINTER = 0x04;

const PERIPHERAL_HOST_MANAGED = 0x14;
/** SAM-5, SPC-4, SBC-4, ZBC (each "no version claimed"). */
const ZBC_VERSION_DESCRIPTORS = [0x00a0, 0x0460, 0x0600, 0x0620];

// ---------------------------------------------------------------- cfgstring

/** tcmu-runner's defaults: host managed, 512-byte blocks, 256 MiB zones, 1% conventional, 128 open. */
export const ZBC_DEFAULTS = { model: 'HM' as ZoneModelKind, zoneMiB: 256, open: 128 };

export interface ZbcConfig {
  path: string;
  /** Each option only when the cfgstring gave it: given ones must agree with an existing image. */
  model?: ZoneModelKind;
  lbaSize?: number;
  zoneMiB?: number;
  conv?: number;
  open?: number;
  /** Ours, not tcmu-runner's: urswrz-0 makes reads of SWR zones restricted (default 1, as tcmu-runner). */
  urswrz?: boolean;
}

const FORM = 'zbc/[model-HM|HA/][lba-512|4096/][zsize-MiB/][conv-N/][open-N/][urswrz-0|1/]@<path>, or zbc//<path>';

/**
 * Parse the part of the cfgstring after "zbc/": either a path starting
 * with '/' (no options), or options separated by '/' then '@' and the path.
 */
export function parseZbcConfig(cfg: string): ZbcConfig | string {
  let opts: string[] = [];
  let file: string;
  if (cfg.startsWith('/')) file = cfg;
  else {
    const at = cfg.indexOf('@');
    if (at < 0) return `no '@' before the path: expected ${FORM}`;
    opts = cfg.slice(0, at).split('/');
    file = cfg.slice(at + 1);
  }
  if (file.trim() === '') return `no path given: expected ${FORM}`;
  const out: ZbcConfig = { path: path.resolve(file) };
  const seen = new Set<string>();
  for (const opt of opts) {
    if (opt === '') continue;
    const m = /^(model|lba|zsize|conv|open|urswrz)-(.*)$/.exec(opt);
    if (!m) return `unknown option "${opt}": expected ${FORM}`;
    const [, name, value] = m;
    if (seen.has(name)) return `${name}- given twice`;
    seen.add(name);
    const n = /^\d+$/.test(value) ? Number(value) : NaN;
    switch (name) {
      case 'model':
        if (value !== 'HM' && value !== 'HA') return `model-${value}: the model must be HM (host managed) or HA (host aware)`;
        out.model = value;
        break;
      case 'lba':
        if (n !== 512 && n !== 4096) return `lba-${value}: the logical block size must be 512 or 4096`;
        out.lbaSize = n;
        break;
      case 'zsize':
        if (!(n > 0) || (n & (n - 1)) !== 0 || n > 4096) return `zsize-${value}: the zone size must be a power of two of MiB, 1 to 4096`;
        out.zoneMiB = n;
        break;
      case 'conv':
        if (!Number.isSafeInteger(n)) return `conv-${value}: the number of conventional zones must be a whole number`;
        out.conv = n;
        break;
      case 'open':
        if (!Number.isSafeInteger(n) || n < 1) return `open-${value}: the number of open zones must be 1 or more`;
        out.open = n;
        break;
      case 'urswrz':
        if (value !== '0' && value !== '1') return `urswrz-${value}: must be urswrz-0 (restricted reads) or urswrz-1`;
        out.urswrz = value === '1';
        break;
    }
  }
  return out;
}

// ---------------------------------------------------------------- the image file

/**
 * tcmu-runner's file_zbc layout, little-endian (tcmu-runner writes its
 * structs in host order; every host it runs on is little-endian):
 *
 *   0  header, 48 bytes: u32 magic "UZBC" (0x555A4243), u32 model (14h host
 *      managed, 00h host aware), u64 capacity (LBAs), u32 LBA size, u32 zone
 *      size (LBAs), u32 zones, u32 conventional zones, u32 open zone limit,
 *      u32 implicitly open, u32 explicitly open, 4 bytes padding;
 *  48  one 64-byte record per zone: u64 start, u64 length, u64 write
 *      pointer (all ones for a conventional zone), u8 type, u8 condition,
 *      u8 NON_SEQ, u8 RESET, 36 reserved;
 *      the whole rounded up to 4 KiB;
 *   then the data, LBA 0 first.
 *
 * A zone record is rewritten in place as soon as its zone changes, so the
 * page cache always has the metadata a crash of the daemon leaves;
 * SYNCHRONIZE CACHE and FUA writes make it stable with the data.
 */
const MAGIC = 0x555a4243;
const HEADER_LENGTH = 48;
const RECORD_LENGTH = 64;
const META_ALIGN = 4096;
const MODEL_CODE: Record<ZoneModelKind, number> = { HM: 0x14, HA: 0x00 };

export function metaSize(nrZones: number): number {
  return Math.ceil((HEADER_LENGTH + nrZones * RECORD_LENGTH) / META_ALIGN) * META_ALIGN;
}

interface ImageHeader {
  model: ZoneModelKind;
  capacity: number;
  lbaSize: number;
  zoneSize: number;
  nrZones: number;
  nrConv: number;
  maxOpen: number;
}

/** The header and zones of an image, or why it is not one. */
function readImage(fd: number, fileSize: number): { header: ImageHeader; zones: Zone[] } | string {
  const h = Buffer.alloc(HEADER_LENGTH);
  if (fs.readSync(fd, h, 0, HEADER_LENGTH, 0) !== HEADER_LENGTH || h.readUInt32LE(0) !== MAGIC) {
    return 'has no zbc metadata (no "UZBC" header)';
  }
  const code = h.readUInt32LE(4);
  const model: ZoneModelKind | undefined = code === 0x14 ? 'HM' : code === 0x00 ? 'HA' : undefined;
  const capacity = Number(h.readBigUInt64LE(8));
  const lbaSize = h.readUInt32LE(16);
  const zoneSize = h.readUInt32LE(20);
  const nrZones = h.readUInt32LE(24);
  const nrConv = h.readUInt32LE(28);
  const maxOpen = h.readUInt32LE(32);
  if (model === undefined) return `has a bad zone model code ${code}`;
  if (lbaSize !== 512 && lbaSize !== 4096) return `has a bad LBA size ${lbaSize}`;
  if (zoneSize === 0 || (zoneSize & (zoneSize - 1)) !== 0) return `has a bad zone size ${zoneSize}`;
  if (!Number.isSafeInteger(capacity) || capacity === 0 || nrZones !== Math.ceil(capacity / zoneSize)) {
    return `has a capacity (${capacity}) and zone count (${nrZones}) that disagree`;
  }
  if (nrConv >= nrZones || maxOpen === 0 || maxOpen > nrZones) return 'has bad zone counts';
  const expected = metaSize(nrZones) + capacity * lbaSize;
  if (fileSize !== expected) return `is ${fileSize} bytes long, its metadata says ${expected}`;
  const raw = Buffer.alloc(nrZones * RECORD_LENGTH);
  if (fs.readSync(fd, raw, 0, raw.length, HEADER_LENGTH) !== raw.length) return 'has its zone records cut short';
  const seqType = model === 'HM' ? ZoneType.SEQ_REQUIRED : ZoneType.SEQ_PREFERRED;
  const zones: Zone[] = [];
  for (let i = 0; i < nrZones; i++) {
    const o = i * RECORD_LENGTH;
    const start = Number(raw.readBigUInt64LE(o));
    const len = Number(raw.readBigUInt64LE(o + 8));
    const wpRaw = raw.readBigUInt64LE(o + 16);
    const type = raw[o + 24];
    const cond = raw[o + 25];
    const bad = `has a bad record for zone ${i}`;
    if (start !== i * zoneSize || len !== Math.min(zoneSize, capacity - start)) return bad;
    if (type !== ZoneType.CONVENTIONAL && type !== seqType) return bad;
    let wp = start;
    if (type === ZoneType.CONVENTIONAL) {
      if (cond !== ZoneCond.NOT_WP) return bad;
    } else {
      wp = Number(wpRaw);
      if (!(wp >= start && wp <= start + len)) return bad;
      if (![ZoneCond.EMPTY, ZoneCond.IMPLICIT_OPEN, ZoneCond.EXPLICIT_OPEN, ZoneCond.CLOSED, ZoneCond.FULL].includes(cond as never)) return bad;
    }
    zones.push({ start, len, wp, type, cond, nonSeq: raw[o + 26] !== 0, reset: raw[o + 27] !== 0, lastUse: 0 });
  }
  return { header: { model, capacity, lbaSize, zoneSize, nrZones, nrConv, maxOpen }, zones };
}

function zoneRecord(z: Zone): Buffer {
  const b = Buffer.alloc(RECORD_LENGTH);
  b.writeBigUInt64LE(BigInt(z.start), 0);
  b.writeBigUInt64LE(BigInt(z.len), 8);
  b.writeBigUInt64LE(z.type === ZoneType.CONVENTIONAL ? 0xffffffffffffffffn : BigInt(z.wp), 16);
  b[24] = z.type;
  b[25] = z.cond;
  b[26] = z.nonSeq ? 1 : 0;
  b[27] = z.reset ? 1 : 0;
  return b;
}

function writeAll(fd: number, b: Uint8Array, pos: number): void {
  for (let done = 0; done < b.byteLength;) done += fs.writeSync(fd, b, done, b.byteLength - done, pos + done);
}

// ---------------------------------------------------------------- the device

export class ZbcDevice implements DeviceHandler {
  readonly identity: DeviceIdentity;
  private readonly dataStart: number;
  private readonly bs: number;
  /** Once fallocate said it cannot punch holes here, zeros are written instead. */
  private punchWorks = true;

  constructor(
    private readonly fd: number,
    readonly zones: ZoneModel,
    blockSize: number,
    private readonly log: HandlerDevice['log'],
  ) {
    this.bs = blockSize;
    this.dataStart = metaSize(zones.zones.length);
    this.identity = zbcIdentity(zones.geo);
  }

  read(io: BlockIo): void {
    const bs = this.bs;
    for (const seg of this.zones.readPlan(io.lba, io.blocks)) {
      const views = sliceBuffers(io.buffers, (seg.lba - io.lba) * bs, seg.blocks * bs);
      if (seg.zero) for (const v of views) v.fill(0);
      else this.readInto(views, this.dataStart + seg.lba * bs);
    }
  }

  write(io: BlockIo): void {
    this.zones.checkWrite(io.lba, io.blocks);
    let pos = this.dataStart + io.offset;
    for (const b of io.buffers) {
      writeAll(this.fd, b, pos);
      pos += b.byteLength;
    }
    this.zones.commitWrite(io.lba, io.blocks);
    this.persist();
    if (io.fua) fs.fdatasyncSync(this.fd);
  }

  /** Data and zone metadata share the file: one fsync makes both stable. */
  flush(): void {
    fs.fsyncSync(this.fd);
  }

  handleCmd(cmd: RawCommand): RawResult | undefined {
    const op = cmd.cdb[0];
    if (op === ZBC_IN) return this.zbcIn(cmd);
    if (op === ZBC_OUT) return this.zbcOut(cmd);
    return undefined;
  }

  async close(): Promise<void> {
    this.persist();
    fs.closeSync(this.fd);
  }

  private zbcIn(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    if ((cdb[1] & 0x1f) !== SA_REPORT_ZONES) throw ScsiError.invalidField(1, 4);
    if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
    if (cdb[14] & 0x40) throw ScsiError.invalidField(14, 6);
    const v = new DataView(cdb.buffer, cdb.byteOffset, cdb.byteLength);
    const alloc = Math.min(v.getUint32(10), cmd.length);
    const data = this.zones.reportZones(v.getBigUint64(2), cdb[14] & 0x3f, (cdb[14] & 0x80) !== 0, alloc);
    const n = copyToBuffers(cmd.buffers, data);
    return { status: 0, dataLength: n };
  }

  private zbcOut(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
    const v = new DataView(cdb.buffer, cdb.byteOffset, cdb.byteLength);
    // ZBC-2's ZONE COUNT: 0 and 1 both mean the one zone; more is not offered.
    if (v.getUint16(12) > 1) throw ScsiError.invalidField(12);
    const zoneId = v.getBigUint64(2);
    const all = (cdb[14] & 0x01) !== 0;
    let stale: StaleRange[] = [];
    switch (cdb[1] & 0x1f) {
      case SA_CLOSE_ZONE:
        this.zones.close(zoneId, all);
        break;
      case SA_FINISH_ZONE:
        stale = this.zones.finish(zoneId, all);
        break;
      case SA_OPEN_ZONE:
        this.zones.open(zoneId, all);
        break;
      case SA_RESET_WRITE_POINTER:
        stale = this.zones.reset(zoneId, all);
        break;
      default:
        throw ScsiError.invalidField(1, 4);
    }
    // Zero before the new write pointers reach the file: a crash in between
    // leaves old pointers over blocks that read as zeros, never new ones over stale data.
    for (const r of stale) this.zeroRange(r);
    this.persist();
    return { status: 0, dataLength: 0 };
  }

  /** Write the zone records (and open counts) that changed since the last call. */
  persist(): void {
    const dirty = this.zones.takeDirty();
    if (dirty.length === 0) return;
    for (const i of dirty) writeAll(this.fd, zoneRecord(this.zones.zones[i]), HEADER_LENGTH + i * RECORD_LENGTH);
    const counts = Buffer.alloc(8);
    counts.writeUInt32LE(this.zones.implicitlyOpen, 0);
    counts.writeUInt32LE(this.zones.explicitlyOpen, 4);
    writeAll(this.fd, counts, 36);
  }

  private readInto(views: readonly Uint8Array[], pos: number): void {
    for (const v of views) {
      for (let done = 0; done < v.byteLength;) {
        const n = fs.readSync(this.fd, v, done, v.byteLength - done, pos + done);
        if (n === 0) {
          v.fill(0, done); // past the end of a file someone truncated: nothing was written there
          break;
        }
        done += n;
      }
      pos += v.byteLength;
    }
  }

  /** Make a range read back as zeros: punch it out of the file, or write zeros where that is refused. */
  private zeroRange(r: StaleRange): void {
    const off = this.dataStart + r.lba * this.bs;
    const len = r.blocks * this.bs;
    if (this.punchWorks) {
      const err = fallocateSync(this.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
      if (err === 0) return;
      if (err.code !== 'EOPNOTSUPP' && err.code !== 'ENOSYS') throw err;
      this.punchWorks = false;
      this.log.info(`zbc: the file system cannot punch holes (${err.code}); zone resets write zeros`);
    }
    const zeros = new Uint8Array(Math.min(len, MiB));
    for (let done = 0; done < len; done += zeros.byteLength) writeAll(this.fd, zeros.subarray(0, Math.min(zeros.byteLength, len - done)), off + done);
  }
}

/** INQUIRY's view of the disk: type 14h or ZONED 01b, ZBC's version descriptor, VPD B6h. */
function zbcIdentity(geo: ZoneGeometry): DeviceIdentity {
  const hm = geo.model === 'HM';
  const b6 = new Uint8Array(64);
  const v = new DataView(b6.buffer);
  b6[0] = hm ? PERIPHERAL_HOST_MANAGED : 0x00;
  b6[1] = 0xb6;
  v.setUint16(2, 0x3c);
  b6[4] = geo.urswrz ? 0x01 : 0x00; // URSWRZ
  if (hm) v.setUint32(16, geo.maxOpen); // MAXIMUM NUMBER OF OPEN SEQUENTIAL WRITE REQUIRED ZONES
  else {
    v.setUint32(8, geo.maxOpen); // OPTIMAL NUMBER OF OPEN SEQUENTIAL WRITE PREFERRED ZONES
    v.setUint32(12, geo.maxOpen); // OPTIMAL NUMBER OF NON-SEQUENTIALLY WRITTEN SWP ZONES
  }
  return {
    ...(hm ? { peripheralType: PERIPHERAL_HOST_MANAGED } : { zoned: 1 }),
    versionDescriptors: ZBC_VERSION_DESCRIPTORS,
    // No B2h: there is no UNMAP on a zoned disk of ours (RESET WRITE POINTER is how space comes back).
    blockVpdPages: [0xb0, 0xb1],
    vpdPages: new Map([[0xb6, b6]]),
  };
}

function fail(reason: string): never {
  throw Object.assign(new Error(`zbc: ${reason}`), { code: 'EINVAL' });
}

/** Check an existing image against the device and the options the cfgstring gave. */
function adoptImage(dev: HandlerDevice, cfg: ZbcConfig, header: ImageHeader): void {
  const p = cfg.path;
  const mismatch = (what: string, has: string | number, asked: string | number) =>
    fail(`${p} holds a zoned disk with ${what} ${has}, the cfgstring asks for ${asked}; remove the file to format it anew`);
  if (cfg.model !== undefined && cfg.model !== header.model) mismatch('model', header.model, cfg.model);
  if (cfg.zoneMiB !== undefined && cfg.zoneMiB * MiB !== header.zoneSize * header.lbaSize) {
    mismatch('zone size (MiB)', (header.zoneSize * header.lbaSize) / MiB, cfg.zoneMiB);
  }
  if (cfg.conv !== undefined && cfg.conv !== header.nrConv) mismatch('conventional zone count', header.nrConv, cfg.conv);
  if (cfg.open !== undefined && openLimit(cfg.open, header.nrZones, header.nrConv) !== header.maxOpen) {
    mismatch('open zone limit', header.maxOpen, cfg.open);
  }
  if (header.lbaSize !== dev.blockSize) fail(`${p} holds a zoned disk of ${header.lbaSize}-byte blocks, the device has ${dev.blockSize}-byte blocks`);
  if (dev.numLbas === 0) dev.numLbas = header.capacity;
  else if (dev.numLbas !== header.capacity) {
    // tcmu-runner formats the file again here, losing every zone's data; a
    // resize of a zoned disk is not something to do behind the host's back.
    fail(`${p} holds a zoned disk of ${header.capacity * header.lbaSize} bytes, the device is ${dev.numLbas * dev.blockSize} bytes; set dev_size to match or remove the file`);
  }
}

/** The geometry a new image gets from the cfgstring and the device size. */
function newGeometry(dev: HandlerDevice, cfg: ZbcConfig): ZoneGeometry {
  if (dev.numLbas === 0) fail(`${cfg.path} is new and the device has no size: set dev_size`);
  const zoneSize = ((cfg.zoneMiB ?? ZBC_DEFAULTS.zoneMiB) * MiB) / dev.blockSize;
  const nrZones = Math.ceil(dev.numLbas / zoneSize);
  const nrConv = cfg.conv ?? Math.max(1, Math.floor(nrZones / 100));
  if (nrConv >= nrZones) {
    fail(`conv-${nrConv}: the disk has ${nrZones} zone(s) of ${zoneSize * dev.blockSize / MiB} MiB, and at least one must be sequential`);
  }
  return {
    model: cfg.model ?? ZBC_DEFAULTS.model,
    capacity: dev.numLbas,
    zoneSize,
    nrConv,
    maxOpen: openLimit(cfg.open ?? ZBC_DEFAULTS.open, nrZones, nrConv),
    urswrz: cfg.urswrz ?? true,
  };
}

function formatImage(fd: number, geo: ZoneGeometry, blockSize: number): ZoneModel {
  const model = new ZoneModel(geo);
  const nrZones = model.zones.length;
  fs.ftruncateSync(fd, 0); // a fresh image is all holes: every block reads zeros
  fs.ftruncateSync(fd, metaSize(nrZones) + geo.capacity * blockSize);
  const meta = Buffer.alloc(HEADER_LENGTH + nrZones * RECORD_LENGTH);
  meta.writeUInt32LE(MAGIC, 0);
  meta.writeUInt32LE(MODEL_CODE[geo.model], 4);
  meta.writeBigUInt64LE(BigInt(geo.capacity), 8);
  meta.writeUInt32LE(blockSize, 16);
  meta.writeUInt32LE(geo.zoneSize, 20);
  meta.writeUInt32LE(nrZones, 24);
  meta.writeUInt32LE(geo.nrConv, 28);
  meta.writeUInt32LE(geo.maxOpen, 32);
  model.zones.forEach((z, i) => zoneRecord(z).copy(meta, HEADER_LENGTH + i * RECORD_LENGTH));
  writeAll(fd, meta, 0);
  fs.fsyncSync(fd);
  model.takeDirty();
  return model;
}

async function openZbc(dev: HandlerDevice): Promise<DeviceHandler> {
  const cfg = parseZbcConfig(dev.cfgstring);
  if (typeof cfg === 'string') fail(cfg);
  if (cfg.lbaSize !== undefined && cfg.lbaSize !== dev.blockSize) {
    fail(`lba-${cfg.lbaSize} but the device has ${dev.blockSize}-byte blocks: set hw_block_size to ${cfg.lbaSize}`);
  }
  if (dev.blockSize !== 512 && dev.blockSize !== 4096) fail(`the device has ${dev.blockSize}-byte blocks; a zbc disk has 512 or 4096`);
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(cfg.path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (st && !st.isFile()) fail(`${cfg.path} is not a regular file`);
  const fd = fs.openSync(cfg.path, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o600);
  try {
    let zones: ZoneModel;
    if (st && st.size > 0) {
      const image = readImage(fd, st.size);
      // A file that is not ours is not formatted over: it may be someone's data.
      if (typeof image === 'string') fail(`${cfg.path} ${image}; remove it (or give an empty file) to have it formatted`);
      adoptImage(dev, cfg, image.header);
      const h = image.header;
      zones = new ZoneModel({ model: h.model, capacity: h.capacity, zoneSize: h.zoneSize, nrConv: h.nrConv, maxOpen: h.maxOpen, urswrz: cfg.urswrz ?? true }, image.zones);
      // Open zones do not survive a power cycle, nor a daemon restart here.
      zones.closeAllOpen();
    } else {
      zones = formatImage(fd, newGeometry(dev, cfg), dev.blockSize);
    }
    const h = new ZbcDevice(fd, zones, dev.blockSize, dev.log);
    h.persist(); // what closeAllOpen() changed
    const g = zones.geo;
    dev.log.info(
      `zbc: ${cfg.path}: host ${g.model === 'HM' ? 'managed' : 'aware'}, ${zones.zones.length} zones of ${(g.zoneSize * dev.blockSize) / MiB} MiB ` +
        `(${g.nrConv} conventional), ${g.model === 'HM' ? 'at most' : 'optimally'} ${g.maxOpen} open`,
    );
    return h;
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

export const zbcHandler = defineHandler({
  name: 'ZBC emulation (zoned disk on a file)',
  subtype: 'zbc',
  configDescription:
    `${FORM}. A zoned block device on a file: model-HM host managed (default) or model-HA host aware; ` +
    'lba- the block size (must match the device; default: the device\'s); zsize- the zone size in MiB (default 256); ' +
    'conv- how many conventional zones start the disk (default 1% of the zones, at least 1); ' +
    'open- the open zone limit (HM) or optimum (HA) (default 128, at most half the sequential zones); ' +
    'urswrz-0 refuses reads past write pointers (default: they read zeros). A missing or empty file is formatted; ' +
    'an existing one keeps its zones and data, and must match the options given and the device size.',
  checkConfig(cfgstring: string): ConfigCheck {
    const parsed = parseZbcConfig(cfgstring);
    return typeof parsed === 'string' ? configError(parsed) : configOk;
  },
  open: openZbc,
});
