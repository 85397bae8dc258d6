import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { emulate, naaDesignator, SUPPORTED_VPD_PAGES, standardInquiry } from '@tcmu-ts/core';
import {
  SERIAL, ascii, be16, be32, be64, cdb, expectCheck, expectData, expectGood, invalidField, makeDev,
} from './scsi-helpers.js';

const inquiry = (evpd: boolean, page: number, alloc: number, byte1Extra = 0, control = 0) =>
  cdb(0x12, (evpd ? 1 : 0) | byte1Extra, page, alloc >> 8, alloc & 0xff, control);

describe('scsi INQUIRY (standard data)', () => {
  const dev = makeDev();
  const d = expectData(emulate(inquiry(false, 0, 255), dev));

  it('returns 66 bytes with ADDITIONAL LENGTH = n - 5', () => {
    expect(d.length).to.equal(66);
    expect(d[4]).to.equal(61);
  });

  it('reports a connected direct-access block device, not removable', () => {
    expect(d[0]).to.equal(0x00);
    expect(d[1]).to.equal(0x00);
  });

  it('claims SPC-4 and response data format 2', () => {
    expect(d[2]).to.equal(0x06);
    expect(d[3] & 0x0f).to.equal(0x02);
    expect(d[3] & 0x20, 'NORMACA').to.equal(0);
  });

  it('sets CMDQUE, no 3PC, no PROTECT, TPGS 0 by default', () => {
    expect(d[5]).to.equal(0x00);
    expect(d[6]).to.equal(0x00);
    expect(d[7]).to.equal(0x02);
  });

  it('places vendor, product and revision as space-padded ASCII', () => {
    expect(ascii(d, 8, 16)).to.equal('LIO-ORG ');
    expect(ascii(d, 16, 32)).to.equal('TCMU device     ');
    expect(ascii(d, 32, 36)).to.equal('0002');
  });

  it('lists SAM-5, SPC-4, SBC-3 version descriptors at byte 58', () => {
    expect([be16(d, 58), be16(d, 60), be16(d, 62), be16(d, 64)]).to.deep.equal([0x00a0, 0x0460, 0x04c0, 0]);
    expect(Array.from(d.subarray(36, 58)).every((x) => x === 0)).to.equal(true);
  });

  it('truncates long names and reports TPGS from the device', () => {
    const s = standardInquiry(makeDev({ vendor: 'VENDORNAMETOOLONG', product: 'p\u00e9', revision: '123456', tpgs: 1 }));
    expect(ascii(s, 8, 16)).to.equal('VENDORNA');
    expect(ascii(s, 16, 32)).to.equal('p?              ');
    expect(ascii(s, 32, 36)).to.equal('1234');
    expect(s[5]).to.equal(0x10);
  });

  it('stops at the allocation length, keeping the untruncated length field', () => {
    const t = expectData(emulate(inquiry(false, 0, 36), dev));
    expect(t.length).to.equal(36);
    expect(t[4]).to.equal(61);
    expect(Array.from(t)).to.deep.equal(Array.from(d.subarray(0, 36)));
    expect(expectData(emulate(inquiry(false, 0, 5), dev)).length).to.equal(5);
  });

  it('reads a 16-bit allocation length from bytes 3..4', () => {
    expect(expectData(emulate(inquiry(false, 0, 0x1000), dev)).length).to.equal(66);
    expect(expectData(emulate(cdb(0x12, 0, 0, 0x01, 0x00, 0), dev)).length).to.equal(66);
  });

  it('treats allocation length 0 as no data, not an error', () => {
    expect(expectData(emulate(inquiry(false, 0, 0), dev)).length).to.equal(0);
  });

  it('rejects a page code without EVPD', () => {
    expectCheck(emulate(inquiry(false, 0x80, 255), dev), invalidField(2));
  });

  it('rejects CMDDT and reserved bits in byte 1', () => {
    expectCheck(emulate(inquiry(false, 0, 255, 0x02), dev), invalidField(1, 1));
    expectCheck(emulate(inquiry(true, 0, 255, 0x80), dev), invalidField(1, 7));
  });

  it('rejects NACA and LINK in the control byte', () => {
    expectCheck(emulate(inquiry(false, 0, 255, 0, 0x04), dev), invalidField(5, 2));
    expectCheck(emulate(inquiry(false, 0, 255, 0, 0x01), dev), invalidField(5, 0));
    expectGood(emulate(inquiry(false, 0, 255, 0, 0xc0), dev)); // vendor bits are ignored
  });

  it('rejects a short CDB', () => {
    expectCheck(emulate(cdb(0x12, 0, 0, 0, 36), dev), invalidField(null));
  });
});

