/**
 * A small SCSI initiator for tests and benches: builds the CDBs a block
 * device sees most and sends them through anything that can submit a CDB
 * (normally a KernelSimulator), returning what the initiator would get back.
 */
import { ScsiStatus } from '../abi.js';
import { parseSense, type SenseInfo } from '../kernel-scsi.js';
import type { SimFailure, SimResult, SubmitOptions } from './simulator.js';

/** Anything that executes a CDB the way a LUN would. */
export interface ScsiTarget {
  submit(cdb: Uint8Array, opts?: SubmitOptions): Promise<SimResult>;
}

export interface ScsiResponse {
  status: number;
  sense: Uint8Array;
  /** Decoded sense, when there is any. */
  senseInfo: SenseInfo | null;
  data: Uint8Array;
  residual: number;
  /** status GOOD. */
  ok: boolean;
  timedOut: boolean;
  aborted: boolean;
  failure?: SimFailure;
  cmdId: number;
}

export const ScsiOp = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  READ_6: 0x08,
  WRITE_6: 0x0a,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  WRITE_SAME_10: 0x41,
  UNMAP: 0x42,
  VARIABLE_LENGTH: 0x7f,
  READ_16: 0x88,
  COMPARE_AND_WRITE: 0x89,
  WRITE_16: 0x8a,
  SYNCHRONIZE_CACHE_16: 0x91,
  SERVICE_ACTION_IN_16: 0x9e,
  REPORT_LUNS: 0xa0,
} as const;

const SAI_READ_CAPACITY_16 = 0x10;

function u16be(b: Uint8Array, at: number, v: number): void {
  b[at] = (v >>> 8) & 0xff;
  b[at + 1] = v & 0xff;
}
function u32be(b: Uint8Array, at: number, v: number): void {
  b[at] = v >>> 24;
  b[at + 1] = v >>> 16;
  b[at + 2] = v >>> 8;
  b[at + 3] = v;
}
/** A number below 2^53 needs no BigInt (the load generators build millions of these). */
function u64be(b: Uint8Array, at: number, v: number | bigint): void {
  if (typeof v === 'number') {
    u32be(b, at, Math.floor(v / 0x100000000));
    u32be(b, at + 4, v >>> 0);
    return;
  }
  new DataView(b.buffer, b.byteOffset, b.byteLength).setBigUint64(at, v, false);
}

