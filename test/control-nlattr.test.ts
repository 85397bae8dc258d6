import { expect } from 'chai';
import fc from 'fast-check';
import {
  encodeNlMsg, decodeNlMsgs, decodeNlMsgHeader, encodeGenlMsg, decodeGenlMsg, decodeNlError, decodeAttrs, decodeNested,
  attrMap, attrU8, attrU16, attrU32, attrS32, attrU64, attrString, attrFlag, nla, NetlinkDecodeError, NetlinkEncodeError,
  NlMsgType, NlmFlag, nlAlign,
} from '@tcmu-ts/core/control/nlattr';

/** Bytes from a hex dump with spaces, newlines and `#` comments. */
function hex(s: string): Uint8Array {
  const clean = s.replace(/#[^\n]*/g, '').replace(/\s+/g, '');
  if (clean.length % 2) throw new Error('odd hex');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => parseInt(b, 16));
}
function toHex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

// CTRL_CMD_GETFAMILY for "TCM-USER", as libnl's genl_ctrl_resolve sends it (seq 1, flags REQUEST|ACK).
const GETFAMILY_TCMU = hex(`
  24000000 1000 0500 01000000 00000000   # nlmsghdr: len 36, type GENL_ID_CTRL, REQUEST|ACK, seq 1, pid 0
  03 01 0000                             # genl: CTRL_CMD_GETFAMILY, version 1
  0d00 0200 54434d2d55534552 00 000000   # CTRL_ATTR_FAMILY_NAME "TCM-USER\\0" + 3 pad
`);

// The kernel's CTRL_CMD_NEWFAMILY reply, followed by the (capped) ack, in one buffer.
const NEWFAMILY_TCMU = hex(`
  78000000 1000 0000 01000000 3f140000   # len 120, GENL_ID_CTRL, seq 1, to port 0x143f
  01 02 0000                             # CTRL_CMD_NEWFAMILY, version 2
  0d00 0200 54434d2d55534552 00 000000   # FAMILY_NAME "TCM-USER"
  0600 0100 1b00 0000                    # FAMILY_ID u16 0x1b + 2 pad
  0800 0300 02000000                     # VERSION 2
  0800 0400 00000000                     # HDRSIZE 0
  0800 0500 09000000                     # MAXATTR 9
  1800 0600                              # OPS (nested, no flag bit, as ctrl_fill_info writes it)
    1400 0100                            #   op #1
      0800 0100 07000000                 #     OP_ID 7 (SET_FEATURES)
      0800 0200 01000000                 #     OP_FLAGS GENL_ADMIN_PERM
  1c00 0700                              # MCAST_GROUPS
    1800 0100                            #   group #1
      0800 0200 0c000000                 #     MCAST_GRP_ID 12
      0b00 0100 636f6e666967 00 00       #     MCAST_GRP_NAME "config\\0" + 1 pad
  24000000 0200 0001 01000000 3f140000   # NLMSG_ERROR, flags CAPPED, seq 1
  00000000                               # error 0: ack
  24000000 1000 0500 01000000 00000000   # the request's header
`);

// GETFAMILY for a family that does not exist: ENOENT with the request echoed.
const ENOENT_REPLY = hex(`
  38000000 0200 0000 02000000 3f140000   # NLMSG_ERROR len 56, seq 2
  feffffff                               # -2 (ENOENT)
  24000000 1000 0500 02000000 00000000   # echoed request header
  03010000 0d000200 54434d2d55534552 00000000
`);

// TCMU_CMD_ADDED_DEVICE as tcmu_netlink_event_init builds it (family 0x1b, version 2).
const ADDED_DEVICE = hex(`
  44000000 1b00 0000 00000000 00000000   # len 68, family 0x1b, multicast: seq 0, pid 0
  01 02 0000                             # TCMU_CMD_ADDED_DEVICE, version 2
  1d00 0100                              # TCMU_ATTR_DEVICE, 25 bytes of string
    74636d2d75736572 2f302f646576302f 66696c652f666f6f 00 000000  # "tcm-user/0/dev0/file/foo\\0" + 3 pad
  0800 0200 00000000                     # TCMU_ATTR_MINOR 0
  0800 0800 03000000                     # TCMU_ATTR_DEVICE_ID 3
`);

