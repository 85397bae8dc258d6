// SG_IO on a /dev/sgN or /dev/srN node through koffi: one CDB in, the exact
// status, sense bytes, data and residual out. The guest's sg3_utils print
// decoded text; a side-by-side comparison needs the bytes.
//
// Resolves koffi from the built tree (TCMU_BUILD in the guest, else this repo).
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const build = process.env.TCMU_BUILD || join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const koffi = createRequire(join(build, 'packages', 'ring', 'package.json'))('koffi');
const libc = koffi.load('libc.so.6');
const open = libc.func('int open(const char *path, int flags)');
const close = libc.func('int close(int fd)');
const ioctl = libc.func('int ioctl(int fd, unsigned long request, void *arg)');
const errnoLoc = libc.func('int *__errno_location()');

const SG_IO = 0x2285;
const O_RDWR = 2, O_NONBLOCK = 0o4000;
const DXFER = { none: -1, out: -2, in: -3 };
const HDR = 88, SENSE_MAX = 252;

// struct sg_io_hdr (x86_64): the offsets of the fields we use.
const F = { interfaceId: 0, dir: 4, cmdLen: 8, mxSbLen: 9, dxferLen: 12, dxferp: 16, cmdp: 24, sbp: 32, timeout: 40,
  status: 64, sbLenWr: 67, hostStatus: 68, driverStatus: 70, resid: 72, duration: 76 };

function native(n) {
  const ptr = koffi.alloc('uint8_t', Math.max(1, n));
  return { ptr, addr: BigInt(koffi.address(ptr)), bytes: new Uint8Array(koffi.view(ptr, Math.max(1, n))) };
}

/** One SCSI generic device, opened once. */
export class SgDevice {
  constructor(path) {
    this.path = path;
    this.fd = open(path, O_RDWR | O_NONBLOCK);
    if (this.fd < 0) throw new Error(`open ${path}: errno ${koffi.decode(errnoLoc(), 'int')}`);
    this.hdr = native(HDR);
    this.cdb = native(16);
    this.sense = native(SENSE_MAX);
    this.buf = native(1 << 20);
  }

  /**
   * Send `cdb` (bytes); dir 'in' with `length` bytes expected, 'out' with
   * `data`, or 'none'. Returns { status, sense, data, resid, hostStatus,
   * driverStatus, ms }; throws only when the ioctl itself fails.
   */
  run(cdb, { dir = 'none', length = 0, data, timeoutMs = 30000 } = {}) {
    const h = new DataView(this.hdr.bytes.buffer, this.hdr.bytes.byteOffset, HDR);
    this.hdr.bytes.fill(0);
    this.cdb.bytes.set(cdb);
    const len = dir === 'out' ? data.length : dir === 'in' ? length : 0;
    if (len > this.buf.bytes.length) throw new RangeError(`transfer of ${len} bytes is larger than the probe buffer`);
    if (dir === 'out') this.buf.bytes.set(data);
    else this.buf.bytes.fill(0, 0, len);
    h.setInt32(F.interfaceId, 'S'.charCodeAt(0), true);
    h.setInt32(F.dir, DXFER[dir], true);
    h.setUint8(F.cmdLen, cdb.length);
    h.setUint8(F.mxSbLen, SENSE_MAX);
    h.setUint32(F.dxferLen, len, true);
    h.setBigUint64(F.dxferp, this.buf.addr, true);
    h.setBigUint64(F.cmdp, this.cdb.addr, true);
    h.setBigUint64(F.sbp, this.sense.addr, true);
    h.setUint32(F.timeout, timeoutMs, true);
    if (ioctl(this.fd, SG_IO, this.hdr.ptr) < 0) throw new Error(`SG_IO on ${this.path}: errno ${koffi.decode(errnoLoc(), 'int')}`);
    const resid = h.getInt32(F.resid, true);
    const got = dir === 'in' ? Math.max(0, len - resid) : 0;
    return {
      status: h.getUint8(F.status),
      sense: Uint8Array.from(this.sense.bytes.subarray(0, h.getUint8(F.sbLenWr))),
      data: Uint8Array.from(this.buf.bytes.subarray(0, got)),
      resid,
      hostStatus: h.getUint16(F.hostStatus, true),
      driverStatus: h.getUint16(F.driverStatus, true),
      ms: h.getUint32(F.duration, true),
    };
  }

  close() {
    if (this.fd >= 0) close(this.fd);
    this.fd = -1;
    for (const b of [this.hdr, this.cdb, this.sense, this.buf]) koffi.free(b.ptr);
  }
}

/** Sense key, ASC, ASCQ of fixed (70h/71h) or descriptor (72h/73h) sense; undefined when none. */
