/**
 * File-backed optical handler (subtype "fbo"): a CD/DVD drive whose disc is
 * a file, typically an ISO9660 image, as tcmu-runner's file_optical.c does.
 *
 *   fbo/<absolute path>       a writable DVD-RAM (profile 12h)
 *   fbo/ro/<absolute path>    a read-only DVD-ROM (profile 10h)
 *
 * The device is peripheral type 05h with a removable medium and 2048-byte
 * blocks. Everything the MMC command set adds to a disk is answered here in
 * handleCmd (builders in mmc.ts); READ/WRITE (6/10/12), VERIFY (10), WRITE
 * AND VERIFY (10), SYNCHRONIZE CACHE (10), READ CAPACITY, TEST UNIT READY,
 * INQUIRY and EXTENDED COPY go on to the engine once the drive's state allows them.
 * SBC-only commands (the 16-byte ones, WRITE SAME, UNMAP, ...) are not MMC
 * commands and are refused; 0xA3/0xA4 are SEND KEY / REPORT KEY on an MMC
 * device, not MAINTENANCE IN/OUT.
 *
 * Beyond tcmu-runner, whose START STOP UNIT refuses to eject and whose drive
 * therefore never changes state, this one has a tray: eject (refused while
 * PREVENT ALLOW MEDIUM REMOVAL holds the medium), then NOT READY / MEDIUM
 * NOT PRESENT - TRAY OPEN until a load, which raises NOT READY TO READY
 * CHANGE and a NewMedia event. GET EVENT STATUS NOTIFICATION reports the
 * media class as well as tcmu-runner's operational change and device busy.
 *
 * IO is synchronous on the device thread, as tcmu-runner runs fbo with one
 * thread: an optical image is read, rarely written, and the page cache
 * answers. FORMAT UNIT writes zeros over the medium a slice at a time
 * between turns of the device thread, so REQUEST SENSE and TEST UNIT READY
 * can report its progress while it runs.
 */
import * as fs from 'node:fs';
import {
  Asc,
  ScsiError,
  be16,
  be32,
  SenseKey,
  configError,
  configOk,
  copyToBuffers,
  defineHandler,
  flattenBuffers,
  requestSenseData,
  sliceBuffers,
  type BlockIo,
  type ConfigCheck,
  type DeviceHandler,
  type DeviceIdentity,
  type DeviceLimits,
  type Handler,
  type HandlerDevice,
  type RawCommand,
  type RawResult,
} from '@tcmu-ts/core';
import {
  EventClass,
  LEAD_OUT,
  MediaEvent,
  MMC_BLOCK_SIZE,
  MODE_PAGES,
  MmcOp,
  SUPPORTED_EVENT_CLASSES,
  gesnEvent,
  gesnNoEvent,
  getConfiguration,
  mechanismStatus,
  mediaEventDescriptor,
  modePage,
  readDiscInformation,
  readDvdStructure,
  readFormatCapacities,
  readTocFormatted,
  readTocSessionInfo,
  type DriveView,
} from './mmc.js';

export interface FboConfig {
  path: string;
  readOnly: boolean;
}

/**
 * Parse the part after "fbo/": options, each followed by '/', up to the
 * path, which is absolute ("ro//srv/disc.iso"). tcmu-runner logs and skips
 * an option it does not know; a misspelt "ro" would then silently give a
 * writable disc, so this one refuses it.
 */
export function parseFboConfig(cfg: string): FboConfig | string {
  let rest = cfg;
  let readOnly = false;
  while (rest !== '' && !rest.startsWith('/')) {
    const slash = rest.indexOf('/');
    const option = slash < 0 ? rest : rest.slice(0, slash);
    if (option.toLowerCase() !== 'ro') {
      return slash < 0
        ? `no absolute path in "${cfg}": expected fbo/[ro/]<path>, e.g. fbo//srv/disc.iso`
        : `unknown option "${option}" (fbo accepts only ro/ before the path)`;
    }
    readOnly = true;
    rest = rest.slice(slash + 1);
  }
  if (rest === '') return `no path given: expected fbo/[ro/]<path>, e.g. fbo//srv/disc.iso`;
  return { path: rest, readOnly };
}

// ---------------------------------------------------------------- sense

