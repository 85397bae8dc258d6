/**
 * The planner: one table from operation code to what the engine must do
 * with a command, decided from the CDB, the parameter list and the device
 * description alone. A command is answered here (INQUIRY, MODE SENSE, READ
 * CAPACITY, ...: a 'done' plan with its Data-In), becomes a checked block
 * transfer or cache flush for the handler, becomes one of the plans the
 * executor carries out with the handler's callouts (UNMAP, WRITE SAME,
 * COMPARE AND WRITE, VERIFY, FORMAT UNIT, EXTENDED COPY, ALUA), or fails
 * with CHECK CONDITION.
 *
 * Pure: no IO, no state beyond MODE SELECT updating `dev.writeCache`.
 * Never throws: a bad command comes back as a 'done' CHECK CONDITION in the
 * sense format `dev.dSense` selects.
 */

import { be16, be32 } from './bytes.js';
import { Opcode, ServiceActionIn16, cdbLength, checkControlByte, requireClear, requireLength, requireZeroBytes } from './cdb.js';
import { emulateReadCapacity10, emulateReadCapacity16 } from './capacity.js';
import type { ScsiDeviceInfo } from './device.js';
import { emulateInquiry } from './inquiry.js';
import { emulateModeSelect, emulateModeSense } from './mode.js';
import { checkCondition, goodOutcome, type BlockPlan, type ScsiOutcome } from './outcome.js';
import {
  MaintenanceIn, MaintenanceOut, decodeReportTargetPortGroups, decodeSetTargetPortGroups, enabledPort,
  type StpgDescriptor,
} from './alua.js';
import {
  checkPreFetch, checkStartStopUnit, decodeCompareAndWrite, decodeFormatUnit, decodeOrWrite, decodeUnmap, decodeVerify,
  decodeWriteAtomic, decodeWriteSame, decodeWriteVerify, readDefectData, type UnmapRange,
} from './sbc.js';
import { Asc, buildSense, ScsiError, SenseKey } from './sense.js';
import {
  cdbUsage, checkReportSupportedOpcodesCdb, reportSupportedOpcodes, verdictOf, type CommandEntry, type PlanProbe,
} from './supported-opcodes.js';
import {
  CopyResultsAction, copyOperatingParameters, decodeExtendedCopyList, decodeReceiveCopyResults,
  type ListIdUsageValue, type XcopySegment,
} from './xcopy.js';

/** What the engine must do with a command. */
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
  /** ORWRITE: Data-Out ORed into the blocks, under an exclusive hold of the range. */
  | { kind: 'orwrite'; lba: number; blocks: number; fua: boolean }
  /** WRITE ATOMIC: one handler write that the handler promised lands whole, under an exclusive hold. */
  | { kind: 'write-atomic'; lba: number; blocks: number; fua: boolean }
  /** FORMAT UNIT: zero the whole medium; with `immed`, GOOD first and the format in the background. */
  | { kind: 'format'; immed: boolean }
  /** EXTENDED COPY (LID1) segments, not yet resolved to devices, with the list's identifier and its usage. */
  | { kind: 'xcopy'; listId: number; listIdUsage: ListIdUsageValue; segments: XcopySegment[] }
  /** RECEIVE COPY RESULTS, COPY STATUS: the engine holds the status of the copies it runs. */
  | { kind: 'copy-status'; listId: number; allocationLength: number }
  /** REPORT TARGET PORT GROUPS: the engine brings the group states up to date, then answers. */
  | { kind: 'rtpg'; extended: boolean; allocationLength: number }
  /** GET LBA STATUS from a checked LBA: the handler says what is mapped. */
  | { kind: 'lba-status'; lba: number; allocationLength: number }
  /** SET TARGET PORT GROUPS. */
  | { kind: 'stpg'; descriptors: StpgDescriptor[] };

export type ScsiPlanKind = ScsiPlan['kind'];

/**
 * One planner per operation code. `scratch`, when given, receives a
 * READ/WRITE/SYNCHRONIZE CACHE plan instead of a new object: the engine's
 * per-command path allocates nothing for them.
 */
