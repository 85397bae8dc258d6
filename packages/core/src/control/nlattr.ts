/**
 * A pure codec for netlink messages (linux/netlink.h, linux/genetlink.h):
 * nlmsghdr, genlmsghdr and attributes (TLVs aligned to 4 bytes, nestable).
 * Host byte order is little-endian on every machine this runs on (x86_64,
 * arm64); NLA_F_NET_BYTEORDER attributes are reported, not converted.
 *
 * Decoding never reads past the buffer it was given: every length field is
 * checked against what is really there, and anything inconsistent throws a
 * NetlinkDecodeError carrying the offset of the fault.
 */

export const NLMSG_ALIGNTO = 4;
export const NLMSG_HDRLEN = 16;
export const GENL_HDRLEN = 4;
export const NLA_ALIGNTO = 4;
export const NLA_HDRLEN = 4;

/** Reserved message types (< NLMSG_MIN_TYPE). */
export const NlMsgType = {
  NOOP: 0x1,
  ERROR: 0x2,
  DONE: 0x3,
  OVERRUN: 0x4,
  MIN_TYPE: 0x10,
} as const;

/** nlmsg_flags. The GET/NEW/DELETE modifiers share bits, so several names alias. */
export const NlmFlag = {
  REQUEST: 0x01,
  MULTI: 0x02,
  ACK: 0x04,
  ECHO: 0x08,
  DUMP_INTR: 0x10,
  DUMP_FILTERED: 0x20,
  ROOT: 0x100,
  MATCH: 0x200,
  ATOMIC: 0x400,
  DUMP: 0x300,
  /** In an NLMSG_ERROR ack: the original payload was not echoed. */
  CAPPED: 0x100,
  /** In an NLMSG_ERROR ack: extended-ack TLVs follow. */
  ACK_TLVS: 0x200,
} as const;

export const NLA_F_NESTED = 0x8000;
export const NLA_F_NET_BYTEORDER = 0x4000;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xffff;

/** Extended ack attributes carried after an NLMSG_ERROR (NLM_F_ACK_TLVS). */
export const NlMsgErrAttr = {
  MSG: 1,
  OFFS: 2,
  COOKIE: 3,
  POLICY: 4,
  MISS_TYPE: 5,
  MISS_NEST: 6,
} as const;

/** Malformed netlink input: truncated, overlong or inconsistent lengths. */
export class NetlinkDecodeError extends Error {
  constructor(message: string, readonly offset: number) {
    super(`netlink decode: ${message} (at byte ${offset})`);
    this.name = 'NetlinkDecodeError';
  }
}

/** A value that cannot be encoded (out of range, embedded NUL, too large for a u16 length). */
export class NetlinkEncodeError extends Error {
  constructor(message: string) {
    super(`netlink encode: ${message}`);
    this.name = 'NetlinkEncodeError';
  }
}

export function nlAlign(n: number): number {
  return (n + 3) & ~3;
}

// ---------------------------------------------------------------- headers

export interface NlMsgHeader {
  /** nlmsg_len: header + payload, without trailing alignment padding. */
  len: number;
  type: number;
  flags: number;
  seq: number;
  pid: number;
}

/** One message cut out of a datagram: its header and a view of its payload. */
export interface NlMsg {
  header: NlMsgHeader;
  payload: Uint8Array;
  /** Offset of the message inside the buffer it was decoded from. */
  offset: number;
}