const notReady = (ascq: number) => new ScsiError(SenseKey.NOT_READY, 0x3a, ascq);
/** MEDIUM NOT PRESENT - TRAY OPEN: eject opens the tray, and only a load closes it. */
const MEDIUM_NOT_PRESENT_TRAY_OPEN = () => notReady(0x02);
/** ILLEGAL REQUEST, MEDIUM REMOVAL PREVENTED. */
const MEDIUM_REMOVAL_PREVENTED = () => new ScsiError(SenseKey.ILLEGAL_REQUEST, 0x53, 0x02);
const SAVING_NOT_SUPPORTED = () => ScsiError.of(SenseKey.ILLEGAL_REQUEST, Asc.SAVING_PARAMETERS_NOT_SUPPORTED);
const NOT_READY_TO_READY = () => ScsiError.of(SenseKey.UNIT_ATTENTION, Asc.NOT_READY_TO_READY_CHANGE);

// ---------------------------------------------------------------- opcodes

const INQUIRY = 0x12;
const REQUEST_SENSE = 0x03;
const TEST_UNIT_READY = 0x00;
const READ_CAPACITY_10 = 0x25;
const REPORT_LUNS = 0xa0;

/** SBC/SPC commands an MMC drive has too, left to the engine once the medium allows them. */
const ENGINE_OPCODES: ReadonlySet<number> = new Set([
  TEST_UNIT_READY, INQUIRY, READ_CAPACITY_10, REPORT_LUNS,
  0x08, 0x28, 0xa8, // READ (6), (10), (12)
  0x0a, 0x2a, 0xaa, // WRITE (6), (10), (12)
  0x2f, // VERIFY (10)
  0x2e, // WRITE AND VERIFY (10)
  0x35, // SYNCHRONIZE CACHE (10)
  0x83, 0x84, // EXTENDED COPY, RECEIVE COPY RESULTS (SPC: INQUIRY's 3PC bit says they are there)
]);

/** Commands that need a medium in the drive (NOT READY, MEDIUM NOT PRESENT otherwise). */
const MEDIUM_OPCODES: ReadonlySet<number> = new Set([
  TEST_UNIT_READY, READ_CAPACITY_10,
  0x08, 0x28, 0xa8, 0x0a, 0x2a, 0xaa, 0x2f, 0x2e, 0x35, 0x83,
  MmcOp.FORMAT_UNIT, MmcOp.READ_TOC, MmcOp.READ_DISC_INFORMATION,
]);

/** Answered while a format runs (tcmu-runner's list; REPORT LUNS is the kernel's). */
const FORMAT_EXEMPT: ReadonlySet<number> = new Set([INQUIRY, REQUEST_SENSE, MmcOp.GET_CONFIGURATION, MmcOp.GET_EVENT_STATUS_NOTIFICATION]);

/** MMC-6 4.1.6: these neither report nor clear a unit attention. REQUEST SENSE reports and clears it. */
const UA_EXEMPT: ReadonlySet<number> = new Set([INQUIRY, REPORT_LUNS, MmcOp.GET_CONFIGURATION, MmcOp.GET_EVENT_STATUS_NOTIFICATION]);

// ---------------------------------------------------------------- the device

/** Data-In cut to the allocation length and the buffers. */
function dataIn(cmd: RawCommand, data: Uint8Array, allocation: number): RawResult {
  const n = copyToBuffers(cmd.buffers, data.subarray(0, Math.min(allocation, data.length)));
  return { status: 0, dataLength: n };
}

const GOOD: RawResult = Object.freeze({ status: 0 });

/** How long a format writes before it lets the device thread answer commands again. */
const FORMAT_SLICE_MS = 20;

export class FboDevice implements DeviceHandler {
  readonly identity: DeviceIdentity = {
    peripheralType: 0x05,
    removable: true,
    versionDescriptors: [0x00a0, 0x0460, 0x04e0], // SAM-5, SPC-4, MMC-6
    blockVpdPages: [],
  };
  readonly limits: DeviceLimits;