type Planner = (cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined, dataLength: number | undefined, scratch: BlockPlan | undefined) => ScsiPlan;

interface TableEntry {
  readonly plan: Planner;
  /** The stateless core set `emulate` answers without an engine (SUPPORTED_OPCODES). */
  readonly core: boolean;
  /** For an opcode with service actions, the ones served (REPORT SUPPORTED OPERATION CODES lists each). */
  readonly serviceActions?: readonly number[];
}

// ------------------------------------------------------------ READ / WRITE / SYNCHRONIZE CACHE

/** A READ/WRITE CDB decoded. An LBA past 2^53 comes out as Infinity, which every range check rejects. */
export interface RwFields {
  lba: number;
  blocks: number;
  fua: boolean;
  dpo: boolean;
  /** Offset of the TRANSFER LENGTH field, for the field pointer. */
  lengthByte: number;
}

/** A 64-bit big-endian field as a number; Infinity past 2^53 (no BigInt on the per-command path). */
function be64Number(b: Uint8Array, off: number): number {
  const hi = be32(b, off);
  return hi >= 0x200000 ? Infinity : hi * 0x100000000 + be32(b, off + 4);
}

/**
 * Decode READ/WRITE (6)/(10)/(12)/(16) into `out`, rejecting what we cannot
 * honour. Throws ScsiError.
 */
export function decodeRw(cdb: Uint8Array, out: RwFields = { lba: 0, blocks: 0, fua: false, dpo: false, lengthByte: 0 }): RwFields {
  const len = cdbLength(cdb[0])!;
  requireLength(cdb, len);
  checkControlByte(cdb, len);
  if (len === 6) {
    requireClear(cdb, 1, 0xe0);
    out.lba = ((cdb[1] & 0x1f) << 16) | be16(cdb, 2);
    // SBC-3 5.8: in the 6-byte CDBs a TRANSFER LENGTH of 0 means 256 blocks.
    out.blocks = cdb[4] === 0 ? 256 : cdb[4];
    out.fua = false;
    out.dpo = false;
    out.lengthByte = 4;
    return out;
  }
  // Byte 1: RDPROTECT/WRPROTECT (7:5) need protection information, which we
  // do not format; DPO (4) is a cache hint we may ignore; FUA (3) honoured;
  // bit 1 (FUA_NV in SBC-3) is a hint, accepted; bits 2 and 0 reserved.
  if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
  requireClear(cdb, 1, 0x05);
  requireClear(cdb, len === 10 ? 6 : len === 12 ? 10 : 14, 0xe0); // GROUP NUMBER is 4:0; accepted and ignored
  out.fua = (cdb[1] & 0x08) !== 0;
  out.dpo = (cdb[1] & 0x10) !== 0;
  if (len === 10) {
    out.lba = be32(cdb, 2);
    out.blocks = be16(cdb, 7);
    out.lengthByte = 7;
  } else if (len === 12) {
    out.lba = be32(cdb, 2);
    out.blocks = be32(cdb, 6);
    out.lengthByte = 6;
  } else {
    out.lba = be64Number(cdb, 2);
    out.blocks = be32(cdb, 10);
    out.lengthByte = 10;
  }
  return out;
}

/**
 * SBC-3 4.5: an access must lie entirely within the medium. Checked even for
 * zero blocks (an LBA past the end is still out of range), as LIO does.
 */
export function checkRange(dev: ScsiDeviceInfo, lba: number, blocks: number): number {
  if (!(lba + blocks <= Math.max(0, dev.numLbas))) throw ScsiError.lbaOutOfRange();
  return lba;
}

/** Per-thread scratch for decodeRw: planning runs one command at a time. */
const rw: RwFields = { lba: 0, blocks: 0, fua: false, dpo: false, lengthByte: 0 };

function blockPlan(scratch: BlockPlan | undefined, kind: BlockPlan['kind'], lba: number, blocks: number, fua: boolean): BlockPlan {
  // A flush has no FUA bit: its own object says so (the scratch record keeps the field, unread).
  if (!scratch) return (kind === 'flush' ? { kind, lba, blocks } : { kind, lba, blocks, fua }) as BlockPlan;
  scratch.kind = kind;
  scratch.lba = lba;
  scratch.blocks = blocks;
  scratch.fua = fua;
  return scratch;
}

