/**
 * Sense data (SPC-4 4.5): building it, reading it back, and the ScsiError
 * exception that carries a sense key/ASC/ASCQ through handler code.
 *
 * The core never stores sense between commands: every CHECK CONDITION
 * carries its sense bytes in the response, which is what TCMU expects
 * (the kernel copies them into the transport's autosense).
 */

import { SenseKey } from '@tcmu-ts/ring/kernel-scsi';
import { be16, be32, be64, put16, put32, put64, topBit } from './bytes.js';

/** Sense keys (SPC-4 table 28): one table for the whole project, kept with the ring's SCSI basics. */
export { SenseKey };
export type SenseKeyValue = (typeof SenseKey)[keyof typeof SenseKey];

/** An additional sense code and its qualifier. */
export interface AscPair {
  readonly asc: number;
  readonly ascq: number;
}

const pair = (asc: number, ascq: number): AscPair => Object.freeze({ asc, ascq });

/**
 * The ASC/ASCQ pairs this project reports (names after T10's asc-num.txt).
 * Kept as named pairs so a call site reads `Asc.LBA_OUT_OF_RANGE`, never 0x2100.
 */
export const Asc = {
  NO_ADDITIONAL_SENSE: pair(0x00, 0x00),
  NOT_READY_CAUSE_NOT_REPORTABLE: pair(0x04, 0x00),
  NOT_READY_BECOMING_READY: pair(0x04, 0x01),
  NOT_READY_INITIALIZING_COMMAND_REQUIRED: pair(0x04, 0x02),
  NOT_READY_MANUAL_INTERVENTION_REQUIRED: pair(0x04, 0x03),
  NOT_READY_FORMAT_IN_PROGRESS: pair(0x04, 0x04),
  NOT_READY_OPERATION_IN_PROGRESS: pair(0x04, 0x07),
  NOT_READY_OFFLINE: pair(0x04, 0x12),
  NOT_READY_ASYMMETRIC_ACCESS_STATE_TRANSITION: pair(0x04, 0x0a),
  NOT_READY_TARGET_PORT_IN_STANDBY_STATE: pair(0x04, 0x0b),
  NOT_READY_TARGET_PORT_IN_UNAVAILABLE_STATE: pair(0x04, 0x0c),
  LOGICAL_UNIT_COMMUNICATION_FAILURE: pair(0x08, 0x00),
  WRITE_ERROR: pair(0x0c, 0x00),
  WRITE_ERROR_AUTO_REALLOCATION_FAILED: pair(0x0c, 0x02),
  WRITE_ERROR_INCOMPATIBLE_FORMAT: pair(0x30, 0x05),
  COPY_TARGET_DEVICE_NOT_REACHABLE: pair(0x0d, 0x02),
  INCORRECT_COPY_TARGET_DEVICE_TYPE: pair(0x0d, 0x03),
  LOGICAL_BLOCK_GUARD_CHECK_FAILED: pair(0x10, 0x01),
  LOGICAL_BLOCK_APPLICATION_TAG_CHECK_FAILED: pair(0x10, 0x02),
  LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED: pair(0x10, 0x03),
  UNRECOVERED_READ_ERROR: pair(0x11, 0x00),
  PARAMETER_LIST_LENGTH_ERROR: pair(0x1a, 0x00),
  MISCOMPARE_DURING_VERIFY: pair(0x1d, 0x00),
  INVALID_COMMAND_OPERATION_CODE: pair(0x20, 0x00),
  LBA_OUT_OF_RANGE: pair(0x21, 0x00),
  // ZBC: the write pointer and zone boundary rules of sequential write required zones.
  UNALIGNED_WRITE_COMMAND: pair(0x21, 0x04),
  WRITE_BOUNDARY_VIOLATION: pair(0x21, 0x05),
  ATTEMPT_TO_READ_INVALID_DATA: pair(0x21, 0x06),
  READ_BOUNDARY_VIOLATION: pair(0x21, 0x07),
  INVALID_FIELD_IN_CDB: pair(0x24, 0x00),
  LOGICAL_UNIT_NOT_SUPPORTED: pair(0x25, 0x00),
  INVALID_FIELD_IN_PARAMETER_LIST: pair(0x26, 0x00),
  PARAMETER_NOT_SUPPORTED: pair(0x26, 0x01),
  PARAMETER_VALUE_INVALID: pair(0x26, 0x02),
  TOO_MANY_TARGET_DESCRIPTORS: pair(0x26, 0x06),
  UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE: pair(0x26, 0x07),
  TOO_MANY_SEGMENT_DESCRIPTORS: pair(0x26, 0x08),
  UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE: pair(0x26, 0x09),
  WRITE_PROTECTED: pair(0x27, 0x00),
  SPACE_ALLOCATION_FAILED: pair(0x27, 0x07),
  NOT_READY_TO_READY_CHANGE: pair(0x28, 0x00),
  POWER_ON_RESET: pair(0x29, 0x00),
  PARAMETERS_CHANGED: pair(0x2a, 0x00),
  MODE_PARAMETERS_CHANGED: pair(0x2a, 0x01),
  RESERVATIONS_PREEMPTED: pair(0x2a, 0x03),
  RESERVATIONS_RELEASED: pair(0x2a, 0x04),
  REGISTRATIONS_PREEMPTED: pair(0x2a, 0x05),
  ASYMMETRIC_ACCESS_STATE_CHANGED: pair(0x2a, 0x06),
  IMPLICIT_ASYMMETRIC_ACCESS_STATE_TRANSITION_FAILED: pair(0x2a, 0x07),
  CAPACITY_DATA_HAS_CHANGED: pair(0x2a, 0x09),
  COMMANDS_CLEARED_BY_ANOTHER_INITIATOR: pair(0x2f, 0x00),
  SAVING_PARAMETERS_NOT_SUPPORTED: pair(0x39, 0x00),
  MEDIUM_NOT_PRESENT: pair(0x3a, 0x00),
  REPORTED_LUNS_DATA_HAS_CHANGED: pair(0x3f, 0x0e),
  INTERNAL_TARGET_FAILURE: pair(0x44, 0x00),
  INQUIRY_DATA_HAS_CHANGED: pair(0x3f, 0x03),
  THIN_PROVISIONING_SOFT_THRESHOLD_REACHED: pair(0x38, 0x07),
  EXPLICIT_ASYMMETRIC_ACCESS_STATE_TRANSITION_FAILED: pair(0x67, 0x0a),
  /** ZBC, with sense key DATA PROTECT: no open zone resource left for an explicit or implicit open. */
  INSUFFICIENT_ZONE_RESOURCES: pair(0x55, 0x0e),
} as const;
export type AscName = keyof typeof Asc;

