/**
 * The zone state machine of an emulated zoned block device (ZBC), with no IO
 * in it: the zbc handler asks it whether a command may run, runs the data
 * part itself, then tells it what happened. Everything here is synchronous,
 * so one command's check and update are never interleaved with another's.
 *
 * Two models, as tcmu-runner's file_zbc offers:
 *  - host managed (HM): conventional zones, then sequential write required
 *    (SWR) zones, whose rules are enforced (write at the write pointer, no
 *    write across a zone end, a bounded number of open zones);
 *  - host aware (HA): conventional zones, then sequential write preferred
 *    (SWP) zones, which track a write pointer and open state but accept any
 *    write: ZBC gives the host hints there, never errors.
 *
 * Where the sense codes come from: ZBC-1 (INCITS 536) as the libzbc test
 * suite checks it against real drives. Where tcmu-runner answers otherwise
 * the differences are listed in docs/SCSI.md (zbc).
 */
import { Asc, ScsiError, SenseKey } from '@tcmu-ts/core';

export const ZoneType = { CONVENTIONAL: 0x1, SEQ_REQUIRED: 0x2, SEQ_PREFERRED: 0x3 } as const;

export const ZoneCond = {
  NOT_WP: 0x0,
  EMPTY: 0x1,
  IMPLICIT_OPEN: 0x2,
  EXPLICIT_OPEN: 0x3,
  CLOSED: 0x4,
  READ_ONLY: 0xd,
  FULL: 0xe,
  OFFLINE: 0xf,
} as const;

/** REPORT ZONES reporting options (CDB byte 14, bits 5..0). */
export const ReportOption = {
  ALL: 0x00,
  EMPTY: 0x01,
  IMPLICIT_OPEN: 0x02,
  EXPLICIT_OPEN: 0x03,
  CLOSED: 0x04,
  FULL: 0x05,
  READ_ONLY: 0x06,
  OFFLINE: 0x07,
  RWP_RECOMMENDED: 0x10,
  NON_SEQ: 0x11,
  NOT_WP: 0x3f,
} as const;

export type ZoneModelKind = 'HM' | 'HA';

/** One zone; LBAs in logical blocks of the device. */
export interface Zone {
  readonly start: number;
  readonly len: number;
  /** Next LBA to write in a sequential zone; unused (reported as all ones) in a conventional one. */
  wp: number;
  readonly type: number;
  cond: number;
  /** SWP zone written somewhere other than at its write pointer since its last reset (NON_SEQ). */
  nonSeq: boolean;
  /** RESET WRITE POINTER RECOMMENDED: never set here (no media to reclaim), kept for the format. */
  reset: boolean;
  /** Last write or open, for choosing which implicitly open zone to close. Not persisted. */
  lastUse: number;
}

export interface ZoneGeometry {
  readonly model: ZoneModelKind;
  /** Device capacity in logical blocks. */
  readonly capacity: number;
  /** Zone size in logical blocks (a power of two); the last zone may be shorter. */
  readonly zoneSize: number;
  readonly nrConv: number;
  /** HM: maximum open SWR zones. HA: the optimal number of open SWP zones (a hint). */
  readonly maxOpen: number;
  /** Unrestricted reads of SWR zones (VPD B6h URSWRZ): past the write pointer and across zone ends. */
  readonly urswrz: boolean;
}

/** A run of a read: from the medium, or the initialization pattern (zeros) past a write pointer. */
export interface ReadSegment {
  readonly lba: number;
  readonly blocks: number;
  readonly zero: boolean;
}

/** A range whose data a reset made stale: it must read back as zeros from now on. */
export interface StaleRange {
  readonly lba: number;
  readonly blocks: number;
}

export const ZONE_DESCRIPTOR_LENGTH = 64;
export const REPORT_HEADER_LENGTH = 64;
/** The value a conventional zone reports as its write pointer: none. */
export const NO_WRITE_POINTER = 0xffffffffffffffffn;

const VALID_OPTIONS = new Set<number>(Object.values(ReportOption));

/** The LBA/ZONE ID field is at byte 2 of every CDB this module checks (ZBC IN/OUT, READ/WRITE 10/12/16). */
const LBA_FIELD = 2;

