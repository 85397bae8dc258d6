/**
 * The qcow family on disk, for the qcow handler (qcow.ts): probing an image
 * file, qcow2 (versions 2 and 3) read-write, qcow version 1 read-write, and
 * raw files as read-only backing images.
 *
 * Facts come from qemu's docs/interop/qcow2.txt (qcow2) and the qcow v1
 * header layout; the code is our own. Everything is synchronous positional
 * IO on the calling thread (the device thread), as the file handler does
 * for page-cache IO: a callout finishes before it returns.
 *
 * qcow2 in one paragraph: the file is cut into clusters (512 B - 2 MiB). A
 * guest offset goes through the L1 table (in memory here) to an L2 table
 * (one cluster, cached) whose 64-bit entry says where the guest cluster
 * lives: unallocated (read the backing image, or zeros), a host cluster,
 * a zero cluster (v3: reads as zeros, maybe with a host cluster kept
 * allocated), or zlib-compressed bytes anywhere in the file. Every host
 * cluster in use, metadata included, has a reference count in refcount
 * blocks listed by the refcount table; bit 63 (COPIED) of an L1/L2 entry
 * says "refcount is exactly 1, write in place". Internal snapshots share
 * clusters (refcount > 1); we copy on write, as qemu does.
 *
 * Crash safety. Every metadata update is written through at once, and in an
 * order that keeps the one invariant `qemu-img check` treats as corruption
 * from ever being false on disk: no L1/L2/refcount-table entry points at a
 * cluster whose refcount is 0. What a crash can leave behind is a cluster
 * whose refcount is 1 and that nothing references: a leak, which check
 * reports and `qemu-img check -r leaks` reclaims.
 *  1. Clusters are reserved before use, in batches: refcount set to 1 (a
 *     new refcount block is written and synced before the refcount-table
 *     entry that points at it), the file extended over them, then
 *     fdatasync. Reserved clusters stay leaks until they are used.
 *  2. Guest data goes into its cluster (in place, or a whole new cluster
 *     holding the merged old and new bytes).
 *  3. Then the L2 entry; for a new or copied L2 table the whole table, then
 *     its L1 entry.
 *  4. A cluster an entry no longer points at is not decremented at once:
 *     the decrement waits until the next fdatasync (guest flush, next
 *     reservation, close) has made the new entry stable, so a power cut
 *     can never leave an entry pointing at a freed (and reused) cluster.
 *     Reused are clusters freed this way and clusters the refcounts show
 *     free below the end of the file (found by a lazy scan); new ones come
 *     from the end of the file.
 * Against kill -9 the program order alone is enough (the page cache keeps
 * every write that returned); the fdatasyncs are for power loss. A guest
 * flush (SYNCHRONIZE CACHE, FUA, write-through mode) is an fdatasync of
 * the image after its data and metadata were written, so it covers both.
 * We never set the dirty bit and never use lazy refcounts.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { errnoError, sliceBuffers, zeroBuffers, copyToBuffers, copyFromBuffers } from '@tcmu-ts/core';

// ---------------------------------------------------------------- public shape

export type ImageFormat = 'qcow2' | 'qcow' | 'raw';

/** One image of a chain: the device's own (writable) or a backing file (read-only). */
export interface ImageLayer {
  readonly format: ImageFormat;
  readonly path: string;
  /** Virtual disk size in bytes. */
  readonly size: number;
  readonly backing: ImageLayer | undefined;
  /** One line for the log: format, version, cluster size, backing chain. */
  describe(): string;
  /** Guest bytes [offset, offset+length) into the buffer list at byte `at`; past the end: zeros. */
  read(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void;
  close(): void;
}

export interface WritableImage extends ImageLayer {
  write(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void;
  /**
   * Make [offset, offset+length) read as zeros. `unmap`: give the clusters
   * back (UNMAP); otherwise keep them allocated where the format can say
   * "zeros" without freeing (WRITE SAME of zeros).
   */
  zero(offset: number, length: number, unmap: boolean): void;
  /** Everything written so far on stable media. */
  flush(): void;
  /**
   * Optional. From guest byte `offset`: whether it is deallocated (reads
   * zeros and holds no cluster of its own) and over how many bytes, up to
   * `limit`, that stays so (whole clusters). For GET LBA STATUS.
   */
  provisioningRun?(offset: number, limit: number): { deallocated: boolean; length: number };
}

export interface OpenImageOptions {
  writable: boolean;
  /** Bytes of L2 tables to cache (default 4 MiB, at least 16 tables). */
  l2CacheBytes?: number;
  /** The format a referring image named for this file (backing file format extension). */
  formatHint?: string;
  log?: { warn(msg: string): void; info(msg: string): void; error(msg: string): void };
  /** Backing chain depth so far (internal). */
  depth?: number;
  /** Real paths already in the chain, to refuse loops (internal). */
  seen?: Set<string>;
}

/** A backing chain longer than this is refused (qemu has no limit; loops are caught separately). */
export const MAX_BACKING_DEPTH = 32;

const QCOW_MAGIC = 0x514649fb; // "QFI\xfb"
const KiB = 1024;
const MiB = 1024 * 1024;

/** Refuse with EINVAL (open) and a message the administrator can act on. */
function refuse(file: string, why: string): Error {
  return errnoError('EINVAL', `${file}: ${why}`);
}

const noLog = { warn() {}, info() {}, error() {} };

// ---------------------------------------------------------------- probing

/** Magic numbers of formats we must not mistake for raw data. */
const FOREIGN_MAGIC: { at: number; bytes: string; name: string }[] = [
  { at: 0, bytes: 'KDMV', name: 'VMDK (sparse extent)' },
  { at: 0, bytes: '# Disk DescriptorFile', name: 'VMDK (descriptor)' },
  { at: 0, bytes: 'COWD', name: 'VMDK (ESX COW)' },
  { at: 0, bytes: 'vhdxfile', name: 'VHDX' },
  { at: 0, bytes: 'conectix', name: 'VHD (dynamic)' },
  { at: 0, bytes: 'QED\0', name: 'QED' },
  { at: 0, bytes: 'LUKS\xba\xbe', name: 'LUKS' },
  { at: 0, bytes: 'WithoutFreeSpace', name: 'Parallels' },
  { at: 0, bytes: 'WithouFreSpacExt', name: 'Parallels' },
  { at: 0, bytes: 'cloop', name: 'cloop' },
  { at: 0, bytes: 'DMGI', name: 'dmg' },
];

function startsWith(head: Uint8Array, at: number, s: string): boolean {
  if (head.byteLength < at + s.length) return false;
  for (let i = 0; i < s.length; i++) if (head[at + i] !== s.charCodeAt(i)) return false;
  return true;
}

/** What the first bytes say, or a reason to refuse the file. */
export function probeFormat(head: Uint8Array): { format: ImageFormat; version?: number } | { refuse: string } {
  const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
  if (head.byteLength >= 8 && dv.getUint32(0) === QCOW_MAGIC) {
    const v = dv.getUint32(4);
    if (v === 1) return { format: 'qcow', version: 1 };
    if (v === 2 || v === 3) return { format: 'qcow2', version: v };
    return { refuse: `has the qcow magic but version ${v}: only qcow v1 and qcow2 v2/v3 are supported` };
  }
  for (const m of FOREIGN_MAGIC) if (startsWith(head, m.at, m.bytes)) return { refuse: `is a ${m.name} image, which this handler does not read` };
  // VDI keeps its signature at 64.
  if (head.byteLength >= 68 && dv.getUint32(64, true) === 0xbeda107f) return { refuse: 'is a VDI image, which this handler does not read' };
  return { format: 'raw' };
}

function readHead(fd: number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  const got = preadFull(fd, b, 0);
  return b.subarray(0, got);
}

/**
 * Open an image file and, recursively, its backing chain. `writable` opens
 * this file read-write; backing files are always read-only. Throws an
 * EINVAL error naming the file and the reason for anything unsupported.
 */
export function openImage(file: string, opts: OpenImageOptions): ImageLayer {
  const depth = opts.depth ?? 0;
  if (depth > MAX_BACKING_DEPTH) throw refuse(file, `backing chain longer than ${MAX_BACKING_DEPTH} images`);
  let real: string;
  try {
    real = fs.realpathSync(file);
  } catch (e) {
    throw errnoError((e as NodeJS.ErrnoException).code ?? 'EIO', `${file}: ${(e as Error).message.replace(/^\w+: /, '')}`);
  }
  const seen = opts.seen ?? new Set<string>();
  if (seen.has(real)) throw refuse(file, 'backing chain loops back to an image already in it');
  seen.add(real);
  const fd = fs.openSync(file, opts.writable ? fs.constants.O_RDWR : fs.constants.O_RDONLY);
  try {
    const head = readHead(fd, 512);
    let kind = probeFormat(head);
    const hint = opts.formatHint;
    if (hint !== undefined) {
      if (hint === 'raw') kind = { format: 'raw' };
      else if (hint !== 'qcow2' && hint !== 'qcow') throw refuse(file, `backing file format "${hint}" is not supported (qcow2, qcow or raw)`);
      else if ('refuse' in kind) throw refuse(file, kind.refuse);
      else if (kind.format !== hint) throw refuse(file, `named as a ${hint} backing file, but it is ${kind.format === 'raw' ? 'not a qcow image' : kind.format}`);
    }
    if ('refuse' in kind) throw refuse(file, kind.refuse);
    const sub: OpenImageOptions = { ...opts, depth: depth + 1, seen, writable: false };
    switch (kind.format) {
      case 'qcow2':
        return new Qcow2Image(fd, file, opts.writable, sub, opts.l2CacheBytes, opts.log ?? noLog);
      case 'qcow':
        return new QcowImage(fd, file, opts.writable, sub, opts.log ?? noLog);
      case 'raw':
        return new RawImage(fd, file);
    }
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

/** Backing file names are relative to the directory of the image naming them. */
function resolveBacking(image: string, name: string): string {
  if (name.startsWith('json:')) throw refuse(image, `backing file "${name}" uses qemu's json: syntax, which is not supported`);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(name) || /^(nbd|rbd|iscsi|gluster|ssh|http|https|ftp|sheepdog|vxhs):/.test(name)) {
    throw refuse(image, `backing file "${name}" is a network location; only local files are supported`);
  }
  return path.isAbsolute(name) ? name : path.join(path.dirname(image), name);
}

function openBacking(image: string, name: string, formatHint: string | undefined, opts: OpenImageOptions): ImageLayer {
  const file = resolveBacking(image, name);
  if (!fs.existsSync(file)) throw refuse(image, `backing file "${name}" (${file}) does not exist`);
  try {
    return openImage(file, { ...opts, writable: false, ...(formatHint !== undefined ? { formatHint } : { formatHint: undefined }) });
  } catch (e) {
    const err = e as Error & { code?: string };
    throw errnoError(err.code ?? 'EINVAL', `${image}: backing file: ${err.message.replace(/^\w+: /, '')}`);
  }
}

// ---------------------------------------------------------------- IO helpers

/** Read up to buf.length bytes at pos; zero-fill past the end of the file. Returns bytes the file had. */
function preadFull(fd: number, buf: Uint8Array, pos: number): number {
  let done = 0;
  while (done < buf.byteLength) {
    const n = fs.readSync(fd, buf, done, buf.byteLength - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      break;
    }
    done += n;
  }
  return done;
}

function pwriteFull(fd: number, buf: Uint8Array, pos: number, what: string): void {
  let done = 0;
  while (done < buf.byteLength) {
    const n = fs.writeSync(fd, buf, done, buf.byteLength - done, pos + done);
    if (n === 0) throw errnoError('EIO', `${what}: write made no progress at ${pos + done}`);
    done += n;
  }
}

/** File [pos, pos+n) into the buffer list at `at`; past the end of the file: zeros. */
function readInto(fd: number, bufs: readonly Uint8Array[], at: number, n: number, pos: number): void {
  if (n === 0) return;
  if (bufs.length === 1) {
    const b = bufs[0];
    let done = 0;
    while (done < n) {
      const r = fs.readSync(fd, b, at + done, n - done, pos + done);
      if (r === 0) {
        b.fill(0, at + done, at + n);
        return;
      }
      done += r;
    }
    return;
  }
  let done = 0;
  while (done < n) {
    const r = fs.readvSync(fd, sliceBuffers(bufs, at + done, n - done), pos + done);
    if (r === 0) {
      zeroBuffers(bufs, at + done, n - done);
      return;
    }
    done += r;
  }
}

/** The buffer list's [at, at+n) to the file at pos. */
function writeFrom(fd: number, bufs: readonly Uint8Array[], at: number, n: number, pos: number, what: string): void {
  if (n === 0) return;
  if (bufs.length === 1) {
    const b = bufs[0];
    let done = 0;
    while (done < n) {
      const r = fs.writeSync(fd, b, at + done, n - done, pos + done);
      if (r === 0) throw errnoError('EIO', `${what}: write made no progress at ${pos + done}`);
      done += r;
    }
    return;
  }
  let done = 0;
  while (done < n) {
    const r = fs.writevSync(fd, sliceBuffers(bufs, at + done, n - done), pos + done);
    if (r === 0) throw errnoError('EIO', `${what}: write made no progress at ${pos + done}`);
    done += r;
  }
}

/** Least recently used cache keyed by file offset. */
class Lru<V> {
  private readonly map = new Map<number, V>();
  constructor(private readonly max: number) {}
  get(k: number): V | undefined {
    const v = this.map.get(k);
    if (v !== undefined) {
      this.map.delete(k);
      this.map.set(k, v);
    }
    return v;
  }
  set(k: number, v: V): void {
    this.map.delete(k);
    this.map.set(k, v);
    if (this.map.size > this.max) this.map.delete(this.map.keys().next().value as number);
  }
  delete(k: number): void {
    this.map.delete(k);
  }
}

const TWO32 = 2 ** 32;

function u64(dv: DataView, at: number, what: string, file: string): number {
  const v = dv.getBigUint64(at);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw refuse(file, `${what} ${v} is too large`);
  return Number(v);
}

function sizeText(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= KiB && n % KiB === 0) return `${n / KiB} KiB`;
  return `${n} B`;
}

/** Inflate one compressed cluster (raw deflate, as qcow and qcow2 with compression type zlib store it). */
function inflateCluster(input: Uint8Array, clusterSize: number): Uint8Array | undefined {
  let out: Buffer;
  try {
    // The last sector may hold the start of the next compressed cluster: a
    // sync flush at the end keeps trailing bytes from being an error.
    out = zlib.inflateRawSync(input, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
  } catch {
    return undefined;
  }
  if (out.byteLength < clusterSize) return undefined;
  return new Uint8Array(out.buffer, out.byteOffset, clusterSize);
}

// ---------------------------------------------------------------- raw (backing only)

/** A raw file as a read-only backing image. */
export class RawImage implements ImageLayer {
  readonly format = 'raw' as const;
  readonly size: number;
  readonly backing = undefined;
  constructor(private fd: number, readonly path: string) {
    this.size = fs.fstatSync(fd).size;
  }
  describe(): string {
    return `raw ${this.path} (${this.size} bytes)`;
  }
  read(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    const inside = Math.max(0, Math.min(length, this.size - offset));
    readInto(this.fd, bufs, at, inside, offset);
    if (inside < length) zeroBuffers(bufs, at + inside, length - inside);
  }
  close(): void {
    if (this.fd >= 0) fs.closeSync(this.fd);
    this.fd = -1;
  }
}

// ---------------------------------------------------------------- qcow2

/** What an L2 entry says about a guest cluster. */
const enum Kind {
  Unallocated = 0,
  Normal = 1,
  /** v3 zero flag, no host cluster. */
  ZeroPlain = 2,
  /** v3 zero flag with a host cluster kept allocated. */
  ZeroAlloc = 3,
  Compressed = 4,
}

const COPIED = 0x80000000; // bit 63, in the high word
const COMPRESSED = 0x40000000; // bit 62
const ZERO_FLAG = 1; // bit 0, in the low word

const INCOMPAT_DIRTY = 1n << 0n;
const INCOMPAT_CORRUPT = 1n << 1n;
const INCOMPAT_DATA_FILE = 1n << 2n;
const INCOMPAT_COMPRESSION = 1n << 3n;
const INCOMPAT_EXTL2 = 1n << 4n;

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_TABLE = 0x6803f857;
const EXT_BITMAPS = 0x23852875;

/** What one write does to one guest cluster (plan arrays, reused between calls). */
const enum Plan {
  /** Data into the host cluster it has. */
  InPlace = 1,
  /** A new host cluster with the merged contents; the old mapping loses its reference. */
  Allocate = 2,
  /** A zero cluster keeping its host cluster (refcount 1): written whole, zero flag cleared. */
  Reuse = 3,
}

export class Qcow2Image implements WritableImage {
  readonly format = 'qcow2' as const;
  readonly size: number;
  readonly backing: ImageLayer | undefined;
  readonly version: 2 | 3;
  readonly clusterSize: number;
  readonly clusterBits: number;
  readonly refcountBits: number;
  readonly snapshots: number;
  private readonly l2Entries: number;
  private readonly l1TableOffset: number;
  /** Host offset of each L2 table (0: none) and whether its L1 entry has COPIED. */
  private readonly l1: Float64Array;
  private readonly l1Copied: Uint8Array;
  private rtOffset: number;
  private rtClusters: number;
  /** Refcount table: host offset of each refcount block (0: none). */
  private rt: Float64Array;
  private readonly rbEntries: number;
  private readonly l2Cache: Lru<Uint8Array>;
  private readonly rbCache: Lru<Uint8Array>;
  /** First cluster index past everything in the file (and past reservations). */
  private eofCluster: number;
  private fileSize: number;
  private readonly openedSize: number;
  private autoclear: bigint;
  private readonly compressedShift: number;
  private readonly compressedMask: bigint;
  private readonly compressedOffsetMask: bigint;
  /** Clusters with refcount 1 waiting to be used; `fresh` ones lie past the old end of file and read as zeros. */
  private reserved: number[] = [];
  private reservedFresh: boolean[] = [];
  private reservedHead = 0;
  /** Decrements that wait for the next fdatasync (see the header comment, step 4). */
  private pendingFree: number[] = [];
  /** Clusters we freed (refcount 0) that may be reserved again. */
  private freeList: number[] = [];
  /**
   * Free clusters below the end of the file as it was opened (freed in an
   * earlier session, or never used) are found by scanning the refcounts
   * from here, a little at a time, as reservations need them. An image that
   * is not dirty has refcount 0 only on clusters nothing references.
   */
  private scanCursor = 0;
  private readonly scanLimit: number;
  private readonly reserveBatch: number;
  private brokenReason: string | undefined;
  private prepared = false;
  private lastDecompressed: { key: string; data: Uint8Array } | undefined;
  private scratch: Uint8Array[] = [];
  private zeroBuf: Uint8Array | undefined;
  /**
   * Per-cluster plan of the chunk being written or zeroed (scratch arrays,
   * grown on demand): what to do, the old entry (kind, host, words), the new
   * entry's words, and whether the old mapping loses its reference.
   */
  private plan = new Uint8Array(0);
  private oldKind = new Uint8Array(0);
  private oldHost = new Float64Array(0);
  private oldHi = new Uint32Array(0);
  private oldLo = new Uint32Array(0);
  private newHi = new Uint32Array(0);
  private newLo = new Uint32Array(0);
  private changed = new Uint8Array(0);
  private drops = new Uint8Array(0);
  /** Result of lookup(): host offset of a Normal/ZeroAlloc cluster, entry words. */
  private mHost = 0;
  private mHi = 0;
  private mLo = 0;
  private lastL1 = -1;
  private lastTable: Uint8Array | undefined;
  private lastView: DataView | undefined;
  private readonly log: NonNullable<OpenImageOptions['log']>;

  constructor(private fd: number, readonly path: string, readonly writable: boolean, backingOpts: OpenImageOptions, l2CacheBytes: number | undefined, log: NonNullable<OpenImageOptions['log']>) {
    this.log = log;
    const file = path;
    const h0 = readHead(fd, 4096);
    if (h0.byteLength < 72) throw refuse(file, 'qcow2 header is truncated');
    let dv = new DataView(h0.buffer, h0.byteOffset, h0.byteLength);
    this.version = dv.getUint32(4) as 2 | 3;
    const cb = dv.getUint32(20);
    if (cb < 9 || cb > 21) throw refuse(file, `cluster_bits ${cb}: cluster sizes from 512 B to 2 MiB are supported`);
    this.clusterBits = cb;
    const cs = (this.clusterSize = 1 << cb);
    // The whole first cluster: header, extensions, backing file name.
    const head = readHead(fd, cs);
    if (head.byteLength < 72) throw refuse(file, 'qcow2 header is truncated');
    dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const st = fs.fstatSync(fd);
    this.fileSize = this.openedSize = st.size;
    const backingOffset = u64(dv, 8, 'backing_file_offset', file);
    const backingSize = dv.getUint32(16);
    this.size = u64(dv, 24, 'virtual size', file);
    const crypt = dv.getUint32(32);
    const l1Size = dv.getUint32(36);
    this.l1TableOffset = u64(dv, 40, 'l1_table_offset', file);
    this.rtOffset = u64(dv, 48, 'refcount_table_offset', file);
    this.rtClusters = dv.getUint32(56);
    this.snapshots = dv.getUint32(60);
    let incompat = 0n;
    this.autoclear = 0n;
    let refcountOrder = 4;
    let headerLength = 72;
    let compressionType = 0;
    if (this.version === 3) {
      if (head.byteLength < 104) throw refuse(file, 'qcow2 v3 header is truncated');
      incompat = dv.getBigUint64(72);
      this.autoclear = dv.getBigUint64(88);
      refcountOrder = dv.getUint32(96);
      headerLength = dv.getUint32(100);
      if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > cs) throw refuse(file, `invalid header_length ${headerLength}`);
      if (headerLength > 104) compressionType = head[104];
    }
    // Header extensions, up to the end of the first cluster.
    let backingFormat: string | undefined;
    const featureNames = new Map<string, string>();
    let hasBitmaps = false;
    for (let at = headerLength; at + 8 <= head.byteLength;) {
      const type = dv.getUint32(at);
      const len = dv.getUint32(at + 4);
      if (type === EXT_END) break;
      if (at + 8 + len > head.byteLength) throw refuse(file, `header extension 0x${type.toString(16)} runs past the first cluster`);
      const data = head.subarray(at + 8, at + 8 + len);
      if (type === EXT_BACKING_FORMAT) backingFormat = Buffer.from(data).toString('latin1');
      else if (type === EXT_FEATURE_TABLE) {
        for (let i = 0; i + 48 <= len; i += 48) {
          const name = Buffer.from(data.subarray(i + 2, i + 48)).toString('latin1').replace(/\0.*$/s, '');
          featureNames.set(`${data[i]}:${data[i + 1]}`, name);
        }
      } else if (type === EXT_BITMAPS) hasBitmaps = true;
      // Encryption and external data file extensions are refused below, by crypt_method and feature bit.
      at += 8 + Math.ceil(len / 8) * 8;
    }
    // What we do not support is refused here, with what to do about it.
    if (crypt === 1) throw refuse(file, 'is AES-encrypted (crypt_method 1); encrypted images are not supported (decrypt with qemu-img convert)');
    if (crypt === 2) throw refuse(file, 'is LUKS-encrypted (crypt_method 2); encrypted images are not supported (decrypt with qemu-img convert)');
    if (crypt !== 0) throw refuse(file, `unknown crypt_method ${crypt}`);
    if (incompat & INCOMPAT_CORRUPT) throw refuse(file, "is marked corrupt (incompatible feature bit 1); repair it with 'qemu-img check -r all' first");
    if (incompat & INCOMPAT_DIRTY) {
      throw refuse(file, "is marked dirty (lazy refcounts, not closed cleanly): its refcounts may be wrong; repair them with 'qemu-img check -r all' first");
    }
    if (incompat & INCOMPAT_DATA_FILE) throw refuse(file, 'uses an external data file (incompatible feature bit 2), which is not supported');
    if (incompat & INCOMPAT_COMPRESSION || compressionType !== 0) {
      const what = compressionType === 1 ? 'zstd' : `type ${compressionType}`;
      throw refuse(file, `uses ${what} compression (incompatible feature bit 3); only zlib compressed clusters are supported`);
    }
    if (incompat & INCOMPAT_EXTL2) throw refuse(file, 'uses extended L2 entries (subclusters, incompatible feature bit 4), which are not supported');
    const unknown = incompat & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2);
    if (unknown !== 0n) {
      const bits: string[] = [];
      for (let b = 0; b < 64; b++) {
        if (unknown & (1n << BigInt(b))) {
          const name = featureNames.get(`0:${b}`);
          bits.push(name ? `${b} (${name})` : `${b}`);
        }
      }
      throw refuse(file, `has unknown incompatible feature bit(s) ${bits.join(', ')}; refusing to open it`);
    }
    if (refcountOrder > 6) throw refuse(file, `refcount_order ${refcountOrder} is invalid (at most 6)`);
    this.refcountBits = 1 << refcountOrder;
    this.rbEntries = (cs * 8) / this.refcountBits;
    this.l2Entries = cs / 8;
    if (this.l1TableOffset % cs !== 0 || this.rtOffset % cs !== 0) throw refuse(file, 'L1 or refcount table is not cluster aligned (corrupt header)');
    if (this.rtClusters === 0) throw refuse(file, 'refcount table has no clusters (corrupt header)');
    const needL1 = Math.ceil(this.size / (cs * this.l2Entries));
    if (l1Size < needL1) throw refuse(file, `L1 table has ${l1Size} entries, the virtual size needs ${needL1} (corrupt header)`);
    if (l1Size > (32 * MiB) / 8) throw refuse(file, `L1 table of ${l1Size} entries is larger than qemu allows`);
    if (backingOffset !== 0 && backingSize > 1023) throw refuse(file, `backing file name of ${backingSize} bytes is too long`);
    if (backingOffset !== 0 && backingOffset + backingSize > head.byteLength) throw refuse(file, 'backing file name lies outside the first cluster');
    this.eofCluster = Math.ceil(this.fileSize / cs);
    this.scanLimit = Math.floor(this.fileSize / cs);
    // L1 table.
    const l1Bytes = new Uint8Array(l1Size * 8);
    preadFull(fd, l1Bytes, this.l1TableOffset);
    const l1v = new DataView(l1Bytes.buffer);
    this.l1 = new Float64Array(l1Size);
    this.l1Copied = new Uint8Array(l1Size);
    for (let i = 0; i < l1Size; i++) {
      const hi = l1v.getUint32(i * 8);
      const lo = l1v.getUint32(i * 8 + 4);
      this.l1[i] = (hi & 0x00ffffff) * TWO32 + (lo & 0xfffffe00);
      this.l1Copied[i] = hi & COPIED ? 1 : 0;
    }
    // Refcount table.
    const rtBytes = new Uint8Array(this.rtClusters * cs);
    preadFull(fd, rtBytes, this.rtOffset);
    const rtv = new DataView(rtBytes.buffer);
    this.rt = new Float64Array(rtBytes.byteLength / 8);
    for (let i = 0; i < this.rt.length; i++) this.rt[i] = (rtv.getUint32(i * 8) & 0x00ffffff) * TWO32 + (rtv.getUint32(i * 8 + 4) & 0xfffffe00);
    const cacheBytes = l2CacheBytes ?? 4 * MiB;
    this.l2Cache = new Lru(Math.max(16, Math.floor(cacheBytes / cs)));
    this.rbCache = new Lru(Math.max(16, Math.floor((2 * MiB) / cs)));
    this.compressedShift = 62 - (cb - 8);
    this.compressedMask = (1n << BigInt(cb - 8)) - 1n;
    this.compressedOffsetMask = (1n << BigInt(this.compressedShift)) - 1n;
    this.reserveBatch = Math.min(1024, Math.max(16, Math.floor((4 * MiB) / cs)));
    if (hasBitmaps && writable && this.autoclear & 1n) {
      log.warn(`${file}: has persistent dirty bitmaps; this handler does not update them, so they are marked inconsistent on the first write`);
    }
    // Backing file, read-only.
    if (backingOffset !== 0 && backingSize > 0) {
      const name = Buffer.from(head.subarray(backingOffset, backingOffset + backingSize)).toString('utf8');
      this.backing = openBacking(file, name, backingFormat, backingOpts);
    }
  }

