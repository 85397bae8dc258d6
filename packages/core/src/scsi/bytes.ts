/**
 * Big-endian field access for CDBs and parameter data. SCSI is big-endian
 * throughout; these helpers keep every offset visible at the call site so a
 * layout can be checked against the standard line by line.
 */

export function be16(b: Uint8Array, off: number): number {
  return (b[off] << 8) | b[off + 1];
}

export function be24(b: Uint8Array, off: number): number {
  return (b[off] << 16) | (b[off + 1] << 8) | b[off + 2];
}

export function be32(b: Uint8Array, off: number): number {
  // >>> 0 because the top bit would otherwise make the result negative.
  return ((b[off] << 24) | (b[off + 1] << 16) | (b[off + 2] << 8) | b[off + 3]) >>> 0;
}

/** 64-bit fields stay BigInt: a CDB LBA may exceed 2^53 and must be range-checked first. */
export function be64(b: Uint8Array, off: number): bigint {
  return (BigInt(be32(b, off)) << 32n) | BigInt(be32(b, off + 4));
}

export function put16(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 8) & 0xff;
  b[off + 1] = v & 0xff;
}

export function put24(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 16) & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = v & 0xff;
}

export function put32(b: Uint8Array, off: number, v: number): void {
  b[off] = (v >>> 24) & 0xff;
  b[off + 1] = (v >>> 16) & 0xff;
  b[off + 2] = (v >>> 8) & 0xff;
  b[off + 3] = v & 0xff;
}

export function put64(b: Uint8Array, off: number, v: number | bigint): void {
  const x = BigInt.asUintN(64, BigInt(v));
  put32(b, off, Number(x >> 32n));
  put32(b, off + 4, Number(x & 0xffffffffn));
}

/** Clamp to an unsigned 32-bit field, saturating instead of wrapping. */
export function sat32(v: number): number {
  if (!(v > 0)) return 0;
  return v >= 0xffffffff ? 0xffffffff : Math.floor(v);
}

/**
 * SPC "ASCII data" (4.4.1) allows only 20h..7Eh; anything else in a
 * configured name is replaced rather than dropped so field widths hold.
 */
export function asciiBytes(text: string): Uint8Array {
  // Device descriptions are often assembled with casts; tolerate a missing string.
  const s = String(text ?? '');
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[i] = c >= 0x20 && c <= 0x7e ? c : 0x3f; // '?'
  }
  return out;
}

/** Left-aligned, space-padded, truncated to exactly `width` bytes (INQUIRY vendor/product/revision). */
export function putPaddedAscii(b: Uint8Array, off: number, width: number, s: string): void {
  b.fill(0x20, off, off + width);
  b.set(asciiBytes(s).subarray(0, width), off);
}

/** Index of the most significant set bit of a byte (the bit a field pointer names). */
export function topBit(v: number): number {
  return 31 - Math.clz32(v & 0xff);
}

/** Bytes as hex digits, two per byte, `separator` between them (log lines, NAA designators). */
export function hexBytes(b: Uint8Array, separator = ''): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += (i && separator ? separator : '') + b[i].toString(16).padStart(2, '0');
  return s;
}
