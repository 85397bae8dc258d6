/**
 * EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18), with
 * tcmu-runner's copy manager limits: identification descriptor CSCDs
 * (type E4h, NAA designators) and block-to-block segments (type 02h), LIST
 * ID USAGE 11b only (SNLID = 1), no inline data.
 *
 * Parsing here is pure; finding the devices behind the designators and
 * moving the blocks is the engine's work.
 */

import { be16, be32, be64, put16, put32 } from './bytes.js';
import { checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import { Asc, ScsiError } from './sense.js';

/** RECEIVE COPY RESULTS service actions. */
export const CopyResultsAction = {
  COPY_STATUS: 0x00,
  RECEIVE_DATA: 0x01,
  OPERATING_PARAMETERS: 0x03,
  FAILED_SEGMENT_DETAILS: 0x04,
} as const;

/** The copy manager's limits, as RECEIVE COPY RESULTS reports them (tcmu-runner's scsi_defs.h). */
export const XCOPY_LIMITS = Object.freeze({
  maxTargetDescriptors: 2,
  maxSegmentDescriptors: 1,
  maxDescriptorListLength: 1024,
  maxSegmentLength: 16 * 1024 * 1024,
  totalConcurrentCopies: 1,
  maxConcurrentCopies: 1,
  dataSegmentGranularityLog2: 9,
  inlineDataGranularityLog2: 9,
  heldDataGranularityLog2: 9,
});

export const XCOPY_HEADER_LENGTH = 16;
export const XCOPY_TARGET_DESCRIPTOR_LENGTH = 32;
export const XCOPY_B2B_SEGMENT_LENGTH = 28;
/** Identification descriptor CSCD. */
export const XCOPY_TARGET_TYPE_ID = 0xe4;
/** Block device to block device segment. */
export const XCOPY_SEGMENT_TYPE_B2B = 0x02;

/** One block-to-block segment with its source and destination resolved to NAA designators. */
export interface XcopySegment {
  /** 16-byte NAA IEEE Registered Extended designator of the source / destination LU. */
  readonly source: Uint8Array;
  readonly destination: Uint8Array;
  readonly sourceLba: bigint;
  readonly destinationLba: bigint;
  readonly blocks: number;
}

const invalidParam = (byte: number, bit?: number) => ScsiError.invalidParameter(byte, bit);

/**
 * EXTENDED COPY: CDB checks and the LID1 parameter list. An empty list
 * means "do nothing" (an empty array comes back).
 *
 * - a list shorter than its header, or than header + descriptors: PARAMETER
 *   LIST LENGTH ERROR, as is one whose descriptors exceed MAXIMUM DESCRIPTOR
 *   LIST LENGTH;
 * - descriptor list lengths that are not whole descriptors, a segment
 *   DESCRIPTOR LENGTH other than 18h, a designator that is not a 16-byte
 *   binary NAA for the LU, a CSCD index past the list, inline data, a LIST
 *   ID USAGE other than 11b: INVALID FIELD IN PARAMETER LIST;
 * - too many descriptors: TOO MANY TARGET/SEGMENT DESCRIPTORS; other
 *   descriptor types: UNSUPPORTED TARGET/SEGMENT DESCRIPTOR TYPE CODE.
 */
export function decodeExtendedCopy(cdb: Uint8Array, dataOut: Uint8Array | undefined, blockSize: number): XcopySegment[] {
  checkControlByte(cdb, 16);
  // Service action 00h is EXTENDED COPY (LID1); LID4 (01h) is not offered.
  if (cdb[1] & 0x1f) throw ScsiError.invalidField(1, 4);
  requireClear(cdb, 1, 0xe0);
  requireZeroBytes(cdb, 2, 10);
  requireZeroBytes(cdb, 14, 15);
  const len = be32(cdb, 10);
  if (len === 0) return [];
  if (!dataOut || dataOut.length < len || len < XCOPY_HEADER_LENGTH) throw ScsiError.parameterListLength();
  const p = dataOut.subarray(0, len);

  // LIST ID USAGE 11b with LIST IDENTIFIER 0: no status is held for RECEIVE COPY RESULTS.
  if ((p[1] & 0x18) !== 0x18) throw invalidParam(1, 4);
  if (p[0] !== 0) throw invalidParam(0);
  const tdll = be16(p, 2);
  const sdll = be32(p, 8);
  const inline = be32(p, 12);
  if (tdll === 0 || tdll % XCOPY_TARGET_DESCRIPTOR_LENGTH !== 0) throw invalidParam(2);
  if (sdll === 0 || sdll % XCOPY_B2B_SEGMENT_LENGTH !== 0) throw invalidParam(8);
  if (inline !== 0) throw invalidParam(12);
  if (tdll + sdll > XCOPY_LIMITS.maxDescriptorListLength) throw ScsiError.parameterListLength();
  if (len < XCOPY_HEADER_LENGTH + tdll + sdll) throw ScsiError.parameterListLength();
  const targets = tdll / XCOPY_TARGET_DESCRIPTOR_LENGTH;
  const segments = sdll / XCOPY_B2B_SEGMENT_LENGTH;
  if (targets > XCOPY_LIMITS.maxTargetDescriptors) throw ScsiError.parameterError(Asc.TOO_MANY_TARGET_DESCRIPTORS, 2);
  if (segments > XCOPY_LIMITS.maxSegmentDescriptors) throw ScsiError.parameterError(Asc.TOO_MANY_SEGMENT_DESCRIPTORS, 8);

  const naa: Uint8Array[] = [];
  for (let i = 0; i < targets; i++) {
    const off = XCOPY_HEADER_LENGTH + i * XCOPY_TARGET_DESCRIPTOR_LENGTH;
    if (p[off] !== XCOPY_TARGET_TYPE_ID) throw ScsiError.parameterError(Asc.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE, off);
    // Designation descriptor at off+4: binary code set, LU association, NAA type, 16 bytes of NAA 6.
    if ((p[off + 4] & 0x0f) !== 0x1) throw invalidParam(off + 4, 3);
    if ((p[off + 5] & 0x30) !== 0x00) throw invalidParam(off + 5, 5);
    if ((p[off + 5] & 0x0f) !== 0x3) throw invalidParam(off + 5, 3);
    if (p[off + 7] !== 16) throw invalidParam(off + 7);
    if (p[off + 8] >> 4 !== 0x6) throw invalidParam(off + 8, 7);
    naa.push(p.slice(off + 8, off + 24));
  }

  const out: XcopySegment[] = [];
  for (let i = 0; i < segments; i++) {
    const off = XCOPY_HEADER_LENGTH + tdll + i * XCOPY_B2B_SEGMENT_LENGTH;
    if (p[off] !== XCOPY_SEGMENT_TYPE_B2B) throw ScsiError.parameterError(Asc.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE, off);
    if (be16(p, off + 2) !== XCOPY_B2B_SEGMENT_LENGTH - 4) throw invalidParam(off + 2);
    const s = be16(p, off + 4);
    const d = be16(p, off + 6);
    if (s >= naa.length) throw invalidParam(off + 4);
    if (d >= naa.length) throw invalidParam(off + 6);
    const blocks = be16(p, off + 10);
    if (blocks * blockSize > XCOPY_LIMITS.maxSegmentLength) throw invalidParam(off + 10);
    out.push({ source: naa[s], destination: naa[d], sourceLba: be64(p, off + 12), destinationLba: be64(p, off + 20), blocks });
  }
  return out;
}

/** RECEIVE COPY RESULTS, OPERATING PARAMETERS data (46 bytes, AVAILABLE DATA 42), as tcmu-runner lays it out. */
export function copyOperatingParameters(): Uint8Array {
  const b = new Uint8Array(46);
  put32(b, 0, 42);
  b[4] = 0x01; // SNLID
  put16(b, 8, XCOPY_LIMITS.maxTargetDescriptors);
  put16(b, 10, XCOPY_LIMITS.maxSegmentDescriptors);
  put32(b, 12, XCOPY_LIMITS.maxDescriptorListLength);
  put32(b, 16, XCOPY_LIMITS.maxSegmentLength);
  put16(b, 34, XCOPY_LIMITS.totalConcurrentCopies);
  b[36] = XCOPY_LIMITS.maxConcurrentCopies;
  b[37] = XCOPY_LIMITS.dataSegmentGranularityLog2;
  b[38] = XCOPY_LIMITS.inlineDataGranularityLog2;
  b[39] = XCOPY_LIMITS.heldDataGranularityLog2;
  b[43] = 2; // IMPLEMENTED DESCRIPTOR LIST LENGTH
  b[44] = XCOPY_SEGMENT_TYPE_B2B;
  b[45] = XCOPY_TARGET_TYPE_ID;
  return b;
}

/**
 * RECEIVE COPY RESULTS. Only OPERATING PARAMETERS is answered: with LIST ID
 * USAGE 11b no copy status is ever held, so the other service actions have
 * nothing to report (INVALID FIELD IN CDB).
 */
export function emulateReceiveCopyResults(cdb: Uint8Array): Uint8Array {
  checkControlByte(cdb, 16);
  requireClear(cdb, 1, 0xe0);
  if ((cdb[1] & 0x1f) !== CopyResultsAction.OPERATING_PARAMETERS) throw ScsiError.invalidField(1, 4);
  if (cdb[2] !== 0) throw ScsiError.invalidField(2); // LIST IDENTIFIER is reserved for this action
  requireZeroBytes(cdb, 3, 10);
  requireZeroBytes(cdb, 14, 15);
  const alloc = be32(cdb, 10);
  const data = copyOperatingParameters();
  return data.subarray(0, Math.min(alloc, data.length));
}