  describe(): string {
    const parts = [`qcow2 v${this.version}`, `${sizeText(this.clusterSize)} clusters`, `${this.refcountBits}-bit refcounts`, `${this.size} bytes`];
    if (this.snapshots > 0) parts.push(`${this.snapshots} internal snapshot(s), written copy-on-write`);
    let s = `${parts.join(', ')}: ${this.path}`;
    if (this.backing) s += `; backing ${this.backing.describe()}`;
    return s;
  }

  // ------------------------------------------------------------ lookups

  /** Report corruption: log it, stop writing for the rest of this session, and fail the IO. */
  private corrupt(what: string): Error {
    const msg = `${this.path}: corrupt qcow2 metadata: ${what}; no more writes to this image until it is checked ('qemu-img check')`;
    if (this.brokenReason === undefined) this.log.error(msg);
    this.brokenReason ??= what;
    return errnoError('EIO', msg);
  }

  private table(l1i: number): Uint8Array | undefined {
    if (l1i === this.lastL1) return this.lastTable;
    const off = this.l1[l1i];
    if (off === 0) {
      this.lastL1 = l1i;
      this.lastTable = undefined;
      this.lastView = undefined;
      return undefined;
    }
    let t = this.l2Cache.get(off);
    if (t === undefined) {
      if (off % this.clusterSize !== 0) throw this.corrupt(`L1 entry ${l1i} points at unaligned offset ${off}`);
      if (off + this.clusterSize > this.eofCluster * this.clusterSize) throw this.corrupt(`L1 entry ${l1i} points past the end of the file (${off})`);
      t = new Uint8Array(this.clusterSize);
      preadFull(this.fd, t, off);
      this.l2Cache.set(off, t);
    }
    this.lastL1 = l1i;
    this.lastTable = t;
    this.lastView = new DataView(t.buffer, t.byteOffset, t.byteLength);
    return t;
  }