/**
 * Default open zone limit for a geometry, as tcmu-runner sizes it: the
 * number asked for, but never half the sequential zones or more (and at
 * least one).
 */
export function openLimit(asked: number, nrZones: number, nrConv: number): number {
  const half = Math.floor((nrZones - nrConv) / 2);
  return asked >= half ? Math.max(1, half) : asked;
}

export class ZoneModel {
  readonly zones: Zone[];
  private nrImplicit = 0;
  private nrExplicit = 0;
  private clock = 0;
  /** Indices of zones changed since takeDirty(): the handler persists them. */
  private readonly dirty = new Set<number>();

  constructor(readonly geo: ZoneGeometry, zones?: Zone[]) {
    this.zones = zones ?? ZoneModel.freshZones(geo);
    for (const z of this.zones) {
      if (z.cond === ZoneCond.IMPLICIT_OPEN) this.nrImplicit++;
      else if (z.cond === ZoneCond.EXPLICIT_OPEN) this.nrExplicit++;
    }
  }

  /** Every zone empty, conventional ones first. */
  static freshZones(geo: ZoneGeometry): Zone[] {
    const zones: Zone[] = [];
    const seqType = geo.model === 'HM' ? ZoneType.SEQ_REQUIRED : ZoneType.SEQ_PREFERRED;
    for (let start = 0, i = 0; start < geo.capacity; start += geo.zoneSize, i++) {
      const len = Math.min(geo.zoneSize, geo.capacity - start);
      const conv = i < geo.nrConv;
      zones.push({
        start,
        len,
        wp: start,
        type: conv ? ZoneType.CONVENTIONAL : seqType,
        cond: conv ? ZoneCond.NOT_WP : ZoneCond.EMPTY,
        nonSeq: false,
        reset: false,
        lastUse: 0,
      });
    }
    return zones;
  }

  get implicitlyOpen(): number {
    return this.nrImplicit;
  }

  get explicitlyOpen(): number {
    return this.nrExplicit;
  }

  /** Zone indices changed since the last call, ascending. */
  takeDirty(): number[] {
    const out = [...this.dirty].sort((a, b) => a - b);
    this.dirty.clear();
    return out;
  }

  zoneOf(lba: number): Zone {
    return this.zones[Math.floor(lba / this.geo.zoneSize)];
  }

  private index(z: Zone): number {
    return Math.floor(z.start / this.geo.zoneSize);
  }

  private touch(z: Zone): void {
    z.lastUse = ++this.clock;
    this.dirty.add(this.index(z));
  }

  private get hostManaged(): boolean {
    return this.geo.model === 'HM';
  }

  /**
   * What a power cycle does: open zones are closed (an open zone with
   * nothing written becomes empty again). Run once after loading.
   */
  closeAllOpen(): void {
    for (const z of this.zones) this.closeZone(z);
  }

  // ------------------------------------------------------------ state changes

  /** Open zone -> CLOSED (or EMPTY with nothing written); anything else unchanged. */
  private closeZone(z: Zone): void {
    if (z.cond === ZoneCond.IMPLICIT_OPEN) this.nrImplicit--;
    else if (z.cond === ZoneCond.EXPLICIT_OPEN) this.nrExplicit--;
    else return;
    z.cond = z.wp === z.start ? ZoneCond.EMPTY : ZoneCond.CLOSED;
    this.touch(z);
  }

  /**
   * Make room for one more open zone by closing the implicitly open zone
   * used longest ago (ZBC lets the device choose; the least recently used
   * one is what a host writing several streams expects to lose). Returns
   * false when every open zone is explicitly open.
   */
  private makeRoom(): boolean {
    if (this.nrImplicit + this.nrExplicit < this.geo.maxOpen) return true;
    let victim: Zone | undefined;
    for (const z of this.zones) {
      if (z.cond === ZoneCond.IMPLICIT_OPEN && (victim === undefined || z.lastUse < victim.lastUse)) victim = z;
    }
    if (victim === undefined) return false;
    this.closeZone(victim);
    return true;
  }

  private openExplicitly(z: Zone): void {
    if (z.cond === ZoneCond.IMPLICIT_OPEN) this.nrImplicit--;
    else this.makeRoom(); // HA may stay over its optimal count: it is only a hint there
    z.cond = ZoneCond.EXPLICIT_OPEN;
    this.nrExplicit++;
    this.touch(z);
  }

