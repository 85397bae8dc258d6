/**
 * The full command set the engine serves: everything `emulate` answers,
 * plus the commands tcmu-runner emulates on top of a handler's read/write
 * (WRITE SAME, UNMAP, COMPARE AND WRITE, WRITE AND VERIFY, FORMAT UNIT,
 * EXTENDED COPY, RECEIVE COPY RESULTS, START STOP UNIT, REPORT/SET TARGET
 * PORT GROUPS) and VERIFY.
 *
 * `planCommand` decodes and checks a command against the device description
 * and says what the engine must do; like `emulate` it never throws and does
 * no IO. `emulate` itself keeps answering only the stateless core set, so
 * its callers see no new outcome kinds.
 */

import { Opcode, cdbLength, requireLength } from './cdb.js';
import type { ScsiDeviceInfo } from './device.js';
import { emulate, SUPPORTED_OPCODES } from './emulate.js';
import { checkCondition, goodOutcome, type ScsiOutcome } from './outcome.js';
import {
  MaintenanceIn, MaintenanceOut, decodeReportTargetPortGroups, decodeSetTargetPortGroups, enabledPort,
  type StpgDescriptor,
} from './alua.js';
import {
  checkStartStopUnit, decodeCompareAndWrite, decodeFormatUnit, decodeUnmap, decodeVerify, decodeWriteSame,
  decodeWriteVerify, type UnmapRange,
} from './sbc.js';
import { ScsiError } from './sense.js';
import {
  CopyResultsAction, copyOperatingParameters, decodeExtendedCopyList, decodeReceiveCopyResults,
  type ListIdUsageValue, type XcopySegment,
} from './xcopy.js';

/** What the engine must do for a command beyond what `emulate` can say. */
export type ScsiPlan =
  | ScsiOutcome
  /** UNMAP of checked, non-empty ranges. */
  | { kind: 'unmap'; ranges: UnmapRange[] }
  /** WRITE SAME over a checked range; the block is the Data-Out Buffer, or zeros with NDOB. */
  | { kind: 'write-same'; lba: number; blocks: number; unmap: boolean; ndob: boolean }
  /** COMPARE AND WRITE: Data-Out holds `blocks` to compare, then `blocks` to write. */
  | { kind: 'compare-and-write'; lba: number; blocks: number; fua: boolean }
  /** VERIFY: read back, comparing with data-out per BYTCHK. */
  | { kind: 'verify'; lba: number; blocks: number; bytchk: 0 | 1 | 3 }
  /** WRITE AND VERIFY: write, read back, compare when bytchk is 1. */
  | { kind: 'write-verify'; lba: number; blocks: number; bytchk: 0 | 1 }
  /** FORMAT UNIT: zero the whole medium; with `immed`, GOOD first and the format in the background. */
  | { kind: 'format'; immed: boolean }
  /** EXTENDED COPY (LID1) segments, not yet resolved to devices, with the list's identifier and its usage. */
  | { kind: 'xcopy'; listId: number; listIdUsage: ListIdUsageValue; segments: XcopySegment[] }
  /** RECEIVE COPY RESULTS, COPY STATUS: the engine holds the status of the copies it runs. */
  | { kind: 'copy-status'; listId: number; allocationLength: number }
  /** REPORT TARGET PORT GROUPS: the engine brings the group states up to date, then answers. */
  | { kind: 'rtpg'; extended: boolean; allocationLength: number }
  /** SET TARGET PORT GROUPS. */
  | { kind: 'stpg'; descriptors: StpgDescriptor[] };

export type ScsiPlanKind = ScsiPlan['kind'];

/** Opcodes whose Data-Out is a parameter list the decoder must see in one piece. */
export const PARAMETER_LIST_OPCODES: ReadonlySet<number> = new Set([
  Opcode.MODE_SELECT_6,
  Opcode.MODE_SELECT_10,
  Opcode.UNMAP,
  Opcode.EXTENDED_COPY,
  Opcode.MAINTENANCE_OUT,
  Opcode.FORMAT_UNIT,
]);

/**
 * Media-access commands: the ones an ALUA standby state or a missing
 * handler lock turns away (tcmu-runner's alua_check_state list, plus VERIFY).
 */
export const MEDIA_ACCESS_OPCODES: ReadonlySet<number> = new Set([
  Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16,
  Opcode.WRITE_6, Opcode.WRITE_10, Opcode.WRITE_12, Opcode.WRITE_16,
  Opcode.UNMAP, Opcode.SYNCHRONIZE_CACHE_10, Opcode.SYNCHRONIZE_CACHE_16,
  Opcode.EXTENDED_COPY, Opcode.COMPARE_AND_WRITE,
  Opcode.WRITE_VERIFY_10, Opcode.WRITE_VERIFY_12, Opcode.WRITE_VERIFY_16,
  Opcode.WRITE_SAME_10, Opcode.WRITE_SAME_16, Opcode.FORMAT_UNIT,
  Opcode.VERIFY_10, Opcode.VERIFY_12, Opcode.VERIFY_16,
]);

/** Of MEDIA_ACCESS_OPCODES, those that only read (an implicit transition takes a read lock for them). */
export const READ_ONLY_MEDIA_OPCODES: ReadonlySet<number> = new Set([
  Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16,
  Opcode.VERIFY_10, Opcode.VERIFY_12, Opcode.VERIFY_16,
]);