  /** Classify guest cluster `ci`; sets mHost, mHi, mLo. */
  private lookup(ci: number): Kind {
    const l1i = Math.floor(ci / this.l2Entries);
    const t = this.table(l1i);
    if (t === undefined) {
      this.mHi = this.mLo = this.mHost = 0;
      return Kind.Unallocated;
    }
    const at = (ci - l1i * this.l2Entries) * 8;
    const v = this.lastView!;
    const hi = v.getUint32(at);
    const lo = v.getUint32(at + 4);
    this.mHi = hi;
    this.mLo = lo;
    return this.decode(hi, lo, ci);
  }

  private decode(hi: number, lo: number, ci: number): Kind {
    if (hi & COMPRESSED) {
      this.mHost = 0;
      return Kind.Compressed;
    }
    const host = (hi & 0x00ffffff) * TWO32 + ((lo & 0xfffffe00) >>> 0);
    this.mHost = host;
    if (lo & ZERO_FLAG) {
      if (this.version < 3) throw this.corrupt(`zero flag in a version 2 image (guest cluster ${ci})`);
      if (host === 0) return Kind.ZeroPlain;
      if (host % this.clusterSize !== 0) throw this.corrupt(`guest cluster ${ci} maps to unaligned offset ${host}`);
      return Kind.ZeroAlloc;
    }
    if (host === 0) return Kind.Unallocated;
    if (host % this.clusterSize !== 0) throw this.corrupt(`guest cluster ${ci} maps to unaligned offset ${host}`);
    if (host >= this.eofCluster * this.clusterSize) throw this.corrupt(`guest cluster ${ci} maps past the end of the file (${host})`);
    return Kind.Normal;
  }

