import { expect } from 'chai';
import {
  Asc, ScsiError, SenseKey, buildSense, checkCondition, decodeSense, describeSense, isResourceShortage,
  scsiErrorFor, senseForError, FIXED_SENSE_LENGTH,
} from '@tcmu-ts/core';

const errno = (code: string): Error => Object.assign(new Error(code), { code });

describe('scsi sense: SenseKey and Asc tables', () => {
  it('has the SPC-4 sense key values', () => {
    expect(SenseKey).to.include({
      NO_SENSE: 0, RECOVERED_ERROR: 1, NOT_READY: 2, MEDIUM_ERROR: 3, HARDWARE_ERROR: 4, ILLEGAL_REQUEST: 5,
      UNIT_ATTENTION: 6, DATA_PROTECT: 7, BLANK_CHECK: 8, COPY_ABORTED: 0xa, ABORTED_COMMAND: 0xb, MISCOMPARE: 0xe,
    });
  });

  it('names the ASC/ASCQ pairs the brief lists', () => {
    const want: Record<string, [number, number]> = {
      INVALID_COMMAND_OPERATION_CODE: [0x20, 0], LBA_OUT_OF_RANGE: [0x21, 0], INVALID_FIELD_IN_CDB: [0x24, 0],
      INVALID_FIELD_IN_PARAMETER_LIST: [0x26, 0], PARAMETER_LIST_LENGTH_ERROR: [0x1a, 0], WRITE_PROTECTED: [0x27, 0],
      UNRECOVERED_READ_ERROR: [0x11, 0], WRITE_ERROR: [0x0c, 0], INTERNAL_TARGET_FAILURE: [0x44, 0],
      CAPACITY_DATA_HAS_CHANGED: [0x2a, 9], MODE_PARAMETERS_CHANGED: [0x2a, 1], MISCOMPARE_DURING_VERIFY: [0x1d, 0],
      SPACE_ALLOCATION_FAILED: [0x27, 7], NOT_READY_FORMAT_IN_PROGRESS: [0x04, 4], SAVING_PARAMETERS_NOT_SUPPORTED: [0x39, 0],
      NOT_READY_ASYMMETRIC_ACCESS_STATE_TRANSITION: [0x04, 0x0a], POWER_ON_RESET: [0x29, 0],
    };
    for (const [name, [asc, ascq]] of Object.entries(want)) {
      expect((Asc as Record<string, { asc: number; ascq: number }>)[name], name).to.deep.equal({ asc, ascq });
    }
  });

  it('has no two names for the same pair', () => {
    const seen = new Map<number, string>();
    for (const [name, p] of Object.entries(Asc)) {
      const k = (p.asc << 8) | p.ascq;
      expect(seen.has(k), `${name} duplicates ${seen.get(k)}`).to.equal(false);
      seen.set(k, name);
    }
  });
});

