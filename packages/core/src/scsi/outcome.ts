/**
 * What the SCSI core decides about a command, and the error-to-sense
 * mapping the engine applies to failures coming back from handlers.
 */

import { ScsiStatus } from '@tcmu-ts/ring/abi';
import type { ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';

export type ScsiOutcome =
  /** Finished here: status, and sense for CHECK CONDITION or data for the Data-In buffer. */
  | { kind: 'done'; status: number; sense?: Uint8Array; dataIn?: Uint8Array }
  /** A checked block transfer the handler must perform. */
  | { kind: 'read' | 'write'; lba: number; blocks: number; fua: boolean }
  /** SYNCHRONIZE CACHE over a checked range (blocks already resolved: never 0 for "to the end"). */
  | { kind: 'flush'; lba: number; blocks: number }
  /** Reserved for commands the engine routes elsewhere; the core does not return it yet. */
  | { kind: 'passthrough' };

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

const SHORTAGE = new Set(['ENOMEM', 'EAGAIN', 'EWOULDBLOCK', 'ENOBUFS']);

/**
 * The failure is a transient lack of resources: the engine should answer
 * BUSY so the initiator retries, rather than fail the IO with sense.
 */
export function isResourceShortage(err: unknown): boolean {
  const c = errnoCode(err);
  return c !== undefined && SHORTAGE.has(c);
}

/**
 * Map a handler failure to the ScsiError the initiator should see.
 * `direction` picks the MEDIUM ERROR ASC for EIO ('write' or true: WRITE
 * ERROR; otherwise UNRECOVERED READ ERROR). Resource shortages land in the catch-all: callers
 * are expected to test isResourceShortage first and answer BUSY instead.
 */
export function scsiErrorFor(err: unknown, direction: Direction = 'read'): ScsiError {
  if (err instanceof ScsiError) return err;
  switch (errnoCode(err)) {
    case 'EIO':
      return ScsiError.mediumError(direction === true || direction === 'write' ? 'write' : 'read');
    case 'ENOSPC':
    case 'EDQUOT':
      return ScsiError.spaceAllocationFailed();
    case 'EROFS':
    case 'EACCES':
    case 'EPERM':
      return ScsiError.writeProtected();
    default:
      return ScsiError.internalFailure(err);
  }
}

/** Sense bytes for a handler failure (see scsiErrorFor). */
export function senseForError(err: unknown, direction: Direction = 'read', descriptor = false): Uint8Array {
  return scsiErrorFor(err, direction).toSense(descriptor);
}
