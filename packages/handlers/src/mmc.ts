/**
 * The answers of an MMC (CD/DVD) logical unit, as pure functions of what the
 * drive holds: GET CONFIGURATION, READ TOC, READ DISC INFORMATION, GET EVENT
 * STATUS NOTIFICATION, READ DVD STRUCTURE, MECHANISM STATUS, READ FORMAT
 * CAPACITIES and the mode pages. The fbo handler (fbo.ts) owns the state and
 * the CDB checks; every builder here returns the whole answer, which the
 * caller cuts to the allocation length (the length fields always describe
 * everything there is, as MMC asks).
 *
 * What the drive claims to be follows tcmu-runner's file_optical: a DVD
 * drive whose medium is DVD-RAM (profile 12h) when it is writable and
 * DVD-ROM (10h) when it is read only, with CD-ROM and CD-RW listed but never
 * current. Where tcmu-runner departs from MMC the comment says so.
 */
import { be16, put16, put24, put32 } from '@tcmu-ts/core';


/** MMC logical blocks are 2048 bytes, whatever the medium. */
export const MMC_BLOCK_SIZE = 2048;

export const MmcOp = {
  FORMAT_UNIT: 0x04,
  PREVENT_ALLOW_MEDIUM_REMOVAL: 0x1e,
  START_STOP_UNIT: 0x1b,
  READ_FORMAT_CAPACITIES: 0x23,
  READ_TOC: 0x43,
  GET_CONFIGURATION: 0x46,
  GET_EVENT_STATUS_NOTIFICATION: 0x4a,
  READ_DISC_INFORMATION: 0x51,
  MODE_SELECT_6: 0x15,
  MODE_SENSE_6: 0x1a,
  MODE_SELECT_10: 0x55,
  MODE_SENSE_10: 0x5a,
  READ_DVD_STRUCTURE: 0xad,
  MECHANISM_STATUS: 0xbd,
} as const;

export const Profile = {
  NONE: 0x0000,
  CD_ROM: 0x0008,
  CD_RW: 0x000a,
  DVD_ROM: 0x0010,
  DVD_RAM: 0x0012,
} as const;

/** What the answers depend on. */
export interface DriveView {
  /** A medium is in the drive (not ejected). */
  readonly present: boolean;
  /** The medium is read only (fbo's `ro/` option): DVD-ROM rather than DVD-RAM. */
  readonly readOnly: boolean;
  /** Capacity in 2048-byte blocks. */
  readonly numLbas: number;
  /** PREVENT ALLOW MEDIUM REMOVAL's Prevent bit. */
  readonly prevented: boolean;
}

// ---------------------------------------------------------------- bytes

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function currentProfile(d: DriveView): number {
  if (!d.present) return Profile.NONE;
  return d.readOnly ? Profile.DVD_ROM : Profile.DVD_RAM;
}

// ---------------------------------------------------------------- GET CONFIGURATION

interface Feature {
  readonly code: number;
  readonly version: number;
  readonly persistent: boolean;
  current(d: DriveView): boolean;
  data(d: DriveView): Uint8Array;
}

const always = () => true;
const never = () => false;
const withMedium = (d: DriveView) => d.present;
const writableMedium = (d: DriveView) => d.present && !d.readOnly;
const zeros = (n: number) => () => new Uint8Array(n);

/** The profiles, highest first as MMC lists them; the current one is flagged. */
const PROFILES = [Profile.DVD_RAM, Profile.DVD_ROM, Profile.CD_RW, Profile.CD_ROM];

/** Random Readable / Random Writable: block size, blocking of 16, PP (error recovery page present). */
function blockingData(prefix: readonly number[]): Uint8Array {
  const b = new Uint8Array(prefix.length * 4 + 8);
  let at = 0;
  for (const v of prefix) {
    put32(b, at, v);
    at += 4;
  }
  put32(b, at, MMC_BLOCK_SIZE);
  put16(b, at + 4, 16);
  b[at + 6] = 0x01; // PP
  return b;
}