  private present = true;
  private prevented = false;
  private persistentPrevented = false;
  private unitAttention: ScsiError | null = null;
  /** Pending events by class; the operational change one is tcmu-runner's: set at open. */
  private mediaEvent: number = MediaEvent.NO_CHANGE;
  private opChangeEvent = 0x02;
  private busyEvent = false;
  /** 0..65535 while FORMAT UNIT runs. */
  private formatProgress: number | undefined;
  private backgroundFormat = false;

  /** Blocks zeroed per write while formatting. */
  formatChunkBlocks = 512;
  /** Tests: awaited before each chunk of a format, to look at it half done. */
  formatGate?: () => Promise<void>;
  /** Settles when the running format ends (tests, close). */
  formatDone: Promise<void> = Promise.resolve();

  constructor(
    private readonly fd: number,
    readonly numLbas: number,
    readonly readOnly: boolean,
    private readonly log: HandlerDevice['log'],
  ) {
    this.limits = readOnly ? { writeProtect: true } : {};
  }

  private get view(): DriveView {
    return { present: this.present, readOnly: this.readOnly, numLbas: this.numLbas, prevented: this.prevented };
  }

  // ------------------------------------------------------------ IO callouts

  read(io: BlockIo): void {
    let done = 0;
    while (done < io.length) {
      const bufs = done === 0 ? io.buffers : sliceBuffers(io.buffers, done);
      const n = fs.readvSync(this.fd, bufs, io.offset + done);
      if (n === 0) break;
      done += n;
    }
    // Past the end of a file shorter than the device: the disc reads as zeros there.
    if (done < io.length) for (const b of sliceBuffers(io.buffers, done)) b.fill(0);
  }

  write(io: BlockIo): void {
    let done = 0;
    while (done < io.length) done += fs.writevSync(this.fd, done === 0 ? io.buffers : sliceBuffers(io.buffers, done), io.offset + done);
    if (io.fua) fs.fdatasyncSync(this.fd);
  }

  flush(): void {
    fs.fsyncSync(this.fd);
  }

  async close(): Promise<void> {
    await this.formatDone;
    fs.closeSync(this.fd);
  }

  // ------------------------------------------------------------ commands

  handleCmd(cmd: RawCommand): RawResult | undefined | Promise<RawResult | undefined> {
    const cdb = cmd.cdb;
    const op = cdb[0];
    if (this.formatProgress !== undefined && !FORMAT_EXEMPT.has(op)) throw ScsiError.formatInProgress(this.formatProgress);
    if (this.unitAttention && !UA_EXEMPT.has(op)) {
      const ua = this.unitAttention;
      this.unitAttention = null;
      if (op !== REQUEST_SENSE) throw ua;
      return dataIn(cmd, requestSenseData(cdb, ua), 0xff);
    }
    if (!this.present && (MEDIUM_OPCODES.has(op) || (op === MmcOp.READ_DVD_STRUCTURE && cdb[7] !== 0xff))) {
      throw MEDIUM_NOT_PRESENT_TRAY_OPEN();
    }
    switch (op) {
      case REQUEST_SENSE:
        return this.requestSense(cmd);
      case READ_CAPACITY_10:
        // RELADR and PMI are not MMC's (tcmu-runner refuses them too).
        if (cdb[1] & 0x01) throw ScsiError.invalidField(1, 0);
        if (cdb[8] & 0x01) throw ScsiError.invalidField(8, 0);
        return undefined;
      case MmcOp.GET_CONFIGURATION:
        return this.getConfiguration(cmd);
      case MmcOp.READ_TOC:
        return this.readToc(cmd);
      case MmcOp.READ_DISC_INFORMATION:
        if (cdb[1] & 0x07) throw ScsiError.invalidField(1, 2); // only standard disc information
        return dataIn(cmd, readDiscInformation(this.view), be16(cdb, 7));
      case MmcOp.GET_EVENT_STATUS_NOTIFICATION:
        return this.eventStatus(cmd);
      case MmcOp.READ_DVD_STRUCTURE:
        return this.readDvdStructure(cmd);
      case MmcOp.MECHANISM_STATUS:
        return dataIn(cmd, mechanismStatus(!this.present), be16(cdb, 8));
      case MmcOp.READ_FORMAT_CAPACITIES:
        return dataIn(cmd, readFormatCapacities(this.view), be16(cdb, 7));
      case MmcOp.PREVENT_ALLOW_MEDIUM_REMOVAL:
        if (cdb[1] || cdb[2] || cdb[3] || cdb[4] & 0xfc) throw ScsiError.invalidField(cdb[4] & 0xfc ? 4 : 1);
        this.prevented = (cdb[4] & 0x01) !== 0;
        this.persistentPrevented = (cdb[4] & 0x02) !== 0;
        return GOOD;
      case MmcOp.START_STOP_UNIT:
        return this.startStop(cdb);
      case MmcOp.FORMAT_UNIT:
        return this.formatUnit(cmd);
      case MmcOp.MODE_SENSE_6:
      case MmcOp.MODE_SENSE_10:
        return this.modeSense(cmd);
      case MmcOp.MODE_SELECT_6:
      case MmcOp.MODE_SELECT_10:
        return this.modeSelect(cmd);
      default:
        if (ENGINE_OPCODES.has(op)) return undefined;
        throw ScsiError.invalidOpcode();
    }
  }

