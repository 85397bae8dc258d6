// The pure half of scsi-compare.mjs: the steps (SETS), the decoders into named fields,
// the explained differences and compare(). No SG_IO here, so test/scsi-compare-replay.test.ts
// imports it on any host; scsi-compare.mjs (probe, diff) re-exports it.
import { createHash } from 'node:crypto';

// ---------------------------------------------------------------- CDB builders
const be = (v, n) => { const b = []; for (let i = n - 1; i >= 0; i--) b.push(Number((BigInt(v) >> BigInt(8 * i)) & 0xffn)); return b; };
const inquiry = (evpd, page, alloc) => [0x12, evpd ? 1 : 0, page, ...be(alloc, 2), 0];
const rc10 = () => [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
const rc16 = (alloc) => [0x9e, 0x10, ...be(0, 8), ...be(alloc, 4), 0, 0];
const read16 = (lba, n) => [0x88, 0, ...be(lba, 8), ...be(n, 4), 0, 0];
const write16 = (lba, n) => [0x8a, 0, ...be(lba, 8), ...be(n, 4), 0, 0];
const read10 = (lba, n) => [0x28, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const read12 = (lba, n) => [0xa8, 0, ...be(lba, 4), ...be(n, 4), 0, 0];
const write10 = (lba, n) => [0x2a, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const verify10 = (lba, n) => [0x2f, 0, ...be(lba, 4), 0, ...be(n, 2), 0];
const reportZones = (lba, alloc, option = 0, partial = false) => [0x95, 0x00, ...be(lba, 8), ...be(alloc, 4), (partial ? 0x80 : 0) | option, 0];
const zbcOut = (sa, lba, all = false) => [0x94, sa, ...be(lba, 8), 0, 0, 0, 0, all ? 1 : 0, 0];
const ZOUT = { close: 0x01, finish: 0x02, open: 0x03, reset: 0x04 };
const tur = () => [0, 0, 0, 0, 0, 0];
const requestSense = (alloc) => [0x03, 0, 0, 0, alloc, 0];
const modeSense10 = (page, alloc) => [0x5a, 0x08, page, 0, 0, 0, 0, ...be(alloc, 2), 0];
const getConfiguration = (rt, start, alloc) => [0x46, rt, ...be(start, 2), 0, 0, 0, ...be(alloc, 2), 0];
const readToc = (msf, format, track, alloc) => [0x43, msf ? 2 : 0, format, 0, 0, 0, track, ...be(alloc, 2), 0];
const readDiscInfo = (alloc) => [0x51, 0, 0, 0, 0, 0, 0, ...be(alloc, 2), 0];
const gesn = (classes, alloc) => [0x4a, 0x01, 0, 0, classes, 0, 0, ...be(alloc, 2), 0];
const readDvdStructure = (format, alloc) => [0xad, 0, 0, 0, 0, 0, 0, format, ...be(alloc, 2), 0, 0];
const mechanismStatus = (alloc) => [0xbd, 0, 0, 0, 0, 0, 0, 0, ...be(alloc, 2), 0, 0];
const readFormatCapacities = (alloc) => [0x23, 0, 0, 0, 0, 0, 0, ...be(alloc, 2), 0];
const preventAllow = (prevent) => [0x1e, 0, 0, 0, prevent ? 1 : 0, 0];
const startStop = (loej, start) => [0x1b, 0, 0, 0, (loej ? 2 : 0) | (start ? 1 : 0), 0];

/** Data-out for a write: a pattern that names the LBA, so a misplaced block shows. */
function pattern(lba, blocks, bs) {
  const d = new Uint8Array(blocks * bs);
  for (let b = 0; b < blocks; b++) for (let i = 0; i < bs; i++) d[b * bs + i] = (lba + b + i) & 0xff;
  return d;
}

// ---------------------------------------------------------------- the steps
// { id, what, cdb, dir, length | data, decode }. `decode` names a decoder below.
const ZBS = 512, ZONE = 2048, SEQ0 = 2 * ZONE, NZONES = 16;
const zone = (k) => k * ZONE;
const zbcSteps = [
  { id: 'inquiry', what: 'standard INQUIRY', cdb: inquiry(false, 0, 96), dir: 'in', length: 96, decode: 'inquiry' },
  { id: 'vpd-00', what: 'VPD 00h supported pages', cdb: inquiry(true, 0x00, 255), dir: 'in', length: 255, decode: 'vpdList' },
  { id: 'vpd-b1', what: 'VPD B1h block device characteristics', cdb: inquiry(true, 0xb1, 64), dir: 'in', length: 64, decode: 'vpdB1' },
  { id: 'vpd-b6', what: 'VPD B6h zoned block device characteristics', cdb: inquiry(true, 0xb6, 64), dir: 'in', length: 64, decode: 'vpdB6' },
  { id: 'read-capacity-16', what: 'READ CAPACITY (16): RC BASIS', cdb: rc16(32), dir: 'in', length: 32, decode: 'rc16' },
  { id: 'rz-all', what: 'REPORT ZONES, all', cdb: reportZones(0, 64 + 64 * NZONES), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'rz-empty', what: 'REPORT ZONES, empty only', cdb: reportZones(0, 64 + 64 * NZONES, 0x01), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'rz-nwp', what: 'REPORT ZONES, not write pointer (conventional)', cdb: reportZones(0, 64 + 64 * NZONES, 0x3f), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'rz-partial', what: 'REPORT ZONES, PARTIAL, room for 2 zones', cdb: reportZones(0, 64 + 128, 0, true), dir: 'in', length: 64 + 128, decode: 'zones' },
  { id: 'rz-not-partial-short', what: 'REPORT ZONES, not PARTIAL, room for 2 zones (list length counts all)', cdb: reportZones(0, 64 + 128), dir: 'in', length: 64 + 128, decode: 'zones' },
  { id: 'rz-mid-zone', what: 'REPORT ZONES from an LBA inside zone 2', cdb: reportZones(SEQ0 + 100, 64 + 64 * 4, 0, true), dir: 'in', length: 64 + 64 * 4, decode: 'zones' },
  { id: 'rz-header-only', what: 'REPORT ZONES, allocation length 64 (header only)', cdb: reportZones(0, 64), dir: 'in', length: 64, decode: 'zones' },
  { id: 'rz-bad-option', what: 'REPORT ZONES, reserved option 08h', cdb: reportZones(0, 512, 0x08), dir: 'in', length: 512, decode: 'none' },
  { id: 'rz-lba-out-of-range', what: 'REPORT ZONES past the last LBA', cdb: reportZones(NZONES * ZONE, 512), dir: 'in', length: 512, decode: 'none' },
  { id: 'write-conv', what: 'WRITE (16) in a conventional zone, not at its start', cdb: write16(100, 8), dir: 'out', data: pattern(100, 8, ZBS), decode: 'none' },
  { id: 'read-conv', what: 'READ (16) of it back', cdb: read16(100, 8), dir: 'in', length: 8 * ZBS, decode: 'data' },
  { id: 'write-at-wp', what: 'WRITE (16) at zone 2\'s write pointer (implicit open)', cdb: write16(SEQ0, 8), dir: 'out', data: pattern(SEQ0, 8, ZBS), decode: 'none' },
  { id: 'rz-implicit-open', what: 'REPORT ZONES, implicitly open', cdb: reportZones(0, 64 + 64 * NZONES, 0x02), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'write-unaligned', what: 'WRITE (16) not at the write pointer', cdb: write16(SEQ0 + 100, 8), dir: 'out', data: pattern(SEQ0 + 100, 8, ZBS), decode: 'none' },
  { id: 'read-below-wp', what: 'READ (16) of what was written', cdb: read16(SEQ0, 8), dir: 'in', length: 8 * ZBS, decode: 'data' },
  { id: 'read-past-wp', what: 'READ (16) past the write pointer', cdb: read16(SEQ0 + 8, 8), dir: 'in', length: 8 * ZBS, decode: 'data' },
  { id: 'write-conv-to-seq', what: 'WRITE (16) from a conventional zone into a sequential one', cdb: write16(SEQ0 - 8, 16), dir: 'out', data: pattern(SEQ0 - 8, 16, ZBS), decode: 'none' },
  // 16 writes of 120 blocks take zone 2's write pointer to 8 + 1920 = 1928 blocks in
  ...Array.from({ length: 16 }, (_, i) => ({ id: `fill-${i}`, what: 'WRITE (16) at the write pointer, filling zone 2', cdb: write16(SEQ0 + 8 + 120 * i, 120), dir: 'out', data: pattern(SEQ0 + 8 + 120 * i, 120, ZBS), decode: 'none' })),
  { id: 'write-across-zones', what: 'WRITE (16) at the write pointer that would run into zone 3', cdb: write16(SEQ0 + 1928, 128), dir: 'out', data: pattern(SEQ0 + 1928, 128, ZBS), decode: 'none' },
  { id: 'rz-zone-2', what: 'REPORT ZONES of zone 2 (write pointer)', cdb: reportZones(SEQ0, 128, 0, true), dir: 'in', length: 128, decode: 'zones' },
  { id: 'open-3', what: 'ZBC OUT OPEN ZONE 3', cdb: zbcOut(ZOUT.open, zone(3)), dir: 'none', decode: 'none' },
  { id: 'rz-explicit-open', what: 'REPORT ZONES, explicitly open', cdb: reportZones(0, 64 + 64 * NZONES, 0x03), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'close-2', what: 'ZBC OUT CLOSE ZONE 2', cdb: zbcOut(ZOUT.close, zone(2)), dir: 'none', decode: 'none' },
  { id: 'rz-closed', what: 'REPORT ZONES, closed', cdb: reportZones(0, 64 + 64 * NZONES, 0x04), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'finish-3', what: 'ZBC OUT FINISH ZONE 3', cdb: zbcOut(ZOUT.finish, zone(3)), dir: 'none', decode: 'none' },
  { id: 'rz-full', what: 'REPORT ZONES, full', cdb: reportZones(0, 64 + 64 * NZONES, 0x05), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  ...[4, 5, 6, 7].map((k) => ({ id: `open-${k}`, what: `ZBC OUT OPEN ZONE ${k} (open zones: ${k - 3} of 4)`, cdb: zbcOut(ZOUT.open, zone(k)), dir: 'none', decode: 'none' })),
  { id: 'open-8-over-limit', what: 'ZBC OUT OPEN ZONE 8 with 4 zones explicitly open', cdb: zbcOut(ZOUT.open, zone(8)), dir: 'none', decode: 'none' },
  { id: 'write-9-over-limit', what: 'WRITE (16) to empty zone 9 with 4 zones explicitly open', cdb: write16(zone(9), 8), dir: 'out', data: pattern(zone(9), 8, ZBS), decode: 'none' },
  { id: 'open-conv', what: 'ZBC OUT OPEN ZONE on a conventional zone', cdb: zbcOut(ZOUT.open, 0), dir: 'none', decode: 'none' },
  { id: 'reset-not-zone-start', what: 'ZBC OUT RESET WRITE POINTER at an LBA that does not start a zone', cdb: zbcOut(ZOUT.reset, SEQ0 + 1), dir: 'none', decode: 'none' },
  { id: 'close-all', what: 'ZBC OUT CLOSE ZONE, ALL', cdb: zbcOut(ZOUT.close, 0, true), dir: 'none', decode: 'none' },
  { id: 'rz-after-close-all', what: 'REPORT ZONES, all, after CLOSE ALL', cdb: reportZones(0, 64 + 64 * NZONES), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'finish-all', what: 'ZBC OUT FINISH ZONE, ALL', cdb: zbcOut(ZOUT.finish, 0, true), dir: 'none', decode: 'none' },
  { id: 'rz-after-finish-all', what: 'REPORT ZONES, all, after FINISH ALL', cdb: reportZones(0, 64 + 64 * NZONES), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'reset-all', what: 'ZBC OUT RESET WRITE POINTER, ALL', cdb: zbcOut(ZOUT.reset, 0, true), dir: 'none', decode: 'none' },
  { id: 'rz-after-reset-all', what: 'REPORT ZONES, all, after RESET ALL', cdb: reportZones(0, 64 + 64 * NZONES), dir: 'in', length: 64 + 64 * NZONES, decode: 'zones' },
  { id: 'read-conv-after-reset', what: 'READ (16) of the conventional zone (RESET does not touch it)', cdb: read16(100, 8), dir: 'in', length: 8 * ZBS, decode: 'data' },
  { id: 'read-out-of-range', what: 'READ (16) past the capacity', cdb: read16(NZONES * ZONE, 1), dir: 'in', length: ZBS, decode: 'none' },
  { id: 'zbc-in-bad-sa', what: 'ZBC IN with an unknown service action', cdb: [0x95, 0x1f, ...new Array(14).fill(0)], dir: 'in', length: 512, decode: 'none' },
];

const FBS = 2048;
const fboSteps = [
  { id: 'inquiry', what: 'standard INQUIRY', cdb: inquiry(false, 0, 96), dir: 'in', length: 96, decode: 'inquiry' },
  { id: 'vpd-00', what: 'VPD 00h supported pages', cdb: inquiry(true, 0x00, 255), dir: 'in', length: 255, decode: 'vpdList' },
  { id: 'tur', what: 'TEST UNIT READY', cdb: tur(), dir: 'none', decode: 'none' },
  { id: 'read-capacity-10', what: 'READ CAPACITY (10)', cdb: rc10(), dir: 'in', length: 8, decode: 'rc10' },
  { id: 'mode-sense-2a', what: 'MODE SENSE (10) page 2Ah, CD/DVD capabilities', cdb: modeSense10(0x2a, 255), dir: 'in', length: 255, decode: 'mode10' },
  { id: 'mode-sense-3f', what: 'MODE SENSE (10) all pages', cdb: modeSense10(0x3f, 1024), dir: 'in', length: 1024, decode: 'mode10' },
  { id: 'gc-header', what: 'GET CONFIGURATION RT 0, header only (current profile)', cdb: getConfiguration(0, 0, 8), dir: 'in', length: 8, decode: 'config' },
  { id: 'gc-all', what: 'GET CONFIGURATION RT 0, every feature', cdb: getConfiguration(0, 0, 2048), dir: 'in', length: 2048, decode: 'config' },
  { id: 'gc-current', what: 'GET CONFIGURATION RT 1, current features', cdb: getConfiguration(1, 0, 2048), dir: 'in', length: 2048, decode: 'config' },
  { id: 'gc-profiles', what: 'GET CONFIGURATION RT 2, feature 0 (profile list)', cdb: getConfiguration(2, 0, 256), dir: 'in', length: 256, decode: 'config' },
  { id: 'gc-core', what: 'GET CONFIGURATION RT 2, feature 1 (core)', cdb: getConfiguration(2, 1, 256), dir: 'in', length: 256, decode: 'config' },
  { id: 'toc-0-lba', what: 'READ TOC format 0, LBA', cdb: readToc(false, 0, 0, 804), dir: 'in', length: 804, decode: 'toc' },
  { id: 'toc-0-msf', what: 'READ TOC format 0, MSF', cdb: readToc(true, 0, 0, 804), dir: 'in', length: 804, decode: 'toc' },
  { id: 'toc-0-leadout', what: 'READ TOC format 0 from track AAh (lead-out)', cdb: readToc(false, 0, 0xaa, 804), dir: 'in', length: 804, decode: 'toc' },
  { id: 'toc-1', what: 'READ TOC format 1 (session info)', cdb: readToc(false, 1, 0, 12), dir: 'in', length: 12, decode: 'toc' },
  { id: 'toc-short', what: 'READ TOC format 0, allocation length 4', cdb: readToc(false, 0, 0, 4), dir: 'in', length: 4, decode: 'toc' },
  { id: 'disc-info', what: 'READ DISC INFORMATION', cdb: readDiscInfo(34), dir: 'in', length: 34, decode: 'discInfo' },
  { id: 'gesn-media', what: 'GET EVENT STATUS NOTIFICATION, polled, media class', cdb: gesn(0x10, 8), dir: 'in', length: 8, decode: 'gesn' },
  { id: 'gesn-oper', what: 'GET EVENT STATUS NOTIFICATION, polled, operational change class', cdb: gesn(0x02, 8), dir: 'in', length: 8, decode: 'gesn' },
  { id: 'gesn-none', what: 'GET EVENT STATUS NOTIFICATION, polled, no class asked', cdb: gesn(0x00, 8), dir: 'in', length: 8, decode: 'gesn' },
  { id: 'dvd-structure-0', what: 'READ DVD STRUCTURE format 0 (physical format)', cdb: readDvdStructure(0, 2052), dir: 'in', length: 2052, decode: 'dvdPhysical' },
  { id: 'mechanism-status', what: 'MECHANISM STATUS', cdb: mechanismStatus(8), dir: 'in', length: 8, decode: 'generic' },
  { id: 'format-capacities', what: 'READ FORMAT CAPACITIES', cdb: readFormatCapacities(252), dir: 'in', length: 252, decode: 'formatCapacities' },
  { id: 'read10-pvd', what: 'READ (10) of block 16 (ISO9660 primary volume descriptor)', cdb: read10(16, 1), dir: 'in', length: FBS, decode: 'data' },
  { id: 'read12', what: 'READ (12) of blocks 16-17', cdb: read12(16, 2), dir: 'in', length: 2 * FBS, decode: 'data' },
  { id: 'verify10', what: 'VERIFY (10) of blocks 0-15', cdb: verify10(0, 16), dir: 'none', decode: 'none' },
  { id: 'write10', what: 'WRITE (10) of block 100', cdb: write10(100, 1), dir: 'out', data: pattern(100, 1, FBS), decode: 'none' },
  { id: 'read-after-write', what: 'READ (10) of block 100', cdb: read10(100, 1), dir: 'in', length: FBS, decode: 'data' },
  { id: 'prevent', what: 'PREVENT ALLOW MEDIUM REMOVAL, prevent', cdb: preventAllow(true), dir: 'none', decode: 'none' },
  { id: 'eject-prevented', what: 'START STOP UNIT eject while removal is prevented', cdb: startStop(true, false), dir: 'none', decode: 'none' },
  { id: 'allow', what: 'PREVENT ALLOW MEDIUM REMOVAL, allow', cdb: preventAllow(false), dir: 'none', decode: 'none' },
  { id: 'eject', what: 'START STOP UNIT eject', cdb: startStop(true, false), dir: 'none', decode: 'none' },
  { id: 'tur-ejected', what: 'TEST UNIT READY after eject', cdb: tur(), dir: 'none', decode: 'none' },
  { id: 'gesn-ejected', what: 'GET EVENT STATUS NOTIFICATION after eject', cdb: gesn(0x10, 8), dir: 'in', length: 8, decode: 'gesn' },
  { id: 'read-ejected', what: 'READ (10) with no medium', cdb: read10(16, 1), dir: 'in', length: FBS, decode: 'none' },
  { id: 'load', what: 'START STOP UNIT load', cdb: startStop(true, true), dir: 'none', decode: 'none' },
  { id: 'tur-loaded-1', what: 'TEST UNIT READY after load', cdb: tur(), dir: 'none', decode: 'none' },
  { id: 'tur-loaded-2', what: 'TEST UNIT READY again', cdb: tur(), dir: 'none', decode: 'none' },
  { id: 'gesn-loaded', what: 'GET EVENT STATUS NOTIFICATION after load', cdb: gesn(0x10, 8), dir: 'in', length: 8, decode: 'gesn' },
  { id: 'read-loaded', what: 'READ (10) of block 16 after load', cdb: read10(16, 1), dir: 'in', length: FBS, decode: 'data' },
  { id: 'request-sense', what: 'REQUEST SENSE', cdb: requestSense(18), dir: 'in', length: 18, decode: 'generic' },
  { id: 'mode-sense-2a-no-dbd', what: 'MODE SENSE (10) page 2Ah, block descriptors allowed', cdb: [0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0], dir: 'in', length: 255, decode: 'mode10' },
  { id: 'mode-sense-01', what: 'MODE SENSE (10) page 01h, read/write error recovery', cdb: modeSense10(0x01, 255), dir: 'in', length: 255, decode: 'mode10' },
  // last: once seen unanswered from tcmu-runner 1.5.4's fbo (that was after verify10 had
  // hung its LUN; restarted, it answers LBA OUT OF RANGE), so it cannot spoil the steps before it
  { id: 'read-out-of-range', what: 'READ (10) past the capacity', cdb: read10(0xffffff, 1), dir: 'in', length: FBS, decode: 'none', timeoutMs: 8000 },
];

export const SETS = { zbc: zbcSteps, fbo: fboSteps };

// ---------------------------------------------------------------- decoders: bytes -> [field, value]
export const hex = (b) => Buffer.from(b).toString('hex');
/** Big-endian unsigned; an 8-byte field stays exact (a write pointer of all ones is "invalid", not a float). */
const u = (d, o, n) => { let v = 0n; for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(d[o + i] ?? 0); return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : `0x${v.toString(16)}`; };
const ascii = (d, o, n) => Buffer.from(d.subarray(o, o + n)).toString('latin1');
const bit = (d, o, mask) => ((d[o] ?? 0) & mask ? 1 : 0);

const ZONE_TYPES = { 1: 'conventional', 2: 'seq-write-required', 3: 'seq-write-preferred' };
const ZONE_CONDS = { 0: 'not-wp', 1: 'empty', 2: 'implicit-open', 3: 'explicit-open', 4: 'closed', 0xd: 'read-only', 0xe: 'full', 0xf: 'offline' };

export const DECODERS = {
  none: () => [],
  generic: (d) => { const out = []; for (let o = 0; o < d.length; o += 8) out.push([`bytes ${o}-${Math.min(d.length, o + 8) - 1}`, hex(d.subarray(o, o + 8))]); return out; },
  data: (d) => [['sha1 of data', Buffer.from(d).length ? createHashHex(d) : ''], ['first 16 bytes', hex(d.subarray(0, 16))]],
  inquiry: (d) => [
    ['peripheral qualifier/type', hex(d.subarray(0, 1))], ['RMB', bit(d, 1, 0x80)], ['VERSION', d[2]], ['NORMACA/HISUP/format', hex(d.subarray(3, 4))],
    ['ADDITIONAL LENGTH', d[4]], ['byte 5 (TPGS, 3PC, PROTECT)', hex(d.subarray(5, 6))], ['byte 6', hex(d.subarray(6, 7))], ['byte 7 (CMDQUE)', hex(d.subarray(7, 8))],
    ['vendor', ascii(d, 8, 8)], ['product', ascii(d, 16, 16)], ['revision', ascii(d, 32, 4)],
    // only the version descriptors ADDITIONAL LENGTH covers (tcmu-runner pads 36 bytes of data to the allocation length)
    ...[0, 1, 2, 3, 4, 5, 6, 7].filter((i) => 60 + 2 * i <= Math.min(d.length, 5 + (d[4] ?? 0)))
      .map((i) => [`version descriptor ${i + 1}`, hex(d.subarray(58 + 2 * i, 60 + 2 * i))]),
  ],
  vpdList: (d) => [['peripheral', hex(d.subarray(0, 1))], ['pages', Array.from(d.subarray(4, 4 + u(d, 2, 2)), (p) => p.toString(16).padStart(2, '0')).join(' ')]],
  vpdB1: (d) => [['peripheral', hex(d.subarray(0, 1))], ['page length', u(d, 2, 2)], ['rotation rate', u(d, 4, 2)], ['product type', d[6]],
    ['WABEREQ/WACEREQ/form factor', hex(d.subarray(7, 8))], ['ZONED', (d[8] >> 4) & 3], ['FUAB/VBULS', d[8] & 3]],
  vpdB6: (d) => [['peripheral', hex(d.subarray(0, 1))], ['page length', u(d, 2, 2)], ['URSWRZ', bit(d, 4, 1)],
    ['optimal open seq write preferred zones', u(d, 8, 4)], ['optimal non-seq written seq write preferred zones', u(d, 12, 4)],
    ['max open seq write required zones', u(d, 16, 4)], ['bytes 20-63', hex(d.subarray(20, 64))]],
  rc16: (d) => [['last LBA', u(d, 0, 8)], ['block length', u(d, 8, 4)], ['P_TYPE/PROT_EN', d[12] & 0x0f], ['RC BASIS', (d[12] >> 4) & 3],
    ['P_I_EXPONENT/LBPPBE', hex(d.subarray(13, 14))], ['LBPME/LBPRZ/lowest aligned', hex(d.subarray(14, 16))]],
  rc10: (d) => [['last LBA', u(d, 0, 4)], ['block length', u(d, 4, 4)]],
  zones: (d) => {
    const out = [['zone list length', u(d, 0, 4)], ['byte 4 (SAME)', d[4] & 0x0f], ['maximum LBA', u(d, 8, 8)], ['returned bytes', d.length]];
    // only the descriptors the list length covers: a daemon need not clear the rest of the buffer
    const end = Math.min(d.length, 64 + Number(u(d, 0, 4)));
    for (let o = 64, i = 0; o + 64 <= end; o += 64, i++) {
      out.push([`zone ${i} type`, ZONE_TYPES[d[o] & 0x0f] ?? d[o] & 0x0f], [`zone ${i} condition`, ZONE_CONDS[d[o + 1] >> 4] ?? d[o + 1] >> 4],
        [`zone ${i} NON_SEQ/RESET`, d[o + 1] & 3], [`zone ${i} length`, u(d, o + 8, 8)], [`zone ${i} start`, u(d, o + 16, 8)], [`zone ${i} write pointer`, u(d, o + 24, 8)]);
    }
    return out;
  },
  config: (d) => {
    const out = [['data length', u(d, 0, 4)], ['current profile', hex(d.subarray(6, 8))], ['returned bytes', d.length]];
    // only the feature descriptors DATA LENGTH covers (it counts the bytes after itself)
    const end = Math.min(d.length, 4 + Number(u(d, 0, 4)));
    for (let o = 8; o + 4 <= end;) {
      const code = hex(d.subarray(o, o + 2)), len = d[o + 3];
      out.push([`feature ${code} version/persistent/current`, hex(d.subarray(o + 2, o + 3))], [`feature ${code} data`, hex(d.subarray(o + 4, o + 4 + len))]);
      o += 4 + len;
    }
    return out;
  },
  toc: (d) => {
    const out = [['data length', u(d, 0, 2)], ['first track/session', d[2]], ['last track/session', d[3]], ['returned bytes', d.length]];
    // only the descriptors TOC DATA LENGTH covers (it counts the bytes after itself)
    const end = Math.min(d.length, 2 + u(d, 0, 2));
    for (let o = 4, i = 0; o + 8 <= end; o += 8, i++) out.push([`descriptor ${i}`, hex(d.subarray(o, o + 8))]);
    return out;
  },
  discInfo: (d) => [['data length', u(d, 0, 2)], ['erasable/last session state/disc status', hex(d.subarray(2, 3))], ['first track', d[3]],
    ['sessions/first/last track of last session', hex(d.subarray(4, 7))], ['DID_V/DBC_V/URU/DAC_V/BG format', hex(d.subarray(7, 8))],
    ['disc type', d[8]], ['bytes 9-11', hex(d.subarray(9, 12))], ['disc identification', hex(d.subarray(12, 16))],
    ['last session lead-in start', hex(d.subarray(16, 20))], ['last possible lead-out start', hex(d.subarray(20, 24))], ['bytes 24-33', hex(d.subarray(24, 34))]],
  // the 4-byte header always; the event descriptor only as far as EVENT DATA LENGTH covers it (MMC-6: the bytes
  // after the header; Linux sr_get_events wants it >= 4 for the media descriptor)
  gesn: (d) => [['event data length', u(d, 0, 2)], ['NEA/notification class', hex(d.subarray(2, 3))], ['supported classes', hex(d.subarray(3, 4))],
    ['event descriptor', hex(d.subarray(4, Math.min(8, 4 + u(d, 0, 2))))]],
  // READ DVD STRUCTURE format 00h: the layer descriptor's fields, then the rest DATA LENGTH covers (media specific)
  dvdPhysical: (d) => {
    const end = Math.min(d.length, 2 + u(d, 0, 2));
    const f = (name, o, n, fn = (x) => hex(x)) => (o + n <= end ? [[name, fn(d.subarray(o, o + n))]] : []);
    const rest = d.subarray(21, Math.max(21, end));
    return [['data length', u(d, 0, 2)], ['returned bytes', d.length], ...f('book type/part version', 4, 1), ...f('disc size/maximum rate', 5, 1),
      ...f('layers/track path/layer type', 6, 1), ...f('densities', 7, 1), ...f('data area start', 8, 4), ...f('data area end', 12, 4),
      ...f('layer 0 end', 16, 4), ...f('BCA', 20, 1),
      ...(rest.length ? [['bytes 21 on (media specific)', rest.every((x) => x === 0) ? `${rest.length} zero bytes` : hex(rest)]] : [])];
  },
  mode10: (d) => {
    const out = [['mode data length', u(d, 0, 2)], ['medium type', d[2]], ['device-specific', d[3]], ['block descriptor length', u(d, 6, 2)]];
    for (let o = 8 + u(d, 6, 2); o + 2 <= d.length && o < u(d, 0, 2) + 2;) {
      const page = d[o] & 0x3f, len = d[o + 1];
      out.push([`page ${page.toString(16)}h`, hex(d.subarray(o, o + 2 + len))]);
      o += 2 + len;
    }
    return out;
  },
  formatCapacities: (d) => {
    const out = [['capacity list length', d[3]]];
    for (let o = 4, i = 0; o + 8 <= d.length && o < 4 + d[3]; o += 8, i++) out.push([`descriptor ${i} blocks`, u(d, o, 4)], [`descriptor ${i} type`, d[o + 4] & 3], [`descriptor ${i} block length/param`, u(d, o + 5, 3)]);
    return out;
  },
};

function createHashHex(d) { return createHash('sha1').update(d).digest('hex'); }

const SENSE_KEYS = ['NO SENSE', 'RECOVERED ERROR', 'NOT READY', 'MEDIUM ERROR', 'HARDWARE ERROR', 'ILLEGAL REQUEST', 'UNIT ATTENTION', 'DATA PROTECT',
  'BLANK CHECK', 'VENDOR SPECIFIC', 'COPY ABORTED', 'ABORTED COMMAND', '0Ch', 'VOLUME OVERFLOW', 'MISCOMPARE', '0Fh'];
const STATUS = { 0: 'GOOD', 2: 'CHECK CONDITION', 8: 'BUSY', 0x18: 'RESERVATION CONFLICT', 0x28: 'TASK SET FULL' };

/** Every field of one answer: status, sense, then the decoded data. */
export function fieldsOf(step, r) {
  if (r.error) return [['error', r.error]];
  const out = [['status', r.hostStatus === 3 ? 'no answer (timed out, aborted)' : STATUS[r.status] ?? `0x${r.status.toString(16)}`]];
  const s = senseCodes(Buffer.from(r.sense, 'hex'));
  if (s) {
    const h2 = (n) => n.toString(16).toUpperCase().padStart(2, '0');
    out.push(['sense', `${SENSE_KEYS[s.key]} ${h2(s.asc)}h/${h2(s.ascq)}h`]);
    const sb = Buffer.from(r.sense, 'hex');
    if (s.format === 'fixed' && sb.length >= 18 && sb[15] & 0x80) out.push(['sense-key specific', hex(sb.subarray(15, 18))]);
  }
  if (r.status === 0) out.push(...DECODERS[step.decode ?? 'generic'](Buffer.from(r.data, 'hex')));
  return out;
}

// ---------------------------------------------------------------- explained differences
// "step field" -> the docs/SCSI.md section that says why ours answers differently. A field
// that differs and is not here fails the comparison; one listed here but equal is reported stale.
const CMP = 'docs/SCSI.md#comparison-with-tcmu-runner';
const ZBC = 'docs/SCSI.md#zbc';
const FBO = 'docs/SCSI.md#the-fbo-optical-drive';
const INQ = `${CMP}: standard INQUIRY is the engine's: SPC-4 (VERSION 06h), 66 bytes with version descriptors, 3PC (EXTENDED COPY served), product from the device name; tcmu-runner: SPC-3, 36 bytes`;
const PAD = `${CMP}: data-in ends where the answer's length field says (cut to the allocation length), the rest is residual; tcmu-runner always sends the whole allocation length, padded (SPC-4's allocation length rules allow both)`;
const FP = `${CMP}: INVALID FIELD IN CDB carries a field pointer (SPC-4 sense-key specific, SKSV); tcmu-runner sends none`;
const inquiryFields = (extra = {}) => ({
  'inquiry VERSION': INQ, 'inquiry ADDITIONAL LENGTH': INQ, 'inquiry byte 5 (TPGS, 3PC, PROTECT)': INQ, 'inquiry product': INQ,
  ...Object.fromEntries([1, 2, 3, 4].map((i) => [`inquiry version descriptor ${i}`, INQ])), ...extra,
});
const NO_MEDIA_CLASS = `${FBO} (4Ah): GESN media class (4) served (Linux sr polls it for media changes); tcmu-runner has none (supported classes 42h, so NEA)`;
const TRAY = `${FBO} (1Bh): ours ejects (MMC-6 START STOP UNIT LOEJ); tcmu-runner refuses START = 0, so its tray never opens`;
const TOC_LEADOUT = `${FBO} (43h): READ TOC format 0 from track AAh answers the lead-out descriptor alone (MMC-6: descriptors from the track number given); tcmu-runner ignores the track number`;
const PAGE_2A = `${FBO} (5Ah): mode page 2Ah, CD/DVD capabilities (MMC-3 layout; Linux sr's get_capabilities reads it and calls a drive without it "scsi-1"); tcmu-runner has none`;
export const EXPLAINED = {
  zbc: {
    ...inquiryFields(),
    'vpd-00 pages': `${ZBC} (VPD pages): ours serves 80h, unit serial number; tcmu-runner does not`,
    'vpd-b1 rotation rate': `${ZBC} (VPD pages): 0000h, rotation rate not reported (a file has none); tcmu-runner invents 7200 rpm`,
    'vpd-b1 FUAB/VBULS': `${ZBC} (VPD pages): FUAB 0, the engine's (SBC-4 allows it); tcmu-runner sets FUAB`,
    ...Object.fromEntries(['rz-empty', 'rz-nwp', 'rz-implicit-open', 'rz-explicit-open', 'rz-closed', 'rz-full'].map((id) => [`${id} returned bytes`, PAD])),
    'rz-bad-option sense-key specific': FP, 'open-conv sense-key specific': FP, 'reset-not-zone-start sense-key specific': FP, 'zbc-in-bad-sa sense-key specific': FP,
  },
  fbo: {
    ...inquiryFields({ 'inquiry revision': INQ }),
    'vpd-00 *': `${FBO} (12h): VPD 00h, 80h, 83h served (SPC-4: 00h and 83h are mandatory); tcmu-runner's fbo refuses EVPD = 1`,
    'mode-sense-2a *': PAGE_2A, 'mode-sense-2a-no-dbd *': PAGE_2A,
    'mode-sense-3f mode data length': PAGE_2A, 'mode-sense-3f page 2ah': PAGE_2A,
    'gc-all feature 0003 data': `${FBO} (46h): removable medium feature says tray with Eject and Lock (29h), which ours has; tcmu-runner 20h`,
    'gc-current feature 0003 data': `${FBO} (46h): removable medium feature says tray with Eject and Lock (29h), which ours has; tcmu-runner 20h`,
    ...Object.fromEntries(['gc-all', 'gc-current', 'gc-profiles', 'gc-core', 'toc-0-lba', 'toc-0-msf'].map((id) => [`${id} returned bytes`, PAD])),
    'toc-0-leadout data length': TOC_LEADOUT, 'toc-0-leadout descriptor 0': TOC_LEADOUT, 'toc-0-leadout descriptor 1': TOC_LEADOUT,
    'toc-0-leadout returned bytes': `${PAD}; and the lead-out alone is shorter (${TOC_LEADOUT.slice(FBO.length + 2)})`,
    ...Object.fromEntries(['gesn-media', 'gesn-ejected', 'gesn-loaded'].flatMap((id) => ['event data length', 'NEA/notification class', 'event descriptor'].map((f) => [`${id} ${f}`, NO_MEDIA_CLASS]))),
    ...Object.fromEntries(['gesn-media', 'gesn-oper', 'gesn-none', 'gesn-ejected', 'gesn-loaded'].map((id) => [`${id} supported classes`, NO_MEDIA_CLASS])),
    'dvd-structure-0 data length': `${FBO} (ADh): format 00h is 4 + 2048 bytes as MMC-6 sizes it (DATA LENGTH 2050); tcmu-runner 21 bytes`,
    'dvd-structure-0 bytes 21 on (media specific)': `${FBO} (ADh): format 00h is 4 + 2048 bytes as MMC-6 sizes it; tcmu-runner stops at byte 21`,
    'dvd-structure-0 layers/track path/layer type': `${FBO} (ADh): LAYER TYPE rewritable (04h) for the DVD-RAM profile we report; tcmu-runner 02h (write-once)`,
    'verify10 *': `${FBO} (2Fh): tcmu-runner 1.5.4 never answers VERIFY (10) with BYTCHK 0 (its iovec seek walks off an empty list; the kernel aborts it)`,
    'eject-prevented sense': `${FBO} (1Bh): eject while prevented is MEDIUM REMOVAL PREVENTED 53h/02h (MMC-6, SBC-4); tcmu-runner refuses START = 0 as INVALID FIELD IN CDB`,
    'eject *': TRAY,
    'tur-ejected *': `${TRAY}; with the tray open TEST UNIT READY is NOT READY 3Ah/02h (MMC-6)`,
    'read-ejected *': `${TRAY}; with the tray open READ is NOT READY 3Ah/02h (MMC-6)`,
    'tur-loaded-1 *': `${TRAY}; after a load one UNIT ATTENTION 28h/00h (MMC-6 4.1.6), which tcmu-runner never loads`,
  },
};


export function senseCodes(sense) {
  if (!sense || sense.length < 3) return undefined;
  const code = sense[0] & 0x7f;
  if (code === 0x72 || code === 0x73) return { key: sense[1] & 0x0f, asc: sense[2], ascq: sense[3] ?? 0, format: 'descriptor' };
  if (code === 0x70 || code === 0x71) return { key: sense[2] & 0x0f, asc: sense[12] ?? 0, ascq: sense[13] ?? 0, format: 'fixed' };
  return undefined;
}

/** Compare two probe runs; returns { rows, same, explained, unexplained, stale }. */
export function compare(set, theirs, ours) {
  const steps = SETS[set];
  const explained = EXPLAINED[set];
  const byId = (list) => new Map(list.map((r) => [r.id, r]));
  const a = byId(theirs), b = byId(ours);
  const rows = [];
  const used = new Set();
  for (const step of steps) {
    const fa = new Map(a.has(step.id) ? fieldsOf(step, a.get(step.id)) : [['missing', 'step not run']]);
    const fb = new Map(b.has(step.id) ? fieldsOf(step, b.get(step.id)) : [['missing', 'step not run']]);
    for (const field of new Set([...fa.keys(), ...fb.keys()])) {
      const va = fa.has(field) ? String(fa.get(field)) : '(absent)';
      const vb = fb.has(field) ? String(fb.get(field)) : '(absent)';
      const key = `${step.id} ${field}`;
      const why = explained[key] ?? explained[`${step.id} *`];
      if (why) used.add(explained[key] ? key : `${step.id} *`);
      const verdict = va === vb ? 'same' : why ? 'explained' : 'DIFFERENT';
      rows.push({ step: step.id, what: step.what, field, theirs: va, ours: vb, verdict, why: va === vb ? '' : why ?? '' });
    }
  }
  const stale = Object.keys(explained).filter((k) => !rows.some((r) => r.verdict === 'explained' && (`${r.step} ${r.field}` === k || `${r.step} *` === k)));
  return {
    rows,
    same: rows.filter((r) => r.verdict === 'same').length,
    explained: rows.filter((r) => r.verdict === 'explained').length,
    unexplained: rows.filter((r) => r.verdict === 'DIFFERENT'),
    stale,
  };
}

