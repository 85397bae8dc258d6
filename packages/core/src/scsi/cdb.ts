/**
 * CDB layout facts: operation codes, lengths by group code, and the field
 * checks every command shares.
 */

import { reservedBitsError, ScsiError } from './sense.js';

/** Operation codes (SPC-4 / SBC-3) the project names. */
export const Opcode = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  FORMAT_UNIT: 0x04,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SELECT_6: 0x15,
  MODE_SENSE_6: 0x1a,
  START_STOP_UNIT: 0x1b,
  SEND_DIAGNOSTIC: 0x1d,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  WRITE_VERIFY_10: 0x2e,
  VERIFY_10: 0x2f,
  PRE_FETCH_10: 0x34,
  SYNCHRONIZE_CACHE_10: 0x35,
  READ_DEFECT_DATA_10: 0x37,
  WRITE_BUFFER: 0x3b,
  READ_BUFFER: 0x3c,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  PERSISTENT_RESERVE_IN: 0x5e,
  PERSISTENT_RESERVE_OUT: 0x5f,
  VARIABLE_LENGTH: 0x7f,
  EXTENDED_COPY: 0x83,
  RECEIVE_COPY_RESULTS: 0x84,
  READ_16: 0x88,
  COMPARE_AND_WRITE: 0x89,
  WRITE_16: 0x8a,
  ORWRITE_16: 0x8b,
  WRITE_VERIFY_16: 0x8e,
  VERIFY_16: 0x8f,
  PRE_FETCH_16: 0x90,
  SYNCHRONIZE_CACHE_16: 0x91,
  WRITE_SAME_16: 0x93,
  WRITE_ATOMIC_16: 0x9c,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
  MAINTENANCE_IN: 0xa3,
  MAINTENANCE_OUT: 0xa4,
  READ_12: 0xa8,
  WRITE_12: 0xaa,
  WRITE_VERIFY_12: 0xae,
  VERIFY_12: 0xaf,
  READ_DEFECT_DATA_12: 0xb7,
} as const;

/** Service actions of SERVICE ACTION IN (16) (SBC-3). */
export const ServiceActionIn16 = {
  READ_CAPACITY_16: 0x10,
  GET_LBA_STATUS: 0x12,
} as const;

/**
 * CDB length implied by an operation code's group code (SPC-4 4.2.5.1).
 * undefined for groups whose length is not fixed by the opcode: 3 (reserved,
 * and 7Fh variable-length, whose length is in byte 7) and 6/7 (vendor specific).
 */
export function cdbLength(opcode: number): number | undefined {
  switch ((opcode >> 5) & 0x7) {
    case 0:
      return 6;
    case 1:
    case 2:
      return 10;
    case 4:
      return 16;
    case 5:
      return 12;
    default:
      return undefined;
  }
}

/**
 * Length of the CDB at the start of `cdb`, including 7Fh variable-length
 * CDBs (8 + ADDITIONAL CDB LENGTH). undefined when it cannot be told.
 */
export function cdbLengthOf(cdb: Uint8Array): number | undefined {
  if (cdb.length === 0) return undefined;
  if (cdb[0] === Opcode.VARIABLE_LENGTH) return cdb.length > 7 ? 8 + cdb[7] : undefined;
  return cdbLength(cdb[0]);
}

/** Reject any set bit of `mask` in CDB byte `byte` (reserved or unsupported bits). */
export function requireClear(cdb: Uint8Array, byte: number, mask: number): void {
  const bad = cdb[byte] & mask;
  if (bad) throw reservedBitsError(byte, bad);
}

/** Reject non-zero reserved bytes [from, to). */
export function requireZeroBytes(cdb: Uint8Array, from: number, to: number): void {
  for (let i = from; i < to; i++) requireClear(cdb, i, 0xff);
}

/**
 * The CONTROL byte is last in every fixed-length CDB. NACA = 1 asks for ACA
 * handling we do not offer (NORMACA = 0 in INQUIRY), so SPC-4 7.4.3 requires
 * INVALID FIELD IN CDB; LINK is obsolete and likewise unsupported. The
 * vendor-specific bits 7:6 are ignored.
 */
export function checkControlByte(cdb: Uint8Array, len: number): void {
  requireClear(cdb, len - 1, 0x05);
}

/** A short CDB cannot be parsed; INVALID FIELD IN CDB without a pointer, as no field is right. */
export function requireLength(cdb: Uint8Array, len: number): void {
  if (cdb.length < len) throw ScsiError.invalidField();
}
