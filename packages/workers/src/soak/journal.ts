/**
 * The soak's record of what the initiator was promised, and the rule a
 * LUN's content is checked against.
 *
 * Every 512-byte sector written carries a header: magic, LUN, its own sector
 * number, the write's sequence number and extent, and a checksum over the
 * sector. So a sector that is corrupt, belongs elsewhere (misplaced), or
 * holds a version older than the last acknowledged write of that sector
 * (lost) is seen, and so is an acknowledged write of which only some
 * sectors hold it (torn).
 *
 * The load never has two commands on overlapping LBAs in flight on one LUN,
 * so "newest" is the order of issue. A sector may hold: the newest write
 * acknowledged (status GOOD) over it, or a later write over it that was not
 * acknowledged (it may or may not have reached the media: BUSY from a ring
 * reset, a daemon killed under it); 0 (zeros) if nothing was acknowledged.
 * A write that never reached the ring (cmd id 0: refused by a blocked
 * device, never queued) cannot have landed and is not allowed.
 *
 * One exception, marked by the caller: a write failed by a ring reset that an
 * admin made under a live daemon may leave any sector of this LUN over its
 * range (indeterminate, as SBC allows for a failed write), since the kernel
 * rewrites the ring and reuses the data area while the daemon may still be
 * reading an entry or running an IO of it (docs/RELIABILITY.md). Such
 * sectors are counted apart, and the next acknowledged write over them ends it.
 */

export const SECTOR = 512;
const MAGIC = 0x4b414f53; // "SOAK"
const H_MAGIC = 0;
const H_LUN = 4;
const H_SECTOR = 8;
const H_SEQ = 12;
const H_FIRST = 16;
const H_COUNT = 20;
const H_SUM = SECTOR - 4;

function checksum(dv: DataView, at: number): number {
  let h = 0x811c9dc5;
  for (let o = at; o < at + H_SUM; o += 4) h = Math.imul(h ^ dv.getUint32(o, true), 0x01000193) >>> 0;
  return h;
}

/** Fill `buf` (whole sectors) with version `seq` of sectors first.. of LUN `lun`. */
export function fillSectors(buf: Uint8Array, lun: number, firstSector: number, seq: number): void {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const count = buf.byteLength / SECTOR;
  for (let i = 0; i < count; i++) {
    const at = i * SECTOR;
    const sector = firstSector + i;
    dv.setUint32(at + H_MAGIC, MAGIC, true);
    dv.setUint32(at + H_LUN, lun, true);
    dv.setUint32(at + H_SECTOR, sector, true);
    dv.setUint32(at + H_SEQ, seq, true);
    dv.setUint32(at + H_FIRST, firstSector, true);
    dv.setUint32(at + H_COUNT, count, true);
    let x = (Math.imul(seq, 0x9e3779b1) ^ Math.imul(sector, 0x85ebca6b) ^ lun) >>> 0 || 1;
    for (let o = at + 24; o < at + H_SUM; o += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      dv.setUint32(o, x >>> 0, true);
    }
    dv.setUint32(at + H_SUM, checksum(dv, at), true);
  }
}

/** What one sector holds: a version of it (0: never written, all zeros), or why it holds none. */
export type SectorRead = { version: number } | { bad: string };

export function readSector(dv: DataView, at: number, lun: number, sector: number): SectorRead {
  if (dv.getUint32(at + H_MAGIC, true) === 0) {
    for (let o = at; o < at + SECTOR; o += 4) if (dv.getUint32(o, true) !== 0) return { bad: 'no header, not zeros' };
    return { version: 0 };
  }
  if (dv.getUint32(at + H_MAGIC, true) !== MAGIC) return { bad: 'no header' };
  if (dv.getUint32(at + H_SUM, true) !== checksum(dv, at)) return { bad: 'bad checksum' };
  const l = dv.getUint32(at + H_LUN, true);
  const s = dv.getUint32(at + H_SECTOR, true);
  if (l !== lun || s !== sector) return { bad: `misplaced: holds LUN ${l} sector ${s}` };
  return { version: dv.getUint32(at + H_SEQ, true) };
}

export interface CheckOutcome {
  sectors: number;
  /** Acknowledged writes none of whose checked sectors hold them (nor anything allowed). */
  lostWrites: number;
  /** Acknowledged writes some of whose checked sectors hold them and some an older version. */
  tornWrites: number;
  /** Sectors older than their last acknowledged write. */
  staleSectors: number;
  /** Corrupt, misplaced, or holding a version that was never allowed there. */
  mismatches: number;
  /** Sectors holding something else of this LUN where an admin's reset left them indeterminate (allowed). */
  indeterminate: number;
  /** A few lines saying what was wrong, for the report. */
  samples: string[];
}

export function emptyOutcome(): CheckOutcome {
  return { sectors: 0, lostWrites: 0, tornWrites: 0, staleSectors: 0, mismatches: 0, indeterminate: 0, samples: [] };
}

export function addOutcome(into: CheckOutcome, o: CheckOutcome): void {
  into.sectors += o.sectors;
  into.lostWrites += o.lostWrites;
  into.tornWrites += o.tornWrites;
  into.staleSectors += o.staleSectors;
  into.mismatches += o.mismatches;
  into.indeterminate += o.indeterminate;
  for (const s of o.samples) if (into.samples.length < 20) into.samples.push(s);
}

