/** Shared fixtures for the scsi-*.test.ts files. */
import { expect } from 'chai';
import { createDeviceInfo, decodeSense, type ScsiDeviceInfo, type ScsiDeviceInit, type ScsiOutcome } from '@tcmu-ts/core';

export const SERIAL = '6b2d6f4c-8a1e-4f0b-9c3d-2e5a7b8c9d0f';

export function makeDev(over: Partial<ScsiDeviceInit> = {}): ScsiDeviceInfo {
  return createDeviceInfo({
    blockSize: 512,
    numLbas: 2048,
    maxXferBlocks: 128,
    serial: SERIAL,
    wwn: SERIAL,
    ...over,
  });
}

export function cdb(...bytes: number[]): Uint8Array {
  return Uint8Array.from(bytes);
}

/** A CDB of `len` zero bytes with the given opcode and byte overrides. */
export function cdbOf(len: number, op: number, set: Record<number, number> = {}): Uint8Array {
  const b = new Uint8Array(len);
  b[0] = op;
  for (const [k, v] of Object.entries(set)) b[Number(k)] = v;
  return b;
}

export function expectGood(o: ScsiOutcome): Uint8Array | undefined {
  expect(o.kind).to.equal('done');
  if (o.kind !== 'done') throw new Error('unreachable');
  expect(o.status, 'status').to.equal(0);
  expect(o.sense).to.equal(undefined);
  return o.dataIn;
}

export function expectData(o: ScsiOutcome): Uint8Array {
  const d = expectGood(o);
  expect(d, 'dataIn').to.be.instanceOf(Uint8Array);
  return d!;
}

export interface Expected {
  key: number;
  asc: number;
  ascq?: number;
  /** Field pointer expected; null means none. */
  byte?: number | null;
  bit?: number;
  cdb?: boolean;
}

/** CHECK CONDITION with the given sense; checks fixed-format layout bytes too. */
export function expectCheck(o: ScsiOutcome, e: Expected): void {
  expect(o.kind).to.equal('done');
  if (o.kind !== 'done') throw new Error('unreachable');
  expect(o.status, 'status').to.equal(2);
  expect(o.dataIn).to.equal(undefined);
  const s = o.sense!;
  expect(s, 'sense').to.be.instanceOf(Uint8Array);
  const d = decodeSense(s)!;
  expect(d, 'decodable sense').to.not.equal(undefined);
  expect({ key: d.key, asc: d.asc, ascq: d.ascq }).to.deep.equal({ key: e.key, asc: e.asc, ascq: e.ascq ?? 0 });
  if (!d.descriptor) {
    expect(s.length).to.equal(18);
    expect(s[0] & 0x7f).to.equal(0x70);
    expect(s[2]).to.equal(e.key);
    expect(s[7]).to.equal(10);
    expect(s[12]).to.equal(e.asc);
    expect(s[13]).to.equal(e.ascq ?? 0);
  }
  if (e.byte === null) expect(d.fieldPointer, 'no field pointer').to.equal(undefined);
  else if (e.byte !== undefined) {
    expect(d.fieldPointer, 'field pointer').to.not.equal(undefined);
    expect(d.fieldPointer!.byte, 'field pointer byte').to.equal(e.byte);
    expect(d.fieldPointer!.cdb, 'C/D').to.equal(e.cdb ?? true);
    expect(d.fieldPointer!.bit, 'bit pointer').to.equal(e.bit);
  }
}

export const ILLEGAL = 0x05;
export const invalidField = (byte?: number | null, bit?: number): Expected => ({ key: ILLEGAL, asc: 0x24, byte, bit });
export const invalidParam = (byte?: number | null, bit?: number): Expected => ({ key: ILLEGAL, asc: 0x26, byte, bit, cdb: false });
export const invalidOpcode: Expected = { key: ILLEGAL, asc: 0x20 };
export const lbaOutOfRange: Expected = { key: ILLEGAL, asc: 0x21 };
export const paramListLength: Expected = { key: ILLEGAL, asc: 0x1a };

export function be16(b: Uint8Array, o: number): number {
  return (b[o] << 8) | b[o + 1];
}
export function be32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}
export function be64(b: Uint8Array, o: number): bigint {
  return (BigInt(be32(b, o)) << 32n) | BigInt(be32(b, o + 4));
}
export function ascii(b: Uint8Array, from: number, to: number): string {
  return String.fromCharCode(...b.subarray(from, to));
}

/** An initiator's retry loop: BUSY means "again" (after 10 ms); returns the first other answer and how many BUSYs came first. */
export async function retryBusy<R extends { status: number }>(send: () => Promise<R>, ms = 20000): Promise<{ r: R; busy: number }> {
  const end = Date.now() + ms;
  for (let busy = 0; ; busy++) {
    const r = await send();
    if (r.status !== 0x08 || Date.now() > end) return { r, busy };
    await new Promise((res) => setTimeout(res, 10));
  }
}