  private openImplicitly(z: Zone): void {
    this.makeRoom();
    z.cond = ZoneCond.IMPLICIT_OPEN;
    this.nrImplicit++;
  }

  /** Returns the blocks the zone skips, from its write pointer to its end (they read as zeros). */
  private finishZone(z: Zone): StaleRange | undefined {
    this.closeZone(z);
    const skipped = z.start + z.len - z.wp;
    const from = z.wp;
    z.wp = z.start + z.len;
    z.cond = ZoneCond.FULL;
    z.nonSeq = false;
    z.reset = false;
    this.touch(z);
    return skipped > 0 ? { lba: from, blocks: skipped } : undefined;
  }

  /** Returns the range whose data is now stale (what had been written), if any. */
  private resetZone(z: Zone): StaleRange | undefined {
    this.closeZone(z);
    const written = z.wp - z.start;
    z.wp = z.start;
    z.cond = ZoneCond.EMPTY;
    z.nonSeq = false;
    z.reset = false;
    this.touch(z);
    return written > 0 ? { lba: z.start, blocks: written } : undefined;
  }

  // ------------------------------------------------------------ ZBC OUT

  /**
   * The zone a single-zone ZBC OUT names: its ZONE ID must be the first LBA
   * of a sequential zone.
   */
  private targetZone(zoneId: bigint): Zone {
    if (zoneId >= BigInt(this.geo.capacity)) throw ScsiError.lbaOutOfRange(zoneId);
    const lba = Number(zoneId);
    const z = this.zoneOf(lba);
    if (z.start !== lba || z.type === ZoneType.CONVENTIONAL) throw ScsiError.invalidField(LBA_FIELD);
    return z;
  }

  open(zoneId: bigint, all: boolean): void {
    if (all) {
      // ALL opens the closed zones, every one or none.
      const closed = this.zones.filter((z) => z.cond === ZoneCond.CLOSED);
      if (this.hostManaged && this.nrExplicit + closed.length > this.geo.maxOpen) throw insufficientZoneResources();
      for (const z of closed) this.openExplicitly(z);
      return;
    }
    const z = this.targetZone(zoneId);
    if (z.cond === ZoneCond.EXPLICIT_OPEN || z.cond === ZoneCond.FULL) return;
    if (this.hostManaged && this.nrExplicit + 1 > this.geo.maxOpen) throw insufficientZoneResources();
    this.openExplicitly(z);
  }

  close(zoneId: bigint, all: boolean): void {
    if (all) {
      for (const z of this.zones) this.closeZone(z);
      return;
    }
    this.closeZone(this.targetZone(zoneId));
  }

  /**
   * Returns the ranges the finished zones skipped: they hold no data, and
   * the handler makes sure they read as zeros.
   */
  finish(zoneId: bigint, all: boolean): StaleRange[] {
    const stale: StaleRange[] = [];
    // ALL finishes open and closed zones; empty ones stay empty.
    const targets = all
      ? this.zones.filter((z) => z.cond === ZoneCond.IMPLICIT_OPEN || z.cond === ZoneCond.EXPLICIT_OPEN || z.cond === ZoneCond.CLOSED)
      : [this.targetZone(zoneId)];
    for (const z of targets) {
      if (z.cond === ZoneCond.FULL) continue;
      const r = this.finishZone(z);
      if (r) stale.push(r);
    }
    return stale;
  }

  reset(zoneId: bigint, all: boolean): StaleRange[] {
    const stale: StaleRange[] = [];
    const targets = all ? this.zones.filter((z) => z.type !== ZoneType.CONVENTIONAL) : [this.targetZone(zoneId)];
    for (const z of targets) {
      if (z.cond === ZoneCond.EMPTY && z.wp === z.start) continue;
      const r = this.resetZone(z);
      if (r) stale.push(r);
    }
    return stale;
  }

  // ------------------------------------------------------------ ZBC IN