  /** [start, end) host bytes of a compressed descriptor, start rounded down to 512 as refcounting counts it. */
  private compressedRange(hi: number, lo: number): { offset: number; start: number; end: number } {
    const e = (BigInt(hi) << 32n) | BigInt(lo);
    const offset = Number(e & this.compressedOffsetMask);
    const sectors = Number((e >> BigInt(this.compressedShift)) & this.compressedMask) + 1;
    const start = offset - (offset % 512);
    return { offset, start, end: start + sectors * 512 };
  }

  private decompress(hi: number, lo: number, ci: number): Uint8Array {
    const key = `${hi}:${lo}`;
    if (this.lastDecompressed?.key === key) return this.lastDecompressed.data;
    const { offset, end } = this.compressedRange(hi, lo);
    if (offset >= this.fileSize) throw this.corrupt(`compressed guest cluster ${ci} starts past the end of the file`);
    const input = new Uint8Array(end - offset);
    preadFull(this.fd, input, offset);
    const data = inflateCluster(input, this.clusterSize);
    if (data === undefined) throw this.corrupt(`compressed guest cluster ${ci} at ${offset} does not inflate to a cluster`);
    this.lastDecompressed = { key, data };
    return data;
  }

  // ------------------------------------------------------------ read

  read(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    if (offset + length > this.size) {
      const inside = Math.max(0, this.size - offset);
      zeroBuffers(bufs, at + inside, length - inside);
      length = inside;
    }
    const cs = this.clusterSize;
    const end = offset + length;
    while (offset < end) {
      const ci = Math.floor(offset / cs);
      const inCl = offset - ci * cs;
      let n = Math.min(end - offset, cs - inCl);
      const kind = this.lookup(ci);
      switch (kind) {
        case Kind.Normal: {
          const host = this.mHost + inCl;
          // Neighbours that follow on disk too: one pread.
          while (offset + n < end && this.lookup(ci + Math.ceil(n / cs)) === Kind.Normal && this.mHost === host + n) n += Math.min(cs, end - offset - n);
          readInto(this.fd, bufs, at, n, host);
          break;
        }
        case Kind.Unallocated:
          while (offset + n < end && this.lookup(ci + Math.ceil(n / cs)) === Kind.Unallocated) n += Math.min(cs, end - offset - n);
          if (this.backing) this.backing.read(bufs, at, offset, n);
          else zeroBuffers(bufs, at, n);
          break;
        case Kind.ZeroPlain:
        case Kind.ZeroAlloc:
          zeroBuffers(bufs, at, n);
          break;
        case Kind.Compressed:
          copyToBuffers(bufs, this.decompress(this.mHi, this.mLo, ci).subarray(inCl, inCl + n), at);
          break;
      }
      at += n;
      offset += n;
    }
  }

  // ------------------------------------------------------------ refcounts

  private refblock(r: number): Uint8Array | undefined {
    if (r >= this.rt.length || this.rt[r] === 0) return undefined;
    const off = this.rt[r];
    let b = this.rbCache.get(off);
    if (b === undefined) {
      if (off % this.clusterSize !== 0 || off >= this.eofCluster * this.clusterSize) throw this.corrupt(`refcount table entry ${r} points at ${off}`);
      b = new Uint8Array(this.clusterSize);
      preadFull(this.fd, b, off);
      this.rbCache.set(off, b);
    }
    return b;
  }

  private getRc(b: Uint8Array, i: number): number {
    const bits = this.refcountBits;
    if (bits < 8) return (b[(i * bits) >> 3] >> ((i * bits) & 7)) & ((1 << bits) - 1);
    const w = bits >> 3;
    let v = 0;
    for (let k = 0; k < w; k++) v = v * 256 + b[i * w + k];
    return v;
  }

