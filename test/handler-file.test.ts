import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  flattenBuffers,
  isZero,
  makeBlockIo,
  makeHandlerDevice,
  type BlockIo,
  type HandlerDevice,
} from '@tcmu-ts/core';
import { createFileHandler, fileHandler, FileDevice } from '@tcmu-ts/handlers';
import { closeFd, mapShared, memfdCreate } from '@tcmu-ts/ring';

const BS = 512;
const MiB = 1 << 20;

function pattern(len: number, seed = 1): Uint8Array {
  const out = new Uint8Array(len);
  for (let i = 0; i < len; i++) out[i] = (i * 131 + seed * 29 + (i >> 9)) & 0xff;
  return out;
}

/** IO buffers as scattered views on one ArrayBuffer, like iovecs in the ring's data area. */
const area = new ArrayBuffer(16 * MiB);
let next = 0;
function io(lba: number, sizes: number[], fill?: Uint8Array, fua = false): BlockIo {
  const buffers = sizes.map((n) => {
    if (next + n > area.byteLength) next = 0;
    const v = new Uint8Array(area, next, n);
    next += Math.ceil(n / 4096) * 4096 + 4096;
    return v;
  });
  let at = 0;
  for (const b of buffers) {
    if (fill) b.set(fill.subarray(at, at + b.byteLength));
    else b.fill(0x5a);
    at += b.byteLength;
  }
  const total = sizes.reduce((a, b) => a + b, 0);
  return makeBlockIo({ lba, blocks: total / BS, blockSize: BS, buffers, fua });
}

function reasonOf(r: { ok: boolean; reason?: string }): string {
  expect(r.ok, 'checkConfig should have failed').to.equal(false);
  return r.reason ?? '';
}

