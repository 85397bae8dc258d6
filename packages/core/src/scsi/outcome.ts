/**
 * What the SCSI core decides about a command, and the one table that turns
 * a failure (a handler's errno error, a ScsiError) into the status and sense
 * the initiator sees.
 */

import { ScsiStatus } from '@tcmu-ts/ring/abi';
import type { ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';

/** A checked block transfer or cache flush for the handler. Mutable: the engine plans into one per command record. */
export interface BlockPlan {
  kind: 'read' | 'write' | 'flush';
  lba: number;
  blocks: number;
  fua: boolean;
}

export type ScsiOutcome =
  /** Finished here: status, and sense for CHECK CONDITION or data for the Data-In buffer. */
  | { kind: 'done'; status: number; sense?: Uint8Array; dataIn?: Uint8Array }
  /** READ/WRITE of `blocks` at `lba`; SYNCHRONIZE CACHE over a checked range (blocks never 0 for "to the end"). */
  | BlockPlan;

export type DoneOutcome = Extract<ScsiOutcome, { kind: 'done' }>;

/** GOOD status, with Data-In bytes when the command returns data. */
export function goodOutcome(dataIn?: Uint8Array): DoneOutcome {
  return dataIn ? { kind: 'done', status: ScsiStatus.GOOD, dataIn } : { kind: 'done', status: ScsiStatus.GOOD };
}

/** CHECK CONDITION with sense in the format the device's D_SENSE bit selects. */
export function checkCondition(err: ScsiError, dev?: Pick<ScsiDeviceInfo, 'dSense'>): DoneOutcome {
  return { kind: 'done', status: ScsiStatus.CHECK_CONDITION, sense: err.toSense(dev?.dSense === true) };
}

function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const c = (err as { code: unknown }).code;
    if (typeof c === 'string') return c;
  }
  return undefined;
}

/** Data direction of the failed command: 'write' (or true) for writes, 'read' (or false) otherwise. */
export type Direction = 'read' | 'write' | boolean;

/** A failure as the initiator sees it. `sense` only with CHECK CONDITION. */
export interface FailureStatus {
  readonly status: number;
  readonly sense?: Uint8Array;
  /** A ScsiError, or an errno error the table knows: the failure was foreseen, not a handler fault. */
  readonly known: boolean;
}

const isWrite = (d: Direction): boolean => d === true || d === 'write';

/**
 * The one errno table, as tcmu-runner's handlers map errno to TCMU_STS_*
 * and tcmu_sts_to_scsi maps those to status and sense. A number is a status
 * the initiator retries on (TASK SET FULL when memory ran out, BUSY when
 * the backend says to try again or a lock is being taken); a function builds
 * the CHECK CONDITION's ScsiError for the command's direction.
 */
const ERRNO_TABLE: Readonly<Record<string, number | ((write: boolean) => ScsiError)>> = {
  ENOMEM: ScsiStatus.TASK_SET_FULL,
  ENOBUFS: ScsiStatus.TASK_SET_FULL,
  EAGAIN: ScsiStatus.BUSY,
  EWOULDBLOCK: ScsiStatus.BUSY,
  EBUSY: ScsiStatus.BUSY,
  ETIMEDOUT: ScsiStatus.BUSY,
  ESTALE: ScsiStatus.BUSY,
  EIO: (write) => ScsiError.mediumError(write ? 'write' : 'read'),
  ENOSPC: () => ScsiError.spaceAllocationFailed(),
  EDQUOT: () => ScsiError.spaceAllocationFailed(),
  EROFS: () => ScsiError.writeProtected(),
  EACCES: () => ScsiError.writeProtected(),
  EPERM: () => ScsiError.writeProtected(),
};

const RETRY_STATUS: Readonly<Record<number, FailureStatus>> = {
  [ScsiStatus.BUSY]: Object.freeze({ status: ScsiStatus.BUSY, known: true }),
  [ScsiStatus.TASK_SET_FULL]: Object.freeze({ status: ScsiStatus.TASK_SET_FULL, known: true }),
};

/**
 * Status and sense for a failed command: ScsiError as thrown; errno codes
 * by ERRNO_TABLE (EIO by `direction`: WRITE ERROR or UNRECOVERED READ
 * ERROR); anything else is a HARDWARE ERROR, INTERNAL TARGET FAILURE.
 */
export function statusForError(err: unknown, direction: Direction = 'read', descriptor = false): FailureStatus {
  const entry = tableEntry(err);
  if (typeof entry === 'number') return RETRY_STATUS[entry];
  return { status: ScsiStatus.CHECK_CONDITION, sense: scsiErrorFor(err, direction).toSense(descriptor), known: err instanceof ScsiError || entry !== undefined };
}

function tableEntry(err: unknown): (typeof ERRNO_TABLE)[string] | undefined {
  const code = errnoCode(err);
  return code === undefined ? undefined : ERRNO_TABLE[code];
}

/** The failure is one the initiator should retry (BUSY, TASK SET FULL) rather than see as an error. */
export function isResourceShortage(err: unknown): boolean {
  return statusForError(err).status !== ScsiStatus.CHECK_CONDITION;
}

/**
 * The ScsiError of a failure that ends in CHECK CONDITION (see
 * statusForError); retryable errno codes, which end in BUSY or TASK SET
 * FULL instead, come back as INTERNAL TARGET FAILURE.
 */
export function scsiErrorFor(err: unknown, direction: Direction = 'read'): ScsiError {
  if (err instanceof ScsiError) return err;
  const entry = tableEntry(err);
  return typeof entry === 'function' ? entry(isWrite(direction)) : ScsiError.internalFailure(err);
}

/** Sense bytes for a failure that ends in CHECK CONDITION (see scsiErrorFor). */
export function senseForError(err: unknown, direction: Direction = 'read', descriptor = false): Uint8Array {
  return scsiErrorFor(err, direction).toSense(descriptor);
}