function planRw(kind: 'read' | 'write'): Planner {
  return (cdb, dev, _o, _n, scratch) => {
    const f = decodeRw(cdb, rw);
    // SBC-3 6.5.3: a transfer longer than MAXIMUM TRANSFER LENGTH is a CDB error.
    if (dev.maxXferBlocks > 0 && f.blocks > dev.maxXferBlocks) throw ScsiError.invalidField(f.lengthByte);
    if (kind === 'write' && dev.writeProtect) throw ScsiError.writeProtected();
    const lba = checkRange(dev, f.lba, f.blocks);
    // SBC-3: zero blocks transfers nothing and is not an error (never for the 6-byte forms).
    if (f.blocks === 0) return GOOD;
    return blockPlan(scratch, kind, lba, f.blocks, f.fua);
  };
}

function planSyncCache(cdb: Uint8Array, dev: ScsiDeviceInfo, _o: Uint8Array | undefined, _n: number | undefined, scratch: BlockPlan | undefined): ScsiPlan {
  const ten = cdb[0] === Opcode.SYNCHRONIZE_CACHE_10;
  checkControlByte(cdb, ten ? 10 : 16);
  // Byte 1: IMMED (1) and SYNC_NV (2) accepted; completing after the flush
  // satisfies IMMED = 1 too. Bit 0 (obsolete RELADR) and 7:3 reserved.
  requireClear(cdb, 1, 0xf9);
  requireClear(cdb, ten ? 6 : 14, 0xe0);
  const lba = ten ? be32(cdb, 2) : be64Number(cdb, 2);
  const n = ten ? be16(cdb, 7) : be32(cdb, 10);
  const start = checkRange(dev, lba, n);
  // NUMBER OF LOGICAL BLOCKS 0 means "through the last LBA"; hand the engine a real range.
  return blockPlan(scratch, 'flush', start, n === 0 ? dev.numLbas - start : n, false);
}

/** The one GOOD-without-data answer, shared (it is never modified). */
const GOOD = Object.freeze(goodOutcome()) as ScsiOutcome;

// ------------------------------------------------------------ answered here