function checkRange(name: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${name} ${v} out of range 0..${max}`);
}

export interface RwFlags {
  fua?: boolean;
  /** DPO: do not keep the blocks in cache. */
  dpo?: boolean;
}

function rwByte1(f?: RwFlags): number {
  return (f?.dpo ? 0x10 : 0) | (f?.fua ? 0x08 : 0);
}

export function cdbRead10(lba: number, blocks: number, f?: RwFlags): Uint8Array {
  checkRange('lba', lba, 0xffffffff);
  checkRange('blocks', blocks, 0xffff);
  const c = new Uint8Array(10);
  c[0] = ScsiOp.READ_10;
  c[1] = rwByte1(f);
  u32be(c, 2, lba);
  u16be(c, 7, blocks);
  return c;
}

export function cdbWrite10(lba: number, blocks: number, f?: RwFlags): Uint8Array {
  const c = cdbRead10(lba, blocks, f);
  c[0] = ScsiOp.WRITE_10;
  return c;
}

export function cdbRead16(lba: number | bigint, blocks: number, f?: RwFlags): Uint8Array {
  if (BigInt(lba) < 0n || BigInt(lba) > 0xffffffffffffffffn) throw new RangeError(`lba ${lba}`);
  checkRange('blocks', blocks, 0xffffffff);
  const c = new Uint8Array(16);
  c[0] = ScsiOp.READ_16;
  c[1] = rwByte1(f);
  u64be(c, 2, lba);
  u32be(c, 10, blocks);
  return c;
}

export function cdbWrite16(lba: number | bigint, blocks: number, f?: RwFlags): Uint8Array {
  const c = cdbRead16(lba, blocks, f);
  c[0] = ScsiOp.WRITE_16;
  return c;
}

/** UNMAP with its parameter list: one block descriptor per [lba, blocks] range. */
export function cdbUnmap(ranges: readonly (readonly [lba: number, blocks: number])[]): { cdb: Uint8Array; data: Uint8Array } {
  const data = new Uint8Array(8 + 16 * ranges.length);
  u16be(data, 0, data.length - 2);
  u16be(data, 2, 16 * ranges.length);
  ranges.forEach(([lba, blocks], i) => {
    u64be(data, 8 + i * 16, lba);
    u32be(data, 16 + i * 16, blocks);
  });
  const cdb = new Uint8Array(10);
  cdb[0] = 0x42;
  u16be(cdb, 7, data.length);
  return { cdb, data };
}

/** WRITE SAME(16); the data-out is one block, the pattern. */
export function cdbWriteSame16(lba: number, blocks: number, unmap = false): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x93;
  if (unmap) c[1] = 0x08;
  u64be(c, 2, lba);
  u32be(c, 10, blocks);
  return c;
}

/** COMPARE AND WRITE; the data-out is the compare blocks, then the write blocks. */
export function cdbCompareAndWrite(lba: number, blocks: number): Uint8Array {
  checkRange('blocks', blocks, 0xff);
  const c = new Uint8Array(16);
  c[0] = 0x89;
  u64be(c, 2, lba);
  c[13] = blocks;
  return c;
}

/** GET LBA STATUS (SERVICE ACTION IN (16), 12h). */
export function cdbGetLbaStatus(lba: number, allocLen = 4096): Uint8Array {
  const c = new Uint8Array(16);
  c[0] = 0x9e;
  c[1] = 0x12;
  const v = new DataView(c.buffer);
  v.setBigUint64(2, BigInt(lba));
  v.setUint32(10, allocLen);
  return c;
}

export function cdbInquiry(allocLen: number, vpdPage?: number): Uint8Array {
  checkRange('allocation length', allocLen, 0xffff);
  const c = new Uint8Array(6);
  c[0] = ScsiOp.INQUIRY;
  if (vpdPage !== undefined) {
    checkRange('vpd page', vpdPage, 0xff);
    c[1] = 0x01; // EVPD
    c[2] = vpdPage;
  }
  u16be(c, 3, allocLen);
  return c;
}

export function cdbTestUnitReady(): Uint8Array {
  return new Uint8Array(6);
}

export function cdbReadCapacity10(): Uint8Array {
  const c = new Uint8Array(10);
  c[0] = ScsiOp.READ_CAPACITY_10;
  return c;
}

export function cdbReadCapacity16(allocLen = 32): Uint8Array {
  checkRange('allocation length', allocLen, 0xffffffff);
  const c = new Uint8Array(16);
  c[0] = ScsiOp.SERVICE_ACTION_IN_16;
  c[1] = SAI_READ_CAPACITY_16;
  u32be(c, 10, allocLen);
  return c;
}

export function cdbSynchronizeCache10(lba = 0, blocks = 0): Uint8Array {
  checkRange('lba', lba, 0xffffffff);
  checkRange('blocks', blocks, 0xffff);
  const c = new Uint8Array(10);
  c[0] = ScsiOp.SYNCHRONIZE_CACHE_10;
  u32be(c, 2, lba);
  u16be(c, 7, blocks);
  return c;
}

export function cdbModeSense6(page: number, allocLen = 0xff, subpage = 0): Uint8Array {
  checkRange('page', page, 0x3f);
  checkRange('allocation length', allocLen, 0xff);
  const c = new Uint8Array(6);
  c[0] = ScsiOp.MODE_SENSE_6;
  c[2] = page;
  c[3] = subpage;
  c[4] = allocLen;
  return c;
}

export function cdbRequestSense(allocLen = 252): Uint8Array {
  checkRange('allocation length', allocLen, 0xff);
  const c = new Uint8Array(6);
  c[0] = ScsiOp.REQUEST_SENSE;
  c[4] = allocLen;
  return c;
}

/** What READ CAPACITY says about the LUN. */
export interface Capacity {
  lastLba: bigint;
  blockSize: number;
}

export class Initiator {
  /** Logical block size used when a call does not give one. */
  blockSize: number;

  constructor(readonly target: ScsiTarget, opts: { blockSize?: number } = {}) {
    this.blockSize = opts.blockSize ?? 512;
  }

  /** Any CDB. */
  async send(cdb: Uint8Array, opts: SubmitOptions = {}): Promise<ScsiResponse> {
    const r = await this.target.submit(cdb, opts);
    return {
      status: r.status,
      sense: r.sense,
      senseInfo: r.sense.length ? parseSense(r.sense) : null,
      data: r.dataIn,
      residual: r.residual,
      ok: r.status === ScsiStatus.GOOD,
      timedOut: r.timedOut,
      aborted: r.aborted,
      failure: r.failure,
      cmdId: r.cmdId,
    };
  }

  /** READ(10) when it fits, READ(16) otherwise. */
  read(lba: number | bigint, blocks: number, blockSize = this.blockSize, f?: RwFlags): Promise<ScsiResponse> {
    const cdb = fits10(lba, blocks) ? cdbRead10(Number(lba), blocks, f) : cdbRead16(lba, blocks, f);
    return this.send(cdb, { dataInLength: blocks * blockSize });
  }

  /** WRITE(10) when it fits, WRITE(16) otherwise; `data` must be whole blocks. */
  write(lba: number | bigint, data: Uint8Array, blockSize = this.blockSize, f?: RwFlags): Promise<ScsiResponse> {
    if (data.length % blockSize !== 0) throw new RangeError(`write of ${data.length} bytes is not whole ${blockSize}-byte blocks`);
    const blocks = data.length / blockSize;
    const cdb = fits10(lba, blocks) ? cdbWrite10(Number(lba), blocks, f) : cdbWrite16(lba, blocks, f);
    return this.send(cdb, { dataOut: data });
  }

  inquiry(allocLen = 96, vpdPage?: number): Promise<ScsiResponse> {
    return this.send(cdbInquiry(allocLen, vpdPage), { dataInLength: allocLen });
  }

  testUnitReady(): Promise<ScsiResponse> {
    return this.send(cdbTestUnitReady());
  }

  synchronizeCache(): Promise<ScsiResponse> {
    return this.send(cdbSynchronizeCache10());
  }

  /** READ CAPACITY(16), decoded; null capacity when the command failed. */
  async readCapacity(): Promise<ScsiResponse & { capacity: Capacity | null }> {
    const r = await this.send(cdbReadCapacity16(32), { dataInLength: 32 });
    let capacity: Capacity | null = null;
    if (r.ok && r.data.length >= 12) {
      const dv = new DataView(r.data.buffer, r.data.byteOffset, r.data.byteLength);
      capacity = { lastLba: dv.getBigUint64(0, false), blockSize: dv.getUint32(8, false) };
    }
    return { ...r, capacity };
  }
}

function fits10(lba: number | bigint, blocks: number): boolean {
  const l = BigInt(lba);
  return l >= 0n && l + BigInt(Math.max(blocks, 1)) - 1n <= 0xffffffffn && blocks <= 0xffff;
}
