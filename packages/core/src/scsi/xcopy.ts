/**
 * EXTENDED COPY (LID1) and RECEIVE COPY RESULTS (SPC-4 6.4, 6.18), with
 * tcmu-runner's copy manager limits: identification descriptor CSCDs
 * (type E4h, NAA designators), block-to-block segments (type 02h), at most
 * 2 CSCD and 1 segment descriptors in 1024 bytes, no inline data.
 *
 * Every LIST ID USAGE but the reserved 01b is taken: 00b (hold: COPY
 * STATUS is kept for RECEIVE COPY RESULTS), 10b (discard) and 11b (no list
 * identifier, SNLID = 1).
 *
 * Parsing here is pure; finding the devices behind the designators, moving
 * the blocks and keeping copy status are the engine's work.
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

/** LIST ID USAGE (EXTENDED COPY parameter list byte 1, bits 4:3); 01b is reserved. */
export const ListIdUsage = {
  /** Hold data (COPY STATUS) for RECEIVE COPY RESULTS; the list identifier names the copy. */
  HOLD: 0,
  /** Hold nothing; the list identifier still names the copy. */
  DISCARD: 2,
  /** No list identifier (it must be 0): SNLID = 1. */
  NONE: 3,
} as const;
export type ListIdUsageValue = (typeof ListIdUsage)[keyof typeof ListIdUsage];

/**
 * The copy manager's limits, as RECEIVE COPY RESULTS reports them. The
 * descriptor counts, list and segment lengths are tcmu-runner's (scsi_defs.h)
 * and `decodeExtendedCopy` enforces each of them. Copies are never refused
 * for their number (each runs as its own command), so the concurrency
 * fields report the largest value they can hold.
 */