describe('scsi sense: buildSense fixed format', () => {
  it('lays out response code, key, additional length, ASC, ASCQ', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x24, 0x00);
    expect(s.length).to.equal(FIXED_SENSE_LENGTH).and.equal(18);
    const want = new Uint8Array(18);
    want[0] = 0x70; want[2] = 0x05; want[7] = 0x0a; want[12] = 0x24;
    expect(Array.from(s)).to.deep.equal(Array.from(want));
  });

  it('sets VALID and the 4-byte INFORMATION field', () => {
    const s = buildSense(SenseKey.MEDIUM_ERROR, 0x11, 0x00, { information: 0x12345678 });
    expect(s[0]).to.equal(0xf0);
    expect(Array.from(s.subarray(3, 7))).to.deep.equal([0x12, 0x34, 0x56, 0x78]);
    expect(s[2]).to.equal(3);
  });

  it('leaves VALID clear rather than truncating a 64-bit INFORMATION value', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x21, 0x00, { information: 0x1_0000_0000n });
    expect(s[0]).to.equal(0x70);
    expect(Array.from(s.subarray(3, 7))).to.deep.equal([0, 0, 0, 0]);
  });

  it('writes the COMMAND-SPECIFIC INFORMATION field at bytes 8..11', () => {
    const s = buildSense(SenseKey.COPY_ABORTED, 0x0d, 0x02, { commandSpecific: 0xa1b2c3d4 });
    expect(Array.from(s.subarray(8, 12))).to.deep.equal([0xa1, 0xb2, 0xc3, 0xd4]);
  });

  it('encodes a CDB field pointer with a bit pointer (SKSV, C/D, BPV)', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x24, 0, { fieldPointer: { byte: 1, bit: 4, cdb: true } });
    expect(s[15]).to.equal(0x80 | 0x40 | 0x08 | 4);
    expect(s[16]).to.equal(0);
    expect(s[17]).to.equal(1);
  });

  it('encodes a parameter-list field pointer without a bit pointer', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x26, 0, { fieldPointer: { byte: 0x123, cdb: false } });
    expect(s[15]).to.equal(0x80);
    expect(s[16]).to.equal(0x01);
    expect(s[17]).to.equal(0x23);
  });

  it('encodes a progress indication', () => {
    const s = buildSense(SenseKey.NOT_READY, 0x04, 0x04, { progress: 0x8000 });
    expect(Array.from(s.subarray(15, 18))).to.deep.equal([0x80, 0x80, 0x00]);
  });

  it('uses 71h for deferred errors', () => {
    expect(buildSense(4, 0x44, 0, { deferred: true })[0]).to.equal(0x71);
  });
});

