/**
 * Decoders for the SBC commands beyond plain READ/WRITE that tcmu-runner
 * emulates (tcmur_cmd_handler.c): WRITE SAME, UNMAP, COMPARE AND WRITE,
 * WRITE AND VERIFY, FORMAT UNIT and START STOP UNIT, plus VERIFY. Each
 * checks the CDB (and parameter list, where there is one) and returns what
 * the engine must do; none does IO. All throw ScsiError.
 */

import { be16, be32, be64, topBit } from './bytes.js';
import { checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import type { ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';

/**
 * Limits the engine advertises in the Block Limits VPD page and enforces;
 * tcmu-runner's (scsi.h) except MAXIMUM UNMAP LBA COUNT.
 */
export const TCMU_RUNNER_LIMITS = Object.freeze({
  /**
   * MAXIMUM UNMAP LBA COUNT: 1 Mi blocks per UNMAP descriptor.
   * tcmu-runner's VPD_MAX_UNMAP_LBA_COUNT is 32 Mi;
   * libiscsi's Inquiry.BlockLimits takes anything above 1 Mi, other than
   * FFFFFFFFh, as insane, and 1 Mi blocks is still 512 MiB at 512 bytes.
   */
  maxUnmapLbaCount: 1024 * 1024,
  /** VPD_MAX_UNMAP_BLOCK_DESC_COUNT. */
  maxUnmapDescriptors: 4,
  /** MAX_CAW_LENGTH. */
  maxCompareAndWriteBlocks: 1,
  /** VPD_MAX_WRITE_SAME_LENGTH. */
  maxWriteSameBlocks: 0xffffffff,
});

/** A block range to unmap; the same shape as the handler API's LbaRange. */
export interface UnmapRange {
  readonly lba: number;
  readonly blocks: number;
}

function inRange(dev: ScsiDeviceInfo, lba: bigint, blocks: number | bigint): number {
  if (lba + BigInt(blocks) > BigInt(Math.max(0, dev.numLbas))) throw ScsiError.lbaOutOfRange();
  return Number(lba);
}

/** WRPROTECT/VRPROTECT (byte 1, bits 7:5) ask for protection information, which is never formatted here. */
function noProtection(cdb: Uint8Array): void {
  if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
}

// ---------------------------------------------------------------- WRITE SAME

export interface WriteSameFields {
  readonly lba: number;
  readonly blocks: number;
  /** UNMAP bit: the range may be unmapped when the data is what unmapped blocks read as. */
  readonly unmap: boolean;
  /** NDOB (16 only): no Data-Out Buffer, the block is all zeros. */
  readonly ndob: boolean;
}

/**
 * WRITE SAME (10) and (16). WSNZ is 1 in the Block Limits page, so a
 * NUMBER OF LOGICAL BLOCKS of 0 is refused; ANCHOR is not supported
 * (ANC_SUP = 0), and PBDATA/LBDATA need protection information.
 */
export function decodeWriteSame(cdb: Uint8Array, dev: ScsiDeviceInfo): WriteSameFields {
  const sixteen = cdb[0] === 0x93;
  const len = sixteen ? 16 : 10;
  checkControlByte(cdb, len);
  noProtection(cdb);
  if (cdb[1] & 0x10) throw ScsiError.invalidField(1, 4); // ANCHOR
  if (cdb[1] & 0x04) throw ScsiError.invalidField(1, 2); // PBDATA
  if (cdb[1] & 0x02) throw ScsiError.invalidField(1, 1); // LBDATA
  if (!sixteen) requireClear(cdb, 1, 0x01); // obsolete in (10)
  requireClear(cdb, sixteen ? 14 : 6, 0xe0);
  const lba = sixteen ? be64(cdb, 2) : BigInt(be32(cdb, 2));
  const blocks = sixteen ? be32(cdb, 10) : be16(cdb, 7);
  const lengthByte = sixteen ? 10 : 7;
  if (blocks === 0) throw ScsiError.invalidField(lengthByte); // WSNZ = 1
  const max = dev.maxWriteSameBlocks ?? 0;
  if (max > 0 && blocks > max) throw ScsiError.invalidField(lengthByte);
  if (dev.writeProtect) throw ScsiError.writeProtected();
  return { lba: inRange(dev, lba, blocks), blocks, unmap: (cdb[1] & 0x08) !== 0, ndob: sixteen && (cdb[1] & 0x01) !== 0 };
}

// ---------------------------------------------------------------- UNMAP

/**
 * UNMAP (SBC-3 5.28): the CDB and the parameter list, validated entirely
 * before anything is unmapped (tcmu-runner checks descriptor by descriptor
 * and may have unmapped the first ones when a later one is bad).
 *
 * - PARAMETER LIST LENGTH 0: nothing to do.
 * - 1..7, or more than the Data-Out Buffer holds: PARAMETER LIST LENGTH ERROR.
 * - A BLOCK DESCRIPTOR DATA LENGTH that is not a multiple of 16, or runs
 *   past the list, loses its incomplete last descriptor (SBC-3 says to
 *   ignore it, and tcmu-runner does).
 * - More descriptors than MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT, or one longer
 *   than MAXIMUM UNMAP LBA COUNT: INVALID FIELD IN PARAMETER LIST.
 * - A range past the end: LBA OUT OF RANGE.
 * Descriptors of 0 blocks are dropped.
 */
export function decodeUnmap(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): UnmapRange[] {
  checkControlByte(cdb, 10);
  if (cdb[1] & 0x01) throw ScsiError.invalidField(1, 0); // ANCHOR: ANC_SUP = 0
  requireClear(cdb, 1, 0xfe);
  requireZeroBytes(cdb, 2, 6);
  requireClear(cdb, 6, 0xe0);
  const len = be16(cdb, 7);
  if (len === 0) return [];
  if (len < 8) throw ScsiError.parameterListLength();
  if (!dataOut || dataOut.length < len) throw ScsiError.parameterListLength();
  if (dev.writeProtect) throw ScsiError.writeProtected();
  const p = dataOut.subarray(0, len);
  // UNMAP DATA LENGTH (0..1) is informational: truncation is judged from BDDL and the list length.
  let bddl = be16(p, 2) & ~0xf;
  bddl = Math.min(bddl, (len - 8) & ~0xf);
  const count = bddl / 16;
  const maxDesc = dev.maxUnmapDescriptors;
  if (maxDesc > 0 && count > maxDesc) throw ScsiError.invalidParameter(2);
  const ranges: UnmapRange[] = [];
  for (let i = 0; i < count; i++) {
    const off = 8 + i * 16;
    const lba = be64(p, off);
    const blocks = be32(p, off + 8);
    if (dev.maxUnmapLbaCount > 0 && blocks > dev.maxUnmapLbaCount) throw ScsiError.invalidParameter(off + 8);
    if (lba + BigInt(blocks) > BigInt(dev.numLbas)) throw ScsiError.lbaOutOfRange(lba);
    if (blocks > 0) ranges.push({ lba: Number(lba), blocks });
  }
  return ranges;
}

// ---------------------------------------------------------------- COMPARE AND WRITE

export interface CompareAndWriteFields {
  readonly lba: number;
  readonly blocks: number;
  readonly fua: boolean;
}

/**
 * COMPARE AND WRITE (SBC-3 5.2). NUMBER OF LOGICAL BLOCKS 0 is no error and
 * does nothing (blocks: 0 comes back); more than MAXIMUM COMPARE AND WRITE
 * LENGTH is INVALID FIELD IN CDB.
 *
 * With `dataLength` (the Data-Out Buffer the initiator sent), anything but
 * exactly 2 x NUMBER OF LOGICAL BLOCKS blocks is INVALID FIELD IN CDB at
 * that field, 0 blocks included: the field does not describe the data,
 * e.g. a count of 256 truncated to 0 in its one byte (libiscsi 1.19's
 * CompareAndWrite tests send that and expect the refusal), or a transfer
 * length tampered with in transit (its InvalidDataOutSize test).
 * tcmu-runner refuses a mismatch too (check_iovec_length, as HARDWARE
 * ERROR), but only for 1 block or more.
 */
export function decodeCompareAndWrite(cdb: Uint8Array, dev: ScsiDeviceInfo, dataLength?: number): CompareAndWriteFields {
  checkControlByte(cdb, 16);
  noProtection(cdb);
  requireClear(cdb, 1, 0x05); // DPO (4), FUA (3) and FUA_NV (1) are defined
  requireZeroBytes(cdb, 10, 13);
  requireClear(cdb, 14, 0xe0);
  const lba = be64(cdb, 2);
  const blocks = cdb[13];
  const fua = (cdb[1] & 0x08) !== 0;
  if (blocks > (dev.maxCompareAndWriteBlocks ?? 0)) throw ScsiError.invalidField(13);
  if (dataLength !== undefined && dataLength !== 2 * blocks * dev.blockSize) throw ScsiError.invalidField(13);
  if (blocks === 0) {
    inRange(dev, lba, 0);
    return { lba: Number(lba), blocks: 0, fua };
  }
  if (dev.writeProtect) throw ScsiError.writeProtected();
  return { lba: inRange(dev, lba, blocks), blocks, fua };
}

// ---------------------------------------------------------------- VERIFY / WRITE AND VERIFY

export interface VerifyFields {
  readonly lba: number;
  readonly blocks: number;
  /**
   * BYTCHK: 0 verify the medium only (read it back, no data-out); 1 compare
   * with the Data-Out Buffer; 3 compare every block with one data-out block.
   */
  readonly bytchk: 0 | 1 | 3;
}

function lengthLayout(cdb: Uint8Array): { len: number; lba: bigint; blocks: number; lengthByte: number; groupByte: number } {
  switch (cdb[0] >> 5) {
    case 1: // (10)
      return { len: 10, lba: BigInt(be32(cdb, 2)), blocks: be16(cdb, 7), lengthByte: 7, groupByte: 6 };
    case 5: // (12)
      return { len: 12, lba: BigInt(be32(cdb, 2)), blocks: be32(cdb, 6), lengthByte: 6, groupByte: 10 };
    default: // (16)
      return { len: 16, lba: be64(cdb, 2), blocks: be32(cdb, 10), lengthByte: 10, groupByte: 14 };
  }
}

/**
 * VERIFY (10)/(12)/(16) (SBC-3 5.33-5.35; BYTCHK 11b from SBC-4). A
 * VERIFICATION LENGTH of 0 verifies nothing and is no error. With data
 * transferred (BYTCHK 01b) the length is bound by MAXIMUM TRANSFER LENGTH.
 */
export function decodeVerify(cdb: Uint8Array, dev: ScsiDeviceInfo): VerifyFields {
  const l = lengthLayout(cdb);
  checkControlByte(cdb, l.len);
  noProtection(cdb); // VRPROTECT
  requireClear(cdb, 1, 0x01);
  requireClear(cdb, l.groupByte, 0xe0);
  const bytchk = (cdb[1] >> 1) & 0x3;
  if (bytchk === 2) throw ScsiError.invalidField(1, 2);
  if (bytchk === 1 && dev.maxXferBlocks > 0 && l.blocks > dev.maxXferBlocks) throw ScsiError.invalidField(l.lengthByte);
  const lba = inRange(dev, l.lba, l.blocks);
  return { lba, blocks: l.blocks, bytchk: bytchk as 0 | 1 | 3 };
}

export interface WriteVerifyFields {
  readonly lba: number;
  readonly blocks: number;
  /** 1: compare what is read back with what was written; 0: only read it back. */
  readonly bytchk: 0 | 1;
}

/**
 * WRITE AND VERIFY (10)/(12)/(16). BYTCHK is bit 1 (SBC-3); SBC-4's 2-bit
 * field only adds reserved values, which are refused.
 */
export function decodeWriteVerify(cdb: Uint8Array, dev: ScsiDeviceInfo): WriteVerifyFields {
  const l = lengthLayout(cdb);
  checkControlByte(cdb, l.len);
  noProtection(cdb);
  if (cdb[1] & 0x04) throw ScsiError.invalidField(1, 2);
  requireClear(cdb, 1, 0x09); // bit 3 reserved, bit 0 obsolete
  requireClear(cdb, l.groupByte, 0xe0);
  if (dev.maxXferBlocks > 0 && l.blocks > dev.maxXferBlocks) throw ScsiError.invalidField(l.lengthByte);
  if (dev.writeProtect) throw ScsiError.writeProtected();
  const lba = inRange(dev, l.lba, l.blocks);
  return { lba, blocks: l.blocks, bytchk: ((cdb[1] >> 1) & 1) as 0 | 1 };
}

// ---------------------------------------------------------------- PRE-FETCH, ORWRITE, WRITE ATOMIC, READ DEFECT DATA

/**
 * PRE-FETCH (10)/(16) (SBC-3 5.9/5.10): checked and answered GOOD. There
 * is no cache of our own to fill, and GOOD is what SBC asks for when the
 * cache cannot take the blocks (CONDITION MET means they are now cached).
 * IMMED is accepted: either way the command has nothing left to do.
 */
export function checkPreFetch(cdb: Uint8Array, dev: ScsiDeviceInfo): void {
  const ten = cdb[0] === 0x34;
  const len = ten ? 10 : 16;
  checkControlByte(cdb, len);
  requireClear(cdb, 1, 0xfd);
  requireClear(cdb, ten ? 6 : 14, 0xe0);
  const lba = ten ? BigInt(be32(cdb, 2)) : be64(cdb, 2);
  inRange(dev, lba, ten ? be16(cdb, 7) : be32(cdb, 10));
}

export interface OrWriteFields {
  readonly lba: number;
  readonly blocks: number;
  readonly fua: boolean;
}

/** ORWRITE (16) (SBC-3 5.8): the Data-Out ORed into the blocks, read-modify-write under an exclusive hold. */
export function decodeOrWrite(cdb: Uint8Array, dev: ScsiDeviceInfo): OrWriteFields {
  checkControlByte(cdb, 16);
  noProtection(cdb); // ORPROTECT
  requireClear(cdb, 1, 0x07);
  requireClear(cdb, 14, 0xe0);
  const blocks = be32(cdb, 10);
  if (dev.maxXferBlocks > 0 && blocks > dev.maxXferBlocks) throw ScsiError.invalidField(10);
  if (dev.writeProtect) throw ScsiError.writeProtected();
  return { lba: inRange(dev, be64(cdb, 2), blocks), blocks, fua: (cdb[1] & 0x08) !== 0 };
}

/**
 * WRITE ATOMIC (16) (SBC-4 5.48): offered only when the handler promises
 * atomic writes (maxAtomicBlocks); ATOMIC BOUNDARY 0 only (no boundary
 * granularity is reported), a transfer longer than the atomic maximum is
 * refused at its field, an unaligned one too.
 */
export function decodeWriteAtomic(cdb: Uint8Array, dev: ScsiDeviceInfo): OrWriteFields {
  const max = dev.maxAtomicBlocks ?? 0;
  if (!max) throw ScsiError.invalidOpcode();
  checkControlByte(cdb, 16);
  noProtection(cdb);
  requireClear(cdb, 1, 0x07);
  requireZeroBytes(cdb, 10, 12); // ATOMIC BOUNDARY
  requireClear(cdb, 14, 0xe0);
  const blocks = be16(cdb, 12);
  if (blocks > max) throw ScsiError.invalidField(12);
  if (dev.writeProtect) throw ScsiError.writeProtected();
  const lba = inRange(dev, be64(cdb, 2), blocks);
  const align = dev.atomicAlignmentBlocks ?? 0;
  if (align > 1 && lba % align !== 0) throw ScsiError.invalidField(2);
  return { lba, blocks, fua: (cdb[1] & 0x08) !== 0 };
}

/**
 * READ DEFECT DATA (10)/(12) (SBC-3 5.18/5.19): a medium without defects.
 * The header echoes the requested lists as valid and the requested format,
 * with an empty list.
 */
export function readDefectData(cdb: Uint8Array): Uint8Array {
  const ten = cdb[0] === 0x37;
  checkControlByte(cdb, ten ? 10 : 12);
  let req: number;
  let alloc: number;
  let out: Uint8Array;
  if (ten) {
    requireClear(cdb, 1, 0xff);
    requireClear(cdb, 2, 0xe0);
    requireZeroBytes(cdb, 3, 7);
    req = cdb[2] & 0x1f;
    alloc = be16(cdb, 7);
    out = new Uint8Array(4);
  } else {
    requireClear(cdb, 1, 0xe0);
    requireZeroBytes(cdb, 10, 11);
    req = cdb[1] & 0x1f;
    alloc = be32(cdb, 6);
    out = new Uint8Array(8); // GENERATION CODE 0: not reported; DEFECT LIST LENGTH 0
  }
  out[1] = req; // PLISTV, GLISTV as asked, DEFECT LIST FORMAT as asked
  return out.subarray(0, Math.min(alloc, out.length));
}

// ---------------------------------------------------------------- FORMAT UNIT

export interface FormatUnitFields {
  /** IMMED in the parameter list header: report GOOD at once, format in the background. */
  readonly immed: boolean;
}

/**
 * FORMAT UNIT (SBC-3 5.3). The unit is "formatted" by writing zeros over
 * every block, as tcmu-runner does. Accepted: FMTDATA 0 (no parameter
 * list), or a short/long parameter list header with no defect list, no
 * initialization pattern and no protection information. tcmu-runner reads
 * neither the CDB nor the list; we refuse what we would not honour.
 */
export function decodeFormatUnit(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): FormatUnitFields {
  checkControlByte(cdb, 6);
  if (cdb[1] & 0xc0) throw ScsiError.invalidField(1, 7); // FMTPINFO: no protection information
  if (cdb[4] & 0x03) throw ScsiError.invalidField(4, 1); // FFMT (SBC-4): only a full format
  requireZeroBytes(cdb, 3, 5); // obsolete (interleave)
  if (dev.writeProtect) throw ScsiError.writeProtected();
  const fmtdata = (cdb[1] & 0x10) !== 0;
  if (!fmtdata) return { immed: false };
  const long = (cdb[1] & 0x20) !== 0;
  const hdr = long ? 8 : 4;
  if (!dataOut || dataOut.length < hdr) throw ScsiError.parameterListLength();
  if (dataOut[0] & 0x07) throw ScsiError.invalidParameter(0, topBit(dataOut[0] & 0x07)); // PROTECTION FIELD USAGE
  if (dataOut[0] & 0xf8) throw ScsiError.invalidParameter(0, topBit(dataOut[0] & 0xf8));
  const flags = dataOut[1];
  const fov = (flags & 0x80) !== 0;
  // FOV = 0: DPRY, DCRT, STPF and IP must be 0. With FOV = 1 the defect
  // options are moot here (no defect lists), but an initialization pattern is not offered.
  if (!fov && flags & 0x78) throw ScsiError.invalidParameter(1, topBit(flags & 0x78));
  if (flags & 0x08) throw ScsiError.invalidParameter(1, 3); // IP
  if (flags & 0x04) throw ScsiError.invalidParameter(1, 2); // obsolete
  const defectLen = long ? be32(dataOut, 4) : be16(dataOut, 2);
  if (long && dataOut[3] & 0xff) throw ScsiError.invalidParameter(3, topBit(dataOut[3])); // P_I_INFORMATION / exponent
  if (long && dataOut[2] !== 0) throw ScsiError.invalidParameter(2, topBit(dataOut[2]));
  if (defectLen !== 0) throw ScsiError.invalidParameter(long ? 4 : 2);
  return { immed: (flags & 0x02) !== 0 };
}

// ---------------------------------------------------------------- START STOP UNIT

/**
 * START STOP UNIT (SBC-3 5.25), as tcmu-runner answers it: a POWER
 * CONDITION other than 0 and START = 0 are refused (the unit cannot be
 * stopped), anything else is GOOD. LOEJ is ignored on a fixed medium.
 */
export function checkStartStopUnit(cdb: Uint8Array): void {
  checkControlByte(cdb, 6);
  requireClear(cdb, 1, 0xfe); // IMMED
  requireZeroBytes(cdb, 2, 3);
  requireClear(cdb, 3, 0xf0); // POWER CONDITION MODIFIER in 3:0
  if (cdb[4] & 0xf0) throw ScsiError.invalidField(4, 7);
  requireClear(cdb, 4, 0x08);
  if (!(cdb[4] & 0x01)) throw ScsiError.invalidField(4, 0);
}