export const XCOPY_LIMITS = Object.freeze({
  maxTargetDescriptors: 2,
  maxSegmentDescriptors: 1,
  maxDescriptorListLength: 1024,
  maxSegmentLength: 16 * 1024 * 1024,
  maxInlineDataLength: 0,
  heldDataLimit: 0,
  totalConcurrentCopies: 0xffff,
  maxConcurrentCopies: 0xff,
  /** Inline and held data are not offered (their limits are 0); tcmu-runner's granularities. */
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

/** Offsets within a block-to-block segment descriptor, for segment pointers in COPY ABORTED sense. */
export const XcopySegmentField = {
  SOURCE_INDEX: 4,
  DESTINATION_INDEX: 6,
  BLOCKS: 10,
  SOURCE_LBA: 12,
  DESTINATION_LBA: 20,
} as const;

/** One block-to-block segment with its source and destination resolved to NAA designators. */
export interface XcopySegment {
  /** Segment number: the descriptor's position in the segment descriptor list, from 0. */
  readonly index: number;
  /**
   * 16-byte NAA IEEE Registered Extended designator of the source /
   * destination LU; undefined when the CSCD DESCRIPTOR INDEX names no
   * descriptor of the list (the copy manager then cannot reach it: COPY
   * ABORTED, COPY TARGET DEVICE NOT REACHABLE, when the segment is processed).
   */
  readonly source: Uint8Array | undefined;
  readonly destination: Uint8Array | undefined;
  readonly sourceLba: bigint;
  readonly destinationLba: bigint;
  readonly blocks: number;
}

/** An EXTENDED COPY (LID1) parameter list, checked. */
export interface XcopyList {
  readonly listId: number;
  readonly listIdUsage: ListIdUsageValue;
  readonly segments: XcopySegment[];
}

const invalidParam = (byte: number, bit?: number) => ScsiError.invalidParameter(byte, bit);

/**
 * EXTENDED COPY: CDB checks and the LID1 parameter list; undefined for a
 * PARAMETER LIST LENGTH of 0 ("do nothing"). The order of the checks is
 * the order a copy manager meets them, as LIO's does:
 *
 * - a list shorter than its header, than the CDB says, or than header +
 *   descriptors; descriptor lists longer than MAXIMUM DESCRIPTOR LIST
 *   LENGTH: PARAMETER LIST LENGTH ERROR;
 * - inline data, LIST ID USAGE 01b, a LIST IDENTIFIER other than 0 with
 *   LIST ID USAGE 11b: INVALID FIELD IN PARAMETER LIST;
 * - more CSCD / segment descriptors than the limits: TOO MANY TARGET /
 *   SEGMENT DESCRIPTORS; other descriptor types: UNSUPPORTED TARGET /
 *   SEGMENT DESCRIPTOR TYPE CODE (so a segment list of some other type's
 *   length is refused for its type);
 * - a descriptor cut by its list length, a segment DESCRIPTOR LENGTH other
 *   than 18h, a designator that is not a 16-byte binary NAA 6 for the LU, a
 *   segment longer than MAXIMUM SEGMENT LENGTH: INVALID FIELD IN PARAMETER LIST.
 *
 * The LU ID TYPE and the obsolete NUL bit of a CSCD descriptor are ignored
 * (SPC-4); so are the DC and CAT bits of a segment, which cannot matter
 * between LUs of one block size.
 */
export function decodeExtendedCopyList(cdb: Uint8Array, dataOut: Uint8Array | undefined, blockSize: number): XcopyList | undefined {
  checkControlByte(cdb, 16);
  // Service action 00h is EXTENDED COPY (LID1); LID4 (01h) is not offered.
  if (cdb[1] & 0x1f) throw ScsiError.invalidField(1, 4);
  requireClear(cdb, 1, 0xe0);
  requireZeroBytes(cdb, 2, 10);
  requireZeroBytes(cdb, 14, 15);
  const len = be32(cdb, 10);
  if (len === 0) return undefined;
  if (!dataOut || dataOut.length < len || len < XCOPY_HEADER_LENGTH) throw ScsiError.parameterListLength();
  const p = dataOut.subarray(0, len);

  const tdll = be16(p, 2);
  const sdll = be32(p, 8);
  const inline = be32(p, 12);
  if (tdll + sdll > XCOPY_LIMITS.maxDescriptorListLength) throw ScsiError.parameterListLength();
  if (inline > XCOPY_LIMITS.maxInlineDataLength) throw invalidParam(12);
  if (len < XCOPY_HEADER_LENGTH + tdll + sdll + inline) throw ScsiError.parameterListLength();

  const listId = p[0];
  const usage = (p[1] >> 3) & 0x3;
  if (usage === 1) throw invalidParam(1, 4);
  if (usage === ListIdUsage.NONE && listId !== 0) throw invalidParam(0);

  // CSCD descriptors: all 32 bytes long for the one type served.
  if (tdll === 0) throw invalidParam(2);
  if (Math.ceil(tdll / XCOPY_TARGET_DESCRIPTOR_LENGTH) > XCOPY_LIMITS.maxTargetDescriptors) {
    throw ScsiError.parameterError(Asc.TOO_MANY_TARGET_DESCRIPTORS, 2);
  }
  const tdEnd = XCOPY_HEADER_LENGTH + tdll;
  const naa: Uint8Array[] = [];
  for (let off = XCOPY_HEADER_LENGTH; off < tdEnd; off += XCOPY_TARGET_DESCRIPTOR_LENGTH) {
    if (p[off] !== XCOPY_TARGET_TYPE_ID) throw ScsiError.parameterError(Asc.UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE, off);
    if (off + XCOPY_TARGET_DESCRIPTOR_LENGTH > tdEnd) throw invalidParam(2);
    // Designation descriptor at off+4: binary code set, LU association, NAA type, 16 bytes of NAA 6.
    if ((p[off + 4] & 0x0f) !== 0x1) throw invalidParam(off + 4, 3);
    if ((p[off + 5] & 0x30) !== 0x00) throw invalidParam(off + 5, 5);
    if ((p[off + 5] & 0x0f) !== 0x3) throw invalidParam(off + 5, 3);
    if (p[off + 7] !== 16) throw invalidParam(off + 7);
    if (p[off + 8] >> 4 !== 0x6) throw invalidParam(off + 8, 7);
    naa.push(p.slice(off + 8, off + 24));
  }

  if (sdll === 0) throw invalidParam(8);
  const sdEnd = tdEnd + sdll;
  const segments: XcopySegment[] = [];
  for (let off = tdEnd; off < sdEnd; off += XCOPY_B2B_SEGMENT_LENGTH) {
    if (segments.length === XCOPY_LIMITS.maxSegmentDescriptors) throw ScsiError.parameterError(Asc.TOO_MANY_SEGMENT_DESCRIPTORS, 8);
    if (p[off] !== XCOPY_SEGMENT_TYPE_B2B) throw ScsiError.parameterError(Asc.UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE, off);
    if (off + XCOPY_B2B_SEGMENT_LENGTH > sdEnd) throw invalidParam(8);
    if (be16(p, off + 2) !== XCOPY_B2B_SEGMENT_LENGTH - 4) throw invalidParam(off + 2);
    const blocks = be16(p, off + XcopySegmentField.BLOCKS);
    if (blocks * blockSize > XCOPY_LIMITS.maxSegmentLength) throw invalidParam(off + XcopySegmentField.BLOCKS);
    segments.push({
      index: segments.length,
      source: naa[be16(p, off + XcopySegmentField.SOURCE_INDEX)],
      destination: naa[be16(p, off + XcopySegmentField.DESTINATION_INDEX)],
      sourceLba: be64(p, off + XcopySegmentField.SOURCE_LBA),
      destinationLba: be64(p, off + XcopySegmentField.DESTINATION_LBA),
      blocks,
    });
  }
  return { listId, listIdUsage: usage as ListIdUsageValue, segments };
}

/** The segments of an EXTENDED COPY parameter list (empty for an empty list); see decodeExtendedCopyList. */
export function decodeExtendedCopy(cdb: Uint8Array, dataOut: Uint8Array | undefined, blockSize: number): XcopySegment[] {
  return decodeExtendedCopyList(cdb, dataOut, blockSize)?.segments ?? [];
}

/**
 * RECEIVE COPY RESULTS, OPERATING PARAMETERS data (SPC-4 6.18.4; 46 bytes,
 * AVAILABLE DATA 42): the limits `decodeExtendedCopyList` enforces. DATA
 * SEGMENT GRANULARITY is the logical block: a block-to-block segment moves
 * whole blocks.
 */
export function copyOperatingParameters(blockSize = 512): Uint8Array {
  const b = new Uint8Array(46);
  put32(b, 0, 42);
  b[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
  put16(b, 8, XCOPY_LIMITS.maxTargetDescriptors);
  put16(b, 10, XCOPY_LIMITS.maxSegmentDescriptors);
  put32(b, 12, XCOPY_LIMITS.maxDescriptorListLength);
  put32(b, 16, XCOPY_LIMITS.maxSegmentLength);
  put32(b, 20, XCOPY_LIMITS.maxInlineDataLength);
  put32(b, 24, XCOPY_LIMITS.heldDataLimit);
  // MAXIMUM STREAM DEVICE TRANSFER SIZE (28..31): 0, no stream devices.
  put16(b, 34, XCOPY_LIMITS.totalConcurrentCopies);
  b[36] = XCOPY_LIMITS.maxConcurrentCopies;
  b[37] = Math.max(0, Math.round(Math.log2(Math.max(1, blockSize))));
  b[38] = XCOPY_LIMITS.inlineDataGranularityLog2;
  b[39] = XCOPY_LIMITS.heldDataGranularityLog2;
  b[43] = 2; // IMPLEMENTED DESCRIPTOR LIST LENGTH
  b[44] = XCOPY_SEGMENT_TYPE_B2B;
  b[45] = XCOPY_TARGET_TYPE_ID;
  return b;
}

/** COPY MANAGER STATUS of COPY STATUS data (SPC-4 6.18.3). */
export const CopyManagerStatus = {
  IN_PROGRESS: 0x00,
  COMPLETED: 0x01,
  COMPLETED_WITH_ERRORS: 0x02,
} as const;

/** What COPY STATUS reports about one EXTENDED COPY. */
export interface CopyStatus {
  readonly status: (typeof CopyManagerStatus)[keyof typeof CopyManagerStatus];
  readonly segmentsProcessed: number;
  /** Bytes written to the destinations so far. */
  readonly bytes: number;
}

/**
 * COPY STATUS parameter data (12 bytes, AVAILABLE DATA 8). TRANSFER COUNT
 * is in bytes (TRANSFER COUNT UNITS 00h) while it fits in 32 bits, else in
 * the smallest power-of-1024 unit that holds it.
 */
export function copyStatusData(s: CopyStatus): Uint8Array {
  const b = new Uint8Array(12);
  put32(b, 0, 8);
  b[4] = s.status & 0x7f; // HDD 0: no held data is ever discarded (none is held)
  put16(b, 5, Math.min(0xffff, s.segmentsProcessed));
  let units = 0;
  let count = Math.max(0, Math.floor(s.bytes));
  while (count > 0xffffffff && units < 6) {
    count = Math.floor(count / 1024);
    units++;
  }
  b[7] = units;
  put32(b, 8, Math.min(count, 0xffffffff));
  return b;
}

/** A RECEIVE COPY RESULTS (LID1) CDB, checked. */
export interface ReceiveCopyResultsFields {
  readonly action: number;
  readonly listId: number;
  readonly allocationLength: number;
}

/**
 * RECEIVE COPY RESULTS CDB checks. COPY STATUS and OPERATING PARAMETERS
 * are answered (RECEIVE DATA and FAILED SEGMENT DETAILS are not: no
 * segment type served holds data, and a failed copy's sense goes out with
 * its CHECK CONDITION): INVALID FIELD IN CDB for the others. LIST
 * IDENTIFIER is reserved for OPERATING PARAMETERS.
 */
export function decodeReceiveCopyResults(cdb: Uint8Array): ReceiveCopyResultsFields {
  checkControlByte(cdb, 16);
  requireClear(cdb, 1, 0xe0);
  const action = cdb[1] & 0x1f;
  if (action !== CopyResultsAction.OPERATING_PARAMETERS && action !== CopyResultsAction.COPY_STATUS) {
    throw ScsiError.invalidField(1, 4);
  }
  if (action === CopyResultsAction.OPERATING_PARAMETERS) requireClear(cdb, 2, 0xff); // no LIST IDENTIFIER here
  requireZeroBytes(cdb, 3, 10);
  requireZeroBytes(cdb, 14, 15);
  return { action, listId: cdb[2], allocationLength: be32(cdb, 10) };
}

/**
 * RECEIVE COPY RESULTS answered without copy manager state: OPERATING
 * PARAMETERS, cut to the allocation length. COPY STATUS needs the engine
 * (the planner hands it over); here it is INVALID FIELD IN CDB.
 */
export function emulateReceiveCopyResults(cdb: Uint8Array, blockSize = 512): Uint8Array {
  const f = decodeReceiveCopyResults(cdb);
  if (f.action !== CopyResultsAction.OPERATING_PARAMETERS) throw ScsiError.invalidField(1, 4);
  const data = copyOperatingParameters(blockSize);
  return data.subarray(0, Math.min(f.allocationLength, data.length));
}