describe('scsi sense: buildSense descriptor format', () => {
  it('is an 8-byte header when there is nothing else to say', () => {
    const s = buildSense(SenseKey.UNIT_ATTENTION, 0x2a, 0x09, { descriptor: true });
    expect(Array.from(s)).to.deep.equal([0x72, 0x06, 0x2a, 0x09, 0, 0, 0, 0]);
  });

  it('adds an information descriptor with the full 64-bit value', () => {
    const s = buildSense(SenseKey.MEDIUM_ERROR, 0x11, 0, { descriptor: true, information: 0x0102030405060708n });
    expect(s.length).to.equal(20);
    expect(s[7]).to.equal(12);
    expect(Array.from(s.subarray(8, 20))).to.deep.equal([0x00, 0x0a, 0x80, 0x00, 1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('adds a sense-key-specific descriptor for a field pointer', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x24, 0, { descriptor: true, fieldPointer: { byte: 2, cdb: true } });
    expect(s[7]).to.equal(8);
    expect(Array.from(s.subarray(8, 16))).to.deep.equal([0x02, 0x06, 0, 0, 0xc0, 0x00, 0x02, 0]);
  });

  it('orders information, command-specific, then sense-key-specific descriptors', () => {
    const s = buildSense(SenseKey.ILLEGAL_REQUEST, 0x24, 0, {
      descriptor: true, information: 1, commandSpecific: 2, fieldPointer: { byte: 3, cdb: true },
    });
    expect(s[7]).to.equal(12 + 12 + 8);
    expect(s[8]).to.equal(0x00);
    expect(s[20]).to.equal(0x01);
    expect(s[32]).to.equal(0x02);
    expect(s.length).to.equal(40);
  });

  it('uses 73h for deferred errors', () => {
    expect(buildSense(4, 0x44, 0, { descriptor: true, deferred: true })[0]).to.equal(0x73);
  });
});

describe('scsi sense: decodeSense', () => {
  it('round-trips fixed and descriptor format', () => {
    for (const descriptor of [false, true]) {
      const s = buildSense(5, 0x24, 0, { descriptor, information: 77, fieldPointer: { byte: 9, bit: 2, cdb: true } });
      const d = decodeSense(s)!;
      expect(d.descriptor).to.equal(descriptor);
      expect(d.key).to.equal(5);
      expect(d.asc).to.equal(0x24);
      expect(d.information).to.equal(77n);
      expect(d.fieldPointer).to.deep.equal({ byte: 9, bit: 2, cdb: true });
    }
  });

  it('returns undefined for empty or unknown response codes', () => {
    expect(decodeSense(new Uint8Array(0))).to.equal(undefined);
    expect(decodeSense(new Uint8Array(18))).to.equal(undefined);
  });

  it('reads a progress indication back', () => {
    expect(decodeSense(buildSense(2, 4, 4, { progress: 1234 }))!.progress).to.equal(1234);
  });
});

describe('scsi sense: ScsiError', () => {
  it('carries key/asc/ascq and builds matching sense', () => {
    const e = new ScsiError(SenseKey.MEDIUM_ERROR, 0x11, 0x00, { information: 5 });
    expect(e).to.be.instanceOf(Error);
    expect(e.name).to.equal('ScsiError');
    expect([e.key, e.asc, e.ascq, e.information]).to.deep.equal([3, 0x11, 0, 5]);
    expect(e.message).to.contain('MEDIUM ERROR').and.contain('UNRECOVERED READ ERROR');
    const s = e.toSense();
    expect([s[0], s[2], s[12], s[13]]).to.deep.equal([0xf0, 3, 0x11, 0]);
    expect(e.toSense(true)[0]).to.equal(0x72);
  });

  const helpers: [string, ScsiError, number, number, number][] = [
    ['invalidOpcode', ScsiError.invalidOpcode(), 5, 0x20, 0],
    ['invalidField', ScsiError.invalidField(), 5, 0x24, 0],
    ['invalidParameter', ScsiError.invalidParameter(), 5, 0x26, 0],
    ['parameterListLength', ScsiError.parameterListLength(), 5, 0x1a, 0],
    ['lbaOutOfRange', ScsiError.lbaOutOfRange(), 5, 0x21, 0],
    ['mediumError read', ScsiError.mediumError(), 3, 0x11, 0],
    ['mediumError write', ScsiError.mediumError('write'), 3, 0x0c, 0],
    ['readError', ScsiError.readError(), 3, 0x11, 0],
    ['writeError', ScsiError.writeError(), 3, 0x0c, 0],
    ['writeProtected', ScsiError.writeProtected(), 7, 0x27, 0],
    ['spaceAllocationFailed', ScsiError.spaceAllocationFailed(), 7, 0x27, 7],
    ['internalFailure', ScsiError.internalFailure(), 4, 0x44, 0],
    ['hardwareError', ScsiError.hardwareError(), 4, 0x44, 0],
    ['miscompare', ScsiError.miscompare(100), 0xe, 0x1d, 0],
    ['capacityChanged', ScsiError.capacityChanged(), 6, 0x2a, 9],
    ['modeParametersChanged', ScsiError.modeParametersChanged(), 6, 0x2a, 1],
    ['savingParametersNotSupported', ScsiError.savingParametersNotSupported(), 5, 0x39, 0],
    ['notReady', ScsiError.notReady(), 2, 0x04, 0],
    ['formatInProgress', ScsiError.formatInProgress(10), 2, 0x04, 4],
  ];
  for (const [name, e, key, asc, ascq] of helpers) {
    it(`${name} -> ${key}/${asc.toString(16)}h/${ascq.toString(16)}h`, () => {
      expect([e.key, e.asc, e.ascq]).to.deep.equal([key, asc, ascq]);
    });
  }

  it('invalidField carries a CDB field pointer, invalidParameter a data one', () => {
    expect(ScsiError.invalidField(4, 3).fieldPointer).to.deep.equal({ byte: 4, bit: 3, cdb: true });
    expect(ScsiError.invalidField(4).fieldPointer).to.deep.equal({ byte: 4, cdb: true });
    expect(ScsiError.invalidParameter(10).fieldPointer).to.deep.equal({ byte: 10, cdb: false });
  });

  it('miscompare reports the offset in INFORMATION', () => {
    const s = ScsiError.miscompare(0x200).toSense();
    expect(s[0] & 0x80).to.equal(0x80);
    expect(Array.from(s.subarray(3, 7))).to.deep.equal([0, 0, 2, 0]);
  });

  it('ScsiError.of takes a named pair', () => {
    const e = ScsiError.of(SenseKey.UNIT_ATTENTION, Asc.POWER_ON_RESET);
    expect([e.key, e.asc, e.ascq]).to.deep.equal([6, 0x29, 0]);
  });

  it('describeSense names unknown codes numerically', () => {
    expect(describeSense(5, 0x24, 0)).to.equal('ILLEGAL REQUEST: INVALID FIELD IN CDB (24h/00h)');
    expect(describeSense(5, 0x99, 0x42)).to.contain('99h/42h');
  });
});

describe('scsi sense: senseForError / scsiErrorFor / isResourceShortage', () => {
  const keyAsc = (s: Uint8Array) => [s[2], s[12], s[13]];

  it('passes a ScsiError through unchanged', () => {
    const e = ScsiError.miscompare(3);
    expect(scsiErrorFor(e)).to.equal(e);
    expect(Array.from(senseForError(e))).to.deep.equal(Array.from(e.toSense()));
  });

  it('maps EIO to MEDIUM ERROR by direction', () => {
    expect(keyAsc(senseForError(errno('EIO')))).to.deep.equal([3, 0x11, 0]);
    expect(keyAsc(senseForError(errno('EIO'), 'read'))).to.deep.equal([3, 0x11, 0]);
    expect(keyAsc(senseForError(errno('EIO'), 'write'))).to.deep.equal([3, 0x0c, 0]);
    expect(keyAsc(senseForError(errno('EIO'), true))).to.deep.equal([3, 0x0c, 0]);
    expect(keyAsc(senseForError(errno('EIO'), false))).to.deep.equal([3, 0x11, 0]);
  });

  it('maps ENOSPC to DATA PROTECT, SPACE ALLOCATION FAILED', () => {
    expect(keyAsc(senseForError(errno('ENOSPC'), 'write'))).to.deep.equal([7, 0x27, 7]);
  });

  it('maps EROFS/EACCES/EPERM to DATA PROTECT, WRITE PROTECTED', () => {
    for (const c of ['EROFS', 'EACCES', 'EPERM']) expect(keyAsc(senseForError(errno(c), 'write')), c).to.deep.equal([7, 0x27, 0]);
  });

  it('maps anything else to HARDWARE ERROR, INTERNAL TARGET FAILURE', () => {
    for (const e of [errno('EINVAL'), new Error('x'), 'string', 42, undefined, null, { code: 7 }]) {
      expect(keyAsc(senseForError(e))).to.deep.equal([4, 0x44, 0]);
    }
  });

  it('builds descriptor sense on request', () => {
    const s = senseForError(errno('EIO'), 'write', true);
    expect(Array.from(s.subarray(0, 4))).to.deep.equal([0x72, 3, 0x0c, 0]);
  });

  it('isResourceShortage is true only for ENOMEM/EAGAIN-like errors', () => {
    expect(isResourceShortage(errno('ENOMEM'))).to.equal(true);
    expect(isResourceShortage(errno('EAGAIN'))).to.equal(true);
    expect(isResourceShortage(errno('EIO'))).to.equal(false);
    expect(isResourceShortage(ScsiError.internalFailure())).to.equal(false);
    expect(isResourceShortage(undefined)).to.equal(false);
  });

  it('checkCondition follows the device D_SENSE setting', () => {
    const e = ScsiError.lbaOutOfRange();
    const fixed = checkCondition(e, { dSense: false });
    expect(fixed).to.deep.include({ kind: 'done', status: 2 });
    if (fixed.kind !== 'done') throw new Error();
    expect(fixed.sense![0]).to.equal(0x70);
    const desc = checkCondition(e, { dSense: true });
    if (desc.kind !== 'done') throw new Error();
    expect(Array.from(desc.sense!)).to.deep.equal([0x72, 5, 0x21, 0, 0, 0, 0, 0]);
    const none = checkCondition(e);
    if (none.kind !== 'done') throw new Error();
    expect(none.sense![0]).to.equal(0x70);
  });
});
