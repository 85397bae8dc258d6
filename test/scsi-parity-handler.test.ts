/**
 * Not a test: a handler the scsi-parity tests load into device workers by
 * path (it is named like a test file only to sit with them; it registers
 * no tests). A sparse RAM store with knobs to make races and failures
 * reproducible, and tcmu-runner's lock API backed by a file two LUNs can
 * share, the way two nodes share an rbd image's exclusive lock.
 *
 * cfgstring: <size>[;slowread=ms][;slowwrite=ms][;nocaw][;nounmap][;nows]
 *            [;lockfile=/path][;lockid=name][;lockfail=CODE][;fence][;eioread=lba]
 *  - slowread: a read takes its data, then waits (so a compare works on what it read before the wait)
 *  - slowwrite: a write waits, then stores
 *  - nocaw / nounmap / nows: hide the compareAndWrite / unmap / writeSame callouts
 *  - lockfile: implement lock/unlock/getLockTag/getLockState on that file,
 *    as node `lockid` (default: the device name)
 *  - lockfail: lock() throws an error with that errno code
 *  - fence: a write while another node holds the lock reports the lock
 *    lost and fails NOT READY (standby), as rbd's blocklisting does
 *  - eioread: reads covering that LBA fail with EIO
 * Vendor opcodes: C1h throws ENOMEM, C2h throws EAGAIN, C3h sleeps CDB byte 2 x 100 ms,
 * C4h returns JSON {cmdTimeOut} in its data-in.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { ramHandler } from '@tcmu-ts/handlers';
import {
  ScsiError, copyToBuffers, defineHandler, errnoError, parseOptions,
  type BlockIo, type DeviceHandler, type HandlerLockState, type RawCommand,
} from '@tcmu-ts/core';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface LockRecord {
  owner: string;
  tag: number;
}

function readLock(path: string): LockRecord | null {
  if (!existsSync(path)) return null;
  const t = readFileSync(path, 'utf8').trim();
  return t ? (JSON.parse(t) as LockRecord) : null;
}

export default defineHandler({
  name: 'scsi parity test handler',
  subtype: 'parity',
  configDescription: 'ram store with test knobs',
  checkConfig: (cfg) => ramHandler.checkConfig(parseOptions(cfg).main),
  async open(dev, reopen) {
    const { main, options } = parseOptions(dev.cfgstring);
    const innerDev = { ...dev, cfgstring: main };
    const inner = await ramHandler.open(innerDev, reopen);
    if (!dev.numLbas) dev.numLbas = innerDev.numLbas;
    const slowRead = Number(options.get('slowread') ?? 0);
    const slowWrite = Number(options.get('slowwrite') ?? 0);
    const lockFile = options.get('lockfile');
    const me = options.get('lockid') ?? dev.name;
    const lockFail = options.get('lockfail');
    const fence = options.has('fence');
    const eioRead = options.has('eioread') ? Number(options.get('eioread')) : undefined;

    const h: DeviceHandler = {
      async read(io: BlockIo) {
        if (eioRead !== undefined && eioRead >= io.lba && eioRead < io.lba + io.blocks) throw errnoError('EIO', `read of LBA ${eioRead}`);
        await inner.read!(io);
        if (slowRead) await sleep(slowRead);
      },
      async write(io: BlockIo) {
        if (slowWrite) await sleep(slowWrite);
        if (fence && lockFile) {
          const l = readLock(lockFile);
          if (l && l.owner !== me) {
            dev.notifyLockLost?.();
            throw ScsiError.standby();
          }
        }
        await inner.write!(io);
      },
      flush: () => inner.flush!(),
      close: () => inner.close(),
      async handleCmd(cmd: RawCommand) {
        switch (cmd.cdb[0]) {
          case 0xc1:
            throw errnoError('ENOMEM', 'out of memory (test)');
          case 0xc2:
            throw errnoError('EAGAIN', 'try again (test)');
          case 0xc3:
            await sleep(cmd.cdb[2] * 100);
            return { status: 0 };
          case 0xc4: {
            const n = copyToBuffers(cmd.buffers, new TextEncoder().encode(JSON.stringify({ cmdTimeOut: dev.cmdTimeOut ?? null })));
            return { status: 0, dataLength: n };
          }
          default:
            return undefined;
        }
      },
    };
    if (!options.has('nocaw') && inner.compareAndWrite) h.compareAndWrite = (io) => inner.compareAndWrite!(io);
    if (!options.has('nounmap') && inner.unmap) h.unmap = (r) => inner.unmap!(r);
    if (!options.has('nows') && inner.writeSame) h.writeSame = (io, p) => inner.writeSame!(io, p);
    if (lockFile) {
      h.lock = async (tag: number) => {
        if (lockFail) throw errnoError(lockFail, 'lock refused (test)');
        writeFileSync(lockFile, JSON.stringify({ owner: me, tag }));
      };
      h.unlock = async () => {
        if (readLock(lockFile)?.owner === me) writeFileSync(lockFile, '');
      };
      h.getLockTag = async () => readLock(lockFile)?.tag ?? null;
      h.getLockState = async (): Promise<HandlerLockState> => (readLock(lockFile)?.owner === me ? 'locked' : 'unlocked');
    }
    return h;
  },
});