/**
 * REQUEST SENSE parameter data: NO SENSE (nothing is pending between
 * commands here: sense goes out with each CHECK CONDITION), or `pending`
 * (e.g. NOT READY, FORMAT IN PROGRESS with its progress indication while a
 * format runs), in the format the DESC bit asks for, cut to the allocation
 * length. Throws ScsiError for a bad CDB.
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

function planTestUnitReady(cdb: Uint8Array): ScsiPlan {
  requireZeroBytes(cdb, 1, 5);
  checkControlByte(cdb, 6);
  return GOOD;
}

function planServiceActionIn16(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const sa = cdb[1] & 0x1f;
  if (sa === ServiceActionIn16.READ_CAPACITY_16) return goodOutcome(emulateReadCapacity16(cdb, dev));
  if (sa === ServiceActionIn16.GET_LBA_STATUS && dev.getLbaStatus) {
    checkControlByte(cdb, 16);
    requireClear(cdb, 1, 0xe0);
    requireZeroBytes(cdb, 14, 15); // REPORT TYPE (SBC-4r?): only "all" is offered
    const lba = be64Number(cdb, 2);
    // SBC-3 5.6: a STARTING LBA past the last one is out of range; every other is answered.
    if (!(lba < dev.numLbas)) throw ScsiError.lbaOutOfRange();
    return { kind: 'lba-status', lba, allocationLength: be32(cdb, 10) };
  }
  // SPC-4: an unsupported service action is an invalid field, not an invalid opcode.
  throw ScsiError.invalidField(1, 4);
}

// ------------------------------------------------------------ carried out by the executor

function planMaintenanceIn(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const sa = cdb[1] & 0x1f;
  if (sa === MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES) {
    if (probing) return (checkReportSupportedOpcodesCdb(cdb), GOOD);
    return goodOutcome(reportSupportedOpcodes(cdb, dev, COMMANDS, probeFor(dev)));
  }
  if (sa === MaintenanceIn.REPORT_TARGET_PORT_GROUPS) {
    // tcmu-runner: without an enabled port in a user-made group, ALUA is not configured.
    if (!enabledPort(dev.alua)) throw ScsiError.invalidOpcode();
    const r = decodeReportTargetPortGroups(cdb);
    return { kind: 'rtpg', extended: r.extended, allocationLength: r.allocationLength };
  }
  throw ScsiError.invalidField(1, 4);
}

function planMaintenanceOut(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): ScsiPlan {
  const sa = cdb[1] & 0x1f;
  if (sa !== MaintenanceOut.SET_TARGET_PORT_GROUPS) throw ScsiError.invalidField(1, 4);
  // As LIO: explicit transitions not enabled means the command is not supported.
  if (!enabledPort(dev.alua) || dev.alua!.failover !== 'explicit') throw ScsiError.invalidOpcode();
  const descriptors = decodeSetTargetPortGroups(cdb, dataOut);
  return descriptors.length ? { kind: 'stpg', descriptors } : GOOD;
}

function planUnmap(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): ScsiPlan {
  // tcmu-runner: no unmap callout, no UNMAP.
  if (!dev.lbpu) throw ScsiError.invalidOpcode();
  const ranges = decodeUnmap(cdb, dev, dataOut);
  return ranges.length ? { kind: 'unmap', ranges } : GOOD;
}

function planCompareAndWrite(cdb: Uint8Array, dev: ScsiDeviceInfo, _o: Uint8Array | undefined, dataLength: number | undefined): ScsiPlan {
  if (!(dev.maxCompareAndWriteBlocks ?? 0)) throw ScsiError.invalidOpcode();
  const f = decodeCompareAndWrite(cdb, dev, dataLength);
  return f.blocks ? { kind: 'compare-and-write', ...f } : GOOD;
}

function planVerify(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const f = decodeVerify(cdb, dev);
  return f.blocks ? { kind: 'verify', ...f } : GOOD;
}

function planWriteVerify(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  const f = decodeWriteVerify(cdb, dev);
  return f.blocks ? { kind: 'write-verify', ...f } : GOOD;
}

function planExtendedCopy(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined): ScsiPlan {
  if (!dev.thirdPartyCopy) throw ScsiError.invalidOpcode();
  const list = decodeExtendedCopyList(cdb, dataOut, dev.blockSize);
  return list ? { kind: 'xcopy', ...list } : GOOD;
}

function planReceiveCopyResults(cdb: Uint8Array, dev: ScsiDeviceInfo): ScsiPlan {
  if (!dev.thirdPartyCopy) throw ScsiError.invalidOpcode();
  const f = decodeReceiveCopyResults(cdb);
  if (f.action === CopyResultsAction.COPY_STATUS) return { kind: 'copy-status', listId: f.listId, allocationLength: f.allocationLength };
  const data = copyOperatingParameters(dev.blockSize);
  return goodOutcome(data.subarray(0, Math.min(f.allocationLength, data.length)));
}

// ------------------------------------------------------------ the table

const core = (plan: Planner, serviceActions?: readonly number[]): TableEntry => ({ plan, core: true, ...(serviceActions ? { serviceActions } : {}) });
const engine = (plan: Planner, serviceActions?: readonly number[]): TableEntry => ({ plan, core: false, ...(serviceActions ? { serviceActions } : {}) });
const read = planRw('read');
const write = planRw('write');

const TABLE = new Map<number, TableEntry>([
  [Opcode.TEST_UNIT_READY, core((c) => planTestUnitReady(c))],
  [Opcode.REQUEST_SENSE, core((c) => goodOutcome(requestSenseData(c)))],
  [Opcode.INQUIRY, core((c, d) => goodOutcome(emulateInquiry(c, d)))],
  [Opcode.READ_CAPACITY_10, core((c, d) => goodOutcome(emulateReadCapacity10(c, d)))],
  [Opcode.SERVICE_ACTION_IN_16, core(planServiceActionIn16, [ServiceActionIn16.READ_CAPACITY_16, ServiceActionIn16.GET_LBA_STATUS])],
  [Opcode.MODE_SENSE_6, core((c, d) => goodOutcome(emulateModeSense(c, d)))],
  [Opcode.MODE_SENSE_10, core((c, d) => goodOutcome(emulateModeSense(c, d)))],
  [Opcode.MODE_SELECT_6, core((c, d, o) => (emulateModeSelect(c, d, o), GOOD))],
  [Opcode.MODE_SELECT_10, core((c, d, o) => (emulateModeSelect(c, d, o), GOOD))],
  [Opcode.READ_6, core(read)],
  [Opcode.READ_10, core(read)],
  [Opcode.READ_12, core(read)],
  [Opcode.READ_16, core(read)],
  [Opcode.WRITE_6, core(write)],
  [Opcode.WRITE_10, core(write)],
  [Opcode.WRITE_12, core(write)],
  [Opcode.WRITE_16, core(write)],
  [Opcode.SYNCHRONIZE_CACHE_10, core(planSyncCache)],
  [Opcode.SYNCHRONIZE_CACHE_16, core(planSyncCache)],
  [Opcode.WRITE_SAME_10, engine((c, d) => ({ kind: 'write-same', ...decodeWriteSame(c, d) }))],
  [Opcode.WRITE_SAME_16, engine((c, d) => ({ kind: 'write-same', ...decodeWriteSame(c, d) }))],
  [Opcode.UNMAP, engine(planUnmap)],
  [Opcode.COMPARE_AND_WRITE, engine(planCompareAndWrite)],
  [Opcode.VERIFY_10, engine(planVerify)],
  [Opcode.VERIFY_12, engine(planVerify)],
  [Opcode.VERIFY_16, engine(planVerify)],
  [Opcode.WRITE_VERIFY_10, engine(planWriteVerify)],
  [Opcode.WRITE_VERIFY_12, engine(planWriteVerify)],
  [Opcode.WRITE_VERIFY_16, engine(planWriteVerify)],
  [Opcode.FORMAT_UNIT, engine((c, d, o) => ({ kind: 'format', ...decodeFormatUnit(c, d, o) }))],
  [Opcode.PRE_FETCH_10, core((c, d) => (checkPreFetch(c, d), GOOD))],
  [Opcode.PRE_FETCH_16, core((c, d) => (checkPreFetch(c, d), GOOD))],
  [Opcode.READ_DEFECT_DATA_10, core((c) => goodOutcome(readDefectData(c)))],
  [Opcode.READ_DEFECT_DATA_12, core((c) => goodOutcome(readDefectData(c)))],
  [Opcode.ORWRITE_16, engine((c, d) => {
    const f = decodeOrWrite(c, d);
    return f.blocks ? { kind: 'orwrite', ...f } : GOOD;
  })],
  [Opcode.WRITE_ATOMIC_16, engine((c, d) => {
    const f = decodeWriteAtomic(c, d);
    return f.blocks ? { kind: 'write-atomic', ...f } : GOOD;
  })],
  [Opcode.START_STOP_UNIT, engine((c) => (checkStartStopUnit(c), GOOD))],
  [Opcode.EXTENDED_COPY, engine(planExtendedCopy, [0x00])],
  [Opcode.RECEIVE_COPY_RESULTS, engine(planReceiveCopyResults, [CopyResultsAction.COPY_STATUS, CopyResultsAction.OPERATING_PARAMETERS])],
  [Opcode.MAINTENANCE_IN, engine(planMaintenanceIn, [MaintenanceIn.REPORT_TARGET_PORT_GROUPS, MaintenanceIn.REPORT_SUPPORTED_OPERATION_CODES])],
  [Opcode.MAINTENANCE_OUT, engine(planMaintenanceOut, [MaintenanceOut.SET_TARGET_PORT_GROUPS])],
]);

/** Every command of the table, one entry per service action, in opcode order. */
const COMMANDS: readonly CommandEntry[] = Object.freeze(
  [...TABLE]
    .sort(([a], [b]) => a - b)
    .flatMap(([opcode, e]): CommandEntry[] => (e.serviceActions ? e.serviceActions.map((serviceAction) => ({ opcode, serviceAction })) : [{ opcode }])),
);