  /** Pollable sense: a format's progress, an empty tray, else NO SENSE (what the engine answers). */
  private requestSense(cmd: RawCommand): RawResult | undefined {
    const pending = this.formatProgress !== undefined
      ? ScsiError.formatInProgress(this.formatProgress)
      : this.present ? undefined : MEDIUM_NOT_PRESENT_TRAY_OPEN();
    if (!pending) return undefined;
    return dataIn(cmd, requestSenseData(cmd.cdb, pending), 0xff);
  }

  private getConfiguration(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    const rt = cdb[1] & 0x03;
    if (rt === 3) throw ScsiError.invalidField(1, 1);
    return dataIn(cmd, getConfiguration(this.view, rt as 0 | 1 | 2, be16(cdb, 2)), be16(cdb, 7));
  }

  private readToc(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    const useMsf = (cdb[1] & 0x02) !== 0;
    // Before MMC the format sat in the control byte's top bits; Linux's sr
    // still asks for session information that way (control 40h).
    const format = (cdb[2] & 0x0f) || cdb[9] >> 6;
    const track = cdb[6];
    let data: Uint8Array;
    if (format === 0) {
      if (track > 1 && track !== LEAD_OUT) throw ScsiError.invalidField(6);
      data = readTocFormatted(this.view, useMsf, track);
    } else if (format === 1) {
      data = readTocSessionInfo(useMsf);
    } else {
      // Full TOC, PMA, ATIP and CD-TEXT describe CD media only.
      throw ScsiError.invalidField(2, 3);
    }
    return dataIn(cmd, data, be16(cdb, 7));
  }

  /**
   * Polled only. The lowest requested class with an event pending is
   * reported, else the lowest requested class with "no change"; an event
   * is consumed once its whole descriptor went out.
   */
  private eventStatus(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    if (!(cdb[1] & 0x01)) throw ScsiError.invalidField(1, 0); // asynchronous operation is not offered
    const alloc = be16(cdb, 7);
    const asked = cdb[4] & SUPPORTED_EVENT_CLASSES;
    if (!asked) return dataIn(cmd, gesnNoEvent(), alloc);
    const pending = [
      [EventClass.OPERATIONAL_CHANGE, this.opChangeEvent !== 0],
      [EventClass.MEDIA, this.mediaEvent !== MediaEvent.NO_CHANGE],
      [EventClass.DEVICE_BUSY, this.busyEvent],
    ] as const;
    const requested = pending.filter(([c]) => asked & (1 << c));
    const cls = (requested.find(([, p]) => p) ?? requested[0])[0];
    const whole = alloc >= 8;
    let descriptor: number[];
    if (cls === EventClass.OPERATIONAL_CHANGE) {
      // Event 2 (operational state changed), change 0001h (feature change); byte 5: persistent prevent.
      descriptor = [this.opChangeEvent, this.persistentPrevented ? 0x80 : 0, 0, this.opChangeEvent ? 0x01 : 0];
      if (whole) this.opChangeEvent = 0;
    } else if (cls === EventClass.MEDIA) {
      descriptor = mediaEventDescriptor(this.mediaEvent, this.view);
      if (whole) this.mediaEvent = MediaEvent.NO_CHANGE;
    } else {
      descriptor = [this.busyEvent ? 1 : 0, this.backgroundFormat ? 1 : 0, 0, 0];
      if (whole) this.busyEvent = false;
    }
    return dataIn(cmd, gesnEvent(cls, descriptor), alloc);
  }