  /** Set entry i of block b in memory; returns the byte range to write. */
  private setRc(b: Uint8Array, i: number, v: number): [number, number] {
    const bits = this.refcountBits;
    if (bits < 8) {
      const byte = (i * bits) >> 3;
      const shift = (i * bits) & 7;
      const mask = ((1 << bits) - 1) << shift;
      b[byte] = (b[byte] & ~mask) | ((v << shift) & mask);
      return [byte, byte + 1];
    }
    const w = bits >> 3;
    for (let k = w - 1, x = v; k >= 0; k--, x = Math.floor(x / 256)) b[i * w + k] = x & 0xff;
    return [i * w, i * w + w];
  }

  refcount(cluster: number): number {
    const r = Math.floor(cluster / this.rbEntries);
    const b = this.refblock(r);
    return b === undefined ? 0 : this.getRc(b, cluster - r * this.rbEntries);
  }

  /** Write refcount `v` for `cluster`, creating its refcount block if needed. */
  private writeRefcount(cluster: number, v: number): void {
    if (v > 2 ** Math.min(this.refcountBits, 52) - 1) throw errnoError('EIO', `${this.path}: refcount overflow`);
    const r = Math.floor(cluster / this.rbEntries);
    this.ensureRefblock(r);
    const b = this.refblock(r)!;
    const [from, to] = this.setRc(b, cluster - r * this.rbEntries, v);
    pwriteFull(this.fd, b.subarray(from, to), this.rt[r] + from, this.path);
  }

  private noteExtent(end: number): void {
    if (end > this.fileSize) this.fileSize = end;
  }

  /** Make refcount block r exist on disk and in the table (it may describe itself). */
  private ensureRefblock(r: number): void {
    if (r < this.rt.length && this.rt[r] !== 0) return;
    const cs = this.clusterSize;
    const E = this.rbEntries;
    const p = this.eofCluster;
    const pr = Math.floor(p / E);
    if (r >= this.rt.length || pr >= this.rt.length) {
      this.growRefcountTable([r, pr]);
      return;
    }
    this.eofCluster++;
    const block = new Uint8Array(cs);
    if (pr === r) this.setRc(block, p - r * E, 1);
    else this.writeRefcount(p, 1); // counted in another block first, so a crash leaves a leak at most
    pwriteFull(this.fd, block, p * cs, this.path);
    this.noteExtent((p + 1) * cs);
    fs.fdatasyncSync(this.fd); // the block is stable before the table points at it
    this.rt[r] = p * cs;
    this.rbCache.set(p * cs, block);
    pwriteFull(this.fd, u64be(p * cs), this.rtOffset + r * 8, this.path);
  }

  /**
   * A larger refcount table, written after the end of the file together
   * with the refcount blocks needed for `need` and for the new clusters
   * themselves; the header switches to it in one 12-byte write.
   */
  private growRefcountTable(need: number[]): void {
    const cs = this.clusterSize;
    const E = this.rbEntries;
    const perCluster = cs / 8;
    let entries = Math.max(this.rt.length * 2, Math.max(...need) + 1);
    const start = this.eofCluster;
    let blocks: number[] = [];
    let tableClusters = 0;
    for (let guard = 0; ; guard++) {
      if (guard > 64) throw errnoError('EIO', `${this.path}: cannot size a new refcount table`);
      entries = Math.ceil(entries / perCluster) * perCluster;
      tableClusters = entries / perCluster;
      const want = new Set<number>();
      for (const r of need) if (r >= this.rt.length || this.rt[r] === 0) want.add(r);
      // Blocks covering [start, start + blocks + table): iterate until the count settles.
      let nb = want.size;
      for (;;) {
        const cover = new Set(want);
        const last = start + nb + tableClusters - 1;
        for (let r = Math.floor(start / E); r <= Math.floor(last / E); r++) if (r >= this.rt.length || this.rt[r] === 0) cover.add(r);
        if (cover.size === nb) {
          blocks = [...cover].sort((a, b) => a - b);
          break;
        }
        nb = cover.size;
      }
      if (blocks[blocks.length - 1] < entries) break;
      entries = blocks[blocks.length - 1] + 1;
    }
    const total = blocks.length + tableClusters;
    const newRt = new Float64Array(entries);
    newRt.set(this.rt);
    const blockData = new Map<number, Uint8Array>();
    blocks.forEach((r, k) => {
      newRt[r] = (start + k) * cs;
      blockData.set(r, new Uint8Array(cs));
    });
    // Refcount 1 for every new cluster: in the new blocks, or in existing ones.
    for (let c = start; c < start + total; c++) {
      const r = Math.floor(c / E);
      const nbk = blockData.get(r);
      if (nbk) this.setRc(nbk, c - r * E, 1);
      else this.writeRefcount(c, 1);
    }
    blocks.forEach((r, k) => pwriteFull(this.fd, blockData.get(r)!, (start + k) * cs, this.path));
    const table = new Uint8Array(tableClusters * cs);
    const tv = new DataView(table.buffer);
    for (let i = 0; i < entries; i++) if (newRt[i] !== 0) setU64(tv, i * 8, newRt[i]);
    const tableOff = (start + blocks.length) * cs;
    pwriteFull(this.fd, table, tableOff, this.path);
    this.eofCluster = start + total;
    this.noteExtent(this.eofCluster * cs);
    fs.fdatasyncSync(this.fd);
    const hdr = new Uint8Array(12);
    const hv = new DataView(hdr.buffer);
    setU64(hv, 0, tableOff);
    hv.setUint32(8, tableClusters);
    pwriteFull(this.fd, hdr, 48, this.path);
    fs.fdatasyncSync(this.fd);
    const oldOff = this.rtOffset;
    const oldClusters = this.rtClusters;
    this.rt = newRt;
    this.rtOffset = tableOff;
    this.rtClusters = tableClusters;
    for (const [r, b] of blockData) this.rbCache.set(newRt[r], b);
    // The old table is referenced by nothing once the header is stable.
    for (let c = oldOff / cs; c < oldOff / cs + oldClusters; c++) this.decref(c);
  }

  private decref(cluster: number): void {
    const rc = this.refcount(cluster);
    if (rc === 0) {
      this.log.warn(`${this.path}: cluster ${cluster} freed with refcount 0 already`);
      return;
    }
    this.writeRefcount(cluster, rc - 1);
    if (rc === 1) this.freeList.push(cluster);
  }

  /** Make at least n clusters reserved (refcount 1 on stable media), in batches. */
  private reserve(n: number): void {
    const have = this.reserved.length - this.reservedHead;
    if (have >= n) return;
    if (this.reservedHead > 0) {
      this.reserved = this.reserved.slice(this.reservedHead);
      this.reservedFresh = this.reservedFresh.slice(this.reservedHead);
      this.reservedHead = 0;
    }
    let want = Math.max(n - have, this.reserveBatch);
    // Clusters we freed ourselves first, lowest first, then free ones found
    // by the scan, then new ones at the end of the file.
    if (this.freeList.length > 0) {
      this.freeList.sort((a, b) => b - a);
      while (want > 0 && this.freeList.length > 0) {
        const c = this.freeList.pop()!;
        if (this.refcount(c) !== 0) continue;
        this.writeRefcount(c, 1);
        this.reserved.push(c);
        this.reservedFresh.push(false);
        want--;
      }
    }
    while (want > 0 && this.scanCursor < this.scanLimit) {
      const c = this.scanCursor++;
      const r = Math.floor(c / this.rbEntries);
      if (this.refblock(r) === undefined) continue; // a hole in the refcount table: let the end-of-file path create blocks
      if (this.refcount(c) !== 0) continue;
      this.writeRefcount(c, 1);
      this.reserved.push(c);
      this.reservedFresh.push(false);
      want--;
    }
    while (want > 0) {
      const c = this.eofCluster++;
      // A cluster past the end of the file should be free; never trust that blindly.
      if (this.refcount(c) !== 0) continue;
      this.writeRefcount(c, 1);
      this.reserved.push(c);
      this.reservedFresh.push(true);
      want--;
    }
    const end = this.eofCluster * this.clusterSize;
    if (end > this.fileSize) {
      fs.ftruncateSync(this.fd, end);
      this.fileSize = end;
    }
    this.sync();
  }

  private take(): { cluster: number; fresh: boolean } {
    if (this.reservedHead >= this.reserved.length) throw new Error('qcow2: no reserved cluster (bug)');
    const k = this.reservedHead++;
    return { cluster: this.reserved[k], fresh: this.reservedFresh[k] };
  }

  /** fdatasync, then the decrements that were waiting for it. */
  private sync(): void {
    fs.fdatasyncSync(this.fd);
    if (this.pendingFree.length === 0) return;
    const frees = this.pendingFree;
    this.pendingFree = [];
    for (const c of frees) this.decref(c);
  }

  /** Drop a reference to what a replaced entry pointed at, after the next sync. */
  private queueFree(kind: Kind, host: number, hi: number, lo: number): void {
    const cs = this.clusterSize;
    if (kind === Kind.Normal || kind === Kind.ZeroAlloc) this.pendingFree.push(host / cs);
    else if (kind === Kind.Compressed) {
      const { start, end } = this.compressedRange(hi, lo);
      for (let c = Math.floor(start / cs); c <= Math.floor((end - 1) / cs); c++) this.pendingFree.push(c);
      this.lastDecompressed = undefined;
    }
  }