export interface GenlHeader {
  cmd: number;
  version: number;
  reserved: number;
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** Encode one netlink message around a payload; the result is padded to 4 bytes. */
export function encodeNlMsg(h: Omit<NlMsgHeader, 'len'>, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const len = NLMSG_HDRLEN + payload.byteLength;
  if (len > 0xffffffff) throw new NetlinkEncodeError('message too large');
  checkUint('nlmsg_type', h.type, 0xffff);
  checkUint('nlmsg_flags', h.flags, 0xffff);
  checkUint('nlmsg_seq', h.seq, 0xffffffff);
  checkUint('nlmsg_pid', h.pid, 0xffffffff);
  const out = new Uint8Array(nlAlign(len));
  const dv = view(out);
  dv.setUint32(0, len, true);
  dv.setUint16(4, h.type, true);
  dv.setUint16(6, h.flags, true);
  dv.setUint32(8, h.seq, true);
  dv.setUint32(12, h.pid, true);
  out.set(payload, NLMSG_HDRLEN);
  return out;
}

/** Decode just the 16-byte header at `offset`, checking it fits. */
export function decodeNlMsgHeader(buf: Uint8Array, offset = 0): NlMsgHeader {
  if (offset < 0 || buf.byteLength - offset < NLMSG_HDRLEN) {
    throw new NetlinkDecodeError(`truncated nlmsghdr: ${Math.max(0, buf.byteLength - offset)} of ${NLMSG_HDRLEN} bytes`, offset);
  }
  const dv = view(buf);
  return {
    len: dv.getUint32(offset, true),
    type: dv.getUint16(offset + 4, true),
    flags: dv.getUint16(offset + 6, true),
    seq: dv.getUint32(offset + 8, true),
    pid: dv.getUint32(offset + 12, true),
  };
}

/**
 * Split a datagram into its messages. Each message must have
 * NLMSG_HDRLEN <= nlmsg_len <= bytes left; messages after the first start at
 * the aligned end of the previous one; any leftover that is not a whole
 * message is an error (the kernel never sends one).
 */
export function decodeNlMsgs(buf: Uint8Array): NlMsg[] {
  const out: NlMsg[] = [];
  let off = 0;
  while (off < buf.byteLength) {
    const header = decodeNlMsgHeader(buf, off);
    if (header.len < NLMSG_HDRLEN) throw new NetlinkDecodeError(`nlmsg_len ${header.len} shorter than the header`, off);
    if (header.len > buf.byteLength - off) {
      throw new NetlinkDecodeError(`nlmsg_len ${header.len} runs past the end (${buf.byteLength - off} bytes left)`, off);
    }
    out.push({ header, payload: buf.subarray(off + NLMSG_HDRLEN, off + header.len), offset: off });
    const next = off + nlAlign(header.len);
    // The last message may omit its alignment padding.
    off = Math.min(next, buf.byteLength);
  }
  return out;
}

export function encodeGenlHeader(g: { cmd: number; version: number; reserved?: number }): Uint8Array {
  checkUint('genl cmd', g.cmd, 0xff);
  checkUint('genl version', g.version, 0xff);
  const out = new Uint8Array(GENL_HDRLEN);
  out[0] = g.cmd;
  out[1] = g.version;
  view(out).setUint16(2, g.reserved ?? 0, true);
  return out;
}

export interface GenlMsgSpec {
  /** The family id (nlmsg_type). */
  family: number;
  flags: number;
  seq: number;
  pid?: number;
  cmd: number;
  version: number;
}

/** A whole generic netlink message: nlmsghdr + genlmsghdr + attributes. */
export function encodeGenlMsg(spec: GenlMsgSpec, attrs: readonly Uint8Array[] = []): Uint8Array {
  const body = nlConcat([encodeGenlHeader(spec), ...attrs]);
  return encodeNlMsg({ type: spec.family, flags: spec.flags, seq: spec.seq, pid: spec.pid ?? 0 }, body);
}

export interface GenlMsg {
  header: NlMsgHeader;
  genl: GenlHeader;
  attrs: NlAttr[];
}

/** Decode the generic netlink part of a message (family header size 0, as TCM-USER and nlctrl use). */
export function decodeGenlMsg(msg: NlMsg): GenlMsg {
  const p = msg.payload;
  const base = msg.offset + NLMSG_HDRLEN;
  if (p.byteLength < GENL_HDRLEN) throw new NetlinkDecodeError(`truncated genlmsghdr: ${p.byteLength} of ${GENL_HDRLEN} bytes`, base);
  const genl: GenlHeader = { cmd: p[0], version: p[1], reserved: view(p).getUint16(2, true) };
  const attrs = decodeAttrs(p.subarray(GENL_HDRLEN), base + GENL_HDRLEN);
  return { header: msg.header, genl, attrs };
}

// ---------------------------------------------------------------- errors/acks

export interface NlErrorPayload {
  /** 0 for an ack, otherwise -errno. */
  error: number;
  /** The header of the request this answers. */
  request: NlMsgHeader;
  /** Extended ack message (NETLINK_EXT_ACK), if the kernel sent one. */
  extMsg?: string;
  /** Offset of the offending attribute in the request, if sent. */
  extOffset?: number;
}

/** Decode the payload of an NLMSG_ERROR message (an ack when error is 0). */
export function decodeNlError(msg: NlMsg): NlErrorPayload {
  const p = msg.payload;
  const base = msg.offset + NLMSG_HDRLEN;
  if (msg.header.type !== NlMsgType.ERROR) throw new NetlinkDecodeError(`not an NLMSG_ERROR (type ${msg.header.type})`, msg.offset);
  if (p.byteLength < 4 + NLMSG_HDRLEN) throw new NetlinkDecodeError(`truncated nlmsgerr: ${p.byteLength} bytes`, base);
  const error = view(p).getInt32(0, true);
  const request = decodeNlMsgHeader(p, 4);
  const out: NlErrorPayload = { error, request };
  if (msg.header.flags & NlmFlag.ACK_TLVS) {
    // The echoed request is there in full unless the ack is capped.
    let tlvOff = 4 + NLMSG_HDRLEN;
    if (!(msg.header.flags & NlmFlag.CAPPED)) {
      if (request.len < NLMSG_HDRLEN) throw new NetlinkDecodeError(`echoed nlmsg_len ${request.len} too short`, base + 4);
      tlvOff = 4 + nlAlign(request.len);
    }
    if (tlvOff > p.byteLength) throw new NetlinkDecodeError('extended ack TLVs start past the end', base + tlvOff);
    const attrs = decodeAttrs(p.subarray(tlvOff), base + tlvOff);
    for (const a of attrs) {
      if (a.type === NlMsgErrAttr.MSG) out.extMsg = attrString(a);
      else if (a.type === NlMsgErrAttr.OFFS) out.extOffset = attrU32(a);
    }
  }
  return out;
}

// ---------------------------------------------------------------- attributes

export interface NlAttr {
  /** The type without the NESTED / NET_BYTEORDER flag bits. */
  type: number;
  nested: boolean;
  netByteOrder: boolean;
  data: Uint8Array;
  /** Offset of the attribute header in the outermost decoded buffer. */
  offset: number;
}

/**
 * Decode a run of attributes filling `buf` exactly. `base` is added to
 * offsets in errors and results so they point into the whole message.
 */
export function decodeAttrs(buf: Uint8Array, base = 0): NlAttr[] {
  const out: NlAttr[] = [];
  const dv = view(buf);
  let off = 0;
  while (off < buf.byteLength) {
    if (buf.byteLength - off < NLA_HDRLEN) {
      throw new NetlinkDecodeError(`truncated nlattr header: ${buf.byteLength - off} of ${NLA_HDRLEN} bytes`, base + off);
    }
    const len = dv.getUint16(off, true);
    const rawType = dv.getUint16(off + 2, true);
    if (len < NLA_HDRLEN) throw new NetlinkDecodeError(`nla_len ${len} shorter than the header`, base + off);
    if (len > buf.byteLength - off) {
      throw new NetlinkDecodeError(`nla_len ${len} runs past the end (${buf.byteLength - off} bytes left)`, base + off);
    }
    out.push({
      type: rawType & NLA_TYPE_MASK,
      nested: (rawType & NLA_F_NESTED) !== 0,
      netByteOrder: (rawType & NLA_F_NET_BYTEORDER) !== 0,
      data: buf.subarray(off + NLA_HDRLEN, off + len),
      offset: base + off,
    });
    off = Math.min(off + nlAlign(len), buf.byteLength);
  }
  return out;
}

/** Decode the attributes nested inside an attribute (whether or not it carries NLA_F_NESTED). */
export function decodeNested(a: NlAttr): NlAttr[] {
  return decodeAttrs(a.data, a.offset + NLA_HDRLEN);
}

/** Index attributes by type; a later duplicate wins, as in the kernel's nla_parse. */
export function attrMap(attrs: readonly NlAttr[]): Map<number, NlAttr> {
  const m = new Map<number, NlAttr>();
  for (const a of attrs) m.set(a.type, a);
  return m;
}

function need(a: NlAttr, n: number, what: string): DataView {
  if (a.data.byteLength !== n) {
    throw new NetlinkDecodeError(`attribute ${a.type} as ${what} must be ${n} bytes, has ${a.data.byteLength}`, a.offset);
  }
  return view(a.data);
}

export function attrU8(a: NlAttr): number {
  return need(a, 1, 'u8').getUint8(0);
}
export function attrU16(a: NlAttr): number {
  return need(a, 2, 'u16').getUint16(0, true);
}
export function attrU32(a: NlAttr): number {
  return need(a, 4, 'u32').getUint32(0, true);
}
export function attrS32(a: NlAttr): number {
  return need(a, 4, 's32').getInt32(0, true);
}
export function attrU64(a: NlAttr): bigint {
  return need(a, 8, 'u64').getBigUint64(0, true);
}
/** A flag attribute: present with no payload. */
export function attrFlag(a: NlAttr): true {
  need(a, 0, 'flag');
  return true;
}

/**
 * A NUL-terminated string (NLA_NUL_STRING as the kernel's nla_put_string
 * writes it). The terminator is required and must be the last byte; a NUL
 * inside the string is an error. Bytes are decoded as UTF-8.
 */
export function attrString(a: NlAttr): string {
  const d = a.data;
  if (d.byteLength === 0 || d[d.byteLength - 1] !== 0) {
    throw new NetlinkDecodeError(`attribute ${a.type} string is not NUL-terminated`, a.offset);
  }
  const body = d.subarray(0, d.byteLength - 1);
  if (body.includes(0)) throw new NetlinkDecodeError(`attribute ${a.type} string has an embedded NUL`, a.offset);
  return new TextDecoder('utf-8', { fatal: false }).decode(body);
}

function checkUint(what: string, v: number, max: number): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new NetlinkEncodeError(`${what} ${v} out of range 0..${max}`);
}

