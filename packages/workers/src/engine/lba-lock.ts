/**
 * A reader/writer lock over LBA ranges, for one LUN on its worker thread.
 *
 * COMPARE AND WRITE must be atomic against other writes to its blocks: its
 * read, compare and write happen as one step as far as any initiator can
 * tell. Ordinary writes take the range shared (they may overlap one another:
 * ordering concurrent writes is the initiator's business), COMPARE AND
 * WRITE takes it exclusive. An exclusive request waits for every
 * overlapping holder; a shared one waits only for overlapping exclusive
 * holders, and for overlapping exclusive requests queued before it, so a
 * stream of writes cannot starve a COMPARE AND WRITE.
 *
 * Single-threaded by construction (the engine's event loop); "waiting"
 * means a promise that settles when the range is granted.
 */

interface Range {
  readonly start: number;
  readonly end: number; // exclusive
  readonly exclusive: boolean;
}

interface Waiter extends Range {
  readonly id: number;
  readonly grant: (id: number) => void;
}

function overlaps(a: Range, b: Range): boolean {
  return a.start < b.end && b.start < a.end;
}

function conflicts(a: Range, b: Range): boolean {
  return (a.exclusive || b.exclusive) && overlaps(a, b);
}

export class LbaRangeLock {
  private readonly held = new Map<number, Range>();
  private waiters: Waiter[] = [];
  /** Exclusive requests held or queued; 0 lets shared requests skip every scan. */
  private exclusives = 0;
  private nextId = 1;
  /** Requests that had to wait, for tests and stats. */
  waits = 0;

  /** An exclusive hold is held or queued: only then must a shared request look at the others. */
  get hasExclusive(): boolean {
    return this.exclusives > 0;
  }

  get heldCount(): number {
    return this.held.size;
  }

  get waiting(): number {
    return this.waiters.length;
  }

  /** Grant at once and return the hold's id, or undefined when the caller must use acquire(). */
  tryAcquire(lba: number, blocks: number, exclusive: boolean): number | undefined {
    const r: Range = { start: lba, end: lba + Math.max(1, blocks), exclusive };
    if (!exclusive && this.exclusives === 0) return this.hold(r);
    if (!this.grantable(r, this.waiters.length)) return undefined;
    return this.hold(r);
  }

  /** Resolves with the hold's id once the range is granted. */
  acquire(lba: number, blocks: number, exclusive: boolean): Promise<number> {
    const now = this.tryAcquire(lba, blocks, exclusive);
    if (now !== undefined) return Promise.resolve(now);
    this.waits++;
    return new Promise((resolve) => {
      const id = this.nextId++;
      if (exclusive) this.exclusives++;
      this.waiters.push({ start: lba, end: lba + Math.max(1, blocks), exclusive, id, grant: resolve });
    });
  }

  release(id: number): void {
    const r = this.held.get(id);
    if (!r) return;
    this.held.delete(id);
    if (r.exclusive) this.exclusives--;
    if (this.waiters.length) this.wake();
  }

  private hold(r: Range, id = this.nextId++): number {
    this.held.set(id, r);
    if (r.exclusive) this.exclusives++;
    return id;
  }

  /** Free of conflicts with every holder and with the first `before` waiters. */
  private grantable(r: Range, before: number): boolean {
    for (const h of this.held.values()) if (conflicts(r, h)) return false;
    for (let i = 0; i < before; i++) if (conflicts(r, this.waiters[i])) return false;
    return true;
  }

  private wake(): void {
    const granted: Waiter[] = [];
    for (let i = 0; i < this.waiters.length; ) {
      const w = this.waiters[i];
      if (this.grantable(w, i)) {
        this.waiters.splice(i, 1);
        // Counted as queued already; hold() counts it again as held.
        if (w.exclusive) this.exclusives--;
        this.hold(w, w.id);
        granted.push(w);
      } else {
        i++;
      }
    }
    for (const w of granted) w.grant(w.id);
  }
}