  // ------------------------------------------------------------ write

  private checkWritable(): void {
    if (!this.writable) throw errnoError('EROFS', `${this.path} is open read-only`);
    if (this.brokenReason !== undefined) throw errnoError('EIO', `${this.path}: not writing after finding corrupt metadata (${this.brokenReason})`);
    if (!this.prepared) {
      this.prepared = true;
      if (this.autoclear !== 0n) {
        // Auto-clear features (bitmaps, raw external data) we do not keep up
        // to date: the spec says to clear their bits before writing.
        pwriteFull(this.fd, new Uint8Array(8), 88, this.path);
        this.autoclear = 0n;
      }
    }
  }

  private growPlan(n: number): void {
    if (this.plan.length >= n) return;
    const m = Math.max(n, 64);
    this.plan = new Uint8Array(m);
    this.oldKind = new Uint8Array(m);
    this.oldHost = new Float64Array(m);
    this.oldHi = new Uint32Array(m);
    this.oldLo = new Uint32Array(m);
    this.newHi = new Uint32Array(m);
    this.newLo = new Uint32Array(m);
    this.changed = new Uint8Array(m);
    this.drops = new Uint8Array(m);
  }

  /** Record the current entry of guest cluster ci as cluster k of the plan. */
  private planCluster(k: number, ci: number): Kind {
    const kind = this.lookup(ci);
    this.oldKind[k] = kind;
    this.oldHost[k] = this.mHost;
    this.oldHi[k] = this.mHi;
    this.oldLo[k] = this.mLo;
    this.changed[k] = 0;
    this.drops[k] = 0;
    return kind;
  }

  /** New entry for cluster k: a standard cluster at `host` (refcount 1, so COPIED), with or without the zero flag. */
  private setNew(k: number, host: number, zero: boolean, drops: boolean): void {
    this.newHi[k] = host === 0 ? 0 : (Math.floor(host / TWO32) | COPIED) >>> 0;
    this.newLo[k] = ((host % TWO32) | (zero ? ZERO_FLAG : 0)) >>> 0;
    this.changed[k] = 1;
    this.drops[k] = drops ? 1 : 0;
  }

  private scratchBuf(k: number): Uint8Array {
    while (this.scratch.length <= k) this.scratch.push(new Uint8Array(this.clusterSize));
    return this.scratch[k];
  }

  /** Whether the L2 table of l1i may be changed in place (exists with refcount 1). */
  private tableExclusive(l1i: number): boolean {
    const off = this.l1[l1i];
    if (off === 0) return false;
    if (this.l1Copied[l1i]) return true;
    return this.refcount(off / this.clusterSize) === 1;
  }

  /** The guest cluster's current contents (for merging a partial write into a new cluster). */
  private fillSource(dst: Uint8Array, ci: number, kind: Kind, host: number, hi: number, lo: number): void {
    const cs = this.clusterSize;
    switch (kind) {
      case Kind.Unallocated:
        if (this.backing) this.backing.read([dst], 0, ci * cs, cs);
        else dst.fill(0);
        return;
      case Kind.ZeroPlain:
      case Kind.ZeroAlloc:
        dst.fill(0);
        return;
      case Kind.Normal:
        preadFull(this.fd, dst, host);
        return;
      case Kind.Compressed:
        dst.set(this.decompress(hi, lo, ci));
        return;
    }
  }

  provisioningRun(offset: number, limit: number): { deallocated: boolean; length: number } {
    const cs = this.clusterSize;
    const ci = Math.floor(offset / cs);
    const deallocated = this.isDeallocated(ci);
    let end = Math.min(limit, (ci + 1) * cs);
    while (end < limit && this.isDeallocated(end / cs) === deallocated) end = Math.min(limit, end + cs);
    return { deallocated, length: end - offset };
  }

  /** Reads zeros without a host cluster: the zero flag alone, or unallocated with nothing showing through (a zero flag that keeps its cluster is still provisioned). */
  private isDeallocated(ci: number): boolean {
    const kind = this.lookup(ci);
    return kind === Kind.ZeroPlain || (kind === Kind.Unallocated && this.sourceIsZero(ci, kind));
  }

  /** Whether the source of a guest cluster is known to be zeros without reading anything. */
  private sourceIsZero(ci: number, kind: Kind): boolean {
    if (kind === Kind.ZeroPlain || kind === Kind.ZeroAlloc) return true;
    if (kind !== Kind.Unallocated) return false;
    return this.backing === undefined || ci * this.clusterSize >= this.backing.size;
  }

  write(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    this.checkWritable();
    if (offset + length > this.size) throw errnoError('EINVAL', `${this.path}: write past the virtual size`);
    const span = this.l2Entries * this.clusterSize;
    while (length > 0) {
      const n = Math.min(length, span - (offset % span));
      this.writeChunk(bufs, at, offset, n);
      at += n;
      offset += n;
      length -= n;
    }
  }

  /** A write inside one L2 table's span: plan every cluster, data first, then the entries. */
  private writeChunk(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    const cs = this.clusterSize;
    const c0 = Math.floor(offset / cs);
    const c1 = Math.floor((offset + length - 1) / cs);
    const count = c1 - c0 + 1;
    const l1i = Math.floor(c0 / this.l2Entries);
    this.growPlan(count);
    this.table(l1i);
    // A missing or shared (snapshot) table is copied first, and then every
    // cluster in it needs a cluster of its own too.
    const exclusive = this.tableExclusive(l1i);
    let allocs = 0;
    let entries = 0;
    for (let k = 0; k < count; k++) {
      const kind = this.planCluster(k, c0 + k);
      const host = this.mHost;
      let p = Plan.Allocate;
      if (exclusive && (kind === Kind.Normal || kind === Kind.ZeroAlloc)) {
        const copied = (this.mHi & COPIED) !== 0;
        if (copied || this.refcount(host / cs) === 1) {
          if (kind === Kind.Normal) {
            p = Plan.InPlace;
            if (!copied) {
              this.setNew(k, host, false, false); // repair the flag
              entries++;
            }
          } else p = Plan.Reuse;
        }
      }
      if (p === Plan.Allocate) allocs++;
      if (p === Plan.Allocate || p === Plan.Reuse) entries++;
      this.plan[k] = p;
    }
    const needTable = !exclusive;
    if (allocs + (needTable ? 1 : 0) > 0) this.reserve(allocs + (needTable ? 1 : 0));
    // Data: coalesce pieces that are contiguous both in the buffers and on disk.
    let runPos = 0;
    let runAt = 0;
    let runLen = 0;
    let scratchUsed = 0;
    for (let k = 0; k < count; k++) {
      const ci = c0 + k;
      const from = k === 0 ? offset - ci * cs : 0;
      const to = k === count - 1 ? offset + length - ci * cs : cs;
      const bufAt = at + (ci * cs + from - offset);
      const p = this.plan[k] as Plan;
      let dest: number;
      let merged: Uint8Array | undefined;
      if (p === Plan.InPlace) dest = this.oldHost[k] + from;
      else {
        let fresh = false;
        let host = this.oldHost[k]; // Reuse keeps its cluster
        if (p === Plan.Allocate) {
          const t = this.take();
          host = t.cluster * cs;
          fresh = t.fresh;
        }
        this.setNew(k, host, false, p === Plan.Allocate);
        const kind = this.oldKind[k] as Kind;
        if ((from === 0 && to === cs) || (fresh && this.sourceIsZero(ci, kind))) dest = host + from;
        else {
          merged = this.scratchBuf(scratchUsed++);
          if (p === Plan.Reuse) merged.fill(0);
          else this.fillSource(merged, ci, kind, this.oldHost[k], this.oldHi[k], this.oldLo[k]);
          copyFromBuffers(bufs, merged.subarray(from, to), bufAt);
          dest = host;
        }
        this.noteExtent(host + cs);
      }
      if (merged !== undefined) {
        if (runLen > 0) writeFrom(this.fd, bufs, runAt, runLen, runPos, this.path);
        runLen = 0;
        pwriteFull(this.fd, merged, dest, this.path);
        continue;
      }
      const n = to - from;
      if (runLen > 0 && runPos + runLen === dest && runAt + runLen === bufAt) runLen += n;
      else {
        if (runLen > 0) writeFrom(this.fd, bufs, runAt, runLen, runPos, this.path);
        runPos = dest;
        runAt = bufAt;
        runLen = n;
      }
    }
    if (runLen > 0) writeFrom(this.fd, bufs, runAt, runLen, runPos, this.path);
    if (entries > 0 || needTable) this.commitEntries(l1i, c0, count, needTable);
  }

