/**
 * GET LBA STATUS through the engine and the simulator: ram reports its
 * chunks, file its holes (SEEK_DATA/SEEK_HOLE), qcow2 its clusters, each
 * after writes and UNMAP; descriptors are cut to the allocation length; a handler without
 * lbaStatus does not offer the command.
 */
import { expect } from 'chai';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { planCommand, type Handler, type ScsiOutcome } from '@tcmu-ts/core';
import { fileHandler, qcowHandler, ramHandler } from '@tcmu-ts/handlers';
import { KernelSimulator, ScsiStatus, cdbGetLbaStatus, cdbUnmap, cdbWrite16 } from '@tcmu-ts/ring';
import { serveDevice } from '@tcmu-ts/workers';
import { expectClean, qemu, requireQemuImg } from './fixtures/qcow-tools.js';
import { be32, be64, expectCheck, invalidField, lbaOutOfRange, makeDev } from './scsi-helpers.js';

const BS = 512;
const KiB = 1024;
const MiB = 1024 * KiB;
type Extent = [lba: number, blocks: number, status: number];

function extentsOf(d: Uint8Array): Extent[] {
  const out: Extent[] = [];
  const end = Math.min(d.length, 4 + be32(d, 0));
  for (let o = 8; o + 16 <= end; o += 16) out.push([Number(be64(d, o)), be32(d, o + 8), d[o + 12] & 0x0f]);
  return out;
}

async function withDevice(handler: Handler, cfgstring: string, numLbas: number, fn: (sim: KernelSimulator) => Promise<void>): Promise<void> {
  const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 8 });
  const served = await serveDevice({ ring: sim.endpoint, handler, cfgstring, name: 'lbastatus', blockSize: BS, numLbas, maxXferBlocks: 2048, log: { warn() {}, error() {} } });
  try {
    await fn(sim);
  } finally {
    await served.stop();
    await sim.close();
  }
}

async function lbaStatus(sim: KernelSimulator, lba: number, alloc = 4096): Promise<Extent[]> {
  const r = await sim.submit(cdbGetLbaStatus(lba, alloc), { dataInLength: alloc });
  expect(r.status, 'GET LBA STATUS status').to.equal(ScsiStatus.GOOD);
  return extentsOf(r.dataIn);
}

async function good(p: Promise<{ status: number }>): Promise<void> {
  expect((await p).status).to.equal(ScsiStatus.GOOD);
}

describe('scsi GET LBA STATUS', function () {
  this.timeout(30000);
  const N = 16 * MiB / BS;

  it('ram: written chunks are mapped, the rest deallocated; UNMAP of a whole chunk deallocates it', async () => {
    await withDevice(ramHandler, '16M;chunk=1M', N, async (sim) => {
      const perChunk = MiB / BS;
      expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
      await good(sim.submit(cdbWrite16(3 * perChunk + 5, 8), { dataOut: new Uint8Array(8 * BS).fill(7) }));
      expect(await lbaStatus(sim, 0)).to.deep.equal([[0, 3 * perChunk, 1], [3 * perChunk, perChunk, 0], [4 * perChunk, N - 4 * perChunk, 1]]);
      expect(await lbaStatus(sim, 3 * perChunk + 100), 'from inside the mapped chunk').to.deep.equal([[3 * perChunk + 100, perChunk - 100, 0], [4 * perChunk, N - 4 * perChunk, 1]]);
      expect(await lbaStatus(sim, 0, 24), 'room for one descriptor').to.deep.equal([[0, 3 * perChunk, 1]]);
      const u = cdbUnmap([[3 * perChunk, perChunk]]);
      await good(sim.submit(u.cdb, { dataOut: u.data }));
      expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
    });
  });

  it('file: holes are deallocated, written blocks mapped (SEEK_DATA/SEEK_HOLE); UNMAP punches the hole back', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-lbastatus-'));
    const img = path.join(dir, 'img');
    fs.writeFileSync(img, '');
    fs.truncateSync(img, N * BS);
    try {
      await withDevice(fileHandler, img, N, async (sim) => {
        expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
        const at = MiB / BS; // 1 MiB in: a filesystem block boundary
        await good(sim.submit(cdbWrite16(at, 64), { dataOut: new Uint8Array(64 * BS).fill(9) }));
        const ext = await lbaStatus(sim, 0);
        expect(ext[0]).to.deep.equal([0, at, 1]);
        expect(ext[1][0]).to.equal(at);
        expect(ext[1][2]).to.equal(0);
        expect(ext[1][1], 'mapped at least the 32 KiB written').to.be.at.least(64);
        expect(ext.reduce((n, e) => n + e[1], 0), 'the extents cover the device').to.equal(N);
        const u = cdbUnmap([[at, 64]]);
        await good(sim.submit(u.cdb, { dataOut: u.data }));
        expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('qcow2: unallocated clusters are deallocated, a written cluster mapped; UNMAP frees it again', async () => {
    requireQemuImg();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-lbastatus-'));
    const img = path.join(dir, 'img.qcow2');
    qemu(['create', '-q', '-f', 'qcow2', '-o', 'cluster_size=64k', img, String(N * BS)]);
    const perCluster = 64 * KiB / BS;
    try {
      await withDevice(qcowHandler, img, N, async (sim) => {
        expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
        await good(sim.submit(cdbWrite16(16 * perCluster + 3, 8), { dataOut: new Uint8Array(8 * BS).fill(9) }));
        expect(await lbaStatus(sim, 0)).to.deep.equal([[0, 16 * perCluster, 1], [16 * perCluster, perCluster, 0], [17 * perCluster, N - 17 * perCluster, 1]]);
        const u = cdbUnmap([[16 * perCluster, perCluster]]);
        await good(sim.submit(u.cdb, { dataOut: u.data }));
        expect(await lbaStatus(sim, 0)).to.deep.equal([[0, N, 1]]);
      });
      expectClean(img);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a STARTING LBA past the end is LBA OUT OF RANGE; reserved bits are refused', () => {
    const dev = makeDev({ numLbas: 1000, getLbaStatus: true, lbpu: true });
    expectCheck(planCommand(cdbGetLbaStatus(1000), dev) as ScsiOutcome, lbaOutOfRange);
    const c = cdbGetLbaStatus(0);
    c[14] = 1;
    expectCheck(planCommand(c, dev) as ScsiOutcome, invalidField(14, 0));
    expect(planCommand(cdbGetLbaStatus(999), dev).kind).to.equal('lba-status');
  });

  it('is not offered by a device whose handler cannot tell (INVALID FIELD on the service action)', () => {
    expectCheck(planCommand(cdbGetLbaStatus(0), makeDev({ numLbas: 1000 })) as ScsiOutcome, invalidField(1, 4));
  });
});