/** tcmu-runner's feature list, in feature-number order (MMC-6 5.3). */
const FEATURES: readonly Feature[] = [
  {
    code: 0x0000, version: 0, persistent: true, current: always, // Profile List
    data: (d) => {
      const b = new Uint8Array(4 * PROFILES.length);
      PROFILES.forEach((p, i) => {
        put16(b, 4 * i, p);
        if (p === currentProfile(d)) b[4 * i + 2] = 0x01; // CurrentP
      });
      return b;
    },
  },
  {
    code: 0x0001, version: 1, persistent: true, current: always, // Core
    data: () => {
      const b = new Uint8Array(8);
      put32(b, 0, 0x00000001); // physical interface standard: SCSI
      b[4] = 0x01; // DBE: device busy events are reported
      return b;
    },
  },
  // Morphing: OCEvent (operational change events through GESN), no asynchronous GESN.
  { code: 0x0002, version: 1, persistent: true, current: always, data: () => Uint8Array.of(0x02, 0, 0, 0) },
  {
    // Removable Medium: a tray (loading mechanism 001b). tcmu-runner says it can
    // neither eject nor lock (20h); this drive does both (Eject 08h, Lock 01h).
    code: 0x0003, version: 0, persistent: true, current: always,
    data: () => Uint8Array.of(0x20 | 0x08 | 0x01, 0, 0, 0),
  },
  { code: 0x0010, version: 0, persistent: false, current: withMedium, data: () => blockingData([]) }, // Random Readable
  { code: 0x001d, version: 0, persistent: false, current: never, data: zeros(0) }, // Multi-Read
  { code: 0x001e, version: 2, persistent: false, current: never, data: zeros(4) }, // CD Read
  { code: 0x001f, version: 0, persistent: false, current: withMedium, data: zeros(0) }, // DVD Read
  {
    code: 0x0020, version: 1, persistent: false, current: writableMedium, // Random Writable
    data: (d) => blockingData([Math.max(0, d.numLbas - 1)]),
  },
  { code: 0x0021, version: 1, persistent: false, current: never, data: zeros(4) }, // Incremental Streaming Writable
  { code: 0x0023, version: 0, persistent: false, current: writableMedium, data: zeros(0) }, // Formattable
  { code: 0x0024, version: 1, persistent: false, current: writableMedium, data: zeros(4) }, // Hardware Defect Management
  { code: 0x0026, version: 0, persistent: false, current: never, data: zeros(0) }, // Restricted Overwrite
  { code: 0x002d, version: 2, persistent: false, current: never, data: zeros(4) }, // CD Track at Once
  { code: 0x0105, version: 1, persistent: false, current: always, data: zeros(4) }, // Timeout
];

/** The feature codes this drive knows, for tests and documentation. */
export const FEATURE_CODES: readonly number[] = FEATURES.map((f) => f.code);

function featureDescriptor(f: Feature, d: DriveView): Uint8Array {
  const data = f.data(d);
  const b = new Uint8Array(4 + data.length);
  put16(b, 0, f.code);
  b[2] = (f.version << 2) | (f.persistent ? 0x02 : 0) | (f.current(d) ? 0x01 : 0);
  b[3] = data.length;
  b.set(data, 4);
  return b;
}

/**
 * GET CONFIGURATION parameter data. RT 0: every feature from `start` on;
 * 1: the current ones from `start` on; 2: the one numbered `start`, if known.
 */
export function getConfiguration(d: DriveView, rt: 0 | 1 | 2, start: number): Uint8Array {
  const picked = FEATURES.filter((f) => (rt === 2 ? f.code === start : f.code >= start && (rt === 0 || f.current(d))));
  const header = new Uint8Array(8);
  const body = concat(picked.map((f) => featureDescriptor(f, d)));
  put32(header, 0, 4 + body.length); // DATA LENGTH: what follows the field
  put16(header, 6, currentProfile(d));
  return concat([header, body]);
}

// ---------------------------------------------------------------- READ TOC

