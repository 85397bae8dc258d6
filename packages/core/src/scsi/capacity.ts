/**
 * READ CAPACITY (10) and (16) (SBC-3 5.15, 5.16).
 */

import { be32, be64, put32, put64 } from './bytes.js';
import { checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import { lbpme, type ScsiDeviceInfo } from './device.js';
import { ScsiError } from './sense.js';

export const READ_CAPACITY_10_LENGTH = 8;
export const READ_CAPACITY_16_LENGTH = 32;

function lastLba(dev: ScsiDeviceInfo): number {
  return Math.max(0, dev.numLbas - 1);
}

/** Host managed by its device type, or host aware by the ZONED field. */
function isZoned(dev: ScsiDeviceInfo): boolean {
  return dev.peripheralType === 0x14 || (dev.zoned ?? 0) !== 0;
}

/** READ CAPACITY (10) parameter data. FFFFFFFFh tells the initiator to use READ CAPACITY (16). */
export function readCapacity10Data(dev: ScsiDeviceInfo): Uint8Array {
  const b = new Uint8Array(READ_CAPACITY_10_LENGTH);
  put32(b, 0, Math.min(lastLba(dev), 0xffffffff));
  put32(b, 4, dev.blockSize);
  return b;
}

/** READ CAPACITY (16) parameter data. */
export function readCapacity16Data(dev: ScsiDeviceInfo): Uint8Array {
  const b = new Uint8Array(READ_CAPACITY_16_LENGTH);
  put64(b, 0, lastLba(dev));
  put32(b, 8, dev.blockSize);
  // byte 12: P_TYPE / PROT_EN = 0, no protection information.
  // RC BASIS 01b on a zoned disk: the LBA returned is the last of the whole
  // medium. 00b would promise only the conventional zones at the start (ZBC),
  // and sd_zbc would then size the disk by them.
  if (isZoned(dev)) b[12] |= 0x10;
  b[13] = (dev.physicalBlockExponent ?? 0) & 0x0f; // P_I_EXPONENT 0
  if (lbpme(dev)) {
    b[14] |= 0x80; // LBPME
    if (dev.lbprz) b[14] |= 0x40; // LBPRZ, mirrors VPD B2h
  }
  // LOWEST ALIGNED LOGICAL BLOCK ADDRESS (14..15, 14 bits) = 0.
  return b;
}

/**
 * The LBA field and PMI bit are obsolete in SBC-4 but defined in SBC-3:
 * an LBA with PMI = 0 is an error there. PMI = 1 ("last LBA before a delay")
 * is answered with the capacity, since no LBA of ours ever incurs a delay.
 */
function checkPmi(cdb: Uint8Array, lbaIsZero: boolean, pmiByte: number): void {
  const pmi = (cdb[pmiByte] & 0x01) !== 0;
  if (!pmi && !lbaIsZero) throw ScsiError.invalidField(2);
}

/** READ CAPACITY (10): no allocation length, always 8 bytes. */
export function emulateReadCapacity10(cdb: Uint8Array, dev: ScsiDeviceInfo): Uint8Array {
  requireClear(cdb, 1, 0xff); // bit 0 was RELADR (obsolete); the rest reserved
  requireZeroBytes(cdb, 6, 8);
  requireClear(cdb, 8, 0xfe);
  checkControlByte(cdb, 10);
  checkPmi(cdb, be32(cdb, 2) === 0, 8);
  return readCapacity10Data(dev);
}

/** READ CAPACITY (16), service action 10h of SERVICE ACTION IN (16). */
export function emulateReadCapacity16(cdb: Uint8Array, dev: ScsiDeviceInfo): Uint8Array {
  requireClear(cdb, 1, 0xe0);
  requireClear(cdb, 14, 0xfe);
  checkControlByte(cdb, 16);
  checkPmi(cdb, be64(cdb, 2) === 0n, 14);
  const alloc = be32(cdb, 10);
  const data = readCapacity16Data(dev);
  return data.subarray(0, Math.min(alloc, data.length));
}