  /**
   * REPORT ZONES parameter data, cut to `allocLen`. The ZONE LIST LENGTH
   * counts every matching zone from the one holding `startLba` to the end,
   * or with PARTIAL only those whose descriptors fit.
   */
  reportZones(startLba: bigint, option: number, partial: boolean, allocLen: number): Uint8Array {
    if (!VALID_OPTIONS.has(option)) throw ScsiError.invalidField(14, 5);
    if (startLba >= BigInt(this.geo.capacity)) throw ScsiError.lbaOutOfRange(startLba);
    const first = Math.floor(Number(startLba) / this.geo.zoneSize);
    const fit = Math.max(0, Math.floor((allocLen - REPORT_HEADER_LENGTH) / ZONE_DESCRIPTOR_LENGTH));
    // Descriptors worth building: the ones that fit, plus one cut short by the allocation length.
    const room = Math.ceil(Math.max(0, allocLen - REPORT_HEADER_LENGTH) / ZONE_DESCRIPTOR_LENGTH);
    const built: Zone[] = [];
    let matching = 0;
    for (let i = first; i < this.zones.length; i++) {
      const z = this.zones[i];
      if (!reported(z, option)) continue;
      if (built.length < room) built.push(z);
      matching++;
    }
    const listed = partial ? Math.min(matching, fit) : matching;
    const available = REPORT_HEADER_LENGTH + listed * ZONE_DESCRIPTOR_LENGTH;
    const out = new Uint8Array(REPORT_HEADER_LENGTH + built.length * ZONE_DESCRIPTOR_LENGTH);
    const v = new DataView(out.buffer);
    v.setUint32(0, listed * ZONE_DESCRIPTOR_LENGTH);
    // Byte 4, SAME: 0, "zone types and lengths may differ" (always true to say, as tcmu-runner does).
    v.setBigUint64(8, BigInt(this.geo.capacity - 1));
    built.forEach((z, k) => writeDescriptor(v, REPORT_HEADER_LENGTH + k * ZONE_DESCRIPTOR_LENGTH, z));
    return out.subarray(0, Math.min(allocLen, available, out.length));
  }

  // ------------------------------------------------------------ READ / WRITE

  /**
   * Refuse a write the zone rules forbid; nothing changes. Checked in the
   * order of ZBC as libzbc tests it: a write running past its zone's end
   * first, then a full zone, then one off the write pointer, then open zone
   * resources.
   */
  checkWrite(lba: number, blocks: number): void {
    if (!this.hostManaged || blocks === 0) return;
    const first = this.zoneOf(lba);
    const last = this.zoneOf(lba + blocks - 1);
    if (first.type === ZoneType.CONVENTIONAL) {
      // Conventional zones take anything, but a write may not run on into a sequential one.
      if (last.type !== ZoneType.CONVENTIONAL) throw writeBoundaryViolation(lba);
      return;
    }
    if (last !== first) throw writeBoundaryViolation(lba);
    if (first.cond === ZoneCond.FULL) throw ScsiError.invalidField(LBA_FIELD);
    if (lba !== first.wp) throw ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.UNALIGNED_WRITE_COMMAND, { information: lba });
    const open = first.cond === ZoneCond.IMPLICIT_OPEN || first.cond === ZoneCond.EXPLICIT_OPEN;
    if (!open && this.nrExplicit >= this.geo.maxOpen) throw insufficientZoneResources();
  }

  /** After checkWrite() passed and the data is on the medium: move write pointers, open and fill zones. */
  commitWrite(lba: number, blocks: number): void {
    const end = lba + blocks;
    for (let at = lba; at < end;) {
      const z = this.zoneOf(at);
      const zoneEnd = z.start + z.len;
      const upto = Math.min(end, zoneEnd);
      if (z.type !== ZoneType.CONVENTIONAL && z.cond !== ZoneCond.FULL) {
        if (z.cond !== ZoneCond.IMPLICIT_OPEN && z.cond !== ZoneCond.EXPLICIT_OPEN) this.openImplicitly(z);
        if (at !== z.wp) z.nonSeq = true; // only an SWP zone gets here off its write pointer
        z.wp = Math.max(z.wp, upto);
        if (z.wp >= zoneEnd) this.finishZone(z);
        this.touch(z);
      }
      at = upto;
    }
  }

  /**
   * How to serve a read: runs from the medium and runs of zeros (blocks at
   * or past a sequential zone's write pointer hold no data). Throws what
   * ZBC says for reads a host-managed disk refuses.
   */
  readPlan(lba: number, blocks: number): ReadSegment[] {
    const end = lba + blocks;
    if (this.hostManaged && blocks > 0) this.checkRead(lba, end);
    const out: ReadSegment[] = [];
    const push = (at: number, n: number, zero: boolean) => {
      if (n <= 0) return;
      const prev = out[out.length - 1];
      if (prev && prev.zero === zero && prev.lba + prev.blocks === at) out[out.length - 1] = { lba: prev.lba, blocks: prev.blocks + n, zero };
      else out.push({ lba: at, blocks: n, zero });
    };
    for (let at = lba; at < end;) {
      const z = this.zoneOf(at);
      const upto = Math.min(end, z.start + z.len);
      if (z.type === ZoneType.CONVENTIONAL) push(at, upto - at, false);
      else {
        const data = Math.min(upto, Math.max(at, z.wp));
        push(at, data - at, false);
        push(data, upto - data, true);
      }
      at = upto;
    }
    return out;
  }

  private checkRead(lba: number, end: number): void {
    const first = this.zoneOf(lba);
    const last = this.zoneOf(end - 1);
    // ZBC-1 answers a read spanning conventional and sequential zones with
    // ATTEMPT TO READ INVALID DATA (ZBC-2 moved it to READ BOUNDARY VIOLATION).
    for (let i = this.index(first); i <= this.index(last); i++) {
      if ((this.zones[i].type === ZoneType.CONVENTIONAL) !== (first.type === ZoneType.CONVENTIONAL)) throw invalidDataRead(lba);
    }
    if (this.geo.urswrz || first.type === ZoneType.CONVENTIONAL) return;
    // Restricted reads: no block at or past a write pointer, then no zone end crossed.
    for (let i = this.index(first); i <= this.index(last); i++) {
      const z = this.zones[i];
      if (z.cond !== ZoneCond.FULL && Math.min(end, z.start + z.len) > z.wp) throw invalidDataRead(lba);
    }
    if (last !== first) throw ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.READ_BOUNDARY_VIOLATION, { information: lba });
  }
}

