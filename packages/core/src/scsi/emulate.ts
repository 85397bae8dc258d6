/**
 * The command dispatcher: decides, from the CDB and the device description
 * alone, whether a command is answered here, becomes a block transfer or a
 * cache flush for the handler, or fails with CHECK CONDITION.
 *
 * Pure: no IO, no state beyond MODE SELECT updating `dev.writeCache`.
 */

import { be16, be32, be64 } from './bytes.js';
import { Opcode, ServiceActionIn16, cdbLength, checkControlByte, requireClear, requireLength, requireZeroBytes } from './cdb.js';
import { emulateReadCapacity10, emulateReadCapacity16 } from './capacity.js';
import type { ScsiDeviceInfo } from './device.js';
import { emulateInquiry } from './inquiry.js';
import { emulateModeSelect, emulateModeSense } from './mode.js';
import { checkCondition, goodOutcome, type ScsiOutcome } from './outcome.js';
import { Asc, buildSense, ScsiError, SenseKey } from './sense.js';

/** A READ/WRITE CDB decoded; `lba` stays BigInt until range-checked. */
export interface RwFields {
  readonly lba: bigint;
  readonly blocks: number;
  readonly fua: boolean;
  readonly dpo: boolean;
  /** Offset of the TRANSFER LENGTH field, for the field pointer. */
  readonly lengthByte: number;
}

/**
 * Decode READ/WRITE (6)/(10)/(12)/(16), rejecting what we cannot honour.
 * Throws ScsiError.
 */
export function decodeRw(cdb: Uint8Array): RwFields {
  const len = cdbLength(cdb[0])!;
  requireLength(cdb, len);
  checkControlByte(cdb, len);
  if (len === 6) {
    requireClear(cdb, 1, 0xe0);
    const lba = ((cdb[1] & 0x1f) << 16) | be16(cdb, 2);
    // SBC-3 5.8: in the 6-byte CDBs a TRANSFER LENGTH of 0 means 256 blocks.
    const blocks = cdb[4] === 0 ? 256 : cdb[4];
    return { lba: BigInt(lba), blocks, fua: false, dpo: false, lengthByte: 4 };
  }
  // Byte 1: RDPROTECT/WRPROTECT (7:5) need protection information, which we
  // do not format; DPO (4) is a cache hint we may ignore; FUA (3) honoured;
  // bit 1 (FUA_NV in SBC-3) is a hint, accepted; bits 2 and 0 reserved.
  if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
  requireClear(cdb, 1, 0x05);
  const groupByte = len === 10 ? 6 : len === 12 ? 10 : 14;
  requireClear(cdb, groupByte, 0xe0); // GROUP NUMBER is 4:0; accepted and ignored
  const fua = (cdb[1] & 0x08) !== 0;
  const dpo = (cdb[1] & 0x10) !== 0;
  if (len === 10) return { lba: BigInt(be32(cdb, 2)), blocks: be16(cdb, 7), fua, dpo, lengthByte: 7 };
  if (len === 12) return { lba: BigInt(be32(cdb, 2)), blocks: be32(cdb, 6), fua, dpo, lengthByte: 6 };
  return { lba: be64(cdb, 2), blocks: be32(cdb, 10), fua, dpo, lengthByte: 10 };
}

/**
 * SBC-3 4.5: an access must lie entirely within the medium. Checked even for
 * zero blocks (an LBA past the end is still out of range), as LIO does.
 */
export function checkRange(dev: ScsiDeviceInfo, lba: bigint, blocks: number): number {
  if (lba + BigInt(blocks) > BigInt(Math.max(0, dev.numLbas))) throw ScsiError.lbaOutOfRange();
  return Number(lba);
}

function emulateRw(cdb: Uint8Array, dev: ScsiDeviceInfo, kind: 'read' | 'write'): ScsiOutcome {
  const f = decodeRw(cdb);
  // SBC-3 6.5.3: a transfer longer than MAXIMUM TRANSFER LENGTH is a CDB error.
  if (dev.maxXferBlocks > 0 && f.blocks > dev.maxXferBlocks) throw ScsiError.invalidField(f.lengthByte);
  if (kind === 'write' && dev.writeProtect) throw ScsiError.writeProtected();
  const lba = checkRange(dev, f.lba, f.blocks);
  // SBC-3: zero blocks transfers nothing and is not an error (never for the 6-byte forms).
  if (f.blocks === 0) return goodOutcome();
  return { kind, lba, blocks: f.blocks, fua: f.fua };
}

