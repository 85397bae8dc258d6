/**
 * The pure parts of tcmu-runner parity: planCommand and its decoders, the
 * ALUA and EXTENDED COPY data builders, changeable D_SENSE, and the LBA
 * range lock, without a ring or a worker.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import {
  AluaState, Asc, PLANNED_OPCODES, SUPPORTED_OPCODES, Tpgs, accessStateError, copyOperatingParameters, copyStatusData,
  decodeExtendedCopy, decodeExtendedCopyList, decodeSense, decodeSetTargetPortGroups, emulate, modePage, planCommand, portDesignators, reportTargetPortGroupsData,
  requestSenseData, ScsiError, stateSupported, tpgsOf, standardInquiry,
  type AluaInfo, type ScsiPlan,
} from '@tcmu-ts/core';
import { LbaRangeLock } from '@tcmu-ts/workers/engine/lba-lock';
import { cdbOf, expectCheck, expectGood, invalidField, invalidOpcode, invalidParam, lbaOutOfRange, makeDev, paramListLength } from './scsi-helpers.js';

function be(b: Uint8Array, off: number, len: number, v: number | bigint): Uint8Array {
  let x = BigInt(v);
  for (let i = len - 1; i >= 0; i--) {
    b[off + i] = Number(x & 0xffn);
    x >>= 8n;
  }
  return b;
}
const full = (over = {}) =>
  makeDev({ lbpu: true, lbpws: true, maxUnmapLbaCount: 1024, maxUnmapDescriptors: 4, maxCompareAndWriteBlocks: 1, maxWriteSameBlocks: 0xffffffff, thirdPartyCopy: true, ...over });
function plan(p: ScsiPlan, kind: string): Record<string, unknown> {
  expect(p.kind, p.kind === 'done' && p.sense ? `sense ${JSON.stringify(decodeSense(p.sense))}` : 'kind').to.equal(kind);
  return p as unknown as Record<string, unknown>;
}

describe('scsi parity core: planCommand', () => {
  it('serves the core set through emulate and adds tcmu-runner\'s emulated commands and VERIFY', () => {
    expect(PLANNED_OPCODES).to.include.members([...SUPPORTED_OPCODES]);
    expect(PLANNED_OPCODES).to.include.members([0x04, 0x1b, 0x2e, 0x2f, 0x41, 0x42, 0x83, 0x84, 0x89, 0x8e, 0x8f, 0x93, 0xa3, 0xa4, 0xae, 0xaf]);
    // The stateless core is unchanged: emulate still refuses what planCommand serves.
    expectCheck(emulate(cdbOf(10, 0x41), full()), { ...invalidOpcode, byte: null });
    expect(planCommand(cdbOf(10, 0x28, { 8: 1 }), full()).kind).to.equal('read');
  });

  it('WRITE SAME (10)/(16): range, UNMAP and NDOB bits; WSNZ, maximum length, write protect', () => {
    expect(plan(planCommand(be(cdbOf(10, 0x41, { 1: 0x08 }), 7, 2, 5), full()), 'write-same')).to.deep.include({ lba: 0, blocks: 5, unmap: true, ndob: false });
    const c16 = be(be(cdbOf(16, 0x93, { 1: 0x09 }), 2, 8, 100), 10, 4, 8);
    expect(plan(planCommand(c16, full()), 'write-same')).to.deep.include({ lba: 100, blocks: 8, unmap: true, ndob: true });
    expectCheck(planCommand(cdbOf(10, 0x41), full()) as never, invalidField(7));
    expectCheck(planCommand(be(cdbOf(16, 0x93), 10, 4, 9), full({ maxWriteSameBlocks: 8 })) as never, invalidField(10));
    expectCheck(planCommand(be(cdbOf(10, 0x41), 7, 2, 1), full({ writeProtect: true })) as never, { key: 7, asc: 0x27 });
    expectCheck(planCommand(be(be(cdbOf(10, 0x41), 2, 4, 2047), 7, 2, 2), full()) as never, lbaOutOfRange);
    expectCheck(planCommand(be(cdbOf(10, 0x41, { 1: 0x20 }), 7, 2, 1), full()) as never, invalidField(1, 7));
  });

  it('UNMAP: validates the whole list first, drops empty and incomplete descriptors', () => {
    const list = (descs: [number, number][], bddl = descs.length * 16) => {
      const p = be(be(new Uint8Array(8 + descs.length * 16), 0, 2, bddl + 6), 2, 2, bddl);
      descs.forEach(([l, n], i) => (be(p, 8 + i * 16, 8, l), be(p, 16 + i * 16, 4, n)));
      return p;
    };
    const c = (len: number) => be(cdbOf(10, 0x42), 7, 2, len);
    const p = list([[0, 4], [10, 0], [20, 2]]);
    expect(plan(planCommand(c(p.length), full(), p), 'unmap').ranges).to.deep.equal([{ lba: 0, blocks: 4 }, { lba: 20, blocks: 2 }]);
    const cut = list([[0, 4], [10, 1]]);
    expect(plan(planCommand(c(cut.length - 1), full(), cut), 'unmap').ranges, 'descriptor cut by PARAMETER LIST LENGTH').to.deep.equal([{ lba: 0, blocks: 4 }]);
    expectGood(planCommand(c(8), full(), list([])) as never);
    expectCheck(planCommand(c(7), full(), new Uint8Array(7)) as never, paramListLength);
    expectCheck(planCommand(c(p.length + 16), full(), p) as never, paramListLength);
    expectCheck(planCommand(c(p.length), full({ maxUnmapDescriptors: 2 }), p) as never, invalidParam(2));
    expectCheck(planCommand(c(p.length), full({ maxUnmapLbaCount: 3 }), p) as never, invalidParam(16));
    const far = list([[0, 1], [2047, 2]]);
    expectCheck(planCommand(c(far.length), full(), far) as never, lbaOutOfRange);
    expectCheck(planCommand(c(p.length), full({ lbpu: false }), p) as never, invalidOpcode);
    expectCheck(planCommand(cdbOf(10, 0x42, { 1: 1, 8: 24 }), full(), p) as never, invalidField(1, 0));
  });

  it('COMPARE AND WRITE, VERIFY and WRITE AND VERIFY decode their CDB layouts', () => {
    expect(plan(planCommand(be(cdbOf(16, 0x89, { 1: 0x08, 13: 1 }), 2, 8, 9), full()), 'compare-and-write')).to.deep.include({ lba: 9, blocks: 1, fua: true });
    expectCheck(planCommand(cdbOf(16, 0x89, { 13: 1 }), full({ maxCompareAndWriteBlocks: 0 })) as never, invalidOpcode);
    expectCheck(planCommand(cdbOf(16, 0x89, { 13: 1, 14: 0x80 }), full()) as never, invalidField(14, 7));
    expect(plan(planCommand(be(be(cdbOf(12, 0xaf, { 1: 0x06 }), 2, 4, 3), 6, 4, 2), full()), 'verify')).to.deep.include({ lba: 3, blocks: 2, bytchk: 3 });
    // With no data transferred, VERIFY is not bound by MAXIMUM TRANSFER LENGTH (128 here).
    expect(plan(planCommand(be(cdbOf(16, 0x8f), 10, 4, 1000), full()), 'verify')).to.deep.include({ blocks: 1000, bytchk: 0 });
    expectCheck(planCommand(be(cdbOf(16, 0x8f, { 1: 0x02 }), 10, 4, 1000), full()) as never, invalidField(10));
    expect(plan(planCommand(cdbOf(10, 0x2e, { 1: 0x02, 8: 4 }), full()), 'write-verify')).to.deep.include({ blocks: 4, bytchk: 1 });
    expectCheck(planCommand(cdbOf(10, 0x2e, { 1: 0x04, 8: 4 }), full()) as never, invalidField(1, 2));
    expectGood(planCommand(cdbOf(10, 0x2e), full()) as never);
  });

  it('FORMAT UNIT and START STOP UNIT', () => {
    expect(plan(planCommand(cdbOf(6, 0x04), full()), 'format')).to.deep.include({ immed: false });
    expect(plan(planCommand(cdbOf(6, 0x04, { 1: 0x10 }), full(), new Uint8Array([0, 0x02, 0, 0])), 'format')).to.deep.include({ immed: true });
    expect(plan(planCommand(cdbOf(6, 0x04, { 1: 0x30 }), full(), new Uint8Array([0, 0x82, 0, 0, 0, 0, 0, 0])), 'format')).to.deep.include({ immed: true });
    expectCheck(planCommand(cdbOf(6, 0x04, { 1: 0x30 }), full(), new Uint8Array([0, 0, 0, 0, 0, 0, 0, 1])) as never, invalidParam(4));
    expectCheck(planCommand(cdbOf(6, 0x04, { 4: 0x01 }), full()) as never, invalidField(4, 1));
    expectGood(planCommand(cdbOf(6, 0x1b, { 4: 0x01 }), full()) as never);
    expectCheck(planCommand(cdbOf(6, 0x1b, { 4: 0x00 }), full()) as never, invalidField(4, 0));
    expectCheck(planCommand(cdbOf(6, 0x1b, { 3: 0x10, 4: 0x01 }), full()) as never, invalidField(3, 4));
  });

  it('MAINTENANCE IN/OUT need ALUA groups; other service actions are invalid fields', () => {
    const rtpg = be(cdbOf(12, 0xa3, { 1: 0x0a }), 6, 4, 64);
    expectCheck(planCommand(rtpg, full()) as never, invalidOpcode);
    expectCheck(planCommand(cdbOf(12, 0xa3, { 1: 0x05 }), full()) as never, invalidField(1, 4));
    const alua: AluaInfo = {
      failover: 'explicit',
      groups: [{ name: 'g', id: 5, state: 0, supported: 5, preferred: false, status: 0, implicitTransitionSecs: 0, ports: [{ fabric: 'iscsi', wwn: 'iqn.x', tpgt: 1, relativePortId: 1, protocolId: 5, enabled: true }] }],
    };
    expect(plan(planCommand(rtpg, full({ alua })), 'rtpg')).to.deep.include({ extended: false, allocationLength: 64 });
    const p = new Uint8Array([0, 0, 0, 0, 0x02, 0, 0, 5]);
    expect(plan(planCommand(be(cdbOf(12, 0xa4, { 1: 0x0a }), 6, 4, 8), full({ alua }), p), 'stpg').descriptors).to.deep.equal([{ state: 2, groupId: 5, offset: 4 }]);
    expectCheck(planCommand(be(cdbOf(12, 0xa4, { 1: 0x0a }), 6, 4, 8), full({ alua: { ...alua, failover: 'implicit' } }), p) as never, invalidOpcode);
  });

  it('EXTENDED COPY segments carry their NAA designators; RECEIVE COPY RESULTS is tcmu-runner\'s 46 bytes', () => {
    const naa = Uint8Array.from({ length: 16 }, (_, i) => (i === 0 ? 0x60 : i));
    const p = new Uint8Array(16 + 32 + 28);
    p[1] = 0x18;
    be(p, 2, 2, 32);
    be(p, 8, 4, 28);
    p.set([0xe4, 0, 0, 0, 0x01, 0x03, 0, 16], 16);
    p.set(naa, 24);
    p.set([0x02, 0, 0, 0x18], 48);
    be(p, 48 + 10, 2, 7);
    be(p, 48 + 12, 8, 11);
    be(p, 48 + 20, 8, 22);
    const segs = decodeExtendedCopy(be(cdbOf(16, 0x83), 10, 4, p.length), p, 512);
    expect(segs).to.have.length(1);
    expect(Array.from(segs[0].source!)).to.deep.equal(Array.from(naa));
    expect(segs[0]).to.deep.include({ sourceLba: 11n, destinationLba: 22n, blocks: 7 });
    expect(plan(planCommand(be(cdbOf(16, 0x83), 10, 4, p.length), full(), p), 'xcopy').segments).to.have.length(1);
    expectCheck(planCommand(be(cdbOf(16, 0x83), 10, 4, p.length), full({ thirdPartyCopy: false }), p) as never, invalidOpcode);
    const op = copyOperatingParameters();
    expect(op.length).to.equal(46);
    expect(Array.from(op.subarray(0, 8))).to.deep.equal([0, 0, 0, 42, 1, 0, 0, 0]);
    const rcr = planCommand(be(cdbOf(16, 0x84, { 1: 0x03 }), 10, 4, 20), full());
    expect(rcr.kind === 'done' && rcr.dataIn!.length).to.equal(20);
  });
});

describe('scsi parity core: libiscsi conformance findings', () => {
  it('COMPARE AND WRITE checks the Data-Out length against NUMBER OF LOGICAL BLOCKS, 0 included', () => {
    const c = (lba: number, n: number) => be(cdbOf(16, 0x89, { 13: n }), 2, 8, lba);
    expect(plan(planCommand(c(9, 1), full(), undefined, 1024), 'compare-and-write')).to.deep.include({ lba: 9, blocks: 1 });
    expectCheck(planCommand(c(9, 1), full(), undefined, 2048) as never, invalidField(13));
    expectCheck(planCommand(c(9, 1), full(), undefined, 512) as never, invalidField(13));
    // 256 blocks truncated to 0 by the one-byte field, with 256 blocks' worth of data.
    expectCheck(planCommand(c(0, 0), full(), undefined, 2 * 256 * 512) as never, invalidField(13));
    expectGood(planCommand(c(0, 0), full(), undefined, 0) as never);
    // Without a length (callers that do not know it) the CDB alone decides, as before.
    expectGood(planCommand(c(0, 0), full()) as never);
    // Over the maximum is refused for that first, whatever the data.
    expectCheck(planCommand(c(0, 2), full(), undefined, 2048) as never, invalidField(13));
  });

  it('EXTENDED COPY: LIST ID USAGE 00b/10b/11b, the list identifier, and a CSCD index past the list left to the copy', () => {
    const naa = Uint8Array.from({ length: 16 }, (_, i) => (i === 0 ? 0x60 : i));
    const list = (b0: number, b1: number, dIndex = 0) => {
      const p = new Uint8Array(16 + 32 + 28);
      p[0] = b0;
      p[1] = b1;
      be(p, 2, 2, 32);
      be(p, 8, 4, 28);
      p.set([0xe4, 0, 0, 0, 0x01, 0x03, 0, 16], 16);
      p.set(naa, 24);
      p.set([0x02, 0, 0, 0x18, 0, 0, 0, dIndex], 48);
      be(p, 48 + 10, 2, 1);
      return p;
    };
    const c = (p: Uint8Array) => be(cdbOf(16, 0x83), 10, 4, p.length);
    for (const [b0, b1, usage] of [[1, 0x00, 0], [1, 0x10, 2], [0, 0x18, 3], [9, 0x05, 0]] as const) {
      const p = list(b0, b1);
      expect(decodeExtendedCopyList(c(p), p, 512)).to.deep.include({ listId: b0, listIdUsage: usage });
      expect(plan(planCommand(c(p), full(), p), 'xcopy')).to.deep.include({ listId: b0, listIdUsage: usage });
    }
    expectCheck(planCommand(c(list(1, 0x08)), full(), list(1, 0x08)) as never, invalidParam(1, 4));
    expectCheck(planCommand(c(list(1, 0x18)), full(), list(1, 0x18)) as never, invalidParam(0));
    const far = list(1, 0x10, 1);
    const segs = decodeExtendedCopy(c(far), far, 512);
    expect(segs[0].source, 'index 0').to.not.equal(undefined);
    expect(segs[0].destination, 'index 1: no such descriptor').to.equal(undefined);
    expect(segs[0].index).to.equal(0);
  });

  it('COPY ABORTED sense carries the segment number and a segment pointer (SD) in both formats', () => {
    const e = ScsiError.copyAborted(Asc.NO_ADDITIONAL_SENSE, { segment: 3, byte: 20 });
    const fixed = e.toSense(false);
    expect(fixed[2], 'COPY ABORTED').to.equal(0x0a);
    expect(Array.from(fixed.subarray(8, 12)), 'COMMAND-SPECIFIC INFORMATION, segment in its 3rd and 4th bytes').to.deep.equal([0, 0, 0, 3]);
    expect(Array.from(fixed.subarray(15, 18)), 'SKSV | SD, field pointer 20').to.deep.equal([0xa0, 0, 20]);
    for (const d of [decodeSense(fixed)!, decodeSense(e.toSense(true))!]) {
      expect(d).to.deep.include({ key: 0x0a, asc: 0, ascq: 0, commandSpecific: 3n });
      expect(d.fieldPointer).to.deep.equal({ byte: 20, cdb: false, segmentDescriptor: true });
    }
    expect(decodeSense(ScsiError.copyTargetNotReachable().toSense())).to.deep.include({ key: 0x0a, asc: 0x0d, ascq: 0x02 });
  });

  it('RECEIVE COPY RESULTS: OPERATING PARAMETERS per block size, COPY STATUS left to the engine, other actions refused', () => {
    const op = copyOperatingParameters(4096);
    expect(op[37], 'DATA SEGMENT GRANULARITY: one 4096-byte block').to.equal(12);
    expect(((op[20] << 24) | (op[21] << 16) | (op[22] << 8) | op[23]) >>> 0, 'MAXIMUM INLINE DATA LENGTH').to.equal(0);
    const rcr = (sa: number, id = 0) => be(cdbOf(16, 0x84, { 1: sa, 2: id }), 10, 4, 64);
    expect(plan(planCommand(rcr(0x00, 7), full()), 'copy-status')).to.deep.include({ listId: 7, allocationLength: 64 });
    expectCheck(planCommand(rcr(0x01), full()) as never, invalidField(1, 4));
    expectCheck(planCommand(rcr(0x04), full()) as never, invalidField(1, 4));
    expectCheck(planCommand(rcr(0x03, 1), full()) as never, invalidField(2, 0));
    expect(Array.from(copyStatusData({ status: 1, segmentsProcessed: 1, bytes: 1 << 20 }))).to.deep.equal([0, 0, 0, 8, 1, 0, 1, 0, 0, 0x10, 0, 0]);
    // Past 32 bits, the count goes to the smallest power-of-1024 unit that holds it.
    expect(Array.from(copyStatusData({ status: 0, segmentsProcessed: 2, bytes: 2 ** 33 }).subarray(7))).to.deep.equal([1, 0, 0x80, 0, 0]);
  });
});

describe('scsi parity core: ALUA data, D_SENSE, INQUIRY, REQUEST SENSE', () => {
  const port = { fabric: 'iscsi', wwn: 'iqn.2003-01.org.example:abc', tpgt: 2, relativePortId: 0x102, protocolId: 5, enabled: true };
  const alua: AluaInfo = {
    failover: 'implicit',
    groups: [
      { name: 'a', id: 0x0203, state: AluaState.STANDBY, supported: 0x85, preferred: true, status: 1, implicitTransitionSecs: 9, ports: [port, { ...port, relativePortId: 7, enabled: false }] },
      { name: 'b', id: 4, state: AluaState.ACTIVE_OPTIMIZED, supported: 0x01, preferred: false, status: 0, implicitTransitionSecs: 0, ports: [] },
    ],
  };

  it('REPORT TARGET PORT GROUPS data: descriptors, port lists, extended header', () => {
    const d = reportTargetPortGroupsData(alua, false);
    expect(Array.from(d)).to.deep.equal([
      0, 0, 0, 24,
      0x82, 0x85, 0x02, 0x03, 0, 1, 0, 2, 0, 0, 0x01, 0x02, 0, 0, 0, 7,
      0x00, 0x01, 0, 4, 0, 0, 0, 0,
    ]);
    const x = reportTargetPortGroupsData(alua, true);
    expect(Array.from(x.subarray(0, 8))).to.deep.equal([0, 0, 0, 24, 0x10, 9, 0, 0]);
    expect(Array.from(x.subarray(8))).to.deep.equal(Array.from(d.subarray(4)));
  });

  it('SET TARGET PORT GROUPS lists: 4-byte header then 4-byte descriptors', () => {
    const c = (len: number) => be(cdbOf(12, 0xa4, { 1: 0x0a }), 6, 4, len);
    expect(decodeSetTargetPortGroups(c(12), new Uint8Array([0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 2]))).to.deep.equal([
      { state: 0, groupId: 1, offset: 4 },
      { state: 2, groupId: 2, offset: 8 },
    ]);
    expect(() => decodeSetTargetPortGroups(c(10), new Uint8Array(10))).to.throw(ScsiError).with.property('asc', 0x1a);
    expect(() => decodeSetTargetPortGroups(c(8), new Uint8Array([0, 0, 0, 0, 0x10, 0, 0, 1]))).to.throw(ScsiError).with.property('asc', 0x26);
    expect(decodeSetTargetPortGroups(c(0), undefined)).to.deep.equal([]);
  });

  it('access states map to their NOT READY codes; supported-state bits; TPGS by failover', () => {
    expect(accessStateError(AluaState.ACTIVE_OPTIMIZED)).to.equal(undefined);
    expect(accessStateError(AluaState.ACTIVE_NON_OPTIMIZED)).to.equal(undefined);
    expect([AluaState.STANDBY, AluaState.UNAVAILABLE, AluaState.TRANSITIONING, AluaState.OFFLINE].map((s) => accessStateError(s)!.ascq)).to.deep.equal([0x0b, 0x0c, 0x0a, 0x12]);
    expect(stateSupported(AluaState.STANDBY, 0x04)).to.equal(true);
    expect(stateSupported(AluaState.ACTIVE_NON_OPTIMIZED, 0x05)).to.equal(false);
    expect(stateSupported(AluaState.OFFLINE, 0xff)).to.equal(false);
    expect(tpgsOf(alua)).to.equal(Tpgs.IMPLICIT);
    expect(tpgsOf({ ...alua, failover: 'explicit' })).to.equal(Tpgs.EXPLICIT);
    expect(tpgsOf(undefined)).to.equal(Tpgs.NONE);
  });

  it('port designators: relative port, group, and SCSI name strings padded to a multiple of four', () => {
    const [rel, tpg, name, dev] = portDesignators(port, alua.groups[0]);
    expect(Array.from(rel)).to.deep.equal([0x51, 0x94, 0, 4, 0, 0, 0x01, 0x02]);
    expect(Array.from(tpg)).to.deep.equal([0x51, 0x95, 0, 4, 0, 0, 0x02, 0x03]);
    expect(name[0]).to.equal(0x53);
    expect(name[1]).to.equal(0x98);
    expect(name[3] % 4).to.equal(0);
    expect(Buffer.from(name.subarray(4)).toString('utf8').replace(/\0+$/, '')).to.equal('iqn.2003-01.org.example:abc,t,0x0002');
    expect(dev[1]).to.equal(0xa8);
  });

  it('standard INQUIRY sets 3PC with EXTENDED COPY, and VPD 83h lists the ALUA port', () => {
    expect(standardInquiry(makeDev({ thirdPartyCopy: true }))[5]).to.equal(0x08);
    expect(standardInquiry(makeDev({ thirdPartyCopy: true, tpgs: 1 }))[5]).to.equal(0x18);
    const o = emulate(cdbOf(6, 0x12, { 1: 1, 2: 0x83, 4: 0xff }), makeDev({ alua }));
    expect(o.kind === 'done' && o.dataIn!.length).to.be.greaterThan(60);
  });

  it('D_SENSE is changeable only where the device allows it, and MODE SELECT then sets it', () => {
    expect(modePage(0x0a, makeDev({ changeableDSense: true }), 'changeable')![2]).to.equal(0x04);
    const dev = makeDev({ changeableDSense: true });
    const page = Array.from(modePage(0x0a, dev)!);
    page[2] |= 0x04;
    const list = Uint8Array.from([0, 0, 0, 0, ...page]);
    expectGood(emulate(cdbOf(6, 0x15, { 1: 0x10, 4: list.length }), dev, list));
    expect(dev.dSense).to.equal(true);
    const o = emulate(cdbOf(6, 0xff), dev);
    expect(o.kind === 'done' && o.sense![0]).to.equal(0x72);
  });

  it('REQUEST SENSE can carry pending sense (FORMAT IN PROGRESS with progress) in either format', () => {
    const fixed = decodeSense(requestSenseData(cdbOf(6, 0x03, { 4: 252 }), ScsiError.formatInProgress(0x4000)))!;
    expect(fixed).to.deep.include({ key: 2, asc: 4, ascq: 4, progress: 0x4000, descriptor: false });
    const desc = decodeSense(requestSenseData(cdbOf(6, 0x03, { 1: 1, 4: 252 }), ScsiError.formatInProgress(0x8000)))!;
    expect(desc).to.deep.include({ key: 2, asc: 4, ascq: 4, progress: 0x8000, descriptor: true });
  });
});

describe('scsi parity core: LBA range lock', () => {
  it('lets overlapping writes (shared) run together, makes an exclusive holder wait for them and them for it', async () => {
    const l = new LbaRangeLock();
    const w1 = l.tryAcquire(0, 8, false)!;
    const w2 = l.tryAcquire(4, 8, false)!;
    expect(w1).to.be.a('number');
    expect(w2).to.be.a('number');
    expect(l.tryAcquire(6, 1, true), 'overlaps both writes').to.equal(undefined);
    expect(l.tryAcquire(100, 1, true), 'elsewhere').to.be.a('number');
    const order: string[] = [];
    const caw = l.acquire(6, 1, true).then((id) => (order.push('caw'), id));
    // Queued behind the waiting exclusive request: a later overlapping write waits too (no starvation).
    const late = l.acquire(6, 1, false).then((id) => (order.push('late write'), id));
    expect(l.tryAcquire(50, 1, false), 'non-overlapping writes still go').to.be.a('number');
    l.release(w1);
    await Promise.resolve();
    expect(order).to.deep.equal([]);
    l.release(w2);
    const cid = await caw;
    await new Promise((r) => setImmediate(r));
    expect(order).to.deep.equal(['caw']);
    l.release(cid);
    l.release(await late);
    expect(order).to.deep.equal(['caw', 'late write']);
    expect(l.waits).to.equal(2);
  });
});

describe('scsi parity core: planCommand robustness (fast-check)', () => {
  it('never throws, and every plan stays inside the medium, for random CDBs and parameter lists', () => {
    const alua: AluaInfo = {
      failover: 'explicit',
      groups: [{ name: 'g', id: 1, state: 0, supported: 5, preferred: false, status: 0, implicitTransitionSecs: 0, ports: [{ fabric: 'iscsi', wwn: 'iqn.x', tpgt: 1, relativePortId: 1, protocolId: 5, enabled: true }] }],
    };
    const dev = full({ numLbas: 4096, alua, changeableDSense: true });
    const opcode = fc.oneof(fc.constantFrom(...PLANNED_OPCODES), fc.integer({ min: 0, max: 255 }));
    fc.assert(
      fc.property(opcode, fc.uint8Array({ maxLength: 20 }), fc.option(fc.uint8Array({ maxLength: 128 }), { nil: undefined }), (op, rest, out) => {
        const c = new Uint8Array(1 + rest.length);
        c[0] = op;
        c.set(rest, 1);
        const [wc, ds] = [dev.writeCache, dev.dSense];
        const o = planCommand(c, dev, out);
        dev.writeCache = wc;
        dev.dSense = ds;
        const inside = (lba: number, blocks: number) => {
          expect(Number.isSafeInteger(lba) && lba >= 0).to.equal(true);
          expect(lba + blocks).to.be.at.most(dev.numLbas);
        };
        switch (o.kind) {
          case 'done':
            expect([0, 2]).to.include(o.status);
            if (o.status === 2) expect(decodeSense(o.sense!)).to.not.equal(undefined);
            break;
          case 'read': case 'write': case 'flush': case 'write-same': case 'compare-and-write': case 'verify': case 'write-verify':
            expect(o.blocks).to.be.greaterThan(0);
            inside(o.lba, o.blocks);
            break;
          case 'unmap':
            expect(o.ranges.length).to.be.greaterThan(0);
            for (const r of o.ranges) inside(r.lba, r.blocks);
            break;
          case 'xcopy':
            expect(o.segments.length).to.be.greaterThan(0);
            break;
          case 'copy-status':
            expect(o.listId).to.be.within(0, 255);
            break;
          case 'format': case 'rtpg': case 'stpg':
            break;
          default:
            expect.fail(`unexpected plan ${(o as { kind: string }).kind}`);
        }
      }),
      { numRuns: 5000 },
    );
  });
});