type Planner = (cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined, dataLength: number | undefined) => ScsiPlan;

function maintenanceIn(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const sa = cdb[1] & 0x1f;
  if (sa === MaintenanceIn.REPORT_TARGET_PORT_GROUPS) {
    // tcmu-runner: without an enabled port in a user-made group, ALUA is not configured.
    if (!enabledPort(dev.alua)) throw ScsiError.invalidOpcode();
    const r = decodeReportTargetPortGroups(cdb);
    return { kind: 'rtpg', extended: r.extended, allocationLength: r.allocationLength };
  }
  throw ScsiError.invalidField(1, 4);
}

function maintenanceOut(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): ScsiPlan {
  const sa = cdb[1] & 0x1f;
  if (sa !== MaintenanceOut.SET_TARGET_PORT_GROUPS) throw ScsiError.invalidField(1, 4);
  // As LIO: explicit transitions not enabled means the command is not supported.
  if (!enabledPort(dev.alua) || dev.alua!.failover !== 'explicit') throw ScsiError.invalidOpcode();
  const descriptors = decodeSetTargetPortGroups(cdb, dataOut);
  return descriptors.length ? { kind: 'stpg', descriptors } : goodOutcome();
}

const PLANNERS = new Map<number, Planner>([
  [Opcode.WRITE_SAME_10, (c, d) => ({ kind: 'write-same', ...decodeWriteSame(c, d) })],
  [Opcode.WRITE_SAME_16, (c, d) => ({ kind: 'write-same', ...decodeWriteSame(c, d) })],
  [Opcode.UNMAP, (c, d, o) => {
    // tcmu-runner: no unmap callout, no UNMAP.
    if (!d.lbpu) throw ScsiError.invalidOpcode();
    const ranges = decodeUnmap(c, d, o);
    return ranges.length ? { kind: 'unmap', ranges } : goodOutcome();
  }],
  [Opcode.COMPARE_AND_WRITE, (c, d, _o, n) => {
    if (!(d.maxCompareAndWriteBlocks ?? 0)) throw ScsiError.invalidOpcode();
    const f = decodeCompareAndWrite(c, d, n);
    return f.blocks ? { kind: 'compare-and-write', ...f } : goodOutcome();
  }],
  [Opcode.VERIFY_10, verifyPlan],
  [Opcode.VERIFY_12, verifyPlan],
  [Opcode.VERIFY_16, verifyPlan],
  [Opcode.WRITE_VERIFY_10, writeVerifyPlan],
  [Opcode.WRITE_VERIFY_12, writeVerifyPlan],
  [Opcode.WRITE_VERIFY_16, writeVerifyPlan],
  [Opcode.FORMAT_UNIT, (c, d, o) => ({ kind: 'format', ...decodeFormatUnit(c, d, o) })],
  [Opcode.START_STOP_UNIT, (c) => (checkStartStopUnit(c), goodOutcome())],
  [Opcode.EXTENDED_COPY, (c, d, o) => {
    if (!d.thirdPartyCopy) throw ScsiError.invalidOpcode();
    const list = decodeExtendedCopyList(c, o, d.blockSize);
    return list ? { kind: 'xcopy', ...list } : goodOutcome();
  }],
  [Opcode.RECEIVE_COPY_RESULTS, (c, d) => {
    if (!d.thirdPartyCopy) throw ScsiError.invalidOpcode();
    const f = decodeReceiveCopyResults(c);
    if (f.action === CopyResultsAction.COPY_STATUS) return { kind: 'copy-status', listId: f.listId, allocationLength: f.allocationLength };
    const data = copyOperatingParameters(d.blockSize);
    return goodOutcome(data.subarray(0, Math.min(f.allocationLength, data.length)));
  }],
  [Opcode.MAINTENANCE_IN, maintenanceIn],
  [Opcode.MAINTENANCE_OUT, maintenanceOut],
]);

function verifyPlan(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const f = decodeVerify(cdb, dev);
  return f.blocks ? { kind: 'verify', ...f } : goodOutcome();
}

function writeVerifyPlan(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const f = decodeWriteVerify(cdb, dev);
  return f.blocks ? { kind: 'write-verify', ...f } : goodOutcome();
}

/** Every operation code `planCommand` serves (the core set and the ones above). */
export const PLANNED_OPCODES: readonly number[] = Object.freeze(
  [...new Set([...PLANNERS.keys(), ...SUPPORTED_OPCODES])].sort((a, b) => a - b),
);

/**
 * Decide what to do with one command. Never throws; a bad command comes
 * back as a 'done' CHECK CONDITION in the sense format `dev.dSense` selects.
 * `dataOut` is the parameter list for PARAMETER_LIST_OPCODES; other
 * commands' data stays in the engine's buffers. `dataLength` is the size
 * of the Data-Out Buffer the initiator sent, when known: COMPARE AND WRITE
 * checks it against its NUMBER OF LOGICAL BLOCKS.
 */
export function planCommand(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array, dataLength?: number): ScsiPlan {
  const fn = cdb.length ? PLANNERS.get(cdb[0]) : undefined;
  if (!fn) return emulate(cdb, dev, dataOut);
  try {
    requireLength(cdb, cdbLength(cdb[0])!);
    return fn(cdb, dev, dataOut, dataLength);
  } catch (e) {
    return checkCondition(e instanceof ScsiError ? e : ScsiError.internalFailure(e), dev);
  }
}