  /**
   * Write the changed L2 entries of one table (the plan's newHi/newLo where
   * `changed`). With `newTable` the table is first copied (or created) into
   * a reserved cluster, written whole, and then the L1 entry is switched to
   * it. Last, what lost a reference is queued for release.
   */
  private commitEntries(l1i: number, c0: number, count: number, newTable: boolean): void {
    const cs = this.clusterSize;
    const base = l1i * this.l2Entries;
    const oldTableOff = this.l1[l1i];
    let t: Uint8Array;
    if (newTable) {
      t = new Uint8Array(cs);
      const old = this.table(l1i);
      if (old) t.set(old);
    } else t = this.table(l1i)!;
    const tv = new DataView(t.buffer, t.byteOffset, t.byteLength);
    let lo = Infinity;
    let hi = -1;
    for (let k = 0; k < count; k++) {
      if (!this.changed[k]) continue;
      const at = (c0 + k - base) * 8;
      tv.setUint32(at, this.newHi[k]);
      tv.setUint32(at + 4, this.newLo[k]);
      if (at < lo) lo = at;
      if (at + 8 > hi) hi = at + 8;
    }
    if (newTable) {
      const off = this.take().cluster * cs;
      pwriteFull(this.fd, t, off, this.path);
      this.noteExtent(off + cs);
      pwriteFull(this.fd, l1Entry(off), this.l1TableOffset + l1i * 8, this.path);
      if (oldTableOff !== 0) {
        this.l2Cache.delete(oldTableOff);
        this.pendingFree.push(oldTableOff / cs);
      }
      this.l1[l1i] = off;
      this.l1Copied[l1i] = 1;
      this.l2Cache.set(off, t);
      this.lastL1 = -1;
    } else {
      if (hi > lo) pwriteFull(this.fd, t.subarray(lo, hi), oldTableOff + lo, this.path);
      if (!this.l1Copied[l1i]) {
        pwriteFull(this.fd, l1Entry(oldTableOff), this.l1TableOffset + l1i * 8, this.path);
        this.l1Copied[l1i] = 1;
      }
    }
    for (let k = 0; k < count; k++) {
      if (this.changed[k] && this.drops[k]) this.queueFree(this.oldKind[k] as Kind, this.oldHost[k], this.oldHi[k], this.oldLo[k]);
    }
  }

  // ------------------------------------------------------------ zero / unmap

  zero(offset: number, length: number, unmap: boolean): void {
    this.checkWritable();
    if (offset + length > this.size) throw errnoError('EINVAL', `${this.path}: zeroing past the virtual size`);
    const cs = this.clusterSize;
    const end = offset + length;
    // Partial clusters at either end get zeros written, unless they read as zeros already.
    if (offset % cs !== 0) {
      const headEnd = Math.min(end, Math.ceil(offset / cs) * cs);
      this.writeZerosIfNeeded(offset, headEnd - offset);
      offset = headEnd;
    }
    if (offset >= end) return;
    // The last guest cluster may be cut short by the virtual size: reaching its end counts as whole.
    const fullEnd = end === this.size ? end : Math.max(offset, Math.floor(end / cs) * cs);
    if (fullEnd < end) this.writeZerosIfNeeded(fullEnd, end - fullEnd);
    const span = this.l2Entries * cs;
    for (let o = offset; o < fullEnd;) {
      const n = Math.min(fullEnd - o, span - (o % span));
      this.zeroChunk(o, n, unmap);
      o += n;
    }
  }

  private writeZerosIfNeeded(offset: number, length: number): void {
    if (length <= 0) return;
    const ci = Math.floor(offset / this.clusterSize);
    if (this.sourceIsZero(ci, this.lookup(ci))) return;
    this.writeZeros(offset, length);
  }

  private writeZeros(offset: number, length: number): void {
    this.zeroBuf ??= new Uint8Array(Math.max(this.clusterSize, MiB));
    while (length > 0) {
      const n = Math.min(length, this.zeroBuf.byteLength);
      this.write([this.zeroBuf], 0, offset, n);
      offset += n;
      length -= n;
    }
  }

  private backingCovers(ci: number): boolean {
    return this.backing !== undefined && ci * this.clusterSize < this.backing.size;
  }

  /**
   * Whole clusters inside one L2 table's span. Version 3: UNMAP makes them
   * unallocated (zero flag where a backing file would show through) and
   * frees their clusters; WRITE SAME of zeros sets the zero flag and keeps a
   * cluster the image owns alone. Version 2 has no zero flag: unallocated
   * when nothing shows through and unmapping, else zeros are written.
   */
  private zeroChunk(offset: number, length: number, unmap: boolean): void {
    const cs = this.clusterSize;
    const c0 = offset / cs;
    const count = Math.ceil(length / cs);
    const l1i = Math.floor(c0 / this.l2Entries);
    this.growPlan(count);
    this.table(l1i);
    const exclusive = this.tableExclusive(l1i);
    const v3 = this.version >= 3;
    let entries = 0;
    const zeroWrites: number[] = [];
    for (let k = 0; k < count; k++) {
      const ci = c0 + k;
      const kind = this.planCluster(k, ci);
      const host = this.mHost;
      const shows = this.backingCovers(ci);
      if ((kind === Kind.Unallocated && !shows) || kind === Kind.ZeroPlain) continue;
      if (v3) {
        const own = exclusive && (kind === Kind.Normal || kind === Kind.ZeroAlloc) && ((this.mHi & COPIED) !== 0 || this.refcount(host / cs) === 1);
        if (!unmap && own) {
          if (kind === Kind.ZeroAlloc && this.mHi & COPIED) continue;
          this.setNew(k, host, true, false);
        } else if (unmap && !shows) this.setNew(k, 0, false, true);
        else this.setNew(k, 0, true, true);
        entries++;
      } else if (unmap && !shows) {
        this.setNew(k, 0, false, true);
        entries++;
      } else if (!this.sourceIsZero(ci, kind)) zeroWrites.push(ci);
    }
    if (entries > 0) {
      if (!exclusive) this.reserve(1);
      this.commitEntries(l1i, c0, count, !exclusive);
    }
    for (const ci of zeroWrites) this.writeZeros(ci * cs, Math.min(cs, this.size - ci * cs));
  }

  // ------------------------------------------------------------ flush / close

  flush(): void {
    this.sync();
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      if (this.writable && this.brokenReason === undefined) {
        this.sync();
        // Reserved clusters nobody used go back: refcount 0, and the file
        // shrinks again when they are its tail.
        const unused: { c: number; fresh: boolean }[] = [];
        for (let k = this.reservedHead; k < this.reserved.length; k++) unused.push({ c: this.reserved[k], fresh: this.reservedFresh[k] });
        this.reserved = [];
        this.reservedFresh = [];
        this.reservedHead = 0;
        for (const u of unused) this.writeRefcount(u.c, 0);
        const fresh = new Set(unused.filter((u) => u.fresh).map((u) => u.c));
        let end = this.eofCluster;
        while (end > 0 && fresh.has(end - 1)) end--;
        if (end < this.eofCluster) {
          const bytes = Math.max(end * this.clusterSize, this.openedSize);
          fs.ftruncateSync(this.fd, bytes);
          this.fileSize = bytes;
          this.eofCluster = end;
        }
        fs.fdatasyncSync(this.fd);
      }
    } finally {
      fs.closeSync(this.fd);
      this.fd = -1;
      this.backing?.close();
    }
  }
}

function setU64(dv: DataView, at: number, v: number): void {
  dv.setUint32(at, Math.floor(v / TWO32));
  dv.setUint32(at + 4, v % TWO32);
}

function u64be(v: number): Uint8Array {
  const b = new Uint8Array(8);
  setU64(new DataView(b.buffer), 0, v);
  return b;
}

function l1Entry(off: number): Uint8Array {
  const b = new Uint8Array(8);
  const dv = new DataView(b.buffer);
  dv.setUint32(0, (Math.floor(off / TWO32) | COPIED) >>> 0);
  dv.setUint32(4, off % TWO32);
  return b;
}

// ---------------------------------------------------------------- qcow (version 1)

const V1_COMPRESSED = 0x80000000; // bit 63

/**
 * qcow version 1: a 48-byte header, an L1 table, L2 tables of 2^l2_bits
 * entries, no refcounts (so nothing to leak-check), clusters appended at
 * the end of the file. Compressed clusters are raw deflate too, their byte
 * size stored above the offset. Write order as in qcow2: data, then L2
 * entry; a new L2 table is written (zeroed) before its L1 entry.
 */
export class QcowImage implements WritableImage {
  readonly format = 'qcow' as const;
  readonly size: number;
  readonly backing: ImageLayer | undefined;
  readonly clusterSize: number;
  private readonly clusterBits: number;
  private readonly l2Size: number;
  private readonly l1TableOffset: number;
  private readonly l1: Float64Array;
  private readonly l2Cache: Lru<Uint8Array>;
  private eof: number;
  private readonly offsetMask: bigint;
  private lastDecompressed: { key: string; data: Uint8Array } | undefined;
  private scratch: Uint8Array | undefined;
  private zeroBuf: Uint8Array | undefined;