/** Set while the usage probe plans CDBs, so REPORT SUPPORTED OPERATION CODES does not report itself recursively. */
let probing = false;

/**
 * Plans a CDB for the usage probe against a copy of the device (MODE
 * SELECT may change what it plans against) and says how it went.
 */
function probeFor(dev: ScsiDeviceInfo): PlanProbe {
  const copy: ScsiDeviceInfo = { ...dev };
  return (cdb) => {
    const entry = TABLE.get(cdb[0]);
    if (!entry) return 'invalid-opcode';
    probing = true;
    try {
      entry.plan(cdb, copy, undefined, undefined, undefined);
      return 'accepted';
    } catch (e) {
      return e instanceof ScsiError ? verdictOf(e) : 'other-error';
    } finally {
      probing = false;
    }
  };
}

/** The commands the planner table serves and the CDB usage data this device reports for each. */
export function supportedCommands(dev: ScsiDeviceInfo): { opcode: number; serviceAction?: number; usage: Uint8Array }[] {
  const probe = probeFor(dev);
  return COMMANDS.flatMap((c) => {
    const usage = cdbUsage(c, probe);
    return usage ? [{ ...c, usage }] : [];
  });
}

const sortedOpcodes = (pick: (e: TableEntry) => boolean): readonly number[] =>
  Object.freeze([...TABLE].filter(([, e]) => pick(e)).map(([op]) => op).sort((a, b) => a - b));