/** CD frames: 75 a second, and the first track starts 2 seconds (150 frames) in. */
const FRAMES = 75;
const MSF_OFFSET = 150;
/** The largest MSF address: FFh:3Bh:4Ah. */
const MSF_MAX = (0xff * 60 + 59) * FRAMES + 74;

function msf(lba: number): Uint8Array {
  const f = lba + MSF_OFFSET;
  if (f > MSF_MAX) return Uint8Array.of(0, 0xff, 59, 74);
  return Uint8Array.of(0, Math.floor(f / (60 * FRAMES)), Math.floor(f / FRAMES) % 60, f % FRAMES);
}

function address(lba: number, useMsf: boolean): Uint8Array {
  if (useMsf) return msf(lba);
  const b = new Uint8Array(4);
  put32(b, 0, lba);
  return b;
}

function tocDescriptor(control: number, track: number, lba: number, useMsf: boolean): Uint8Array {
  const b = new Uint8Array(8);
  b[1] = 0x10 | control; // ADR 1: Q sub-channel position data
  b[2] = track;
  b.set(address(lba, useMsf), 4);
  return b;
}

export const LEAD_OUT = 0xaa;

/**
 * READ TOC format 0 (formatted TOC) of the one-track disc a DVD drive
 * fabricates: track 1 from LBA 0, the lead-out at the capacity. `fromTrack`
 * 0 or 1 lists both, AAh only the lead-out; the caller refuses the rest.
 * The lead-out's CONTROL is 7 on a writable medium, 4 on a read-only one,
 * as tcmu-runner sends them.
 */
export function readTocFormatted(d: DriveView, useMsf: boolean, fromTrack: number): Uint8Array {
  const descs: Uint8Array[] = [];
  if (fromTrack !== LEAD_OUT) descs.push(tocDescriptor(0x4, 1, 0, useMsf));
  descs.push(tocDescriptor(d.readOnly ? 0x4 : 0x7, LEAD_OUT, d.numLbas, useMsf));
  const header = Uint8Array.of(0, 0, 1, 1);
  put16(header, 0, 2 + 8 * descs.length);
  return concat([header, ...descs]);
}

/** READ TOC format 1 (multi-session information): one complete session, its first track at LBA 0. */
export function readTocSessionInfo(useMsf: boolean): Uint8Array {
  const header = Uint8Array.of(0, 10, 1, 1);
  return concat([header, tocDescriptor(0x4, 1, 0, useMsf)]);
}

// ---------------------------------------------------------------- READ DISC INFORMATION

/**
 * Standard disc information (data type 000b): one complete session with one
 * track; a writable medium is erasable with disc status "others" (random
 * access), a read-only one "complete". URU set, disc type 00h.
 */
export function readDiscInformation(d: DriveView): Uint8Array {
  const b = new Uint8Array(34);
  put16(b, 0, 32);
  b[2] = d.readOnly ? 0x0e : 0x1f; // ERASABLE, STATE OF LAST SESSION 11b (complete), DISC STATUS
  b[3] = 1; // first track on disc
  b[4] = 1; // number of sessions (LSB)
  b[5] = 1; // first track in last session (LSB)
  b[6] = 1; // last track in last session (LSB)
  b[7] = 0x20; // URU
  return b;
}

// ---------------------------------------------------------------- GET EVENT STATUS NOTIFICATION

export const EventClass = {
  OPERATIONAL_CHANGE: 1,
  MEDIA: 4,
  DEVICE_BUSY: 6,
} as const;

/** The classes this drive reports, as the SUPPORTED EVENT CLASSES byte shows them. */
export const SUPPORTED_EVENT_CLASSES = (1 << EventClass.OPERATIONAL_CHANGE) | (1 << EventClass.MEDIA) | (1 << EventClass.DEVICE_BUSY);

export const MediaEvent = {
  NO_CHANGE: 0,
  NEW_MEDIA: 2,
  MEDIA_REMOVAL: 3,
} as const;