function reported(z: Zone, option: number): boolean {
  switch (option) {
    case ReportOption.ALL:
      return true;
    case ReportOption.EMPTY:
      return z.cond === ZoneCond.EMPTY;
    case ReportOption.IMPLICIT_OPEN:
      return z.cond === ZoneCond.IMPLICIT_OPEN;
    case ReportOption.EXPLICIT_OPEN:
      return z.cond === ZoneCond.EXPLICIT_OPEN;
    case ReportOption.CLOSED:
      return z.cond === ZoneCond.CLOSED;
    case ReportOption.FULL:
      return z.cond === ZoneCond.FULL;
    case ReportOption.READ_ONLY:
      return z.cond === ZoneCond.READ_ONLY;
    case ReportOption.OFFLINE:
      return z.cond === ZoneCond.OFFLINE;
    case ReportOption.RWP_RECOMMENDED:
      return z.reset;
    case ReportOption.NON_SEQ:
      return z.nonSeq;
    case ReportOption.NOT_WP:
      return z.cond === ZoneCond.NOT_WP;
    default:
      return false;
  }
}

/** A zone descriptor (ZBC 6.2.2.3), the layout REPORT ZONES and the metadata file share from byte 0. */
function writeDescriptor(v: DataView, off: number, z: Zone): void {
  v.setUint8(off, z.type & 0x0f);
  v.setUint8(off + 1, ((z.cond & 0x0f) << 4) | (z.nonSeq ? 0x02 : 0) | (z.reset ? 0x01 : 0));
  v.setBigUint64(off + 8, BigInt(z.len));
  v.setBigUint64(off + 16, BigInt(z.start));
  v.setBigUint64(off + 24, z.type === ZoneType.CONVENTIONAL ? NO_WRITE_POINTER : BigInt(z.wp));
}

function insufficientZoneResources(): ScsiError {
  return ScsiError.of(SenseKey.DATA_PROTECT, Asc.INSUFFICIENT_ZONE_RESOURCES);
}

function writeBoundaryViolation(lba: number): ScsiError {
  return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.WRITE_BOUNDARY_VIOLATION, { information: lba });
}

function invalidDataRead(lba: number): ScsiError {
  return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.ATTEMPT_TO_READ_INVALID_DATA, { information: lba });
}