  private readDvdStructure(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    if (cdb[1] & 0x0f) throw ScsiError.invalidField(1, 3); // MEDIA TYPE: DVD only, no BD
    if (cdb[6]) throw ScsiError.invalidField(6); // one layer
    const data = readDvdStructure(this.view, cdb[7]);
    if (!data) throw ScsiError.invalidField(7);
    return dataIn(cmd, data, be16(cdb, 8));
  }

  /**
   * LOEJ with START clear ejects (the tray opens), with START set loads;
   * without LOEJ, START only spins the disc, which an emulated drive need not
   * (MMC drives also spin up by themselves on access): GOOD either way.
   */
  private startStop(cdb: Uint8Array): RawResult {
    if (cdb[1] & 0xfe) throw ScsiError.invalidField(1, 7);
    if (cdb[4] & 0xf0) throw ScsiError.invalidField(4, 7); // power conditions are not offered
    if (cdb[4] & 0x04) throw ScsiError.invalidField(4, 2); // FL: no layers to format
    const loej = (cdb[4] & 0x02) !== 0;
    const start = (cdb[4] & 0x01) !== 0;
    if (!loej) return GOOD;
    if (!start) {
      if (this.prevented) throw MEDIUM_REMOVAL_PREVENTED();
      if (this.present) {
        this.present = false;
        this.unitAttention = null;
        this.mediaEvent = MediaEvent.MEDIA_REMOVAL;
        this.log.info('medium ejected');
      }
    } else if (!this.present) {
      this.present = true;
      this.unitAttention = NOT_READY_TO_READY();
      this.mediaEvent = MediaEvent.NEW_MEDIA;
      this.log.info('medium loaded');
    }
    return GOOD;
  }

  /**
   * FORMAT UNIT, MMC style: FMTDATA with format code 001b and a 4-byte header
   * plus one 8-byte format descriptor of type 00h (full format) for the
   * whole medium in 2048-byte blocks. IMMED (in the header) completes the
   * command at once and the format runs on.
   */
  private formatUnit(cmd: RawCommand): RawResult | Promise<RawResult> {
    const cdb = cmd.cdb;
    if (this.readOnly) throw ScsiError.writeProtected();
    if (!(cdb[1] & 0x10)) throw ScsiError.invalidField(1, 4);
    if ((cdb[1] & 0x07) !== 1) throw ScsiError.invalidField(1, 2);
    if (cdb[1] & 0xe0) throw ScsiError.invalidField(1, 7);
    if (cdb[2] || cdb[3] || cdb[4]) throw ScsiError.invalidField(cdb[2] ? 2 : cdb[3] ? 3 : 4);
    if (cmd.length < 12) throw ScsiError.parameterListLength();
    const p = flattenBuffers(cmd.buffers);
    const flags = p[1];
    // Without FOV the option bits must be clear; of them, only DPRY and DCRT mean nothing here.
    if (!(flags & 0x80) && flags & 0x7c) throw ScsiError.invalidParameter(1);
    if (flags & 0x1c) throw ScsiError.invalidParameter(1); // STPF, IP, DSP are not offered
    if (be16(p, 2) !== 8) throw ScsiError.invalidParameter(2); // one format descriptor
    if (p[8]) throw ScsiError.invalidParameter(8); // format type 00h, sub-type 0
    // tcmu-runner's rule: the block count must be the medium's unless DCRT is set
    // without CMPLIST. It compares 16 bits of it; here all 32.
    if ((cdb[1] & 0x08 || !(flags & 0x20)) && be32(p, 4) !== this.numLbas) throw ScsiError.invalidParameter(4);
    if (((p[9] << 16) | be16(p, 10)) !== MMC_BLOCK_SIZE) throw ScsiError.invalidParameter(9);
    const immed = (flags & 0x02) !== 0;
    this.formatProgress = 0;
    this.backgroundFormat = immed;
    if (immed) this.busyEvent = true;
    const job = this.zeroMedium().finally(() => {
      this.formatProgress = undefined;
      if (this.backgroundFormat) this.busyEvent = true; // busy to not busy is an event too
      this.backgroundFormat = false;
    });
    this.formatDone = job.catch((e) => this.log.error(`FORMAT UNIT failed: ${e instanceof Error ? e.message : String(e)}`));
    return immed ? GOOD : job.then(() => GOOD);
  }