/** Run a privileged setup command; false when this machine does not allow it. */
function tryRun(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

describe('file handler', () => {
  let dir: string;
  const opened: FileDevice[] = [];

  async function open(cfg: string, numLbas: number, writeCache = true): Promise<{ dev: HandlerDevice; dh: FileDevice }> {
    const dev = makeHandlerDevice({ cfgstring: cfg, blockSize: BS, numLbas, writeCache });
    const dh = (await fileHandler.open(dev, false)) as FileDevice;
    opened.push(dh);
    return { dev, dh };
  }

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcmu-file-'));
  });
  afterEach(async () => {
    for (const dh of opened.splice(0)) await dh.close().catch(() => {});
  });
  after(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('creates a missing image at the device size and grows a smaller one', async () => {
    const img = path.join(dir, 'new.img');
    await open(img, 2048);
    expect(fs.statSync(img).size).to.equal(2048 * BS);

    const small = path.join(dir, 'small.img');
    fs.writeFileSync(small, pattern(1000));
    const { dh } = await open(small, 4096);
    expect(fs.statSync(small).size).to.equal(4096 * BS);
    // Growing keeps what was there; the new part reads as zeros.
    const r = io(0, [4 * BS]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    expect(got.subarray(0, 1000)).to.deep.equal(pattern(1000));
    expect(isZero([got.subarray(1000)])).to.equal(true);
  });

  it('takes the size from an existing image when the device has none, and never shrinks one', async () => {
    const img = path.join(dir, 'sized.img');
    fs.writeFileSync(img, new Uint8Array(300 * BS));
    const { dev } = await open(img, 0);
    expect(dev.numLbas).to.equal(300);
    await open(img, 100);
    expect(fs.statSync(img).size).to.equal(300 * BS);
  });

  it('writes scattered buffers and reads them back with a different split, straight to the file offsets', async () => {
    const img = path.join(dir, 'rw.img');
    const { dh } = await open(img, 8192);
    const data = pattern(40 * BS, 5);
    await dh.write(io(1001, [1536, 4096, 8192, 512, 6144], data));
    const r = io(1001, [4096, 4096, 4096, 4096, 4096]);
    await dh.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(data);
    // The bytes are at lba*blockSize in the image, nothing in between.
    const fd = fs.openSync(img, 'r');
    const onDisk = Buffer.alloc(40 * BS);
    fs.readSync(fd, onDisk, 0, onDisk.length, 1001 * BS);
    fs.closeSync(fd);
    expect(new Uint8Array(onDisk)).to.deep.equal(data);
  });

  it('moves page-cache IO on the calling thread by default and through the libuv pool with ;async, with the same bytes', async () => {
    const img = path.join(dir, 'modes.img');
    const inline = (await open(img, 4096)).dh;
    const pooled = (await open(`${img};async`, 4096)).dh;
    const data = pattern(24 * BS, 9);
    // A synchronous write has landed before write() even returns its promise.
    const pending = inline.write(io(7, [4096, 8192], data));
    const fd = fs.openSync(img, 'r');
    const onDisk = Buffer.alloc(data.length);
    fs.readSync(fd, onDisk, 0, onDisk.length, 7 * BS);
    fs.closeSync(fd);
    expect(new Uint8Array(onDisk)).to.deep.equal(data);
    await pending;
    const r = io(7, [BS * 4, BS * 20]);
    await pooled.read(r);
    expect(flattenBuffers(r.buffers)).to.deep.equal(data);
    const data2 = pattern(8 * BS, 3);
    await pooled.write(io(100, [8 * BS], data2));
    const r2 = io(100, [8 * BS]);
    await inline.read(r2);
    expect(flattenBuffers(r2.buffers)).to.deep.equal(data2);
  });

  it('reads never-written blocks as zeros', async () => {
    const { dh } = await open(path.join(dir, 'sparse.img'), 4096);
    const r = io(2000, [4096, 1024]);
    await dh.read(r);
    expect(isZero(r.buffers)).to.equal(true);
  });

  it('flush, FUA writes and write-through devices complete', async () => {
    const { dh } = await open(path.join(dir, 'sync.img'), 1024);
    await dh.write(io(0, [BS], pattern(BS), true));
    await dh.flush();
    const wt = await open(path.join(dir, 'wt.img'), 1024, false);
    await wt.dh.write(io(3, [2 * BS], pattern(2 * BS)));
    await wt.dh.reconfig({ kind: 'writecache', enabled: true });
    await wt.dh.flush();
  });

  it('write-through writes share fdatasyncs (group commit), and none completes before a sync that started after its data', async () => {
    const img = path.join(dir, 'wt.img');
    const { dh } = await open(img, 2048, false);
    // Hold every fdatasync until the test lets it go, counting them.
    const syncs: { release: () => void; done: boolean }[] = [];
    const real = dh.fh.datasync.bind(dh.fh);
    (dh.fh as { datasync: () => Promise<void> }).datasync = () => {
      const s = { release: () => {}, done: false };
      syncs.push(s);
      return new Promise<void>((resolve, reject) => {
        s.release = () => real().then(() => { s.done = true; resolve(); }, reject);
      });
    };
    const settled = new Set<number>();
    const write = (i: number) => Promise.resolve(dh.write(io(i * 8, [8 * BS], pattern(8 * BS, i)))).then(() => settled.add(i));
    const first = write(0);
    await new Promise((r) => setImmediate(r));
    expect(syncs.length).to.equal(1);
    // Sixteen more arrive while the first sync runs: their data came after it started.
    const more = Array.from({ length: 16 }, (_, i) => write(i + 1));
    await new Promise((r) => setImmediate(r));
    expect(syncs.length, 'one queued sync serves them all, started only when the first ends').to.equal(1);
    syncs[0].release();
    await first;
    expect(settled.has(0)).to.equal(true);
    for (let i = 0; i < 20 && syncs.length < 2; i++) await new Promise((r) => setImmediate(r));
    expect(syncs.length).to.equal(2);
    expect([...settled]).to.deep.equal([0]);
    syncs[1].release();
    await Promise.all(more);
    expect(syncs.length).to.equal(2);
    expect(settled.size).to.equal(17);
    const back = io(0, [17 * 8 * BS]);
    await dh.read(back);
    const got = flattenBuffers(back.buffers);
    for (let i = 0; i < 17; i++) expect(got.subarray(i * 8 * BS, (i + 1) * 8 * BS)).to.deep.equal(pattern(8 * BS, i));
  });

  it('unmap punches holes: the data reads as zeros and the file gives its blocks back', async () => {
    const img = path.join(dir, 'punch.img');
    const { dh } = await open(img, 16384); // 8 MiB
    const data = pattern(4 * MiB, 9);
    for (let i = 0; i < 4; i++) await dh.write(io(i * 2048, [MiB], data.subarray(i * MiB, (i + 1) * MiB)));
    await dh.flush();
    const before = fs.statSync(img).blocks;
    expect(before).to.be.at.least((4 * MiB) / 512);

    await dh.unmap([{ lba: 2048, blocks: 2048 }, { lba: 6144, blocks: 1024 }]);
    const after = fs.statSync(img).blocks;
    expect(before - after).to.be.at.least((1.5 * MiB) / 512 - 16);
    expect(fs.statSync(img).size).to.equal(8 * MiB);

    const r = io(0, [MiB, MiB, MiB, MiB]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    const want = data.slice();
    want.fill(0, MiB, 2 * MiB);
    want.fill(0, 3 * MiB, 3.5 * MiB);
    expect(got).to.deep.equal(want);
  });

  it('falls back to writing zeros when holes cannot be punched', async () => {
    const img = path.join(dir, 'nopunch.img');
    const { dh } = await open(img, 4096);
    await dh.write(io(100, [8 * BS], pattern(8 * BS)));
    // Simulate a filesystem without FALLOC_FL_PUNCH_HOLE support.
    (dh as unknown as { canPunch: boolean }).canPunch = false;
    await dh.unmap([{ lba: 102, blocks: 4 }]);
    const r = io(100, [8 * BS]);
    await dh.read(r);
    const got = flattenBuffers(r.buffers);
    expect(got.subarray(0, 2 * BS)).to.deep.equal(pattern(8 * BS).subarray(0, 2 * BS));
    expect(isZero([got.subarray(2 * BS, 6 * BS)])).to.equal(true);
    expect(got.subarray(6 * BS)).to.deep.equal(pattern(8 * BS).subarray(6 * BS));
  });

  it('WRITE SAME writes the pattern, and zeroes ranges without writing data for a zero pattern', async () => {
    const { dh } = await open(path.join(dir, 'ws.img'), 4096);
    const pat = pattern(BS, 3);
    await dh.writeSame(io(10, [20 * BS]), pat);
    let r = io(9, [22 * BS]);
    await dh.read(r);
    let got = flattenBuffers(r.buffers);
    expect(isZero([got.subarray(0, BS), got.subarray(21 * BS)])).to.equal(true);
    for (let b = 1; b <= 20; b++) expect(got.subarray(b * BS, (b + 1) * BS)).to.deep.equal(pat);

    await dh.writeSame(io(12, [4 * BS]), new Uint8Array(BS));
    r = io(10, [8 * BS]);
    await dh.read(r);
    got = flattenBuffers(r.buffers);
    expect(got.subarray(0, 2 * BS)).to.deep.equal(flattenBuffers([pat, pat]));
    expect(isZero([got.subarray(2 * BS, 6 * BS)])).to.equal(true);
    expect(got.subarray(6 * BS, 7 * BS)).to.deep.equal(pat);
  });

  it('grows the image on a size reconfig and refuses a path change', async () => {
    const img = path.join(dir, 'grow.img');
    const { dev, dh } = await open(img, 1024);
    await dh.reconfig({ kind: 'size', numLbas: 4096, devSize: 4096 * BS });
    expect(fs.statSync(img).size).to.equal(4096 * BS);
    expect(dev.numLbas).to.equal(4096);
    let err: unknown;
    try {
      await dh.reconfig({ kind: 'config', cfgstring: '/elsewhere' });
    } catch (e) {
      err = e;
    }
    expect((err as NodeJS.ErrnoException).code).to.equal('EOPNOTSUPP');
  });

  it('works with ;direct (O_DIRECT), falling back to the page cache for unaligned buffers', async function () {
    const img = path.join(dir, 'direct.img');
    const check = fileHandler.checkConfig(`${img}x;direct`);
    expect(check.ok).to.equal(true);
    fs.writeFileSync(img, new Uint8Array(0));
    if (!fileHandler.checkConfig(`${img};direct`).ok) this.skip(); // filesystem without O_DIRECT
    const { dh } = await open(`${img};direct`, 4096);
    expect(dh.config.direct).to.equal(true);
    const data = pattern(8 * BS, 12);
    await dh.write(io(64, [4096], data));
    // A deliberately misaligned view: O_DIRECT refuses it, the handler must cope.
    const odd = new Uint8Array(new ArrayBuffer(8 * BS + 3), 3, 8 * BS);
    await dh.read(makeBlockIo({ lba: 64, blocks: 8, blockSize: BS, buffers: [odd] }));
    expect(odd).to.deep.equal(data);
    await dh.unmap([{ lba: 64, blocks: 8 }]);
    const r = io(64, [4096]);
    await dh.read(r);
    expect(isZero(r.buffers)).to.equal(true);
  });

  it('threaded mode: worker threads map the ring and move data by iovec offsets', async () => {
    // A memfd stands in for the UIO map; the data area starts 64 KiB in.
    const mapSize = 4 * MiB;
    const mapFd = memfdCreate('tcmu-file-test', mapSize);
    const map = mapShared(mapFd, mapSize);
    const handler = createFileHandler({ nrThreads: 2 });
    expect(handler.nrThreads).to.equal(2);
    const img = path.join(dir, 'threads.img');
    const dev = makeHandlerDevice({ cfgstring: img, blockSize: BS, numLbas: 8192, ring: { mapFd, mapSize } });
    const dh = (await handler.open(dev, false)) as FileDevice;
    try {
      expect(dh.pool?.threads).to.equal(2);
      const ringIo = (lba: number, spans: [number, number][], fill?: Uint8Array): BlockIo => {
        const buffers = spans.map(([off, len]) => new Uint8Array(map.buffer, off, len));
        let at = 0;
        for (const b of buffers) {
          if (fill) b.set(fill.subarray(at, at + b.byteLength));
          else b.fill(0x77);
          at += b.byteLength;
        }
        const blocks = spans.reduce((a, [, len]) => a + len, 0) / BS;
        return makeBlockIo({ lba, blocks, blockSize: BS, buffers, iovecs: spans.map(([offset, length]) => ({ offset, length })) });
      };
      const data = pattern(24 * BS, 21);
      await dh.write(ringIo(77, [[65536, 4096], [65536 + 3 * 4096, 8192]], data));
      // Read back through the pool into other ring blocks, and straight from the file.
      const r = ringIo(77, [[65536 + 8 * 4096, 2048], [65536 + 12 * 4096, 10240]]);
      await dh.read(r);
      expect(flattenBuffers(r.buffers)).to.deep.equal(data);
      expect(new Uint8Array(fs.readFileSync(img).subarray(77 * BS, 101 * BS))).to.deep.equal(data);
      // Several in flight at once, and iovecs longer than the transfer get cut.
      const many = await Promise.all(
        [0, 1, 2, 3].map(async (i) => {
          const rr = ringIo(77 + i * 4, [[65536 + (20 + i) * 4096, 4 * BS]]);
          await dh.read({ ...rr, iovecs: [{ offset: 65536 + (20 + i) * 4096, length: 4096 }] });
          return flattenBuffers(rr.buffers);
        }),
      );
      many.forEach((got, i) => expect(got).to.deep.equal(data.subarray(i * 4 * BS, (i + 1) * 4 * BS)));
      // IO without ring offsets still works (the libuv path).
      const plain = io(77, [24 * BS]);
      await dh.read(plain);
      expect(flattenBuffers(plain.buffers)).to.deep.equal(data);
    } finally {
      await dh.close();
      map.unmap();
      closeFd(mapFd);
    }
  });

  it('threaded mode reports errno codes from the workers', async () => {
    const mapSize = MiB;
    const mapFd = memfdCreate('tcmu-file-test2', mapSize);
    const img = path.join(dir, 'threads-err.img');
    const dev = makeHandlerDevice({ cfgstring: `${img};threads=1`, blockSize: BS, numLbas: 64, ring: { mapFd, mapSize } });
    const dh = (await fileHandler.open(dev, false)) as FileDevice;
    try {
      // An iovec past the end of the map makes the worker's view fail: the error must keep a code.
      let err: unknown;
      try {
        await dh.read(
          makeBlockIo({ lba: 0, blocks: 1, blockSize: BS, buffers: [new Uint8Array(BS)], iovecs: [{ offset: mapSize, length: BS }] }),
        );
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(Error);
      expect((err as NodeJS.ErrnoException).code).to.be.a('string');
    } finally {
      await dh.close();
      closeFd(mapFd);
    }
    expect(reasonOf(fileHandler.checkConfig(`${img};threads=999`))).to.match(/threads=999 must be an integer/);
  });

  describe('checkConfig', () => {
    it('accepts a new file in an existing directory and an existing image', () => {
      expect(fileHandler.checkConfig(path.join(dir, 'fresh.img'))).to.deep.equal({ ok: true });
      const img = path.join(dir, 'exists.img');
      fs.writeFileSync(img, '');
      expect(fileHandler.checkConfig(img)).to.deep.equal({ ok: true });
      expect(fs.existsSync(path.join(dir, 'fresh.img'))).to.equal(false);
    });

    it('names a missing directory', () => {
      const missing = path.join(dir, 'no', 'such');
      expect(reasonOf(fileHandler.checkConfig(path.join(missing, 'x.img')))).to.equal(
        `directory "${missing}" does not exist`,
      );
    });

    it('refuses a directory, a path through a file, an empty path and unknown options', () => {
      expect(reasonOf(fileHandler.checkConfig(dir))).to.match(/is a directory/);
      const f = path.join(dir, 'plain');
      fs.writeFileSync(f, '');
      expect(reasonOf(fileHandler.checkConfig(path.join(f, 'x.img')))).to.match(/not a directory/);
      expect(reasonOf(fileHandler.checkConfig(''))).to.match(/no path/);
      expect(reasonOf(fileHandler.checkConfig(`${f};sparse`))).to.match(/unknown option "sparse"/);
    });

    it('refuses a file that cannot be opened for writing even by root (read-only sysfs attribute)', function () {
      const ro = '/sys/kernel/address_bits';
      if (!fs.existsSync(ro)) this.skip();
      expect(reasonOf(fileHandler.checkConfig(ro))).to.match(/is not writable \(EACCES/);
    });

    it('refuses files and new paths on a read-only mount (EROFS)', function () {
      const src = path.join(dir, 'rosrc');
      const mnt = path.join(dir, 'romnt');
      fs.mkdirSync(src);
      fs.mkdirSync(mnt);
      fs.writeFileSync(path.join(src, 'disk.img'), new Uint8Array(4096));
      if (!tryRun('mount', ['--bind', '-o', 'ro', src, mnt])) this.skip();
      try {
        expect(reasonOf(fileHandler.checkConfig(path.join(mnt, 'disk.img')))).to.match(/not writable \(EROFS/);
        expect(reasonOf(fileHandler.checkConfig(path.join(mnt, 'new.img')))).to.match(/is not writable \(EROFS/);
      } finally {
        tryRun('umount', [mnt]);
      }
    });
  });

  it('keeps ENOSPC as the error code when the filesystem fills up', async function () {
    const mnt = path.join(dir, 'tiny');
    fs.mkdirSync(mnt);
    if (!tryRun('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tcmu-test', mnt])) this.skip();
    try {
      const { dh } = await open(path.join(mnt, 'full.img'), 4096); // 2 MiB sparse on 256 KiB
      let err: unknown;
      try {
        await dh.write(io(0, [MiB], pattern(MiB)));
      } catch (e) {
        err = e;
      }
      expect((err as NodeJS.ErrnoException | undefined)?.code).to.equal('ENOSPC');
      await dh.close();
      opened.splice(opened.indexOf(dh), 1);
    } finally {
      tryRun('umount', [mnt]);
    }
  });
});