/** Operation codes `emulate` answers: the stateless core set. */
export const SUPPORTED_OPCODES: readonly number[] = sortedOpcodes((e) => e.core);

/** Every operation code `planCommand` serves. */
export const PLANNED_OPCODES: readonly number[] = sortedOpcodes(() => true);

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
  Opcode.PRE_FETCH_10, Opcode.PRE_FETCH_16, Opcode.ORWRITE_16, Opcode.WRITE_ATOMIC_16,
]);

/** Of MEDIA_ACCESS_OPCODES, those that only read (an implicit transition takes a read lock for them). */
export const READ_ONLY_MEDIA_OPCODES: ReadonlySet<number> = new Set([
  Opcode.READ_6, Opcode.READ_10, Opcode.READ_12, Opcode.READ_16,
  Opcode.VERIFY_10, Opcode.VERIFY_12, Opcode.VERIFY_16,
  Opcode.PRE_FETCH_10, Opcode.PRE_FETCH_16,
]);

function planFrom(
  coreOnly: boolean, cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut: Uint8Array | undefined, dataLength: number | undefined,
  scratch: BlockPlan | undefined,
): ScsiPlan {
  try {
    const entry = cdb.length ? TABLE.get(cdb[0]) : undefined;
    if (!entry || (coreOnly && !entry.core)) throw ScsiError.invalidOpcode();
    requireLength(cdb, cdbLength(cdb[0])!);
    return entry.plan(cdb, dev, dataOut, dataLength, scratch);
  } catch (e) {
    return checkCondition(e instanceof ScsiError ? e : ScsiError.internalFailure(e), dev);
  }
}

/**
 * Decide what to do with one command. `dataOut` is the parameter list for
 * PARAMETER_LIST_OPCODES; other commands' data stays in the engine's
 * buffers. `dataLength` is the size of the Data-Out Buffer the initiator
 * sent, when known: COMPARE AND WRITE checks it against its NUMBER OF
 * LOGICAL BLOCKS. Data-In is cut to the CDB's allocation length only; the
 * engine still fits it to the command's buffers.
 */
export function planCommand(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array, dataLength?: number, scratch?: BlockPlan): ScsiPlan {
  return planFrom(false, cdb, dev, dataOut, dataLength, scratch);
}

/**
 * The stateless core set alone (SUPPORTED_OPCODES), for embedders without
 * an engine: anything else is INVALID COMMAND OPERATION CODE.
 */
export function emulate(cdb: Uint8Array, dev: ScsiDeviceInfo, dataOut?: Uint8Array): ScsiOutcome {
  return planFrom(true, cdb, dev, dataOut, undefined, undefined) as ScsiOutcome;
}