/** Sense-key-specific FIELD POINTER (SPC-4 4.5.2.4.2): which byte (and bit) was wrong. */
export interface FieldPointer {
  /** Byte offset in the CDB or parameter list; for multi-byte fields, the most significant byte. */
  readonly byte: number;
  /** Bit within that byte (0..7); for multi-bit fields, the most significant bit. Omitted: whole byte. */
  readonly bit?: number;
  /** true: the error is in the CDB (C/D = 1); false: in the parameter data. */
  readonly cdb: boolean;
  /**
   * COPY ABORTED only (segment pointer, SPC-4 4.5.2.4.5): the byte counts
   * from the start of the segment descriptor whose number is in the
   * COMMAND-SPECIFIC INFORMATION field (SD = 1), not from the start of the
   * parameter list.
   */
  readonly segmentDescriptor?: boolean;
}

export interface SenseOptions {
  /** INFORMATION field (e.g. first bad LBA, miscompare offset). */
  information?: number | bigint;
  /** COMMAND-SPECIFIC INFORMATION field. */
  commandSpecific?: number | bigint;
  /** Descriptor format (72h) instead of fixed format (70h); follows the D_SENSE control bit. */
  descriptor?: boolean;
  fieldPointer?: FieldPointer;
  /** Progress indication (0..65535 of 65536), for NOT READY / FORMAT IN PROGRESS. */
  progress?: number;
  /** Report a deferred error (71h/73h) rather than a current one. */
  deferred?: boolean;
}

/** Length of fixed-format sense data: 8-byte header + 10 additional bytes. */
export const FIXED_SENSE_LENGTH = 18;

