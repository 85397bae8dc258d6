/**
 * kill -9 in the middle of writes: a child process (fixtures/qcow-writer.ts)
 * writes, unmaps and zeroes through the qcow handler and reports each
 * operation before and after it; we kill it at some point, and then
 *  - `qemu-img check` must find no error and no corruption (leaks are
 *    allowed: reserved clusters, frees that had not happened yet);
 *  - `qemu-img convert -O raw` must show every acknowledged operation, and
 *    for the one under way when the child died, each block either before
 *    or after it;
 *  - the image must open again and take more writes, and after
 *    `qemu-img check -r leaks` be clean.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeBlockIo, makeHandlerDevice } from '@tcmu-ts/core';
import { qcowHandler } from '@tcmu-ts/handlers';
import { FixtureProcess, type FixtureEvent } from './fixtures/child.js';
import { checkImage, convert, expectClean, expectConsistent, qemu, qemuIo, qemuRaw, requireQemuImg, rng, textured } from './fixtures/qcow-tools.js';
import { BS, stampBlock } from './fixtures/qcow-writer.js';

const WRITER = fileURLToPath(new URL('./fixtures/qcow-writer.js', import.meta.url));
const MiB = 1024 * 1024;

interface Op { seq: number; op: 'write' | 'unmap' | 'zero'; lba: number; blocks: number }

describe('qcow handler: kill -9 during writes leaves an image qemu-img accepts, with every acknowledged write', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => {
    requireQemuImg();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-qcow-crash-'));
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Run the writer until `acks` operations were acknowledged, kill it, and return what it reported. */
  async function writeAndKill(image: string, seed: number, acks: number): Promise<{ done: Op[]; inFlight: Op | undefined; flushed: number }> {
    const child = new FixtureProcess(WRITER, [image, String(seed), '10']);
    const closed = new Promise<void>((r) => child.proc.once('close', () => r()));
    try {
      await child.event('ack', (e) => (e.seq as number) >= acks, 30_000);
    } finally {
      await child.kill('SIGKILL');
      await closed; // every line it printed is in
    }
    expect(child.proc.signalCode, `the writer died of the kill, not on its own: ${child.stderr}`).to.equal('SIGKILL');
    const events = child.lines.items;
    const starts = new Map<number, Op>();
    let lastAck = 0;
    let flushed = 0;
    for (const e of events as (FixtureEvent & Record<string, number | string>)[]) {
      if (e.event === 'start') starts.set(e.seq as number, { seq: e.seq as number, op: e.op as Op['op'], lba: e.lba as number, blocks: e.blocks as number });
      else if (e.event === 'ack') {
        expect(e.seq, 'acknowledged in order').to.equal(lastAck + 1);
        lastAck = e.seq as number;
      } else if (e.event === 'flushed') flushed = e.seq as number;
    }
    const done = [...starts.values()].filter((o) => o.seq <= lastAck);
    expect(done.length).to.equal(lastAck);
    return { done, inFlight: starts.get(lastAck + 1), flushed };
  }

  /**
   * Every block as the model says after the acknowledged operations, or, in
   * the range of the one under way, as it would be after it.
   */
  function verify(image: string, initial: Buffer, done: Op[], inFlight: Op | undefined): void {
    const got = qemuRaw(image, dir);
    expect(got.length).to.equal(initial.length);
    const n = initial.length / BS;
    const last = new Int32Array(n).fill(-1); // -1: initial contents, 0: zeros, seq: written by seq
    for (const o of done) last.fill(o.op === 'write' ? o.seq : 0, o.lba, o.lba + o.blocks);
    const zero = new Uint8Array(BS);
    const block = new Uint8Array(BS);
    const contentOf = (tag: number, lba: number): Uint8Array =>
      tag === -1 ? initial.subarray(lba * BS, (lba + 1) * BS) : tag === 0 ? zero : stampBlock(tag, lba, block);
    const bad: string[] = [];
    for (let lba = 0; lba < n && bad.length < 5; lba++) {
      const have = got.subarray(lba * BS, (lba + 1) * BS);
      if (have.equals(contentOf(last[lba], lba))) continue;
      if (inFlight && lba >= inFlight.lba && lba < inFlight.lba + inFlight.blocks && have.equals(contentOf(inFlight.op === 'write' ? inFlight.seq : 0, lba))) continue;
      bad.push(`block ${lba}: expected ${last[lba] === -1 ? 'its initial contents' : last[lba] === 0 ? 'zeros' : `write ${last[lba]}`}, found ${have.readUInt32BE(0) === 0x51435754 ? `write ${have.readUInt32BE(4)} of block ${have.readUInt32BE(8)}` : 'something else'}`);
    }
    expect(bad, `after ${done.length} acknowledged operations (under way: ${JSON.stringify(inFlight)})`).to.deep.equal([]);
  }

  /** After the crashes: the image takes more writes, and once its leaks are reclaimed it is clean. */
  async function reopenAndRepair(image: string, qcow2: boolean): Promise<void> {
    const dev = makeHandlerDevice({ cfgstring: image, blockSize: BS, numLbas: 0 });
    const h = await qcowHandler.open(dev, false);
    const r = rng(99);
    const model = qemuRaw(image, dir);
    for (let i = 0; i < 50; i++) {
      const blocks = 1 + Math.floor(r() * 64);
      const lba = Math.floor(r() * (dev.numLbas - blocks));
      const data = new Uint8Array(blocks * BS);
      for (let k = 0; k < blocks; k++) stampBlock(100_000 + i, lba + k, data, k * BS);
      await h.write!(makeBlockIo({ lba, blocks, blockSize: BS, buffers: [data] }));
      model.set(data, lba * BS);
    }
    await h.close();
    expect(qemuRaw(image, dir).equals(model), 'writes after the crash').to.equal(true);
    if (!qcow2) return;
    expectConsistent(image);
    qemu(['check', '-q', '-r', 'leaks', image]);
    expectClean(image);
  }

  const cases: { name: string; qcow2: boolean; make(img: string): void }[] = [
    {
      name: 'fresh qcow2 v3, 512 B clusters, 64-bit refcounts (refcount table growth under the knife)',
      qcow2: true,
      make: (img) => qemu(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=512,refcount_bits=64', img, '8M']),
    },
    {
      name: 'compressed qcow2 v3, 64 KiB clusters, over a raw backing file',
      qcow2: true,
      make: (img) => {
        const base = `${img}.base.raw`;
        const src = `${img}.src.raw`;
        fs.writeFileSync(base, textured(6 * MiB, 21));
        fs.writeFileSync(src, textured(8 * MiB, 22));
        qemu(['convert', '-c', '-O', 'qcow2', '-B', path.basename(base), '-F', 'raw', src, img]);
      },
    },
    {
      name: 'qcow2 v2, 4 KiB clusters, with an internal snapshot',
      qcow2: true,
      make: (img) => {
        const src = `${img}.src.raw`;
        fs.writeFileSync(src, textured(8 * MiB, 23));
        qemu(['convert', '-O', 'qcow2', '-o', 'compat=0.10,cluster_size=4096', src, img]);
        qemu(['snapshot', '-c', 'before', img]);
        qemuIo(img, 'write -P 0x5a 1M 512k');
      },
    },
    {
      name: 'qcow v1, compressed',
      qcow2: false,
      make: (img) => {
        const src = `${img}.src.raw`;
        fs.writeFileSync(src, textured(8 * MiB, 24));
        convert(src, img, 'qcow', ['-c']);
      },
    },
  ];

  cases.forEach((c, i) => {
    it(c.name, async () => {
      const img = path.join(dir, `crash${i}.img`);
      c.make(img);
      const snapshot = c.name.includes('snapshot') ? (() => {
        const out = path.join(dir, `crash${i}.snap.raw`);
        qemu(['convert', '-O', 'raw', '-l', 'snapshot.name=before', img, out]);
        return fs.readFileSync(out);
      })() : undefined;
      const r = rng(1000 + i);
      // Two crashes in a row: the second writer starts on what the first left.
      for (let round = 0; round < 2; round++) {
        const initial = qemuRaw(img, dir);
        const { done, inFlight, flushed } = await writeAndKill(img, 10 * i + round + 1, 20 + Math.floor(r() * 300));
        expect(flushed, 'the writer flushed on the way').to.be.greaterThan(0);
        if (c.qcow2) {
          const chk = expectConsistent(img);
          if (round === 0) expect(chk['check-errors']).to.equal(0);
        }
        verify(img, initial, done, inFlight);
      }
      if (snapshot) {
        const out = path.join(dir, `crash${i}.snap2.raw`);
        qemu(['convert', '-O', 'raw', '-l', 'snapshot.name=before', img, out]);
        expect(fs.readFileSync(out).equals(snapshot), 'the snapshot survived the crashes').to.equal(true);
      }
      await reopenAndRepair(img, c.qcow2);
      if (c.qcow2) expect(checkImage(img).leaks ?? 0).to.equal(0);
    });
  });
});
