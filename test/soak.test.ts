/**
 * The soak's short version (the long one: `npm run bench -- --soak`,
 * bench/soak.ts): a few seconds of load on a file and a qcow LUN with one
 * event of every kind (worker kill -9, daemon kill -9, ring reset, dev_size,
 * dev_config), then every sector checked against the journal. And the
 * journal's own check, shown to catch what it must catch.
 */
import { expect } from 'chai';
import { LunJournal, SECTOR, fillSectors } from '@tcmu-ts/workers/soak/journal';
import { SOAK_EVENTS, runSoak } from '@tcmu-ts/workers/soak/soak';
import { requireQemuImg } from './fixtures/qcow-tools.js';

function sectors(n: number): Uint8Array {
  return new Uint8Array(n * SECTOR);
}

describe('soak journal: what counts as lost, torn or wrong', () => {
  it('accepts the newest acknowledged version, zeros where nothing was acknowledged, and a later unacknowledged one', () => {
    const j = new LunJournal(3, 64);
    const a = j.issue(8, 4);
    j.acknowledged(a);
    const b = j.issue(10, 4); // overlaps a's last two sectors, then fails after reaching the ring
    j.notAcknowledged(b, true);
    const disk = sectors(16);
    fillSectors(disk.subarray(8 * SECTOR, 12 * SECTOR), 3, 8, a);
    fillSectors(disk.subarray(11 * SECTOR, 14 * SECTOR), 3, 11, b); // b landed in part: allowed, it was never acknowledged
    const ok = j.check(0, disk);
    expect(ok).to.deep.include({ sectors: 16, lostWrites: 0, tornWrites: 0, staleSectors: 0, mismatches: 0 });
  });

  it('an acknowledged write that is not there at all is lost; one only partly there is torn', () => {
    const j = new LunJournal(0, 64);
    const old = j.issue(0, 8);
    j.acknowledged(old);
    const lost = j.issue(0, 4);
    j.acknowledged(lost);
    const torn = j.issue(4, 4);
    j.acknowledged(torn);
    const disk = sectors(8);
    fillSectors(disk, 0, 0, old); // neither newer write reached the media...
    fillSectors(disk.subarray(4 * SECTOR, 6 * SECTOR), 0, 4, torn); // ...but half of `torn` did
    const r = j.check(0, disk);
    expect(r).to.deep.include({ lostWrites: 1, tornWrites: 1, staleSectors: 6, mismatches: 0 });
    expect(r.samples[0]).to.match(/sector 0: holds version 1, older than acknowledged write 2/);
  });

  it('a misplaced sector, a bad checksum, garbage, and a write that never reached the ring are mismatches', () => {
    const j = new LunJournal(1, 64);
    const a = j.issue(0, 4);
    j.acknowledged(a);
    const never = j.issue(4, 1);
    j.notAcknowledged(never, false); // refused before the ring: it cannot have landed
    const disk = sectors(5);
    fillSectors(disk.subarray(0, 4 * SECTOR), 1, 0, a);
    fillSectors(disk.subarray(4 * SECTOR), 1, 4, never);
    disk.copyWithin(0, SECTOR, 2 * SECTOR); // sector 1's copy in sector 0
    disk[2 * SECTOR + 100] ^= 1; // a flipped bit
    disk.fill(0x55, 3 * SECTOR, 4 * SECTOR);
    const r = j.check(0, disk);
    expect(r.mismatches).to.equal(4);
    expect(r.samples.join('\n')).to.match(/misplaced: holds LUN 1 sector 1/).and.match(/bad checksum/).and.match(/no header/).and.match(/never allowed there/);
  });
});

describe("soak journal: a range an admin's ring reset left indeterminate", () => {
  it('may hold any sector of its LUN until the next acknowledged write; corrupt or foreign sectors are still mismatches', () => {
    const j = new LunJournal(2, 64);
    const a = j.issue(0, 4);
    j.acknowledged(a);
    const failed = j.issue(0, 4);
    j.notAcknowledged(failed, true, true);
    const other = j.issue(40, 4); // another write's data, landed here
    j.acknowledged(other);
    const disk = sectors(4);
    fillSectors(disk.subarray(0, 2 * SECTOR), 2, 40, other);
    fillSectors(disk.subarray(2 * SECTOR, 3 * SECTOR), 9, 2, a); // another LUN's: never
    fillSectors(disk.subarray(3 * SECTOR), 2, 3, a);
    disk[3 * SECTOR + 77] ^= 1; // corrupt: never
    expect(j.check(0, disk)).to.deep.include({ indeterminate: 2, mismatches: 2, staleSectors: 0 });
    const next = j.issue(0, 2);
    j.acknowledged(next); // from here sectors 0-1 must hold it again
    expect(j.check(0, disk.subarray(0, 2 * SECTOR))).to.deep.include({ indeterminate: 0, mismatches: 2 });
  });
});

describe('soak, short: kill -9 of a worker and of the daemon, ring reset, dev_size, dev_config under load on file and qcow', function () {
  this.timeout(120_000);

  it('loses and tears no acknowledged write, and every LUN serves again after every event', async () => {
    requireQemuImg();
    const r = await runSoak({ durationMs: 6000, seed: 17, queueDepth: 8, eventGapMs: [500, 1200] });
    const summary = JSON.stringify({ events: r.events, anomalies: r.anomalies, final: r.final, duringRun: r.duringRun, dir: r.dir });
    for (const e of SOAK_EVENTS) expect(r.events[e], `${e}: ${summary}`).to.be.at.least(1);
    expect(r.anomalies, summary).to.deep.equal([]);
    expect(r.final, summary).to.deep.include({ lostWrites: 0, tornWrites: 0, staleSectors: 0, mismatches: 0 });
    expect(r.duringRun, summary).to.deep.include({ lostWrites: 0, tornWrites: 0, staleSectors: 0, mismatches: 0 });
    // Something was at stake: acknowledged writes on both LUNs, reads checked during the run, every sector at the end.
    for (const l of r.luns) expect(l.ackedWrites, l.name).to.be.greaterThan(100);
    expect(r.duringRun.sectors).to.be.greaterThan(1000);
    expect(r.final.sectors).to.equal(r.luns.reduce((n, l) => n + l.endBytes / SECTOR, 0));
    // dev_size: the initiator saw CAPACITY DATA HAS CHANGED and used the new LBAs up to the end.
    expect(r.luns.some((l) => l.capacityUnitAttentions > 0 && l.endBytes > l.startBytes)).to.equal(true);
    expect(r.daemons).to.be.at.least(3); // the first, the one after the kill -9, the one of the final check
    expect(r.passed).to.equal(true);
  });
});

