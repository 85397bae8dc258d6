/**
 * The copy status one LUN's copy manager holds for RECEIVE COPY RESULTS,
 * COPY STATUS (SPC-4 6.18.3), keyed by LIST IDENTIFIER.
 *
 * An EXTENDED COPY with LIST ID USAGE 00b (hold) is given an entry when
 * its segments start being processed: COPY STATUS reports it in progress
 * while it runs and completed once it has succeeded. SPC-4's discard rules:
 *  - after the completed status has been transferred whole;
 *  - on a COPY STATUS with ALLOCATION LENGTH 0 for that list identifier;
 *  - when another EXTENDED COPY with that list identifier arrives (00b or
 *    10b), whatever it then does;
 *  - on a logical unit reset (the engine calls clear()).
 * A copy that fails holds nothing: the initiator got its sense with the
 * CHECK CONDITION, and a stale "completed with errors" entry would outlive
 * the session that could ask for it.
 *
 * TCMU does not say which I_T nexus a command came from, so the table is
 * per LUN rather than per nexus: a second copy with a list identifier that
 * is still in progress is not refused (OPERATION IN PROGRESS), since it may
 * come from another initiator; the newer copy's status replaces the older's.
 * At most 256 entries can exist (one per identifier).
 */
import { CopyManagerStatus, ScsiError, copyStatusData, type CopyStatus } from '@tcmu-ts/core';

/** A copy's progress, updated as it runs. */
export interface CopyProgress {
  status: CopyStatus['status'];
  segmentsProcessed: number;
  bytes: number;
}

export class CopyStatusTable {
  private readonly held = new Map<number, CopyProgress>();

  /**
   * An EXTENDED COPY naming `listId` starts: drop what was held for it, and
   * with `hold` start an entry in progress that the caller updates.
   */
  begin(listId: number, hold: boolean): CopyProgress | undefined {
    this.held.delete(listId);
    if (!hold) return undefined;
    const p: CopyProgress = { status: CopyManagerStatus.IN_PROGRESS, segmentsProcessed: 0, bytes: 0 };
    this.held.set(listId, p);
    return p;
  }

  /** The copy that `begin` returned `p` for has ended; a failed one leaves nothing held. */
  finish(listId: number, p: CopyProgress | undefined, ok: boolean): void {
    if (!p) return;
    if (ok) p.status = CopyManagerStatus.COMPLETED;
    else if (this.held.get(listId) === p) this.held.delete(listId);
  }

  /**
   * COPY STATUS for `listId`, cut to the allocation length. Nothing held:
   * INVALID FIELD IN CDB at the LIST IDENTIFIER.
   */
  report(listId: number, allocationLength: number): Uint8Array {
    const p = this.held.get(listId);
    if (!p) throw ScsiError.invalidField(2);
    const data = copyStatusData(p);
    const done = p.status !== CopyManagerStatus.IN_PROGRESS;
    if (allocationLength === 0 || (done && allocationLength >= data.length)) this.held.delete(listId);
    return data.subarray(0, Math.min(allocationLength, data.length));
  }

  /** Logical unit reset: everything held goes. */
  clear(): void {
    this.held.clear();
  }

  get size(): number {
    return this.held.size;
  }
}