function tlv(type: number, data: Uint8Array, flags = 0): Uint8Array {
  checkUint('attribute type', type, NLA_TYPE_MASK);
  const len = NLA_HDRLEN + data.byteLength;
  if (len > 0xffff) throw new NetlinkEncodeError(`attribute ${type} too large (${len} bytes)`);
  const out = new Uint8Array(nlAlign(len));
  const dv = view(out);
  dv.setUint16(0, len, true);
  dv.setUint16(2, type | flags, true);
  out.set(data, NLA_HDRLEN);
  return out;
}

/** Attribute encoders; each returns the padded TLV bytes. */
export const nla = {
  raw(type: number, data: Uint8Array): Uint8Array {
    return tlv(type, data);
  },
  flag(type: number): Uint8Array {
    return tlv(type, new Uint8Array(0));
  },
  u8(type: number, v: number): Uint8Array {
    checkUint('u8', v, 0xff);
    return tlv(type, Uint8Array.of(v));
  },
  u16(type: number, v: number): Uint8Array {
    checkUint('u16', v, 0xffff);
    const d = new Uint8Array(2);
    view(d).setUint16(0, v, true);
    return tlv(type, d);
  },
  u32(type: number, v: number): Uint8Array {
    checkUint('u32', v, 0xffffffff);
    const d = new Uint8Array(4);
    view(d).setUint32(0, v, true);
    return tlv(type, d);
  },
  s32(type: number, v: number): Uint8Array {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new NetlinkEncodeError(`s32 ${v} out of range`);
    const d = new Uint8Array(4);
    view(d).setInt32(0, v, true);
    return tlv(type, d);
  },
  u64(type: number, v: bigint | number): Uint8Array {
    const b = BigInt(v);
    if (b < 0n || b > 0xffffffffffffffffn) throw new NetlinkEncodeError(`u64 ${v} out of range`);
    const d = new Uint8Array(8);
    view(d).setBigUint64(0, b, true);
    return tlv(type, d);
  },
  /** A NUL-terminated UTF-8 string. */
  string(type: number, s: string): Uint8Array {
    const enc = new TextEncoder().encode(s);
    if (enc.includes(0)) throw new NetlinkEncodeError(`string for attribute ${type} contains a NUL`);
    const d = new Uint8Array(enc.byteLength + 1);
    d.set(enc, 0);
    return tlv(type, d);
  },
  /** A nested attribute; `flagged` sets NLA_F_NESTED (modern kernels' nla_nest_start does). */
  nested(type: number, attrs: readonly Uint8Array[], flagged = true): Uint8Array {
    return tlv(type, nlConcat(attrs), flagged ? NLA_F_NESTED : 0);
  },
};

export function nlConcat(parts: readonly Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.byteLength;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}