/** GESN header alone: no requested class is supported (NEA). */
export function gesnNoEvent(): Uint8Array {
  return Uint8Array.of(0, 0, 0x80, SUPPORTED_EVENT_CLASSES);
}

/** GESN header and one 4-byte event descriptor of `cls`. */
export function gesnEvent(cls: number, descriptor: readonly number[]): Uint8Array {
  return Uint8Array.of(0, 4, cls, SUPPORTED_EVENT_CLASSES, ...descriptor.slice(0, 4));
}

/** Media class descriptor: event code, then the media status (tray open 01h, medium present 02h). */
export function mediaEventDescriptor(event: number, d: DriveView): number[] {
  return [event, d.present ? 0x02 : 0x01, 0, 0];
}

// ---------------------------------------------------------------- READ DVD STRUCTURE

/** Text of the disc manufacturing information (format 04h), as tcmu-runner's. */
const MANUFACTURER = 'VIRTUAL FB OPT';
/** MMC: the physical format and manufacturing structures are 2048 bytes after the 4-byte header. */
const DVD_STRUCTURE_FULL = 4 + 2048;

function dvdStructure(bodyLength: number): Uint8Array {
  const b = new Uint8Array(4 + bodyLength);
  put16(b, 0, bodyLength + 2);
  return b;
}

/** The formats offered: 00h, 01h, 04h always, 09h (DVD-RAM medium status) on a writable medium. */
export function dvdStructureFormats(d: DriveView): number[] {
  return d.readOnly ? [0x00, 0x01, 0x04] : [0x00, 0x01, 0x04, 0x09];
}

/**
 * READ DVD STRUCTURE of layer 0; undefined for a format not offered (the
 * caller answers INVALID FIELD IN CDB).
 */
export function readDvdStructure(d: DriveView, format: number): Uint8Array | undefined {
  switch (format) {
    case 0x00: {
      // Physical format information. The data area starts where DVD-ROM
      // (30000h) and DVD-RAM (31000h) discs start it.
      const b = dvdStructure(2048);
      const start = d.readOnly ? 0x030000 : 0x031000;
      b[4] = d.readOnly ? 0x02 : 0x12; // BOOK TYPE (0 DVD-ROM, 1 DVD-RAM), PART VERSION 2
      b[5] = 0x0f; // DISC SIZE 120 mm, MAXIMUM RATE not specified
      // One layer. LAYER TYPE is a bit set (embossed 1, recordable 2, rewritable 4):
      // tcmu-runner sends 0 and 2, which say no data and write-once.
      b[6] = d.readOnly ? 0x01 : 0x04;
      put24(b, 9, start);
      put24(b, 13, start + Math.max(0, d.numLbas - 1));
      return b;
    }
    case 0x01:
      return dvdStructure(4); // no copy protection, no region management
    case 0x04: {
      const b = dvdStructure(2048);
      for (let i = 0; i < MANUFACTURER.length; i++) b[4 + i] = MANUFACTURER.charCodeAt(i);
      return b;
    }
    case 0x09: {
      if (d.readOnly) return undefined;
      const b = dvdStructure(4);
      b[5] = 0x10; // DISC TYPE IDENTIFICATION, as tcmu-runner
      return b;
    }
    case 0xff: {
      // Capability list: each format with RDS (readable) and the length READ DVD STRUCTURE returns.
      const formats = dvdStructureFormats(d);
      const b = dvdStructure(4 * formats.length);
      formats.forEach((f, i) => {
        b[4 + 4 * i] = f;
        b[5 + 4 * i] = 0x40;
        put16(b, 6 + 4 * i, readDvdStructure(d, f)!.length);
      });
      return b;
    }
    default:
      return undefined;
  }
}

// ---------------------------------------------------------------- MECHANISM STATUS / READ FORMAT CAPACITIES

/** MECHANISM STATUS header: no changer, mechanism idle, the door (tray) open bit, no slot tables. */
export function mechanismStatus(trayOpen: boolean): Uint8Array {
  const b = new Uint8Array(8);
  if (trayOpen) b[1] = 0x10;
  return b;
}

