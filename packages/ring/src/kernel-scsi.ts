/**
 * The little SCSI knowledge the ring itself needs (consumer, kernel simulator,
 * test initiator): how long the kernel thinks a CDB is, and the sense data LIO makes up when it
 * answers a command itself instead of passing on what userspace wrote.
 */

/** Sense keys (SPC-4 table 27). */
export const SenseKey = {
  NO_SENSE: 0x0,
  RECOVERED_ERROR: 0x1,
  NOT_READY: 0x2,
  MEDIUM_ERROR: 0x3,
  HARDWARE_ERROR: 0x4,
  ILLEGAL_REQUEST: 0x5,
  UNIT_ATTENTION: 0x6,
  DATA_PROTECT: 0x7,
  BLANK_CHECK: 0x8,
  VENDOR_SPECIFIC: 0x9,
  COPY_ABORTED: 0xa,
  ABORTED_COMMAND: 0xb,
  VOLUME_OVERFLOW: 0xd,
  MISCOMPARE: 0xe,
  COMPLETED: 0xf,
} as const;

/** The longest CDB LIO accepts (a variable-length CDB: 8 + additional length, capped by SPC). */
export const MAX_CDB_LENGTH = 260;

// CDB length by group code (opcode >> 5), as the kernel's scsi_command_size_tbl has it.
const CDB_LEN_BY_GROUP = [6, 10, 10, 12, 16, 12, 10, 10];
const VARIABLE_LENGTH_CMD = 0x7f;

/**
 * How many CDB bytes the kernel copies into the ring for this CDB. The kernel
 * sizes it from the opcode, not from how many bytes the initiator sent, so an
 * initiator's trailing bytes beyond that are dropped and a short buffer is
 * zero-filled by the caller.
 */
export function scsiCdbLength(cdb: Uint8Array): number {
  if (cdb.length === 0) throw new RangeError('empty CDB');
  const op = cdb[0];
  if (op === VARIABLE_LENGTH_CMD) return 8 + (cdb.length > 7 ? cdb[7] : 0);
  return CDB_LEN_BY_GROUP[op >> 5];
}

/**
 * The same rule for a CDB found in the ring at `at`, whose bytes end at
 * `limit`: 0 when a variable-length CDB's length byte is out of reach or the
 * length passes MAX_CDB_LENGTH.
 */
export function ringCdbLength(u8: Uint8Array, at: number, limit: number): number {
  const op = u8[at];
  if (op !== VARIABLE_LENGTH_CMD) return CDB_LEN_BY_GROUP[op >> 5];
  if (at + 8 > limit) return 0;
  const n = 8 + u8[at + 7];
  return n <= MAX_CDB_LENGTH ? n : 0;
}

/** Fixed-format (0x70, current) sense data as LIO builds it when descriptor sense is off. */
export function fixedSense(key: number, asc: number, ascq = 0): Uint8Array {
  const s = new Uint8Array(18);
  s[0] = 0x70;
  s[2] = key & 0x0f;
  s[7] = 10; // additional sense length: the rest of the 18 bytes
  s[12] = asc;
  s[13] = ascq;
  return s;
}

export interface SenseInfo {
  key: number;
  asc: number;
  ascq: number;
  /** Descriptor format (0x72/0x73) rather than fixed (0x70/0x71). */
  descriptor: boolean;
  /** Deferred error (0x71/0x73). */
  deferred: boolean;
}

/** Key/ASC/ASCQ out of fixed or descriptor sense; null if the bytes are not sense data. */
export function parseSense(sense: Uint8Array): SenseInfo | null {
  if (sense.length < 1) return null;
  const code = sense[0] & 0x7f;
  if (code === 0x70 || code === 0x71) {
    if (sense.length < 3) return null;
    return {
      key: sense[2] & 0x0f,
      asc: sense.length > 12 ? sense[12] : 0,
      ascq: sense.length > 13 ? sense[13] : 0,
      descriptor: false,
      deferred: code === 0x71,
    };
  }
  if (code === 0x72 || code === 0x73) {
    if (sense.length < 4) return null;
    return { key: sense[1] & 0x0f, asc: sense[2], ascq: sense[3], descriptor: true, deferred: code === 0x73 };
  }
  return null;
}