  /**
   * Zeros over every block, in chunks, yielding to the device thread after
   * each slice of FORMAT_SLICE_MS so that commands are answered meanwhile.
   */
  private async zeroMedium(): Promise<void> {
    const bs = MMC_BLOCK_SIZE;
    const per = Math.max(1, this.formatChunkBlocks);
    const zeros = new Uint8Array(Math.min(per, Math.max(1, this.numLbas)) * bs);
    let sliceStart = Date.now();
    for (let done = 0; done < this.numLbas;) {
      if (this.formatGate) await this.formatGate();
      const n = Math.min(per, this.numLbas - done);
      let at = 0;
      while (at < n * bs) at += fs.writeSync(this.fd, zeros, at, n * bs - at, done * bs + at);
      done += n;
      if (done < this.numLbas) this.formatProgress = Math.min(0xffff, Math.floor((0x10000 * done) / this.numLbas));
      if (Date.now() - sliceStart >= FORMAT_SLICE_MS) {
        await new Promise<void>((r) => setImmediate(r));
        sliceStart = Date.now();
      }
    }
    fs.fsyncSync(this.fd);
  }

  /** MODE SENSE (6)/(10): pages 01h, 08h, 1Dh and 2Ah, never block descriptors. */
  private modeSense(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    const ten = cdb[0] === MmcOp.MODE_SENSE_10;
    const pc = cdb[2] >> 6;
    const page = cdb[2] & 0x3f;
    const subpage = cdb[3];
    if (pc === 3) throw SAVING_NOT_SUPPORTED();
    if (subpage !== 0 && !(subpage === 0xff && page === 0x3f)) throw ScsiError.invalidField(3);
    const changeable = pc === 1;
    let pages: Uint8Array[];
    if (page === 0x3f) pages = MODE_PAGES.map((p) => modePage(p, this.view, changeable)!);
    else if (page === 0) pages = []; // tcmu-runner: the header alone
    else {
      const one = modePage(page, this.view, changeable);
      if (!one) throw ScsiError.invalidField(2, 5);
      pages = [one];
    }
    const hdr = ten ? 8 : 4;
    const body = pages.reduce((n, p) => n + p.length, 0);
    const data = new Uint8Array(hdr + body);
    // MEDIUM TYPE, DEVICE-SPECIFIC PARAMETER, BLOCK DESCRIPTOR LENGTH: 0 on an MMC drive.
    if (ten) {
      data[0] = ((hdr + body - 2) >> 8) & 0xff;
      data[1] = (hdr + body - 2) & 0xff;
    } else data[0] = Math.min(0xff, hdr + body - 1);
    let at = hdr;
    for (const p of pages) {
      data.set(p, at);
      at += p.length;
    }
    return dataIn(cmd, data, ten ? be16(cdb, 7) : cdb[4]);
  }

  /**
   * MODE SELECT: nothing is changeable, so every page sent must hold the
   * current values (tcmu-runner's rule). PF must be set, SP clear.
   */
  private modeSelect(cmd: RawCommand): RawResult {
    const cdb = cmd.cdb;
    const ten = cdb[0] === MmcOp.MODE_SELECT_10;
    if (!(cdb[1] & 0x10)) throw ScsiError.invalidField(1, 4);
    if (cdb[1] & 0x01) throw ScsiError.invalidField(1, 0);
    const length = Math.min(ten ? be16(cdb, 7) : cdb[4], cmd.length);
    if (length === 0) return GOOD;
    const p = flattenBuffers(cmd.buffers).subarray(0, length);
    const hdr = ten ? 8 : 4;
    if (p.length < hdr) throw ScsiError.parameterListLength();
    const bdl = ten ? be16(p, 6) : p[3];
    if (bdl !== 0 && bdl !== 8) throw ScsiError.invalidParameter(ten ? 6 : 3);
    if (bdl === 8 && (p.length < hdr + 8 || ((p[hdr + 5] << 16) | be16(p, hdr + 6)) !== MMC_BLOCK_SIZE)) {
      throw ScsiError.invalidParameter(hdr + 5);
    }
    for (let at = hdr + bdl; at < p.length;) {
      if (at + 2 > p.length) throw ScsiError.parameterListLength();
      const want = modePage(p[at] & 0x3f, this.view, false);
      if (!want || p[at] & 0x40) throw ScsiError.invalidParameter(at);
      if (at + want.length > p.length) throw ScsiError.parameterListLength();
      for (let i = 1; i < want.length; i++) if (p[at + i] !== want[i]) throw ScsiError.invalidParameter(at + i);
      at += want.length;
    }
    return GOOD;
  }
}