/** The writes issued to one LUN and which of them were acknowledged. */
export class LunJournal {
  /** Newest acknowledged version of each sector (0: none). */
  private readonly acked: Uint32Array;
  /** Versions issued after it and not acknowledged, by sector. */
  private readonly unacked = new Map<number, number[]>();
  /** 1: left indeterminate by a write an admin's ring reset failed, until the next acknowledged write. */
  private readonly indeterminate: Uint8Array;
  /** Each version's extent, for telling a lost write from a torn one. */
  private extentFirst = new Uint32Array(1 << 16);
  private extentCount = new Uint32Array(1 << 16);
  private nextSeq = 1;
  ackedWrites = 0;
  unackedWrites = 0;

  constructor(readonly lun: number, readonly maxSectors: number) {
    this.acked = new Uint32Array(maxSectors);
    this.indeterminate = new Uint8Array(maxSectors);
  }

  /** A new version for sectors first..first+count-1; fill the data with fillSectors(). */
  issue(firstSector: number, count: number): number {
    if (firstSector + count > this.maxSectors) throw new RangeError(`write past the journal's ${this.maxSectors} sectors`);
    const seq = this.nextSeq++;
    if (seq >= this.extentFirst.length) {
      const f = new Uint32Array(this.extentFirst.length * 2);
      f.set(this.extentFirst);
      this.extentFirst = f;
      const c = new Uint32Array(this.extentCount.length * 2);
      c.set(this.extentCount);
      this.extentCount = c;
    }
    this.extentFirst[seq] = firstSector;
    this.extentCount[seq] = count;
    return seq;
  }

  /** The write came back GOOD: it is what these sectors must hold from now on. */
  acknowledged(seq: number): void {
    this.ackedWrites++;
    const first = this.extentFirst[seq];
    for (let s = first, end = first + this.extentCount[seq]; s < end; s++) {
      this.acked[s] = seq;
      this.unacked.delete(s);
      this.indeterminate[s] = 0;
    }
  }

  /**
   * The write failed after reaching the ring (reachedRing) or before it (it cannot have landed);
   * `indeterminate`: failed by a ring reset an admin made under a live daemon.
   */
  notAcknowledged(seq: number, reachedRing: boolean, indeterminate = false): void {
    this.unackedWrites++;
    if (!reachedRing) return;
    const first = this.extentFirst[seq];
    for (let s = first, end = first + this.extentCount[seq]; s < end; s++) {
      if (indeterminate) this.indeterminate[s] = 1;
      const l = this.unacked.get(s);
      if (l) l.push(seq);
      else this.unacked.set(s, [seq]);
    }
  }

  /** Versions this sector may hold now. */
  allowed(sector: number): number[] {
    return [this.acked[sector], ...(this.unacked.get(sector) ?? [])];
  }

  /**
   * Check sectors firstSector.. as read back in `data` (no write over them in flight).
   * A write is torn if some of its sectors here hold what they must and others an older version.
   */
  check(firstSector: number, data: Uint8Array): CheckOutcome {
    const out = emptyOutcome();
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const count = data.byteLength / SECTOR;
    out.sectors = count;
    let staleBy: Map<number, number> | undefined; // acknowledged version -> sectors here older than it
    for (let i = 0; i < count; i++) {
      const sector = firstSector + i;
      const r = readSector(dv, i * SECTOR, this.lun, sector);
      if (this.indeterminate[sector] && ('bad' in r ? r.bad.startsWith(`misplaced: holds LUN ${this.lun} `) : !this.allowed(sector).includes(r.version))) {
        out.indeterminate++;
        continue;
      }
      if ('bad' in r) {
        out.mismatches++;
        if (out.samples.length < 5) out.samples.push(`LUN ${this.lun} sector ${sector}: ${r.bad}`);
        continue;
      }
      const acked = this.acked[sector];
      if (r.version === acked) continue;
      const later = this.unacked.get(sector);
      if (later && later.includes(r.version)) continue;
      if (r.version < acked) {
        out.staleSectors++;
        staleBy ??= new Map();
        staleBy.set(acked, (staleBy.get(acked) ?? 0) + 1);
        if (out.samples.length < 5) out.samples.push(`LUN ${this.lun} sector ${sector}: holds version ${r.version}, older than acknowledged write ${acked}`);
      } else {
        out.mismatches++;
        if (out.samples.length < 5) out.samples.push(`LUN ${this.lun} sector ${sector}: holds version ${r.version}, never allowed there (acknowledged ${acked}, unacknowledged ${later?.join(' ') ?? 'none'})`);
      }
    }
    if (staleBy) {
      for (const [seq, stale] of staleBy) {
        // Sectors of that write, within what was read, that must still hold it.
        const from = Math.max(this.extentFirst[seq], firstSector);
        const to = Math.min(this.extentFirst[seq] + this.extentCount[seq], firstSector + count);
        let current = 0;
        for (let s = from; s < to; s++) if (this.acked[s] === seq) current++;
        if (stale < current) out.tornWrites++;
        else out.lostWrites++;
      }
    }
    return out;
  }
}