function senseKeySpecific(opts: SenseOptions): Uint8Array | undefined {
  if (opts.fieldPointer) {
    const fp = opts.fieldPointer;
    const sks = new Uint8Array(3);
    sks[0] = 0x80 | (fp.cdb ? 0x40 : 0) | (fp.segmentDescriptor ? 0x20 : 0);
    if (fp.bit !== undefined) sks[0] |= 0x08 | (fp.bit & 0x7);
    put16(sks, 1, fp.byte & 0xffff);
    return sks;
  }
  if (opts.progress !== undefined) {
    const sks = new Uint8Array(3);
    sks[0] = 0x80;
    put16(sks, 1, Math.max(0, Math.min(0xffff, Math.floor(opts.progress))));
    return sks;
  }
  return undefined;
}

function fits32(v: number | bigint): boolean {
  const b = BigInt(v);
  return b >= 0n && b <= 0xffffffffn;
}

/**
 * Build sense data. Fixed format is 18 bytes; descriptor format is an
 * 8-byte header plus an information, command-specific and sense-key-specific
 * descriptor for whichever of those were given.
 *
 * Fixed format has only 32 bits of INFORMATION: a larger value is not
 * truncated (that would name the wrong LBA) but left out with VALID = 0,
 * as SPC-4 requires.
 */
export function buildSense(key: number, asc: number, ascq: number, opts: SenseOptions = {}): Uint8Array {
  const sks = senseKeySpecific(opts);
  if (opts.descriptor) {
    const parts: Uint8Array[] = [];
    if (opts.information !== undefined) {
      const d = new Uint8Array(12);
      d[0] = 0x00; // information descriptor
      d[1] = 0x0a;
      d[2] = 0x80; // VALID
      put64(d, 4, opts.information);
      parts.push(d);
    }
    if (opts.commandSpecific !== undefined) {
      const d = new Uint8Array(12);
      d[0] = 0x01; // command-specific information descriptor
      d[1] = 0x0a;
      put64(d, 4, opts.commandSpecific);
      parts.push(d);
    }
    if (sks) {
      const d = new Uint8Array(8);
      d[0] = 0x02; // sense key specific descriptor
      d[1] = 0x06;
      d.set(sks, 4);
      parts.push(d);
    }
    const extra = parts.reduce((n, p) => n + p.length, 0);
    const b = new Uint8Array(8 + extra);
    b[0] = opts.deferred ? 0x73 : 0x72;
    b[1] = key & 0x0f;
    b[2] = asc & 0xff;
    b[3] = ascq & 0xff;
    b[7] = extra;
    let off = 8;
    for (const p of parts) {
      b.set(p, off);
      off += p.length;
    }
    return b;
  }

  const b = new Uint8Array(FIXED_SENSE_LENGTH);
  b[0] = opts.deferred ? 0x71 : 0x70;
  if (opts.information !== undefined && fits32(opts.information)) {
    b[0] |= 0x80; // VALID
    put32(b, 3, Number(BigInt(opts.information)));
  }
  b[2] = key & 0x0f;
  b[7] = FIXED_SENSE_LENGTH - 8;
  if (opts.commandSpecific !== undefined && fits32(opts.commandSpecific)) {
    put32(b, 8, Number(BigInt(opts.commandSpecific)));
  }
  b[12] = asc & 0xff;
  b[13] = ascq & 0xff;
  if (sks) b.set(sks, 15);
  return b;
}

/** Sense data read back into fields; the inverse of buildSense for either format. */
export interface DecodedSense {
  readonly responseCode: number;
  readonly descriptor: boolean;
  readonly deferred: boolean;
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
  readonly information?: bigint;
  readonly commandSpecific?: bigint;
  readonly fieldPointer?: FieldPointer;
  readonly progress?: number;
}

