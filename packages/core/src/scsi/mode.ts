/**
 * MODE SENSE / MODE SELECT (SPC-4 6.11-6.14) over the three pages a disk is
 * asked for: read-write error recovery (01h), caching (08h) and control (0Ah).
 *
 * WCE is changeable, and D_SENSE when the device says so (changeableDSense,
 * which the engine sets: an initiator that asks for descriptor sense gets
 * it from then on). WCE is what Linux's sd toggles through
 * /sys/.../cache_type, and what LIO exposes as emulate_write_cache.
 */

import { be16, be32, be64, put16, put32, put64, topBit } from './bytes.js';
import { checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import type { ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';

export const ModePage = {
  RW_ERROR_RECOVERY: 0x01,
  CACHING: 0x08,
  CONTROL: 0x0a,
  ALL: 0x3f,
} as const;

/** PAGE CONTROL field of MODE SENSE. */
export const PageControl = {
  CURRENT: 0,
  CHANGEABLE: 1,
  DEFAULT: 2,
  SAVED: 3,
} as const;

export type ModeValues = 'current' | 'changeable' | 'default';

/** Mode parameter header lengths: MODE SENSE/SELECT (6) and (10). */
export const MODE_HEADER_6 = 4;
export const MODE_HEADER_10 = 8;
/** Mode parameter block descriptor lengths: short LBA and long LBA format. */
export const SHORT_BLOCK_DESCRIPTOR = 8;
export const LONG_BLOCK_DESCRIPTOR = 16;

/** Caching page byte 2, bit 2. */
const WCE = 0x04;
/** Control page byte 2, bit 2: sense data in descriptor format. */
const D_SENSE = 0x04;

interface PageDef {
  readonly code: number;
  /** Whole page including its 2-byte header. */
  readonly length: number;
  fill(b: Uint8Array, dev: ScsiDeviceInfo, which: ModeValues): void;
}

const PAGES: readonly PageDef[] = [
  {
    // SBC-3 6.4.7. All zero: no retry tuning is offered, errors are reported as they come.
    code: ModePage.RW_ERROR_RECOVERY,
    length: 12,
    fill() {},
  },
  {
    // SBC-3 6.4.5.
    code: ModePage.CACHING,
    length: 20,
    fill(b, dev, which) {
      if (which === 'changeable') b[2] = WCE;
      else if (which === 'default') b[2] = (dev.writeCacheDefault ?? dev.writeCache) ? WCE : 0;
      else b[2] = dev.writeCache ? WCE : 0;
    },
  },
  {
    // SPC-4 7.5.8. Only D_SENSE can change, and only on devices that allow it.
    code: ModePage.CONTROL,
    length: 12,
    fill(b, dev, which) {
      if (which === 'changeable') {
        if (dev.changeableDSense) b[2] = D_SENSE;
        return;
      }
      // GLTSD: no log parameters are ever saved. D_SENSE follows the device.
      b[2] = 0x02 | (dev.dSense ? 0x04 : 0);
      // QUEUE ALGORITHM MODIFIER 1: commands are completed out of order.
      b[3] = 0x10;
      // TAS: commands aborted by another I_T nexus end with TASK ABORTED (LIO default).
      b[5] = 0x40;
      // BUSY TIMEOUT PERIOD: unlimited.
      put16(b, 8, 0xffff);
    },
  },
];

function pageDef(code: number): PageDef | undefined {
  return PAGES.find((p) => p.code === code);
}

/** One mode page (header included) as MODE SENSE reports it; undefined if unsupported. */
export function modePage(code: number, dev: ScsiDeviceInfo, which: ModeValues = 'current'): Uint8Array | undefined {
  const def = pageDef(code);
  if (!def) return undefined;
  const b = new Uint8Array(def.length);
  b[0] = def.code; // PS = 0: nothing is saveable
  b[1] = def.length - 2;
  def.fill(b, dev, which);
  return b;
}

export interface ModeSenseRequest {
  /** MODE SENSE (10) layout rather than (6). */
  ten: boolean;
  page: number;
  /** Subpage 00h or FFh; other subpages do not exist here. */
  subpage?: number;
  which?: ModeValues;
  /** Disable block descriptors. */
  dbd?: boolean;
  /** Long LBA block descriptor (MODE SENSE (10) only). */
  llbaa?: boolean;
}

function blockDescriptor(dev: ScsiDeviceInfo, long: boolean, which: ModeValues): Uint8Array {
  const b = new Uint8Array(long ? LONG_BLOCK_DESCRIPTOR : SHORT_BLOCK_DESCRIPTOR);
  if (which === 'changeable') return b; // neither capacity nor block size can be changed
  if (long) {
    put64(b, 0, dev.numLbas);
    put32(b, 12, dev.blockSize);
  } else {
    // SBC-3 6.4.2.2: FFFFFFFFh when the capacity does not fit.
    put32(b, 0, Math.min(dev.numLbas, 0xffffffff));
    b[5] = (dev.blockSize >>> 16) & 0xff; // DENSITY CODE (byte 4) = 0
    b[6] = (dev.blockSize >>> 8) & 0xff;
    b[7] = dev.blockSize & 0xff;
  }
  return b;
}

/** Mode parameter data (header, optional block descriptor, pages), untruncated. */
export function modeSenseData(dev: ScsiDeviceInfo, req: ModeSenseRequest): Uint8Array {
  const which = req.which ?? 'current';
  const pages: Uint8Array[] = [];
  if (req.page === ModePage.ALL) {
    for (const def of PAGES) pages.push(modePage(def.code, dev, which)!);
  } else {
    const p = modePage(req.page, dev, which);
    if (p) pages.push(p);
  }
  const hdr = req.ten ? MODE_HEADER_10 : MODE_HEADER_6;
  // LONGLBA describes the descriptors that follow, so it stays 0 when there are none.
  const long = req.ten && req.llbaa === true && !req.dbd;
  const bd = req.dbd ? undefined : blockDescriptor(dev, long, which);
  const total = hdr + (bd?.length ?? 0) + pages.reduce((n, p) => n + p.length, 0);
  const b = new Uint8Array(total);
  // Device-specific parameter (SBC-3 6.4.1): WP, and DPOFUA since FUA is honoured.
  const devSpecific = (dev.writeProtect ? 0x80 : 0) | 0x10;
  if (req.ten) {
    put16(b, 0, total - 2); // MODE DATA LENGTH excludes itself
    b[3] = devSpecific;
    b[4] = long ? 0x01 : 0; // LONGLBA
    put16(b, 6, bd?.length ?? 0);
  } else {
    b[0] = total - 1;
    b[2] = devSpecific;
    b[3] = bd?.length ?? 0;
  }
  let off = hdr;
  if (bd) {
    b.set(bd, off);
    off += bd.length;
  }
  for (const p of pages) {
    b.set(p, off);
    off += p.length;
  }
  return b;
}

/** MODE SENSE (6)/(10): CDB checks, then data cut to the ALLOCATION LENGTH. Throws ScsiError. */
export function emulateModeSense(cdb: Uint8Array, dev: ScsiDeviceInfo): Uint8Array {
  const ten = cdb[0] === 0x5a;
  if (ten) {
    requireClear(cdb, 1, 0xe7); // LLBAA bit 4, DBD bit 3
    requireZeroBytes(cdb, 4, 7);
    checkControlByte(cdb, 10);
  } else {
    requireClear(cdb, 1, 0xf7); // DBD bit 3
    checkControlByte(cdb, 6);
  }
  const dbd = (cdb[1] & 0x08) !== 0;
  const llbaa = ten && (cdb[1] & 0x10) !== 0;
  const pc = cdb[2] >> 6;
  const page = cdb[2] & 0x3f;
  const subpage = cdb[3];
  const alloc = ten ? be16(cdb, 7) : cdb[4];

  // No mode page is saveable, so there are no saved values to report (SPC-4 6.11).
  if (pc === PageControl.SAVED) throw ScsiError.savingParametersNotSupported();
  if (page !== ModePage.ALL && !pageDef(page)) throw ScsiError.invalidField(2, 5);
  // Only subpage 00h exists; FFh ("all subpages") then means the same page.
  if (subpage !== 0x00 && subpage !== 0xff) throw ScsiError.invalidField(3);

  const which: ModeValues = pc === PageControl.CHANGEABLE ? 'changeable' : pc === PageControl.DEFAULT ? 'default' : 'current';
  const data = modeSenseData(dev, { ten, page, subpage, which, dbd, llbaa });
  return data.subarray(0, Math.min(alloc, data.length));
}

/**
 * MODE SELECT (6)/(10). Validates the whole parameter list before changing
 * anything, so a rejected list leaves the device as it was. Every field must
 * equal its current value except WCE (and D_SENSE where changeable);
 * returns whether WCE changed.
 * Throws ScsiError.
 */
export function emulateModeSelect(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array): boolean {
  const ten = cdb[0] === 0x55;
  if (ten) {
    requireClear(cdb, 1, 0xee); // PF bit 4, SP bit 0
    requireZeroBytes(cdb, 2, 7);
    checkControlByte(cdb, 10);
  } else {
    requireClear(cdb, 1, 0xee);
    requireZeroBytes(cdb, 2, 4);
    checkControlByte(cdb, 6);
  }
  const listLen = ten ? be16(cdb, 7) : cdb[4];
  // PF = 0 would mean vendor-specific page formats; like LIO we only speak SPC.
  if (!(cdb[1] & 0x10)) throw ScsiError.invalidField(1, 4);
  // SP = 1 asks to save pages, and nothing here is saveable.
  if (cdb[1] & 0x01) throw ScsiError.invalidField(1, 0);
  if (listLen === 0) return false; // no data transferred: not an error (SPC-4 6.13)

  if (!dataOut || dataOut.length < listLen) throw ScsiError.parameterListLength();
  const p = dataOut.subarray(0, listLen);
  const hdr = ten ? MODE_HEADER_10 : MODE_HEADER_6;
  if (p.length < hdr) throw ScsiError.parameterListLength();

  // Header: MODE DATA LENGTH is reserved here, and WP/DPOFUA in the
  // device-specific byte are ignored for MODE SELECT (SBC-3 6.4.1).
  if (p[ten ? 2 : 1] !== 0) throw ScsiError.invalidParameter(ten ? 2 : 1); // MEDIUM TYPE 00h for SBC
  const long = ten && (p[4] & 0x01) !== 0;
  if (ten && p[4] & 0xfe) throw ScsiError.invalidParameter(4, topBit(p[4] & 0xfe));
  const bdLen = ten ? be16(p, 6) : p[3];
  const bdSize = long ? LONG_BLOCK_DESCRIPTOR : SHORT_BLOCK_DESCRIPTOR;
  if (bdLen !== 0 && bdLen !== bdSize) throw ScsiError.invalidParameter(ten ? 6 : 3);
  if (hdr + bdLen > p.length) throw ScsiError.parameterListLength();
  if (bdLen) checkBlockDescriptor(p, hdr, long, dev);

  let newWce = dev.writeCache;
  let newDSense = dev.dSense === true;
  let off = hdr + bdLen;
  while (off < p.length) {
    if (off + 2 > p.length) throw ScsiError.parameterListLength();
    // PS (bit 7) is reserved in MODE SELECT; initiators echo it back, so ignore it.
    if (p[off] & 0x40) throw ScsiError.invalidParameter(off, 6); // SPF: no subpages here
    const code = p[off] & 0x3f;
    const def = pageDef(code);
    if (!def) throw ScsiError.invalidParameter(off, 5);
    if (p[off + 1] !== def.length - 2) throw ScsiError.invalidParameter(off + 1);
    if (off + def.length > p.length) throw ScsiError.parameterListLength();
    const current = modePage(code, dev, 'current')!;
    const changeable = modePage(code, dev, 'changeable')!;
    for (let i = 2; i < def.length; i++) {
      const diff = (p[off + i] ^ current[i]) & ~changeable[i] & 0xff;
      if (diff) throw ScsiError.invalidParameter(off + i, topBit(diff));
    }
    if (code === ModePage.CACHING) newWce = (p[off + 2] & WCE) !== 0;
    if (code === ModePage.CONTROL) newDSense = (p[off + 2] & D_SENSE) !== 0;
    off += def.length;
  }

  const changed = newWce !== dev.writeCache;
  dev.writeCache = newWce;
  if (newDSense !== (dev.dSense === true)) dev.dSense = newDSense;
  return changed;
}

/**
 * A block descriptor in MODE SELECT may only restate what the unit is:
 * capacity changes and block-size changes (a reformat) are not offered.
 * NUMBER OF LOGICAL BLOCKS 0 means "keep the current capacity" (SBC-3 6.4.2).
 */
function checkBlockDescriptor(p: Uint8Array, off: number, long: boolean, dev: ScsiDeviceInfo): void {
  if (long) {
    const n = be64(p, off);
    if (n !== 0n && n !== BigInt(dev.numLbas)) throw ScsiError.invalidParameter(off);
    requireZeroParam(p, off + 8, off + 12);
    if (be32(p, off + 12) !== dev.blockSize) throw ScsiError.invalidParameter(off + 12);
  } else {
    const n = be32(p, off);
    if (n !== 0 && n !== Math.min(dev.numLbas, 0xffffffff)) throw ScsiError.invalidParameter(off);
    if (p[off + 4] !== 0) throw ScsiError.invalidParameter(off + 4); // DENSITY CODE
    const len = (p[off + 5] << 16) | (p[off + 6] << 8) | p[off + 7];
    if (len !== dev.blockSize) throw ScsiError.invalidParameter(off + 5);
  }
}

function requireZeroParam(p: Uint8Array, from: number, to: number): void {
  for (let i = from; i < to; i++) if (p[i]) throw ScsiError.invalidParameter(i, topBit(p[i]));
}