/**
 * READ FORMAT CAPACITIES: the current capacity (formatted, or "no media
 * present" with the largest capacity when the tray is empty) and, for a
 * writable medium, the one format it offers: type 00h (full), all blocks.
 */
export function readFormatCapacities(d: DriveView): Uint8Array {
  const descriptor = (blocks: number, byte4: number) => {
    const b = new Uint8Array(8);
    put32(b, 0, blocks);
    b[4] = byte4;
    put24(b, 5, MMC_BLOCK_SIZE);
    return b;
  };
  const list = [descriptor(d.numLbas, d.present ? 0x02 : 0x03)];
  if (d.present && !d.readOnly) list.push(descriptor(d.numLbas, 0x00));
  const header = Uint8Array.of(0, 0, 0, 8 * list.length);
  return concat([header, ...list]);
}

// ---------------------------------------------------------------- mode pages

/** CD/DVD speeds in kB/s: 1x DVD is 1385 kB/s. */
const SPEED_1X_DVD = 1385;

export const ModePage = {
  READ_WRITE_ERROR_RECOVERY: 0x01,
  CACHING: 0x08,
  TIMEOUT_AND_PROTECT: 0x1d,
  CAPABILITIES: 0x2a,
  ALL: 0x3f,
} as const;

export const MODE_PAGES: readonly number[] = [0x01, 0x08, 0x1d, 0x2a];

/**
 * A mode page's current values (PC 00b; default values are the same), or
 * with `changeable` its mask: nothing here can be changed. Pages 01h, 08h
 * and 1Dh are tcmu-runner's (retry counts 5, WCE set, timeouts unlimited);
 * 2Ah, which tcmu-runner lacks, is what Linux's sr driver and
 * dvd+rw-mediainfo read to learn the drive is a DVD drive with a tray.
 */
export function modePage(page: number, d: DriveView, changeable: boolean): Uint8Array | undefined {
  let b: Uint8Array;
  switch (page) {
    case 0x01:
      b = new Uint8Array(12);
      if (!changeable) {
        b[3] = 5; // READ RETRY COUNT
        b[8] = 5; // WRITE RETRY COUNT
      }
      break;
    case 0x08:
      // Writes reach the file's page cache and SYNCHRONIZE CACHE flushes it: WCE.
      b = new Uint8Array(12);
      if (!changeable) b[2] = 0x04;
      break;
    case 0x1d:
      b = new Uint8Array(10);
      if (!changeable) b.fill(0xff, 6, 10); // group 1 and 2 minimum timeouts: unlimited
      break;
    case 0x2a: {
      // MMC-3 layout, with one write speed descriptor when the medium is writable.
      const writable = !d.readOnly;
      b = new Uint8Array(32 + (writable ? 4 : 0));
      if (changeable) break;
      b[2] = 0x20 | 0x08 | 0x02; // reads DVD-RAM, DVD-ROM, CD-RW
      b[3] = writable ? 0x20 : 0x00; // writes DVD-RAM
      // LOADING MECHANISM TYPE 001b (tray), EJECT, LOCK, and LOCK STATE while prevented.
      b[6] = 0x20 | 0x08 | 0x01 | (d.prevented ? 0x02 : 0);
      put16(b, 8, SPEED_1X_DVD); // maximum read speed (obsolete field, Linux's sr reads it)
      put16(b, 14, SPEED_1X_DVD); // current read speed
      if (writable) {
        put16(b, 18, SPEED_1X_DVD); // maximum write speed
        put16(b, 20, SPEED_1X_DVD); // current write speed
        put16(b, 28, SPEED_1X_DVD); // current write speed selected
        put16(b, 30, 1); // one write speed descriptor
        put16(b, 34, SPEED_1X_DVD);
      }
      break;
    }
    default:
      return undefined;
  }
  b[0] = page;
  b[1] = b.length - 2;
  return b;
}