  constructor(private fd: number, readonly path: string, readonly writable: boolean, backingOpts: OpenImageOptions, _log: NonNullable<OpenImageOptions['log']>) {
    const file = path;
    const head = readHead(fd, 4096);
    if (head.byteLength < 48) throw refuse(file, 'qcow header is truncated');
    const dv = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const backingOffset = u64(dv, 8, 'backing_file_offset', file);
    const backingSize = dv.getUint32(16);
    this.size = u64(dv, 24, 'virtual size', file);
    const cb = head[32];
    const l2Bits = head[33];
    const crypt = dv.getUint32(36);
    this.l1TableOffset = u64(dv, 40, 'l1_table_offset', file);
    if (crypt !== 0) throw refuse(file, 'is an AES-encrypted qcow image; encrypted images are not supported (decrypt with qemu-img convert)');
    if (cb < 9 || cb > 16) throw refuse(file, `qcow cluster_bits ${cb}: qcow v1 allows 512 B to 64 KiB clusters`);
    if (l2Bits < 6 || l2Bits > 13) throw refuse(file, `qcow l2_bits ${l2Bits} out of range`);
    if (this.size <= 1) throw refuse(file, 'virtual size is too small');
    this.clusterBits = cb;
    this.clusterSize = 1 << cb;
    this.l2Size = 1 << l2Bits;
    const l1Size = Math.ceil(this.size / 2 ** (cb + l2Bits));
    const l1Bytes = new Uint8Array(l1Size * 8);
    preadFull(fd, l1Bytes, this.l1TableOffset);
    const l1v = new DataView(l1Bytes.buffer);
    this.l1 = new Float64Array(l1Size);
    for (let i = 0; i < l1Size; i++) this.l1[i] = l1v.getUint32(i * 8) * TWO32 + l1v.getUint32(i * 8 + 4);
    this.l2Cache = new Lru(64);
    this.eof = fs.fstatSync(fd).size;
    this.offsetMask = (1n << BigInt(63 - cb)) - 1n;
    if (backingOffset !== 0 && backingSize > 0) {
      if (backingSize > 1023) throw refuse(file, `backing file name of ${backingSize} bytes is too long`);
      const nameBuf = new Uint8Array(backingSize);
      preadFull(fd, nameBuf, backingOffset);
      this.backing = openBacking(file, Buffer.from(nameBuf).toString('utf8'), undefined, backingOpts);
    }
  }

  describe(): string {
    let s = `qcow v1, ${sizeText(this.clusterSize)} clusters, ${this.size} bytes: ${this.path}`;
    if (this.backing) s += `; backing ${this.backing.describe()}`;
    return s;
  }

  private l2(l1i: number): { t: Uint8Array; v: DataView } | undefined {
    const off = this.l1[l1i];
    if (off === 0) return undefined;
    let t = this.l2Cache.get(off);
    if (t === undefined) {
      if (off > Number.MAX_SAFE_INTEGER || off >= this.eof) throw errnoError('EIO', `${this.path}: corrupt qcow metadata: L1 entry ${l1i} points at ${off}`);
      t = new Uint8Array(this.l2Size * 8);
      preadFull(this.fd, t, off);
      this.l2Cache.set(off, t);
    }
    return { t, v: new DataView(t.buffer, t.byteOffset, t.byteLength) };
  }

  /** 0: unallocated; >0: host offset; -1: compressed (words in this.cw). */
  private cwHi = 0;
  private cwLo = 0;
  private entry(ci: number): number {
    const l1i = Math.floor(ci / this.l2Size);
    const t = this.l2(l1i);
    if (t === undefined) return 0;
    const at = (ci - l1i * this.l2Size) * 8;
    const hi = t.v.getUint32(at);
    const lo = t.v.getUint32(at + 4);
    if (hi & V1_COMPRESSED) {
      this.cwHi = hi;
      this.cwLo = lo;
      return -1;
    }
    const off = hi * TWO32 + lo;
    if (off !== 0 && (off % this.clusterSize !== 0 || off >= this.eof)) throw errnoError('EIO', `${this.path}: corrupt qcow metadata: guest cluster ${ci} maps to ${off}`);
    return off;
  }

  private decompress(ci: number): Uint8Array {
    const key = `${this.cwHi}:${this.cwLo}`;
    if (this.lastDecompressed?.key === key) return this.lastDecompressed.data;
    const e = (BigInt(this.cwHi) << 32n) | BigInt(this.cwLo);
    const off = Number(e & this.offsetMask);
    const csize = Number((e >> BigInt(63 - this.clusterBits)) & BigInt(this.clusterSize - 1));
    const input = new Uint8Array(csize);
    preadFull(this.fd, input, off);
    const data = inflateCluster(input, this.clusterSize);
    if (data === undefined) throw errnoError('EIO', `${this.path}: corrupt qcow data: compressed guest cluster ${ci} does not inflate`);
    this.lastDecompressed = { key, data };
    return data;
  }

  read(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    if (offset + length > this.size) {
      const inside = Math.max(0, this.size - offset);
      zeroBuffers(bufs, at + inside, length - inside);
      length = inside;
    }
    const cs = this.clusterSize;
    const end = offset + length;
    while (offset < end) {
      const ci = Math.floor(offset / cs);
      const inCl = offset - ci * cs;
      const n = Math.min(end - offset, cs - inCl);
      const e = this.entry(ci);
      if (e > 0) readInto(this.fd, bufs, at, n, e + inCl);
      else if (e < 0) copyToBuffers(bufs, this.decompress(ci).subarray(inCl, inCl + n), at);
      else if (this.backing) this.backing.read(bufs, at, offset, n);
      else zeroBuffers(bufs, at, n);
      at += n;
      offset += n;
    }
  }

  private allocate(bytes: number): number {
    const cs = this.clusterSize;
    const off = Math.ceil(this.eof / cs) * cs;
    this.eof = off + Math.ceil(bytes / cs) * cs;
    return off;
  }

  private setEntry(ci: number, hostOff: number): void {
    const l1i = Math.floor(ci / this.l2Size);
    let t = this.l2(l1i);
    if (t === undefined) {
      const bytes = this.l2Size * 8;
      const off = this.allocate(bytes);
      const table = new Uint8Array(bytes);
      pwriteFull(this.fd, table, off, this.path);
      fs.ftruncateSync(this.fd, Math.max(fs.fstatSync(this.fd).size, this.eof));
      pwriteFull(this.fd, u64be(off), this.l1TableOffset + l1i * 8, this.path);
      this.l1[l1i] = off;
      this.l2Cache.set(off, table);
      t = { t: table, v: new DataView(table.buffer) };
    }
    const at = (ci - l1i * this.l2Size) * 8;
    setU64(t.v, at, hostOff);
    pwriteFull(this.fd, t.t.subarray(at, at + 8), this.l1[l1i] + at, this.path);
  }

  write(bufs: readonly Uint8Array[], at: number, offset: number, length: number): void {
    if (!this.writable) throw errnoError('EROFS', `${this.path} is open read-only`);
    if (offset + length > this.size) throw errnoError('EINVAL', `${this.path}: write past the virtual size`);
    const cs = this.clusterSize;
    const end = offset + length;
    while (offset < end) {
      const ci = Math.floor(offset / cs);
      const inCl = offset - ci * cs;
      const n = Math.min(end - offset, cs - inCl);
      const e = this.entry(ci);
      if (e > 0) writeFrom(this.fd, bufs, at, n, e + inCl, this.path);
      else {
        // A new cluster at the end of the file, holding the merged contents.
        const c = (this.scratch ??= new Uint8Array(cs));
        if (n < cs) {
          if (e < 0) c.set(this.decompress(ci));
          else if (this.backing) this.backing.read([c], 0, ci * cs, cs);
          else c.fill(0);
        }
        copyFromBuffers(bufs, c.subarray(inCl, inCl + n), at);
        const host = this.allocate(cs);
        pwriteFull(this.fd, c, host, this.path);
        this.setEntry(ci, host);
        if (e < 0) this.lastDecompressed = undefined;
      }
      at += n;
      offset += n;
    }
  }

  zero(offset: number, length: number, unmap: boolean): void {
    if (!this.writable) throw errnoError('EROFS', `${this.path} is open read-only`);
    const cs = this.clusterSize;
    const end = offset + length;
    this.zeroBuf ??= new Uint8Array(cs);
    while (offset < end) {
      const ci = Math.floor(offset / cs);
      const inCl = offset - ci * cs;
      const n = Math.min(end - offset, cs - inCl);
      const e = this.entry(ci);
      const shows = this.backing !== undefined && ci * cs < this.backing.size;
      const whole = n === cs || (inCl === 0 && offset + n === this.size);
      if (e === 0 && !shows) {
        // reads as zeros already
      } else if (unmap && whole && !shows) this.setEntry(ci, 0); // the old cluster is simply abandoned: v1 has no refcounts
      else this.write([this.zeroBuf], 0, offset, n);
      offset += n;
    }
  }

  flush(): void {
    fs.fdatasyncSync(this.fd);
  }

  close(): void {
    if (this.fd < 0) return;
    try {
      if (this.writable) fs.fdatasyncSync(this.fd);
    } finally {
      fs.closeSync(this.fd);
      this.fd = -1;
      this.backing?.close();
    }
  }
}
