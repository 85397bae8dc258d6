/**
 * What the SCSI core needs to know about a logical unit. The engine fills it
 * from configfs (dev_size, hw_block_size, hw_max_sectors, emulate_* knobs,
 * wwn/vpd_unit_serial) and from the handler; the core only reads it, except
 * MODE SELECT, which may flip `writeCache`.
 */
import type { AluaInfo } from './alua.js';

export interface ScsiDeviceInfo {
  /** Logical block length in bytes. */
  blockSize: number;
  /** Capacity in logical blocks (last LBA + 1). */
  numLbas: number;
  /**
   * Largest READ/WRITE transfer accepted, in blocks (configfs hw_max_sectors).
   * Reported as MAXIMUM TRANSFER LENGTH in the Block Limits VPD page;
   * 0 means no limit is enforced or reported.
   */
  maxXferBlocks: number;
  /** Volatile write cache enabled (WCE in the caching mode page). Changed by MODE SELECT. */
  writeCache: boolean;
  /** Unit serial number: VPD page 80h and the T10 vendor ID designator. */
  serial: string;
  /** Source of the NAA designator in VPD page 83h; normally the same UUID as `serial`. */
  wwn: string;
  /** T10 vendor identification, 8 ASCII characters ('LIO-ORG'). */
  vendor: string;
  /** Product identification, 16 ASCII characters (from the handler subtype). */
  product: string;
  /** Product revision level, 4 ASCII characters. */
  revision: string;
  /** UNMAP supported (LBPU in VPD B2h). */
  lbpu: boolean;
  /** WRITE SAME with UNMAP supported (LBPWS / LBPWS10 in VPD B2h). */
  lbpws: boolean;
  /** MAXIMUM UNMAP LBA COUNT (VPD B0h), when lbpu. */
  maxUnmapLbaCount: number;
  /** MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT (VPD B0h), when lbpu. */
  maxUnmapDescriptors: number;
  /** OPTIMAL UNMAP GRANULARITY in blocks (VPD B0h). */
  optimalUnmapGranularity: number;
  /** UNMAP GRANULARITY ALIGNMENT in blocks; reported (UGAVALID) only when set. */
  unmapGranularityAlignment?: number;
  /**
   * Unmapped blocks read back as zeros (LBPRZ). Off unless the handler
   * guarantees it: initiators skip zeroing when they see it.
   */
  lbprz?: boolean;
  /** OPTIMAL TRANSFER LENGTH in blocks (VPD B0h); defaults to maxXferBlocks, as tcmu-runner does. */
  optimalXferBlocks?: number;
  /** MEDIUM ROTATION RATE (VPD B1h): 0 not reported, 1 non-rotating (SSD), else rpm. */
  rotationRate?: number;
  /** Report sense in descriptor format (D_SENSE in the control mode page). */
  dSense?: boolean;
  /** Medium is write protected: WP in the mode parameter header, writes fail with DATA PROTECT. */
  writeProtect?: boolean;
  /** Value of WCE reported for MODE SENSE default values; defaults to the current writeCache. */
  writeCacheDefault?: boolean;
  /** MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h); 0/absent means COMPARE AND WRITE is not offered. */
  maxCompareAndWriteBlocks?: number;
  /** MAXIMUM WRITE SAME LENGTH (VPD B0h); 0/absent means not reported. */
  maxWriteSameBlocks?: number;
  /** LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT (READ CAPACITY 16), e.g. 3 for 512e on 4K. */
  physicalBlockExponent?: number;
  /** TPGS field of standard INQUIRY (0 none, 1 implicit, 2 explicit, 3 both). */
  tpgs?: number;
  /** When set, added to VPD 83h as a vendor-specific designator (tcmu-runner puts the cfgstring there). */
  vendorSpecificId?: string;
  /**
   * D_SENSE in the control mode page may be changed by MODE SELECT (the
   * engine's devices allow it; the bare core keeps every control bit fixed).
   */
  changeableDSense?: boolean;
  /** EXTENDED COPY / RECEIVE COPY RESULTS offered: sets 3PC in standard INQUIRY. */
  thirdPartyCopy?: boolean;
  /** ALUA target port groups from configfs; absent when the device has none (no ALUA). */
  alua?: AluaInfo;
  /**
   * PERIPHERAL DEVICE TYPE of INQUIRY and every VPD page: 00h disk (default),
   * 05h MMC (optical), 14h host-managed zoned block device.
   */
  peripheralType?: number;
  /** RMB in standard INQUIRY: removable medium (optical drives). */
  removable?: boolean;
  /** Version descriptors of standard INQUIRY; default SAM-5, SPC-4, SBC-3. */
  versionDescriptors?: readonly number[];
  /**
   * Which of the block device VPD pages (B0h, B1h, B2h) are offered; default
   * all three. An MMC device offers none.
   */
  blockVpdPages?: readonly number[];
  /** ZONED field of the Block Device Characteristics page (01b host aware, 10b device managed). */
  zoned?: number;
  /**
   * MAXIMUM ATOMIC TRANSFER LENGTH (VPD B0h) and WRITE ATOMIC (16): only
   * when the handler promises a write of up to this many blocks lands whole
   * or not at all. 0/absent: not offered.
   */
  maxAtomicBlocks?: number;
  /** ATOMIC ALIGNMENT in blocks (VPD B0h); 0/absent: none. */
  atomicAlignmentBlocks?: number;
  /** GET LBA STATUS offered: the handler can tell mapped from deallocated blocks. */
  getLbaStatus?: boolean;
  /** RECOMMENDED COMMAND TIMEOUT of REPORT SUPPORTED OPERATION CODES, seconds (0: not reported). */
  commandTimeoutSeconds?: number;
  /** VPD pages the handler serves itself, each whole (header included), listed in page 00h. */
  extraVpdPages?: ReadonlyMap<number, Uint8Array>;
}

/** Everything except the two facts that have no sensible default. */
export type ScsiDeviceInit = Partial<ScsiDeviceInfo> & Pick<ScsiDeviceInfo, 'blockSize' | 'numLbas'>;

/** Default hw_max_sectors of a TCMU device in the kernel. */
export const DEFAULT_MAX_XFER_BLOCKS = 128;
export const DEFAULT_VENDOR = 'LIO-ORG';
export const DEFAULT_PRODUCT = 'TCMU device';
/** tcmu-runner's revision string, so a swap of daemons does not change INQUIRY data. */
export const DEFAULT_REVISION = '0002';

/**
 * Fill in defaults for a device description. `wwn` falls back to `serial`
 * (and vice versa) because LIO derives both from vpd_unit_serial.
 */
export function createDeviceInfo(init: ScsiDeviceInit): ScsiDeviceInfo {
  const serial = init.serial ?? init.wwn ?? '';
  // An explicit `undefined` in init must not wipe out a default.
  const given = Object.fromEntries(Object.entries(init).filter(([, v]) => v !== undefined)) as ScsiDeviceInit;
  return {
    maxXferBlocks: DEFAULT_MAX_XFER_BLOCKS,
    writeCache: false,
    vendor: DEFAULT_VENDOR,
    product: DEFAULT_PRODUCT,
    revision: DEFAULT_REVISION,
    lbpu: false,
    lbpws: false,
    maxUnmapLbaCount: 0,
    maxUnmapDescriptors: 0,
    optimalUnmapGranularity: 0,
    ...given,
    serial,
    wwn: init.wwn ?? serial,
  };
}

/** Logical block provisioning management is enabled when any unmap path is (LBPME). */
export function lbpme(dev: ScsiDeviceInfo): boolean {
  return dev.lbpu || dev.lbpws;
}