function emulateSyncCache(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiOutcome {
  const ten = cdb[0] === Opcode.SYNCHRONIZE_CACHE_10;
  const len = ten ? 10 : 16;
  checkControlByte(cdb, len);
  // Byte 1: IMMED (1) and SYNC_NV (2) accepted; completing after the flush
  // satisfies IMMED = 1 too. Bit 0 (obsolete RELADR) and 7:3 reserved.
  requireClear(cdb, 1, 0xf9);
  requireClear(cdb, ten ? 6 : 14, 0xe0);
  const lba = ten ? BigInt(be32(cdb, 2)) : be64(cdb, 2);
  const n = ten ? be16(cdb, 7) : be32(cdb, 10);
  const start = checkRange(dev, lba, n);
  // NUMBER OF LOGICAL BLOCKS 0 means "through the last LBA"; hand the engine a real range.
  return { kind: 'flush', lba: start, blocks: n === 0 ? dev.numLbas - start : n };
}

/**
 * REQUEST SENSE. Nothing is pending between commands here (sense goes out
 * with each CHECK CONDITION), so the answer is NO SENSE in the format the
 * DESC bit asks for.
 */
function emulateRequestSense(cdb: Uint8Array): Uint8Array {
  return requestSenseData(cdb);
}

/**
 * REQUEST SENSE parameter data: NO SENSE, or `pending` (e.g. NOT READY,
 * FORMAT IN PROGRESS with its progress indication while a format runs),
 * in the format the DESC bit asks for, cut to the allocation length.
 * Throws ScsiError for a bad CDB.
 */
export function requestSenseData(cdb: Uint8Array, pending?: ScsiError): Uint8Array {
  requireClear(cdb, 1, 0xfe);
  requireZeroBytes(cdb, 2, 4);
  checkControlByte(cdb, 6);
  const desc = (cdb[1] & 0x01) !== 0;
  const data = pending
    ? pending.toSense(desc)
    : buildSense(SenseKey.NO_SENSE, Asc.NO_ADDITIONAL_SENSE.asc, Asc.NO_ADDITIONAL_SENSE.ascq, { descriptor: desc });
  return data.subarray(0, Math.min(cdb[4], data.length));
}

function emulateTestUnitReady(cdb: Uint8Array): ScsiOutcome {
  requireZeroBytes(cdb, 1, 5);
  checkControlByte(cdb, 6);
  return goodOutcome();
}

function emulateServiceActionIn16(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiOutcome {
  const sa = cdb[1] & 0x1f;
  if (sa === ServiceActionIn16.READ_CAPACITY_16) return goodOutcome(emulateReadCapacity16(cdb, dev));
  // SPC-4: an unsupported service action is an invalid field, not an invalid opcode.
  throw ScsiError.invalidField(1, 4);
}

type Emulation = (cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array) => ScsiOutcome;

const TABLE = new Map<number, Emulation>([
  [Opcode.TEST_UNIT_READY, (c) => emulateTestUnitReady(c)],
  [Opcode.REQUEST_SENSE, (c) => goodOutcome(emulateRequestSense(c))],
  [Opcode.INQUIRY, (c, d) => goodOutcome(emulateInquiry(c, d))],
  [Opcode.READ_CAPACITY_10, (c, d) => goodOutcome(emulateReadCapacity10(c, d))],
  [Opcode.SERVICE_ACTION_IN_16, emulateServiceActionIn16],
  [Opcode.MODE_SENSE_6, (c, d) => goodOutcome(emulateModeSense(c, d))],
  [Opcode.MODE_SENSE_10, (c, d) => goodOutcome(emulateModeSense(c, d))],
  [Opcode.MODE_SELECT_6, (c, d, o) => (emulateModeSelect(c, d, o), goodOutcome())],
  [Opcode.MODE_SELECT_10, (c, d, o) => (emulateModeSelect(c, d, o), goodOutcome())],
  [Opcode.READ_6, (c, d) => emulateRw(c, d, 'read')],
  [Opcode.READ_10, (c, d) => emulateRw(c, d, 'read')],
  [Opcode.READ_12, (c, d) => emulateRw(c, d, 'read')],
  [Opcode.READ_16, (c, d) => emulateRw(c, d, 'read')],
  [Opcode.WRITE_6, (c, d) => emulateRw(c, d, 'write')],
  [Opcode.WRITE_10, (c, d) => emulateRw(c, d, 'write')],
  [Opcode.WRITE_12, (c, d) => emulateRw(c, d, 'write')],
  [Opcode.WRITE_16, (c, d) => emulateRw(c, d, 'write')],
  [Opcode.SYNCHRONIZE_CACHE_10, emulateSyncCache],
  [Opcode.SYNCHRONIZE_CACHE_16, emulateSyncCache],
]);

/** Operation codes `emulate` understands (anything else is INVALID COMMAND OPERATION CODE). */
export const SUPPORTED_OPCODES: readonly number[] = Object.freeze([...TABLE.keys()].sort((a, b) => a - b));

/**
 * Decide what to do with one command. Never throws: malformed input and
 * unexpected internal failures both come back as CHECK CONDITION, with sense
 * in the format `dev.dSense` selects. Data-In is cut to the CDB's allocation
 * length only; the engine still fits it to the command's buffers.
 */
export function emulate(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array): ScsiOutcome {
  try {
    if (cdb.length === 0) throw ScsiError.invalidOpcode();
    const fn = TABLE.get(cdb[0]);
    if (!fn) throw ScsiError.invalidOpcode();
    requireLength(cdb, cdbLength(cdb[0])!);
    return fn(cdb, dev, dataOut);
  } catch (e) {
    return checkCondition(e instanceof ScsiError ? e : ScsiError.internalFailure(e), dev);
  }
}