function decodeSks(sks: Uint8Array, key: number): Pick<DecodedSense, 'fieldPointer' | 'progress'> {
  if (!(sks[0] & 0x80)) return {};
  if (key === SenseKey.ILLEGAL_REQUEST) {
    const fp: FieldPointer = {
      byte: be16(sks, 1),
      cdb: (sks[0] & 0x40) !== 0,
      ...(sks[0] & 0x08 ? { bit: sks[0] & 0x07 } : {}),
    };
    return { fieldPointer: fp };
  }
  if (key === SenseKey.COPY_ABORTED) {
    // Segment pointer: C/D is reserved, SD (bit 5) says what the field pointer counts from.
    const fp: FieldPointer = {
      byte: be16(sks, 1),
      cdb: false,
      ...(sks[0] & 0x20 ? { segmentDescriptor: true } : {}),
      ...(sks[0] & 0x08 ? { bit: sks[0] & 0x07 } : {}),
    };
    return { fieldPointer: fp };
  }
  if (key === SenseKey.NOT_READY || key === SenseKey.NO_SENSE) return { progress: be16(sks, 1) };
  return {};
}

/** The sense key of fixed (70h/71h: byte 2) or descriptor (72h/73h: byte 1) sense data. */
export function senseKeyOf(sense: Uint8Array): number {
  return (sense[0] & 0x7f) >= 0x72 ? sense[1] & 0x0f : sense[2] & 0x0f;
}

/** Parse sense data; undefined if the buffer holds no recognisable sense. */
export function decodeSense(b: Uint8Array): DecodedSense | undefined {
  if (b.length < 1) return undefined;
  const rc = b[0] & 0x7f;
  if (rc === 0x72 || rc === 0x73) {
    if (b.length < 4) return undefined;
    const key = b[1] & 0x0f;
    const out: { -readonly [K in keyof DecodedSense]: DecodedSense[K] } = {
      responseCode: rc, descriptor: true, deferred: rc === 0x73, key, asc: b[2], ascq: b[3],
    };
    const end = Math.min(b.length, 8 + (b.length > 7 ? b[7] : 0));
    for (let off = 8; off + 2 <= end; off += 2 + b[off + 1]) {
      const type = b[off];
      const len = b[off + 1];
      if (off + 2 + len > end) break;
      if (type === 0x00 && len >= 0x0a && b[off + 2] & 0x80) out.information = be64(b, off + 4);
      else if (type === 0x01 && len >= 0x0a) out.commandSpecific = be64(b, off + 4);
      else if (type === 0x02 && len >= 0x06) Object.assign(out, decodeSks(b.subarray(off + 4, off + 7), key));
    }
    return out;
  }
  if (rc === 0x70 || rc === 0x71) {
    if (b.length < 14) return undefined;
    const key = b[2] & 0x0f;
    const out: { -readonly [K in keyof DecodedSense]: DecodedSense[K] } = {
      responseCode: rc, descriptor: false, deferred: rc === 0x71, key, asc: b[12], ascq: b[13],
    };
    if (b[0] & 0x80) out.information = BigInt(be32(b, 3));
    const cs = be32(b, 8);
    if (cs !== 0) out.commandSpecific = BigInt(cs);
    if (b.length >= 18) Object.assign(out, decodeSks(b.subarray(15, 18), key));
    return out;
  }
  return undefined;
}

const KEY_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(SenseKey).map(([name, v]) => [v, name.replace(/_/g, ' ')]),
);
const ASC_NAMES = new Map<number, string>(
  Object.entries(Asc).map(([name, p]) => [(p.asc << 8) | p.ascq, name.replace(/_/g, ' ')]),
);

/** Human-readable "ILLEGAL REQUEST: LBA OUT OF RANGE (21h/00h)" for logs and error messages. */
export function describeSense(key: number, asc: number, ascq: number): string {
  const hex = (v: number) => v.toString(16).padStart(2, '0') + 'h';
  const k = KEY_NAMES[key] ?? `SENSE KEY ${hex(key)}`;
  const a = ASC_NAMES.get((asc << 8) | ascq) ?? 'ASC';
  return `${k}: ${a} (${hex(asc)}/${hex(ascq)})`;
}

/** Where in an EXTENDED COPY parameter list a COPY ABORTED error lies. */
export interface CopySegmentRef {
  /** Segment number: position of the segment descriptor in the list, from 0. */
  readonly segment: number;
  /** Byte within that segment descriptor, for the segment pointer. */
  readonly byte?: number;
  readonly bit?: number;
}