// TCMU_CMD_ADDED_DEVICE_DONE with CMD_STATUS -ENODEV and DEVICE_ID 3.
const ADDED_DONE = hex(`
  24000000 1b00 0500 07000000 00000000   # len 36, family 0x1b, REQUEST|ACK, seq 7
  04 02 0000                             # ADDED_DEVICE_DONE, version 2
  0800 0700 edffffff                     # CMD_STATUS -19
  0800 0800 03000000                     # DEVICE_ID 3
`);

describe('control/nlattr: netlink codec', () => {
  describe('encoding', () => {
    it('builds the GETFAMILY request byte for byte', () => {
      const msg = encodeGenlMsg(
        { family: 0x10, flags: NlmFlag.REQUEST | NlmFlag.ACK, seq: 1, cmd: 3, version: 1 },
        [nla.string(2, 'TCM-USER')],
      );
      expect(toHex(msg)).to.equal(toHex(GETFAMILY_TCMU));
    });

    it('builds an ADDED_DEVICE_DONE reply byte for byte', () => {
      const msg = encodeGenlMsg(
        { family: 0x1b, flags: NlmFlag.REQUEST | NlmFlag.ACK, seq: 7, cmd: 4, version: 2 },
        [nla.s32(7, -19), nla.u32(8, 3)],
      );
      expect(toHex(msg)).to.equal(toHex(ADDED_DONE));
    });

    it('builds the ADDED_DEVICE event byte for byte', () => {
      const msg = encodeGenlMsg(
        { family: 0x1b, flags: 0, seq: 0, cmd: 1, version: 2 },
        [nla.string(1, 'tcm-user/0/dev0/file/foo'), nla.u32(2, 0), nla.u32(8, 3)],
      );
      expect(toHex(msg)).to.equal(toHex(ADDED_DEVICE));
    });

    it('pads every attribute to 4 bytes and keeps nla_len unpadded', () => {
      expect(toHex(nla.u8(6, 1))).to.equal('050006000100' + '0000');
      expect(toHex(nla.u16(1, 0x1b))).to.equal('060001001b000000');
      expect(toHex(nla.u64(5, 1n << 40n))).to.equal('0c0005000000000000010000');
      expect(toHex(nla.flag(3))).to.equal('04000300');
      expect(toHex(nla.string(1, ''))).to.equal('0500010000000000');
      expect(toHex(nla.nested(7, [nla.u32(2, 12)]))).to.equal('0c000780080002000c000000');
      expect(toHex(nla.nested(7, [nla.u32(2, 12)], false))).to.equal('0c000700' + '080002000c000000');
    });

    it('refuses values that do not fit', () => {
      expect(() => nla.u8(1, 256)).to.throw(NetlinkEncodeError);
      expect(() => nla.u16(1, -1)).to.throw(NetlinkEncodeError);
      expect(() => nla.u32(1, 2 ** 32)).to.throw(NetlinkEncodeError);
      expect(() => nla.s32(1, 2 ** 31)).to.throw(NetlinkEncodeError);
      expect(() => nla.u64(1, -1n)).to.throw(NetlinkEncodeError);
      expect(() => nla.u32(1, 1.5)).to.throw(NetlinkEncodeError);
      expect(() => nla.string(1, 'a\0b')).to.throw(NetlinkEncodeError);
      expect(() => nla.raw(1, new Uint8Array(0x10000))).to.throw(NetlinkEncodeError);
      expect(() => nla.u8(0x4001, 1)).to.throw(NetlinkEncodeError);
      expect(() => encodeNlMsg({ type: 0x10000, flags: 0, seq: 0, pid: 0 })).to.throw(NetlinkEncodeError);
    });
  });

  describe('decoding', () => {
    it('decodes the NEWFAMILY reply with nested ops and multicast groups, then the ack', () => {
      const msgs = decodeNlMsgs(NEWFAMILY_TCMU);
      expect(msgs).to.have.length(2);
      const g = decodeGenlMsg(msgs[0]);
      expect(g.header).to.deep.equal({ len: 120, type: 0x10, flags: 0, seq: 1, pid: 0x143f });
      expect(g.genl).to.deep.equal({ cmd: 1, version: 2, reserved: 0 });
      const m = attrMap(g.attrs);
      expect(attrString(m.get(2)!)).to.equal('TCM-USER');
      expect(attrU16(m.get(1)!)).to.equal(0x1b);
      expect(attrU32(m.get(3)!)).to.equal(2);
      expect(attrU32(m.get(5)!)).to.equal(9);
      const ops = decodeNested(m.get(6)!);
      expect(ops).to.have.length(1);
      const op = attrMap(decodeNested(ops[0]));
      expect(attrU32(op.get(1)!)).to.equal(7);
      const groups = decodeNested(m.get(7)!).map((grp) => attrMap(decodeNested(grp)));
      expect(groups.map((grp) => [attrString(grp.get(1)!), attrU32(grp.get(2)!)])).to.deep.equal([['config', 12]]);
      // offsets point into the whole buffer
      expect(m.get(2)!.offset).to.equal(20);
      expect(groups[0].get(1)!.offset).to.equal(16 + 4 + 16 + 8 + 8 + 8 + 8 + 24 + 4 + 4 + 8);

      expect(msgs[1].header.type).to.equal(NlMsgType.ERROR);
      const ack = decodeNlError(msgs[1]);
      expect(ack.error).to.equal(0);
      expect(ack.request).to.deep.equal({ len: 36, type: 0x10, flags: 5, seq: 1, pid: 0 });
    });

    it('decodes an ENOENT error with the request echoed', () => {
      const [msg] = decodeNlMsgs(ENOENT_REPLY);
      const err = decodeNlError(msg);
      expect(err.error).to.equal(-2);
      expect(err.request.seq).to.equal(2);
      expect(err.extMsg).to.equal(undefined);
    });

    it('decodes extended-ack TLVs after a capped error', () => {
      const msg = encodeNlMsg({ type: NlMsgType.ERROR, flags: NlmFlag.CAPPED | NlmFlag.ACK_TLVS, seq: 9, pid: 1 }, new Uint8Array([
        ...hex('eaffffff'), ...hex('24000000 1b00 0500 09000000 00000000'),
        ...nla.string(1, 'Unknown attribute'), ...nla.u32(2, 24),
      ]));
      const err = decodeNlError(decodeNlMsgs(msg)[0]);
      expect(err).to.include({ error: -22, extMsg: 'Unknown attribute', extOffset: 24 });
    });

    it('decodes the ADDED_DEVICE event and the DONE reply', () => {
      const ev = decodeGenlMsg(decodeNlMsgs(ADDED_DEVICE)[0]);
      expect(ev.genl.cmd).to.equal(1);
      const m = attrMap(ev.attrs);
      expect(attrString(m.get(1)!)).to.equal('tcm-user/0/dev0/file/foo');
      expect(attrU32(m.get(2)!)).to.equal(0);
      expect(attrU32(m.get(8)!)).to.equal(3);
      const done = attrMap(decodeGenlMsg(decodeNlMsgs(ADDED_DONE)[0]).attrs);
      expect(attrS32(done.get(7)!)).to.equal(-19);
    });

    it('accepts a last message without its alignment padding', () => {
      const m = hex('11000000 0300 0000 01000000 00000000 ab');
      const [msg] = decodeNlMsgs(m);
      expect(msg.payload).to.deep.equal(Uint8Array.of(0xab));
      // and the same for a last attribute
      expect(decodeAttrs(hex('0500 0600 01'))[0].data).to.deep.equal(Uint8Array.of(1));
    });

    it('reports flag bits and masks them out of the type', () => {
      const [a] = decodeAttrs(hex('0800 0240 01020304'));
      expect(a).to.include({ type: 2, nested: false, netByteOrder: true });
    });

    it('typed getters insist on exact sizes and terminators', () => {
      const [a] = decodeAttrs(hex('0800 0200 01000000'));
      expect(() => attrU8(a)).to.throw(NetlinkDecodeError, /must be 1 bytes, has 4/);
      expect(() => attrU64(a)).to.throw(NetlinkDecodeError);
      expect(() => attrFlag(a)).to.throw(NetlinkDecodeError);
      expect(attrU32(a)).to.equal(1);
      const [unterminated] = decodeAttrs(hex('0700 0100 616263 00'));
      expect(() => attrString(unterminated)).to.throw(NetlinkDecodeError, /NUL-terminated/);
      const [embedded] = decodeAttrs(hex('0800 0100 61006300'));
      expect(() => attrString(embedded)).to.throw(NetlinkDecodeError, /embedded NUL/);
      const [empty] = decodeAttrs(hex('0400 0100'));
      expect(() => attrString(empty)).to.throw(NetlinkDecodeError);
      const [u64] = decodeAttrs(hex('0c00 0500 0000000001000000'));
      expect(attrU64(u64)).to.equal(1n << 32n);
    });

    const bad: [string, Uint8Array, RegExp][] = [
      ['a header cut short', ADDED_DEVICE.subarray(0, 10), /truncated nlmsghdr/],
      ['nlmsg_len past the end', ADDED_DEVICE.subarray(0, 60), /runs past the end/],
      ['nlmsg_len below the header size', hex('08000000 0300 0000 00000000 00000000'), /shorter than the header/],
      ['trailing bytes after the last message', new Uint8Array([...ADDED_DONE, 1, 2]), /truncated nlmsghdr/],
    ];
    for (const [what, buf, re] of bad) {
      it(`rejects ${what}`, () => {
        expect(() => decodeNlMsgs(buf)).to.throw(NetlinkDecodeError, re);
      });
    }

    it('rejects malformed attributes inside a well-framed message', () => {
      // genl header + 2 stray bytes
      const stray = decodeNlMsgs(hex('16000000 1b00 0000 00000000 00000000 01020000 0800'))[0];
      expect(() => decodeGenlMsg(stray)).to.throw(NetlinkDecodeError, /truncated nlattr header/);
      // nla_len 2
      expect(() => decodeAttrs(hex('0200 0100'))).to.throw(NetlinkDecodeError, /shorter than the header/);
      // nla_len past the end
      expect(() => decodeAttrs(hex('0c00 0100 01000000'))).to.throw(NetlinkDecodeError, /runs past the end/);
      // no room for the genl header
      const short = decodeNlMsgs(hex('12000000 1b00 0000 00000000 00000000 0102'))[0];
      expect(() => decodeGenlMsg(short)).to.throw(NetlinkDecodeError, /genlmsghdr/);
      // a nested attribute whose inside is broken
      const [outer] = decodeAttrs(hex('0c00 0780 0900 0100 01000000'));
      expect(() => decodeNested(outer)).to.throw(NetlinkDecodeError, /runs past the end/);
      // an error message too short for its echoed header
      const e = decodeNlMsgs(hex('16000000 0200 0000 00000000 00000000 feffffff 2400'))[0];
      expect(() => decodeNlError(e)).to.throw(NetlinkDecodeError, /truncated nlmsgerr/);
    });

    it('decodeNlMsgHeader checks its offset', () => {
      expect(() => decodeNlMsgHeader(new Uint8Array(20), 8)).to.throw(NetlinkDecodeError);
      expect(decodeNlMsgHeader(ADDED_DONE, 0).len).to.equal(36);
    });

    it('never throws anything but NetlinkDecodeError on random input, never reads past it', () => {
      fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
        // Put the bytes at the end of a larger buffer: a read past the view would see 0xee.
        const big = new Uint8Array(bytes.length + 64).fill(0xee);
        big.set(bytes, 0);
        const buf = big.subarray(0, bytes.length);
        try {
          for (const m of decodeNlMsgs(buf)) {
            expect(m.offset + m.header.len).to.be.at.most(buf.length);
            if (m.header.type === NlMsgType.ERROR) decodeNlError(m);
            else {
              const g = decodeGenlMsg(m);
              for (const a of g.attrs) {
                expect(a.offset + 4 + a.data.length).to.be.at.most(buf.length);
                try { decodeNested(a); } catch (e) { expect(e).to.be.instanceOf(NetlinkDecodeError); }
              }
            }
          }
        } catch (e) {
          expect(e).to.be.instanceOf(NetlinkDecodeError);
        }
      }), { numRuns: 2000 });
    });

    it('round-trips random attribute lists', () => {
      const attrArb = fc.oneof(
        fc.record({ k: fc.constant('u8' as const), t: fc.integer({ min: 1, max: 0x3fff }), v: fc.integer({ min: 0, max: 255 }) }),
        fc.record({ k: fc.constant('u32' as const), t: fc.integer({ min: 1, max: 0x3fff }), v: fc.nat({ max: 0xffffffff }) }),
        fc.record({ k: fc.constant('s32' as const), t: fc.integer({ min: 1, max: 0x3fff }), v: fc.integer({ min: -0x80000000, max: 0x7fffffff }) }),
        fc.record({ k: fc.constant('u64' as const), t: fc.integer({ min: 1, max: 0x3fff }), v: fc.bigInt({ min: 0n, max: (1n << 64n) - 1n }) }),
        fc.record({ k: fc.constant('str' as const), t: fc.integer({ min: 1, max: 0x3fff }), v: fc.string({ maxLength: 40 }).filter((s) => !s.includes('\0')) }),
      );
      fc.assert(fc.property(fc.array(attrArb, { maxLength: 12 }), fc.nat({ max: 0xffffffff }), (list, seq) => {
        const enc = list.map((a) => {
          switch (a.k) {
            case 'u8': return nla.u8(a.t, a.v);
            case 'u32': return nla.u32(a.t, a.v);
            case 's32': return nla.s32(a.t, a.v);
            case 'u64': return nla.u64(a.t, a.v);
            case 'str': return nla.string(a.t, a.v);
          }
        });
        const msg = encodeGenlMsg({ family: 0x1b, flags: 1, seq, cmd: 4, version: 2 }, [nla.nested(1, enc), ...enc]);
        expect(msg.length % 4).to.equal(0);
        const [m] = decodeNlMsgs(msg);
        expect(m.header.seq).to.equal(seq);
        const g = decodeGenlMsg(m);
        const inner = decodeNested(g.attrs[0]);
        for (const attrs of [inner, g.attrs.slice(1)]) {
          expect(attrs).to.have.length(list.length);
          attrs.forEach((a, i) => {
            const want = list[i];
            expect(a.type).to.equal(want.t);
            const got = want.k === 'u8' ? attrU8(a) : want.k === 'u32' ? attrU32(a) : want.k === 's32' ? attrS32(a)
              : want.k === 'u64' ? attrU64(a) : attrString(a);
            expect(got).to.equal(want.v);
          });
        }
      }));
    });

    it('nlAlign rounds up to 4', () => {
      expect([0, 1, 4, 5, 7, 8].map(nlAlign)).to.deep.equal([0, 4, 4, 8, 8, 8]);
    });
  });
});
