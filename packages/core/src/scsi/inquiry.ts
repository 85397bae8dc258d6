/**
 * INQUIRY: standard data and the vital product data pages a Linux initiator
 * reads before it uses a disk (sd and multipath look at 00h, 80h, 83h, B0h,
 * B1h and B2h).
 */

import { createHash } from 'node:crypto';
import { asciiBytes, be16, put16, put32, put64, putPaddedAscii, sat32 } from './bytes.js';
import { checkControlByte, requireClear } from './cdb.js';
import { lbpme, type ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';
import { enabledPort, portDesignators } from './alua.js';

/** Peripheral qualifier 000b (connected) + device type 00h (direct access block device). */
export const PERIPHERAL_DISK = 0x00;

/** VERSION field: the unit claims SPC-4 (06h). */
export const SPC4_VERSION = 0x06;

/** Version descriptors (SPC-4 table 141) listed in standard INQUIRY data. */
export const VersionDescriptor = {
  SAM5: 0x00a0,
  SPC4: 0x0460,
  SBC3: 0x04c0,
} as const;

const DEFAULT_VERSION_DESCRIPTORS: readonly number[] = [VersionDescriptor.SAM5, VersionDescriptor.SPC4, VersionDescriptor.SBC3];

/** Length of the standard INQUIRY data we return (through the first four version descriptors). */
export const STD_INQUIRY_LENGTH = 66;

/** VPD page codes supported, in ascending order as page 00h must list them. */
export const VpdPage = {
  SUPPORTED_PAGES: 0x00,
  UNIT_SERIAL_NUMBER: 0x80,
  DEVICE_IDENTIFICATION: 0x83,
  BLOCK_LIMITS: 0xb0,
  BLOCK_DEVICE_CHARACTERISTICS: 0xb1,
  LOGICAL_BLOCK_PROVISIONING: 0xb2,
} as const;

export const SUPPORTED_VPD_PAGES: readonly number[] = Object.freeze([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);

/** Designator types and code sets of VPD page 83h (SPC-4 7.8.6). */
export const Designator = {
  CODE_SET_BINARY: 0x1,
  CODE_SET_ASCII: 0x2,
  CODE_SET_UTF8: 0x3,
  TYPE_VENDOR_SPECIFIC: 0x0,
  TYPE_T10_VENDOR_ID: 0x1,
  TYPE_NAA: 0x3,
  ASSOCIATION_LU: 0x0,
} as const;

/** IEEE company ID LIO uses in its NAA designators (OpenFabrics, 00-14-05). */
export const LIO_IEEE_COMPANY_ID = 0x001405;

/**
 * Standard INQUIRY data (SPC-4 6.4.2), untruncated.
 * 3PC is claimed when the device offers EXTENDED COPY (thirdPartyCopy).
 */
export function standardInquiry(dev: ScsiDeviceInfo): Uint8Array {
  const b = new Uint8Array(STD_INQUIRY_LENGTH);
  b[0] = (dev.peripheralType ?? PERIPHERAL_DISK) & 0x1f;
  b[1] = dev.removable ? 0x80 : 0x00; // RMB
  b[2] = SPC4_VERSION;
  b[3] = 0x02; // NORMACA = 0, HISUP = 0, RESPONSE DATA FORMAT = 2
  b[4] = STD_INQUIRY_LENGTH - 5; // ADDITIONAL LENGTH counts bytes after byte 4
  b[5] = (((dev.tpgs ?? 0) & 0x3) << 4) | (dev.thirdPartyCopy ? 0x08 : 0);
  b[6] = 0x00;
  b[7] = 0x02; // CMDQUE: full task management model, as LIO offers
  putPaddedAscii(b, 8, 8, dev.vendor);
  putPaddedAscii(b, 16, 16, dev.product);
  putPaddedAscii(b, 32, 4, dev.revision);
  const versions = dev.versionDescriptors ?? DEFAULT_VERSION_DESCRIPTORS;
  for (let i = 0; i < Math.min(4, versions.length); i++) put16(b, 58 + 2 * i, versions[i]);
  return b;
}

function vpdHeader(dev: ScsiDeviceInfo, page: number, length: number): Uint8Array {
  const b = new Uint8Array(4 + length);
  b[0] = (dev.peripheralType ?? PERIPHERAL_DISK) & 0x1f;
  b[1] = page;
  put16(b, 2, length);
  return b;
}

/** Serial numbers are capped at 254 bytes by the kernel; the NUL keeps us byte-identical to LIO. */
function serialBytes(serial: string): Uint8Array {
  const s = asciiBytes(serial).subarray(0, 254);
  const out = new Uint8Array(s.length + 1); // trailing NUL, permitted by SPC-4 4.4.1
  out.set(s);
  return out;
}

/** The pages a device offers, ascending: the common ones, its block pages, the handler's own. */
export function supportedVpdPages(dev: ScsiDeviceInfo): number[] {
  const block = dev.blockVpdPages ?? BLOCK_VPD_PAGES;
  const pages = SUPPORTED_VPD_PAGES.filter((p) => p < 0xb0 || block.includes(p));
  if (dev.extraVpdPages) for (const p of dev.extraVpdPages.keys()) if (!pages.includes(p)) pages.push(p);
  return pages.sort((a, b) => a - b);
}

const BLOCK_VPD_PAGES: readonly number[] = [0xb0, 0xb1, 0xb2];

function supportedPages(dev: ScsiDeviceInfo): Uint8Array {
  const pages = supportedVpdPages(dev);
  const b = vpdHeader(dev, 0x00, pages.length);
  b.set(pages, 4);
  return b;
}

function unitSerialNumber(dev: ScsiDeviceInfo): Uint8Array {
  const s = serialBytes(dev.serial);
  const b = vpdHeader(dev, 0x80, s.length);
  b.set(s, 4);
  return b;
}

/**
 * The 16-byte NAA IEEE Registered Extended designator (NAA 6) for a wwn.
 * Like LIO and tcmu-runner, the 100 bits after the company ID are the hex
 * digits of the wwn in order, so a unit keeps the identity the kernel's own
 * emulation would give it. A wwn with fewer than 25 hex digits would leave
 * trailing zeros and risk two units colliding, so the rest is filled from a
 * SHA-256 of the whole string.
 */
export function naaDesignator(wwn: string): Uint8Array {
  wwn = String(wwn ?? '');
  const nibbles: number[] = [];
  for (const ch of wwn) {
    if (/^[0-9a-fA-F]$/.test(ch)) nibbles.push(parseInt(ch, 16));
    if (nibbles.length === 25) break;
  }
  if (nibbles.length < 25) {
    const h = createHash('sha256').update(wwn, 'utf8').digest();
    for (let i = 0; nibbles.length < 25; i++) nibbles.push(i & 1 ? h[i >> 1] & 0xf : h[i >> 1] >> 4);
  }
  const d = new Uint8Array(16);
  // NAA (4 bits) then the 24-bit company ID occupy the first 7 nibbles.
  const head = (0x6 << 24) | LIO_IEEE_COMPANY_ID; // 28 bits: 6001405
  d[0] = (head >>> 20) & 0xff;
  d[1] = (head >>> 12) & 0xff;
  d[2] = (head >>> 4) & 0xff;
  d[3] = (head & 0xf) << 4;
  for (let i = 0; i < 25; i++) {
    const pos = 7 + i; // nibble index within the designator
    const byte = pos >> 1;
    d[byte] |= pos & 1 ? nibbles[i] : nibbles[i] << 4;
  }
  return d;
}

function designator(codeSet: number, type: number, id: Uint8Array): Uint8Array {
  const len = Math.min(id.length, 255);
  const d = new Uint8Array(4 + len);
  d[0] = codeSet & 0x0f; // PROTOCOL IDENTIFIER 0, no PIV: logical-unit designators
  d[1] = (Designator.ASSOCIATION_LU << 4) | (type & 0x0f);
  d[3] = len;
  d.set(id.subarray(0, len), 4);
  return d;
}

function deviceIdentification(dev: ScsiDeviceInfo): Uint8Array {
  const parts: Uint8Array[] = [];

  // T10 vendor ID based: 8-byte vendor, then the unit serial (tcmu-runner's choice).
  const serial = serialBytes(dev.serial);
  const t10 = new Uint8Array(8 + serial.length);
  putPaddedAscii(t10, 0, 8, dev.vendor);
  t10.set(serial, 8);
  parts.push(designator(Designator.CODE_SET_ASCII, Designator.TYPE_T10_VENDOR_ID, t10));

  // NAA: what udev/multipath use as the persistent identity.
  parts.push(designator(Designator.CODE_SET_BINARY, Designator.TYPE_NAA, naaDesignator(dev.wwn ?? dev.serial)));

  if (dev.vendorSpecificId !== undefined) {
    const s = asciiBytes(dev.vendorSpecificId).subarray(0, 254);
    const id = new Uint8Array(s.length + 1);
    id.set(s);
    parts.push(designator(Designator.CODE_SET_ASCII, Designator.TYPE_VENDOR_SPECIFIC, id));
  }

  // With ALUA, the port the commands are taken to arrive on (tcmu-runner: the first enabled one).
  const local = enabledPort(dev.alua);
  if (local) parts.push(...portDesignators(local.port, local.group));

  const total = parts.reduce((n, p) => n + p.length, 0);
  const b = vpdHeader(dev, 0x83, total);
  let off = 4;
  for (const p of parts) {
    b.set(p, off);
    off += p.length;
  }
  return b;
}

/** Block Limits (SBC-3 6.5.3), page length 3Ch. */
function blockLimits(dev: ScsiDeviceInfo): Uint8Array {
  const b = vpdHeader(dev, 0xb0, 0x3c);
  // WSNZ: WRITE SAME with NUMBER OF LOGICAL BLOCKS 0 ("to the end") is refused.
  b[4] = 0x01;
  b[5] = Math.min(0xff, Math.max(0, dev.maxCompareAndWriteBlocks ?? 0));
  // OPTIMAL TRANSFER LENGTH GRANULARITY (6..7) left 0: not reported.
  put32(b, 8, sat32(dev.maxXferBlocks));
  put32(b, 12, sat32(dev.optimalXferBlocks ?? dev.maxXferBlocks));
  // MAXIMUM PREFETCH LENGTH (16..19) 0: no limit reported (PRE-FETCH only checks the range).
  if (dev.lbpu) {
    put32(b, 20, sat32(dev.maxUnmapLbaCount));
    put32(b, 24, sat32(dev.maxUnmapDescriptors));
  }
  if (lbpme(dev)) {
    put32(b, 28, sat32(dev.optimalUnmapGranularity));
    if (dev.unmapGranularityAlignment !== undefined) {
      put32(b, 32, sat32(dev.unmapGranularityAlignment) & 0x7fffffff);
      b[32] |= 0x80; // UGAVALID
    }
  }
  put64(b, 36, Math.max(0, dev.maxWriteSameBlocks ?? 0));
  if (dev.maxAtomicBlocks) {
    put32(b, 44, sat32(dev.maxAtomicBlocks)); // MAXIMUM ATOMIC TRANSFER LENGTH
    put32(b, 48, sat32(dev.atomicAlignmentBlocks ?? 0)); // ATOMIC ALIGNMENT
    put32(b, 52, 0); // ATOMIC TRANSFER LENGTH GRANULARITY: any length
    // MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY, MAXIMUM ATOMIC BOUNDARY SIZE: 0, no boundaries
  }
  return b;
}

/** Block Device Characteristics (SBC-3 6.5.2), page length 3Ch. */
function blockDeviceCharacteristics(dev: ScsiDeviceInfo): Uint8Array {
  const b = vpdHeader(dev, 0xb1, 0x3c);
  put16(b, 4, Math.max(0, Math.min(0xffff, dev.rotationRate ?? 0)));
  // PRODUCT TYPE, NOMINAL FORM FACTOR, FUAB/VBULS: 0, not reported.
  b[8] = ((dev.zoned ?? 0) & 0x3) << 4; // ZONED (SBC-4)
  return b;
}

/** Logical Block Provisioning (SBC-3 6.5.4), no provisioning group descriptor. */
function logicalBlockProvisioning(dev: ScsiDeviceInfo): Uint8Array {
  const b = vpdHeader(dev, 0xb2, 0x04);
  b[4] = 0; // THRESHOLD EXPONENT: no thresholds
  if (dev.lbpu) b[5] |= 0x80; // LBPU
  if (dev.lbpws) b[5] |= 0x60; // LBPWS, LBPWS10
  if (dev.lbprz && lbpme(dev)) b[5] |= 0x04; // LBPRZ
  // PROVISIONING TYPE: thin when blocks can be unmapped, otherwise not reported.
  b[6] = lbpme(dev) ? 0x02 : 0x00;
  return b;
}

/** A VPD page, untruncated; undefined for a page we do not support. */
export function vpdPage(page: number, dev: ScsiDeviceInfo): Uint8Array | undefined {
  const own = dev.extraVpdPages?.get(page);
  if (own) return own;
  if (page >= 0xb0 && !(dev.blockVpdPages ?? BLOCK_VPD_PAGES).includes(page)) return undefined;
  switch (page) {
    case 0x00:
      return supportedPages(dev);
    case 0x80:
      return unitSerialNumber(dev);
    case 0x83:
      return deviceIdentification(dev);
    case 0xb0:
      return blockLimits(dev);
    case 0xb1:
      return blockDeviceCharacteristics(dev);
    case 0xb2:
      return logicalBlockProvisioning(dev);
    default:
      return undefined;
  }
}

/**
 * INQUIRY (SPC-4 6.4): CDB checks, then the data cut to the ALLOCATION LENGTH.
 * Throws ScsiError for a bad CDB.
 */
export function emulateInquiry(cdb: Uint8Array, dev: ScsiDeviceInfo): Uint8Array {
  // byte 1: bit 0 EVPD; bit 1 CMDDT is obsolete and unsupported; the rest reserved.
  requireClear(cdb, 1, 0xfe);
  checkControlByte(cdb, 6);
  const evpd = (cdb[1] & 0x01) !== 0;
  const page = cdb[2];
  const alloc = be16(cdb, 3);
  let data: Uint8Array | undefined;
  if (!evpd) {
    // A page code without EVPD is an error (SPC-4 6.4.1).
    if (page !== 0) throw ScsiError.invalidField(2);
    data = standardInquiry(dev);
  } else {
    data = vpdPage(page, dev);
    if (!data) throw ScsiError.invalidField(2);
  }
  return data.subarray(0, Math.min(alloc, data.length));
}