describe('scsi INQUIRY VPD 00h (supported pages)', () => {
  it('lists 00 80 83 B0 B1 B2 in ascending order', () => {
    const d = expectData(emulate(inquiry(true, 0x00, 255), makeDev()));
    expect(Array.from(d)).to.deep.equal([0x00, 0x00, 0x00, 0x06, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    expect(SUPPORTED_VPD_PAGES).to.deep.equal([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
  });

  it('answers every page it lists', () => {
    const dev = makeDev();
    for (const p of SUPPORTED_VPD_PAGES) {
      const d = expectData(emulate(inquiry(true, p, 0xffff), dev));
      expect(d[1], `page ${p}`).to.equal(p);
      expect(be16(d, 2) + 4, `page ${p} length`).to.equal(d.length);
    }
  });

  it('rejects unknown pages with the field pointer on the page code', () => {
    for (const p of [0x01, 0x81, 0x86, 0x89, 0xb3, 0xff]) {
      expectCheck(emulate(inquiry(true, p, 255), makeDev()), invalidField(2));
    }
  });
});

describe('scsi INQUIRY of a device that is not a plain disk (handler identity)', () => {
  it('an optical drive: type 05h, removable, MMC descriptor, no block pages', () => {
    const dev = makeDev({ peripheralType: 0x05, removable: true, versionDescriptors: [0x00a0, 0x0460, 0x04e0], blockVpdPages: [] });
    const d = expectData(emulate(inquiry(false, 0, 255), dev));
    expect(d[0]).to.equal(0x05);
    expect(d[1]).to.equal(0x80);
    expect([be16(d, 58), be16(d, 60), be16(d, 62), be16(d, 64)]).to.deep.equal([0x00a0, 0x0460, 0x04e0, 0]);
    const pages = expectData(emulate(inquiry(true, 0x00, 255), dev));
    expect(Array.from(pages)).to.deep.equal([0x05, 0x00, 0x00, 0x03, 0x00, 0x80, 0x83]);
    expect(expectData(emulate(inquiry(true, 0x80, 255), dev))[0]).to.equal(0x05);
    for (const p of [0xb0, 0xb1, 0xb2]) expectCheck(emulate(inquiry(true, p, 255), dev), invalidField(2));
  });

  it('a host-managed zoned disk: type 14h, its own B6h page listed in order, B1h says ZONED', () => {
    const b6 = Uint8Array.from([0x14, 0xb6, 0x00, 0x3c, ...new Array(0x3c).fill(0)]);
    const dev = makeDev({ peripheralType: 0x14, extraVpdPages: new Map([[0xb6, b6]]), zoned: 1 });
    const pages = expectData(emulate(inquiry(true, 0x00, 255), dev));
    expect(Array.from(pages.subarray(4))).to.deep.equal([0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2, 0xb6]);
    expect(Array.from(expectData(emulate(inquiry(true, 0xb6, 255), dev)))).to.deep.equal(Array.from(b6));
    const b1 = expectData(emulate(inquiry(true, 0xb1, 255), dev));
    expect(b1[0]).to.equal(0x14);
    expect((b1[8] >> 4) & 3).to.equal(1);
  });
});

describe('scsi INQUIRY VPD 80h (unit serial number)', () => {
  it('returns the serial, NUL-terminated like LIO', () => {
    const d = expectData(emulate(inquiry(true, 0x80, 255), makeDev()));
    expect(d[0]).to.equal(0);
    expect(d[1]).to.equal(0x80);
    expect(be16(d, 2)).to.equal(SERIAL.length + 1);
    expect(ascii(d, 4, 4 + SERIAL.length)).to.equal(SERIAL);
    expect(d[4 + SERIAL.length]).to.equal(0);
  });

  it('caps the serial at 254 characters', () => {
    const d = expectData(emulate(inquiry(true, 0x80, 0xffff), makeDev({ serial: 'x'.repeat(400) })));
    expect(be16(d, 2)).to.equal(255);
  });

  it('truncates to the allocation length', () => {
    const d = expectData(emulate(inquiry(true, 0x80, 4), makeDev()));
    expect(Array.from(d)).to.deep.equal([0, 0x80, 0, SERIAL.length + 1]);
  });
});

describe('scsi INQUIRY VPD 83h (device identification)', () => {
  const dev = makeDev();
  const d = expectData(emulate(inquiry(true, 0x83, 0xffff), dev));

  function designators(page: Uint8Array) {
    const out: { codeSet: number; piv: number; assoc: number; type: number; id: Uint8Array; raw: Uint8Array }[] = [];
    let off = 4;
    while (off < 4 + be16(page, 2)) {
      const len = page[off + 3];
      out.push({
        codeSet: page[off] & 0x0f, piv: page[off + 1] >> 7, assoc: (page[off + 1] >> 4) & 3, type: page[off + 1] & 0x0f,
        id: page.subarray(off + 4, off + 4 + len), raw: page.subarray(off, off + 4 + len),
      });
      off += 4 + len;
    }
    expect(off, 'descriptors fill the page exactly').to.equal(page.length);
    return out;
  }

  it('has the page header', () => {
    expect(d[0]).to.equal(0);
    expect(d[1]).to.equal(0x83);
    expect(be16(d, 2)).to.equal(d.length - 4);
  });

  it('starts with a T10 vendor ID designator: ASCII, LU association, "LIO-ORG " + serial', () => {
    const t10 = designators(d)[0];
    expect([t10.codeSet, t10.piv, t10.assoc, t10.type]).to.deep.equal([2, 0, 0, 1]);
    expect(t10.raw[0]).to.equal(0x02);
    expect(t10.raw[1]).to.equal(0x01);
    expect(t10.raw[3]).to.equal(8 + SERIAL.length + 1);
    expect(ascii(t10.id, 0, 8)).to.equal('LIO-ORG ');
    expect(ascii(t10.id, 8, 8 + SERIAL.length)).to.equal(SERIAL);
  });

  it('has an NAA 6 designator: binary, LU association, 16 bytes, OpenFabrics company ID', () => {
    const naa = designators(d)[1];
    expect([naa.codeSet, naa.piv, naa.assoc, naa.type]).to.deep.equal([1, 0, 0, 3]);
    expect(Array.from(naa.raw.subarray(0, 4))).to.deep.equal([0x01, 0x03, 0x00, 0x10]);
    expect(naa.id.length).to.equal(16);
    expect(naa.id[0] >> 4, 'NAA').to.equal(6);
    // 24-bit IEEE company ID 00-14-05 follows the NAA nibble.
    expect(((naa.id[0] & 0xf) << 20) | (naa.id[1] << 12) | (naa.id[2] << 4) | (naa.id[3] >> 4)).to.equal(0x001405);
  });

  it('fills the NAA vendor-specific part with the wwn hex digits, as LIO does', () => {
    // wwn 6b2d6f4c-8a1e-... -> nibbles 6,b,2,d,6,f,4,c,8,a,1,e,4,f,0,b,9,c,3,d,2,e,5,a,7
    expect(Array.from(naaDesignator(SERIAL))).to.deep.equal([
      0x60, 0x01, 0x40, 0x56, 0xb2, 0xd6, 0xf4, 0xc8, 0xa1, 0xe4, 0xf0, 0xb9, 0xc3, 0xd2, 0xe5, 0xa7,
    ]);
    expect(Array.from(designators(d)[1].id)).to.deep.equal(Array.from(naaDesignator(SERIAL)));
  });

  it('derives the NAA from wwn, not serial', () => {
    const other = makeDev({ wwn: 'ffffffff-ffff-ffff-ffff-ffffffffffff' });
    const naa = designators(expectData(emulate(inquiry(true, 0x83, 0xffff), other)))[1].id;
    expect(Array.from(naa.subarray(4))).to.deep.equal(new Array(12).fill(0xff));
    expect(naa[3]).to.equal(0x5f);
  });

  it('fills a short wwn from a hash so distinct names do not collide', () => {
    const a = naaDesignator('disk');
    const b = naaDesignator('disk2');
    expect(Array.from(a)).to.not.deep.equal(Array.from(b));
    expect(a[3] & 0x0f, 'first nibble is the hex digit d').to.equal(0xd);
    const h = createHash('sha256').update('disk').digest();
    expect(a[4], 'then the first hash nibbles').to.equal(h[0]);
    expect(Array.from(naaDesignator('disk'))).to.deep.equal(Array.from(a)); // deterministic
  });

  it('adds a vendor-specific designator only when configured', () => {
    expect(designators(d).length).to.equal(2);
    const withCfg = expectData(emulate(inquiry(true, 0x83, 0xffff), makeDev({ vendorSpecificId: 'file//tmp/x' })));
    const ds = designators(withCfg);
    expect(ds.length).to.equal(3);
    expect([ds[2].codeSet, ds[2].assoc, ds[2].type]).to.deep.equal([2, 0, 0]);
    expect(ascii(ds[2].id, 0, 11)).to.equal('file//tmp/x');
  });

  it('truncates to the allocation length with the full page length kept', () => {
    const t = expectData(emulate(inquiry(true, 0x83, 10), dev));
    expect(t.length).to.equal(10);
    expect(be16(t, 2)).to.equal(d.length - 4);
  });
});

describe('scsi INQUIRY VPD B0h (block limits)', () => {
  const page = (over = {}) => expectData(emulate(inquiry(true, 0xb0, 0xffff), makeDev(over)));

  it('is 64 bytes with page length 3Ch and WSNZ', () => {
    const d = page();
    expect(d.length).to.equal(64);
    expect([d[0], d[1], be16(d, 2)]).to.deep.equal([0, 0xb0, 0x3c]);
    expect(d[4]).to.equal(0x01);
  });

  it('reports MAXIMUM TRANSFER LENGTH from maxXferBlocks and OPTIMAL defaulting to it', () => {
    const d = page({ maxXferBlocks: 2048 });
    expect(be32(d, 8)).to.equal(2048);
    expect(be32(d, 12)).to.equal(2048);
    const e = page({ maxXferBlocks: 2048, optimalXferBlocks: 256 });
    expect(be32(e, 12)).to.equal(256);
  });

  it('leaves the unmap fields zero when unmap is not supported', () => {
    const d = page({ maxUnmapLbaCount: 100, maxUnmapDescriptors: 4, optimalUnmapGranularity: 8 });
    expect([be32(d, 20), be32(d, 24), be32(d, 28), be32(d, 32)]).to.deep.equal([0, 0, 0, 0]);
    expect(d[5], 'MAXIMUM COMPARE AND WRITE LENGTH').to.equal(0);
    expect(be64(d, 36)).to.equal(0n);
  });

  it('reports unmap limits, granularity and alignment (UGAVALID) when lbpu', () => {
    const d = page({ lbpu: true, maxUnmapLbaCount: 0x10000, maxUnmapDescriptors: 16, optimalUnmapGranularity: 8, unmapGranularityAlignment: 3 });
    expect(be32(d, 20)).to.equal(0x10000);
    expect(be32(d, 24)).to.equal(16);
    expect(be32(d, 28)).to.equal(8);
    expect(d[32] & 0x80, 'UGAVALID').to.equal(0x80);
    expect(be32(d, 32) & 0x7fffffff).to.equal(3);
  });

  it('reports granularity but no UNMAP limits for WRITE SAME-only unmapping', () => {
    const d = page({ lbpws: true, maxUnmapLbaCount: 100, maxUnmapDescriptors: 4, optimalUnmapGranularity: 8 });
    expect(be32(d, 20)).to.equal(0);
    expect(be32(d, 24)).to.equal(0);
    expect(be32(d, 28)).to.equal(8);
    expect(d[32] & 0x80).to.equal(0);
  });

  it('reports COMPARE AND WRITE and WRITE SAME limits when given', () => {
    const d = page({ maxCompareAndWriteBlocks: 1, maxWriteSameBlocks: 0x100000 });
    expect(d[5]).to.equal(1);
    expect(be64(d, 36)).to.equal(0x100000n);
  });
});

describe('scsi INQUIRY VPD B1h (block device characteristics)', () => {
  it('is 64 bytes, page length 3Ch, rotation rate 0 by default', () => {
    const d = expectData(emulate(inquiry(true, 0xb1, 0xffff), makeDev()));
    expect(d.length).to.equal(64);
    expect([d[0], d[1], be16(d, 2), be16(d, 4)]).to.deep.equal([0, 0xb1, 0x3c, 0]);
    expect(Array.from(d.subarray(6)).every((x) => x === 0)).to.equal(true);
  });

  it('reports 1 for non-rotating media and an rpm otherwise', () => {
    expect(be16(expectData(emulate(inquiry(true, 0xb1, 64), makeDev({ rotationRate: 1 }))), 4)).to.equal(1);
    expect(be16(expectData(emulate(inquiry(true, 0xb1, 64), makeDev({ rotationRate: 7200 }))), 4)).to.equal(7200);
  });
});

describe('scsi INQUIRY VPD B2h (logical block provisioning)', () => {
  const page = (over = {}) => expectData(emulate(inquiry(true, 0xb2, 0xffff), makeDev(over)));

  it('is 8 bytes with page length 4 and nothing set without unmap', () => {
    expect(Array.from(page())).to.deep.equal([0, 0xb2, 0, 4, 0, 0, 0, 0]);
  });

  it('sets LBPU, and provisioning type thin', () => {
    const d = page({ lbpu: true });
    expect(d[5]).to.equal(0x80);
    expect(d[6] & 0x07).to.equal(2);
  });

  it('sets LBPWS and LBPWS10 for WRITE SAME unmapping', () => {
    expect(page({ lbpws: true })[5]).to.equal(0x60);
    expect(page({ lbpu: true, lbpws: true })[5]).to.equal(0xe0);
  });

  it('sets LBPRZ only when the handler promises zeros and unmap is on', () => {
    expect(page({ lbpu: true, lbprz: true })[5]).to.equal(0x84);
    expect(page({ lbprz: true })[5]).to.equal(0x00);
  });
});