export interface ScsiErrorOptions {
  information?: number | bigint;
  commandSpecific?: number | bigint;
  fieldPointer?: FieldPointer;
  progress?: number;
  message?: string;
  cause?: unknown;
}

/**
 * A failed command, as the initiator will see it. Handlers throw it when an
 * errno cannot say what went wrong (a miscompare offset, a specific ASC);
 * the SCSI core throws it internally and turns it into CHECK CONDITION.
 */
export class ScsiError extends Error {
  readonly key: number;
  readonly asc: number;
  readonly ascq: number;
  readonly information?: number | bigint;
  readonly commandSpecific?: number | bigint;
  readonly fieldPointer?: FieldPointer;
  readonly progress?: number;

  constructor(key: number, asc: number, ascq: number, opts: ScsiErrorOptions = {}) {
    super(opts.message ?? describeSense(key, asc, ascq), opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'ScsiError';
    this.key = key;
    this.asc = asc;
    this.ascq = ascq;
    if (opts.information !== undefined) this.information = opts.information;
    if (opts.commandSpecific !== undefined) this.commandSpecific = opts.commandSpecific;
    if (opts.fieldPointer !== undefined) this.fieldPointer = opts.fieldPointer;
    if (opts.progress !== undefined) this.progress = opts.progress;
  }

  /** `new ScsiError(key, p.asc, p.ascq, opts)` with a named pair. */
  static of(key: number, p: AscPair, opts?: ScsiErrorOptions): ScsiError {
    return new ScsiError(key, p.asc, p.ascq, opts);
  }

  /** Sense bytes for this error, fixed or descriptor format. */
  toSense(descriptor = false): Uint8Array {
    return buildSense(this.key, this.asc, this.ascq, {
      descriptor,
      information: this.information,
      commandSpecific: this.commandSpecific,
      fieldPointer: this.fieldPointer,
      progress: this.progress,
    });
  }

  static invalidOpcode(): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_COMMAND_OPERATION_CODE);
  }

  /** INVALID FIELD IN CDB, pointing at the offending byte (and bit) when known. */
  static invalidField(byte?: number, bit?: number): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_CDB, {
      ...(byte !== undefined ? { fieldPointer: { byte, cdb: true, ...(bit !== undefined ? { bit } : {}) } } : {}),
    });
  }

  /** INVALID FIELD IN PARAMETER LIST, pointing into the data-out buffer when known. */
  static invalidParameter(byte?: number, bit?: number): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.INVALID_FIELD_IN_PARAMETER_LIST, {
      ...(byte !== undefined ? { fieldPointer: { byte, cdb: false, ...(bit !== undefined ? { bit } : {}) } } : {}),
    });
  }

  static parameterListLength(): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.PARAMETER_LIST_LENGTH_ERROR);
  }

  static lbaOutOfRange(lba?: number | bigint): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.LBA_OUT_OF_RANGE, lba !== undefined ? { information: lba } : {});
  }

  /** MEDIUM ERROR: UNRECOVERED READ ERROR for reads, WRITE ERROR for writes. */
  static mediumError(direction: 'read' | 'write' = 'read', lba?: number | bigint): ScsiError {
    const p = direction === 'write' ? Asc.WRITE_ERROR : Asc.UNRECOVERED_READ_ERROR;
    return ScsiError.of(SenseKey.MEDIUM_ERROR, p, lba !== undefined ? { information: lba } : {});
  }

  static readError(lba?: number | bigint): ScsiError {
    return ScsiError.mediumError('read', lba);
  }

  static writeError(lba?: number | bigint): ScsiError {
    return ScsiError.mediumError('write', lba);
  }

  static writeProtected(): ScsiError {
    return ScsiError.of(SenseKey.DATA_PROTECT, Asc.WRITE_PROTECTED);
  }

  /** Thin-provisioned backing store ran out of space (SBC-3 4.7.3.6). */
  static spaceAllocationFailed(): ScsiError {
    return ScsiError.of(SenseKey.DATA_PROTECT, Asc.SPACE_ALLOCATION_FAILED);
  }

  static internalFailure(cause?: unknown): ScsiError {
    return ScsiError.of(SenseKey.HARDWARE_ERROR, Asc.INTERNAL_TARGET_FAILURE, cause !== undefined ? { cause } : {});
  }

  /** Alias of internalFailure: HARDWARE ERROR, INTERNAL TARGET FAILURE. */
  static hardwareError(cause?: unknown): ScsiError {
    return ScsiError.internalFailure(cause);
  }

  /** MISCOMPARE DURING VERIFY; `offset` is the byte offset of the first difference (SBC-3 5.2). */
  static miscompare(offset: number): ScsiError {
    return ScsiError.of(SenseKey.MISCOMPARE, Asc.MISCOMPARE_DURING_VERIFY, { information: offset });
  }

  static capacityChanged(): ScsiError {
    return ScsiError.of(SenseKey.UNIT_ATTENTION, Asc.CAPACITY_DATA_HAS_CHANGED);
  }

  static modeParametersChanged(): ScsiError {
    return ScsiError.of(SenseKey.UNIT_ATTENTION, Asc.MODE_PARAMETERS_CHANGED);
  }

  static savingParametersNotSupported(): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED);
  }

  static notReady(p: AscPair = Asc.NOT_READY_CAUSE_NOT_REPORTABLE): ScsiError {
    return ScsiError.of(SenseKey.NOT_READY, p);
  }

  /** NOT READY, FORMAT IN PROGRESS with a progress indication (0..65535). */
  static formatInProgress(progress: number): ScsiError {
    return ScsiError.of(SenseKey.NOT_READY, Asc.NOT_READY_FORMAT_IN_PROGRESS, { progress });
  }

  /**
   * NOT READY, TARGET PORT IN STANDBY STATE: what a media-access command
   * gets when the ALUA group is standby or another node holds the
   * handler's lock (tcmu-runner's TCMU_STS_FENCED).
   */
  static standby(): ScsiError {
    return ScsiError.of(SenseKey.NOT_READY, Asc.NOT_READY_TARGET_PORT_IN_STANDBY_STATE);
  }

  /**
   * COPY ABORTED: an EXTENDED COPY failed while its segment descriptors
   * were being processed (SPC-4 6.4.3.x). With `at`, the segment number goes
   * in COMMAND-SPECIFIC INFORMATION (its third and fourth bytes in fixed
   * format) and, with `at.byte`, the sense-key-specific segment pointer
   * names the field within that segment descriptor (SD = 1).
   */
  static copyAborted(p: AscPair, at?: CopySegmentRef): ScsiError {
    return ScsiError.of(SenseKey.COPY_ABORTED, p, {
      ...(at ? { commandSpecific: at.segment } : {}),
      ...(at?.byte !== undefined
        ? { fieldPointer: { byte: at.byte, cdb: false, segmentDescriptor: true, ...(at.bit !== undefined ? { bit: at.bit } : {}) } }
        : {}),
    });
  }

  /** COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE (EXTENDED COPY target not served here). */
  static copyTargetNotReachable(at?: CopySegmentRef): ScsiError {
    return ScsiError.copyAborted(Asc.COPY_TARGET_DEVICE_NOT_REACHABLE, at);
  }

  /** COPY ABORTED, INCORRECT COPY TARGET DEVICE TYPE (e.g. block sizes differ). */
  static incorrectCopyTargetType(at?: CopySegmentRef): ScsiError {
    return ScsiError.copyAborted(Asc.INCORRECT_COPY_TARGET_DEVICE_TYPE, at);
  }

  /** An ILLEGAL REQUEST with a named ASC pointing into the parameter list. */
  static parameterError(p: AscPair, byte?: number, bit?: number): ScsiError {
    return ScsiError.of(SenseKey.ILLEGAL_REQUEST, p, {
      ...(byte !== undefined ? { fieldPointer: { byte, cdb: false, ...(bit !== undefined ? { bit } : {}) } } : {}),
    });
  }
}

/** Field pointer helper for reserved-bit checks: names the highest offending bit. */
export function reservedBitsError(byte: number, bits: number, inCdb = true): ScsiError {
  return inCdb ? ScsiError.invalidField(byte, topBit(bits)) : ScsiError.invalidParameter(byte, topBit(bits));
}
