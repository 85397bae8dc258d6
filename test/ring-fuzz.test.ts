/**
 * The short ring fuzz: 20k adversarial entries with a fixed seed against the
 * real RingConsumer and DeviceEngine (the long one is `npm run bench --
 * --fuzz`, bench/ring-fuzz.ts). No crash, and every class ends as it must:
 * reported entries reported once each, fatal ones break the ring once each.
 */
import { expect } from 'chai';
import { FUZZ_CLASSES, runRingFuzz } from '@tcmu-ts/workers/fuzz/ring-fuzz';

describe('ring fuzz (short)', function () {
  this.timeout(30000);
  it('20k adversarial entries: 0 crashes, every bad entry reported, the ring recovers', async () => {
    const r = await runRingFuzz({ entries: 20000, seed: 0x17 });
    expect(r.crashSamples).to.deep.equal([]);
    expect(r.crashes).to.equal(0);
    expect(r.mismatchSamples).to.deep.equal([]);
    expect(r.entries).to.equal(20000);
    let reported = 0, fatal = 0;
    for (const [c, v] of Object.entries(r.classes)) {
      const want = FUZZ_CLASSES[c as keyof typeof FUZZ_CLASSES];
      expect(v.injected, c).to.be.greaterThan(300);
      expect(v.mismatches, c).to.equal(0);
      if (want === 'reported') {
        expect(v.reported, c).to.equal(v.injected);
        reported += v.injected;
      }
      if (want === 'fatal') {
        expect(v.reported, c).to.equal(v.injected);
        fatal += v.injected;
      }
    }
    // Head moved back (chaos) may break the ring too, at most once per round.
    expect(r.ringBrokenReports).to.be.within(fatal, fatal + r.classes['head-backwards'].injected);
    // Chaos (head moved back) may report more; everything else reports exactly what was injected.
    expect(r.malformedReports).to.be.at.least(reported);
    for (const reason of ['bad-opcode', 'iov-count', 'iov-out-of-bounds', 'cdb-out-of-bounds', 'bad-length', 'tmr-count', 'misplaced-pad']) {
      expect(r.reasons[reason] ?? 0, reason).to.be.greaterThan(0);
    }
  });
});