// ---------------------------------------------------------------- the handler

function errText(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ? `${err.code}: ${err.message.replace(/^\w+: /, '')}` : String(e);
}

/**
 * Open the disc file. A missing file is created (mode 0600, as tcmu-runner
 * does, even for ro/) at the device's size, sparse, so that reads within
 * the capacity find it; without a device size an existing file sets it.
 */
async function openFbo(dev: HandlerDevice): Promise<DeviceHandler> {
  const cfg = parseFboConfig(dev.cfgstring);
  if (typeof cfg === 'string') throw new Error(cfg);
  if (dev.blockSize !== MMC_BLOCK_SIZE) {
    throw new Error(`fbo needs 2048-byte blocks (set hw_block_size=2048); the device has ${dev.blockSize}`);
  }
  let fd: number;
  try {
    fd = fs.openSync(cfg.path, cfg.readOnly ? 'r' : 'r+');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot open ${cfg.path}: ${errText(e)}`);
    if (dev.numLbas <= 0) throw new Error(`${cfg.path} does not exist and the device has no size to create it with (set dev_size)`);
    try {
      const created = fs.openSync(cfg.path, 'wx+', 0o600);
      fs.ftruncateSync(created, dev.numLbas * MMC_BLOCK_SIZE);
      fs.closeSync(created);
      fd = fs.openSync(cfg.path, cfg.readOnly ? 'r' : 'r+');
    } catch (e2) {
      throw new Error(`cannot create ${cfg.path}: ${errText(e2)}`);
    }
    dev.log.info(`created ${cfg.path} (${dev.numLbas} blocks of 2048, empty)`);
  }
  const size = fs.fstatSync(fd).size;
  if (dev.numLbas <= 0) {
    dev.numLbas = Math.floor(size / MMC_BLOCK_SIZE);
    if (size % MMC_BLOCK_SIZE) dev.log.warn(`${cfg.path}: ${size % MMC_BLOCK_SIZE} bytes past the last whole 2048-byte block are not on the disc`);
  }
  return new FboDevice(fd, dev.numLbas, cfg.readOnly, dev.log);
}

export const fboHandler: Handler = defineHandler({
  name: 'File-backed optical handler',
  subtype: 'fbo',
  configDescription:
    'fbo/[ro/]<absolute path>: a CD/DVD drive (peripheral type 05h, 2048-byte blocks; set hw_block_size=2048) ' +
    'whose disc is the file, e.g. an ISO9660 image: a writable DVD-RAM, or with ro/ a read-only DVD-ROM. ' +
    'A missing file is created at the device size; without a device size the file sets it.',
  checkConfig(cfgstring: string): ConfigCheck {
    const cfg = parseFboConfig(cfgstring);
    if (typeof cfg === 'string') return configError(cfg);
    // The image is created at open when missing, so its directory must be there.
    const dir = cfg.path.slice(0, cfg.path.lastIndexOf('/')) || '/';
    try {
      if (!fs.statSync(dir).isDirectory()) return configError(`"${dir}" is not a directory`);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      return configError(code === 'ENOENT' ? `directory "${dir}" does not exist` : `cannot use directory "${dir}": ${code ?? String(e)}`);
    }
    if (fs.existsSync(cfg.path) && fs.statSync(cfg.path).isDirectory()) return configError(`"${cfg.path}" is a directory, not an image file`);
    return configOk;
  },
  open: (dev) => openFbo(dev),
});
