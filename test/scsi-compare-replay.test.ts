/**
 * The real-kernel comparison with tcmu-runner (test/kernel/zbc-fbo.sh, scsi-compare.mjs), kept
 * on every `npm test`: each set's steps are replayed through the kernel simulator against our
 * zbc / fbo handler, configured as the scenario configures the LUNs, and compare() holds the
 * answers to tcmu-runner 1.5.4's, recorded in that scenario (test/fixtures/tcmu-runner-*.json,
 * Debian's build, kernel 6.1, tcm_loop, SG_IO): no difference that EXPLAINED does not name
 * (with its docs/SCSI.md section), no explanation that no longer differs.
 *
 * The simulator completes a command as target_core_user does: data-in cut to read_len when the
 * handler sets TCMU_UFLAG_READ_LEN (the rest is residual), sense only with CHECK CONDITION.
 *
 * fbo's disc: the scenario serves a genisoimage image of random files (1775 blocks); the steps
 * read only blocks 16-17 of it (the volume descriptors: read10-pvd, read12, read-loaded) before
 * writing block 100 and reading that back. The replay's disc is 1775 blocks of zeros with
 * blocks 16-17 taken from tcmu-runner's recorded READ (12) of them, so every field, the data
 * digests included, is compared, none masked.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fboHandler, zbcHandler } from '@tcmu-ts/handlers';
import { KernelSimulator } from '@tcmu-ts/ring';
import { serveDevice } from '@tcmu-ts/workers';

interface Step { id: string; cdb: number[]; dir: 'in' | 'out' | 'none'; length?: number; data?: Uint8Array }
interface Answer { id: string; cdb: string; status?: number; sense?: string; data?: string; resid?: number; hostStatus?: number; driverStatus?: number; error?: string }
interface Row { step: string; field: string; theirs: string; ours: string; verdict: string }
interface Compared { rows: Row[]; same: number; explained: number; unexplained: Row[]; stale: string[] }
interface Sets {
  SETS: Record<'zbc' | 'fbo', Step[]>;
  compare(set: 'zbc' | 'fbo', theirs: Answer[], ours: Answer[]): Compared;
}

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));
const hex = (d: Uint8Array) => Buffer.from(d).toString('hex');
const recorded = (set: string): Answer[] => JSON.parse(fs.readFileSync(here(`../fixtures/tcmu-runner-${set}.json`), 'utf8')) as Answer[];
const quiet = { warn() {}, error() {}, info() {} };

/** Every step of the set through the simulator, recorded as scsi-compare.mjs probe records an SG_IO answer. */
async function replay(sim: KernelSimulator, steps: Step[]): Promise<Answer[]> {
  const out: Answer[] = [];
  for (const step of steps) {
    const r = await sim.submit(Uint8Array.from(step.cdb), {
      ...(step.dir === 'in' ? { dataInLength: step.length } : {}),
      ...(step.dir === 'out' ? { dataOut: step.data } : {}),
    });
    out.push({
      id: step.id, cdb: hex(Uint8Array.from(step.cdb)), status: r.status,
      // SG_IO hands back the sense the target wrote; a fixed-format one is 18 bytes
      sense: hex(r.status === 2 ? r.sense.subarray(0, r.sense[0] === 0x72 || r.sense[0] === 0x73 ? 8 + r.sense[7] : 18) : new Uint8Array(0)),
      data: hex(r.dataIn), resid: r.residual, hostStatus: r.timedOut ? 3 : 0, driverStatus: 0,
    });
  }
  return out;
}

/** SCSI_COMPARE_DUMP=<dir>: keep the replay's answers as <set>-sim.json, to hold against a real run's tcmu-ts answers. */
function dump(set: string, ours: Answer[]): void {
  const to = process.env.SCSI_COMPARE_DUMP;
  if (to) fs.writeFileSync(path.join(to, `${set}-sim.json`), JSON.stringify(ours, null, 1));
}

function expectNoUnexplained(c: Compared): void {
  const lines = c.unexplained.map((r) => `${r.step} / ${r.field}: tcmu-runner ${r.theirs} | tcmu-ts ${r.ours}`);
  expect(lines, 'differences EXPLAINED does not name').to.deep.equal([]);
  expect(c.stale, 'explanations of fields that no longer differ').to.deep.equal([]);
}

describe('scsi-compare replay: our zbc and fbo against tcmu-runner 1.5.4\'s recorded answers', function () {
  this.timeout(30000);
  let dir: string;
  let sets: Sets;

  before(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'scsi-compare-'));
    // test/kernel is not compiled: from test/dist it is ../kernel
    sets = (await import(new URL('../kernel/scsi-compare-sets.mjs', import.meta.url).href)) as Sets;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('zbc (model-HM/zsize-1/conv-2/open-4, 512-byte blocks, 16 MiB, 128-block transfers): every difference explained, none stale', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8 });
    const served = await serveDevice({
      ring: sim.endpoint, handler: zbcHandler, cfgstring: `model-HM/zsize-1/conv-2/open-4@${path.join(dir, 'zbc.raw')}`, name: 'zbc-cmp',
      blockSize: 512, numLbas: (16 << 20) / 512, maxXferBlocks: 128, log: quiet,
    });
    let ours: Answer[];
    try {
      ours = await replay(sim, sets.SETS.zbc);
    } finally {
      await served.stop();
      await sim.close();
    }
    dump('zbc', ours);
    const c = sets.compare('zbc', recorded('zbc'), ours);
    expectNoUnexplained(c);
    expect(c.same, 'fields the same').to.be.greaterThan(700);
  });

  it('fbo (a 1775-block disc holding tcmu-runner\'s blocks 16-17, 2048-byte blocks): every difference explained, none stale', async () => {
    const theirs = recorded('fbo');
    const pvd = Buffer.from(theirs.find((a) => a.id === 'read12')!.data!, 'hex');
    expect(pvd.length, 'tcmu-runner\'s READ (12) of blocks 16-17').to.equal(2 * 2048);
    const lastLba = Buffer.from(theirs.find((a) => a.id === 'read-capacity-10')!.data!, 'hex').readUInt32BE(0);
    const image = new Uint8Array((lastLba + 1) * 2048);
    image.set(pvd, 16 * 2048);
    const file = path.join(dir, 'disc.iso');
    fs.writeFileSync(file, image);
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 16 });
    const served = await serveDevice({
      ring: sim.endpoint, handler: fboHandler, cfgstring: file, name: 'fbo-cmp', blockSize: 2048, numLbas: lastLba + 1, maxXferBlocks: 64, log: quiet,
    });
    let ours: Answer[];
    try {
      ours = await replay(sim, sets.SETS.fbo);
    } finally {
      await served.stop();
      await sim.close();
    }
    dump('fbo', ours);
    const c = sets.compare('fbo', theirs, ours);
    expectNoUnexplained(c);
    expect(c.same, 'fields the same').to.be.greaterThan(150);
    // the data digests are compared, not masked
    expect(c.rows.filter((r) => r.field === 'sha1 of data' && r.verdict === 'same').map((r) => r.step))
      .to.deep.equal(['read10-pvd', 'read12', 'read-after-write', 'read-loaded']);
  });
});
