import { expect } from 'chai';
import { Worker } from 'node:worker_threads';
import { errnoName, errnoNumber, memfdCreate, mapShared, closeFd, socketPair, setNonBlocking, writeEvent, readEvent, pollInSync, pollIn } from '@tcmu-ts/ring';

describe('ring system layer (koffi libc)', () => {
  it('maps one memfd twice and both views see the same bytes', () => {
    const fd = memfdCreate('t', 1 << 20);
    const a = mapShared(fd, 1 << 20);
    const b = mapShared(fd, 1 << 20);
    const ua = new Uint32Array(a.buffer);
    const ub = new Uint32Array(b.buffer);
    Atomics.store(ua, 1000, 0xdeadbeef);
    expect(Atomics.load(ub, 1000)).to.equal(0xdeadbeef);
    expect(a.buffer.byteLength).to.equal(1 << 20);
    a.unmap(); b.unmap(); closeFd(fd);
  });

  it('a worker thread mapping the same fd sees writes from the main thread', async () => {
    const fd = memfdCreate('t2', 65536);
    const m = mapShared(fd, 65536);
    new Uint32Array(m.buffer)[10] = 12345;
    const w = new Worker(`
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.mod).then(({ mapShared }) => {
        const m = mapShared(workerData.fd, 65536);
        const u = new Uint32Array(m.buffer);
        const v = u[10]; u[11] = v + 1;
        parentPort.postMessage(v);
      });`, { eval: true, workerData: { fd, mod: import.meta.resolve('@tcmu-ts/ring') } });
    const v = await new Promise((res, rej) => { w.on('message', res); w.on('error', rej); });
    expect(v).to.equal(12345);
    expect(new Uint32Array(m.buffer)[11]).to.equal(12346);
    await w.terminate();
    m.unmap(); closeFd(fd);
  });

  it('a socket pair carries 4-byte events both ways like a UIO fd', async () => {
    const [a, b] = socketPair();
    setNonBlocking(a); setNonBlocking(b);
    expect(readEvent(a)).to.equal(null);
    expect(pollInSync(a, 0)).to.equal(0);
    writeEvent(b, 7);
    expect(await pollIn(a, 1000)).to.be.greaterThan(0);
    expect(readEvent(a)).to.equal(7);
    writeEvent(a, 3);
    expect(readEvent(b)).to.equal(3);
    closeFd(a); closeFd(b);
  });
});

describe('errno table', () => {
  it('names every code both ways, the Linux ones Node leaves out (storage libraries return them) included', () => {
    expect(errnoName(-5)).to.equal('EIO');
    expect(errnoNumber('EIO')).to.equal(5);
    expect(errnoName(11)).to.equal('EAGAIN'); // not EWOULDBLOCK: the name Linux tools print
    // librados answers a blocklisted client -ESHUTDOWN; gfapi marks a lock-holding fd EBADFD after a brick loss.
    for (const [name, n] of [['ESHUTDOWN', 108], ['EBADFD', 77], ['EREMOTEIO', 121], ['ENOMEDIUM', 123], ['EMEDIUMTYPE', 124]] as const) {
      expect(errnoNumber(name), name).to.equal(n);
      expect(errnoName(-n), name).to.equal(name);
    }
    expect(errnoNumber('ENOSUCH')).to.equal(undefined);
    expect(errnoName(4095)).to.equal(undefined);
  });
});
