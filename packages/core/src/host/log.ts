/**
 * The daemon's logger: one line per event, to stderr and to
 * `<log_dir>/tcmu-ts.log`, with tcmu-runner's levels and line format
 * (control/log.ts).
 *
 * Writes are synchronous appends (O_APPEND): ordering is exact and nothing
 * is lost on a crash. The file is rotated by size: tcmu-ts.log ->
 * tcmu-ts.log.1 -> ... -> .<maxFiles>, the oldest dropped. reopen() is for
 * external rotation (logrotate + SIGHUP, as tcmu-runner's logrotate.conf
 * does). Use one Logger per process: worker threads should hand their lines
 * to the main thread's logger, since only it tracks the file size.
 *
 * Hand-written rather than pino + pino-roll: this format is not JSON, the
 * volume is small, and synchronous writes keep the last words of a crash.
 */
import { openSync, writeSync, closeSync, fstatSync, renameSync, unlinkSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { type LogLevelValue, type LogMethods, LogLevel, LOG_LEVEL_NAMES, clampLogLevel, formatLogLine } from '../control/log.js';

export const DEFAULT_LOG_FILE = 'tcmu-ts.log';
export const DEFAULT_LOG_MAX_BYTES = 10 * 1024 * 1024;
export const DEFAULT_LOG_MAX_FILES = 7;

/** Something lines can be written to (process.stderr by default). */
export interface LineSink {
  write(line: string): unknown;
}

export interface LoggerOptions {
  /** 0..5, default 3 (INFO). Out-of-range values are clamped, as tcmu-runner does. */
  level?: number;
  /** Directory of the log file; null or undefined: no file. */
  logDir?: string | null;
  fileName?: string;
  /** Rotate when a write would take the file past this size. Default 10 MiB (tcmu-runner's logrotate size). */
  maxBytes?: number;
  /** Rotated files kept (.1 .. .N). Default 7 (tcmu-runner's logrotate rotate). 0: truncate instead. */
  maxFiles?: number;
  /** false: no stderr output; or another sink. Default process.stderr. */
  stderr?: boolean | LineSink;
  clock?: () => Date;
  pid?: number;
}

export class Logger implements LogMethods {
  private lvl: LogLevelValue;
  private fd: number | null = null;
  private size = 0;
  private dir: string | null = null;
  private readonly fileName: string;
  private readonly maxBytes: number;
  private readonly maxFiles: number;
  private readonly sink: LineSink | null;
  private readonly clock: () => Date;
  private readonly pid: number;
  private fileErrorReported = false;

  constructor(opts: LoggerOptions = {}) {
    this.lvl = clampLogLevel(opts.level ?? LogLevel.INFO);
    this.fileName = opts.fileName ?? DEFAULT_LOG_FILE;
    if (this.fileName.includes('/')) throw new RangeError(`log file name ${JSON.stringify(this.fileName)} may not contain '/'`);
    this.maxBytes = opts.maxBytes ?? DEFAULT_LOG_MAX_BYTES;
    this.maxFiles = opts.maxFiles ?? DEFAULT_LOG_MAX_FILES;
    if (!(this.maxBytes > 0) || !Number.isInteger(this.maxFiles) || this.maxFiles < 0) throw new RangeError('maxBytes must be > 0 and maxFiles >= 0');
    this.sink = opts.stderr === false ? null : opts.stderr === true || opts.stderr === undefined ? process.stderr : opts.stderr;
    this.clock = opts.clock ?? (() => new Date());
    this.pid = opts.pid ?? process.pid;
    if (opts.logDir) {
      try {
        this.openIn(opts.logDir);
      } catch (e) {
        this.error(`could not set up log dir ${opts.logDir}: ${(e as Error).message}; logging to stderr only`);
      }
    }
  }

  get level(): LogLevelValue {
    return this.lvl;
  }

  /** The current log file, or null when logging to stderr only. */
  get filePath(): string | null {
    return this.dir === null ? null : join(this.dir, this.fileName);
  }

  /** Change the level (clamped to 0..5); announced at CRIT like tcmu-runner. Returns the level now in force. */
  setLevel(level: number): LogLevelValue {
    const l = clampLogLevel(level);
    if (l !== this.lvl) {
      this.lvl = l;
      this.crit(`log level now is ${LOG_LEVEL_NAMES[l]}`);
    }
    return l;
  }

  /**
   * Move the log file to another directory (created if needed), or stop
   * writing a file (null). On failure the old file stays in use and the
   * error is logged; returns whether the change took effect.
   */
  setLogDir(dir: string | null): boolean {
    if (dir === this.dir) return true;
    if (dir === null) {
      this.closeFile();
      this.dir = null;
      return true;
    }
    const prevFd = this.fd;
    const prevDir = this.dir;
    const prevSize = this.size;
    try {
      this.fd = null;
      this.openIn(dir);
    } catch (e) {
      this.fd = prevFd;
      this.dir = prevDir;
      this.size = prevSize;
      this.error(`could not set up log dir ${dir}: ${(e as Error).message}`);
      return false;
    }
    if (prevFd !== null) closeSync(prevFd);
    this.crit(`log file path now is '${this.filePath}'`);
    return true;
  }

  /** Reopen the file by name (after an external rotation). */
  reopen(): void {
    if (this.dir === null) return;
    const dir = this.dir;
    this.closeFile();
    try {
      this.openIn(dir);
    } catch (e) {
      this.dir = null;
      this.reportFileError(e as Error);
    }
  }

  close(): void {
    this.closeFile();
    this.dir = null;
  }

  enabled(level: number): boolean {
    return level <= this.lvl;
  }

  log(level: LogLevelValue, msg: string, dev?: string): void {
    if (level > this.lvl) return;
    const line = formatLogLine(this.clock(), this.pid, level, msg, dev);
    if (this.sink) {
      try {
        this.sink.write(line);
      } catch {
        // stderr gone: keep the file going
      }
    }
    if (this.fd !== null) this.writeFile(line);
  }

  crit(msg: string): void {
    this.log(LogLevel.CRIT, msg);
  }
  error(msg: string): void {
    this.log(LogLevel.ERROR, msg);
  }
  warn(msg: string): void {
    this.log(LogLevel.WARN, msg);
  }
  info(msg: string): void {
    this.log(LogLevel.INFO, msg);
  }
  debug(msg: string): void {
    this.log(LogLevel.DEBUG, msg);
  }
  debugScsiCmd(msg: string): void {
    this.log(LogLevel.DEBUG_SCSI_CMD, msg);
  }

  /** Calls that prefix every line with `<dev>: `. */
  forDevice(dev: string): DeviceLogger {
    return new DeviceLogger(this, dev);
  }

  private openIn(dir: string): void {
    if (!existsSync(dir)) mkdirs(dir);
    const path = join(dir, this.fileName);
    const fd = openSync(path, 'a', 0o600);
    this.fd = fd;
    this.dir = dir;
    this.size = fstatSync(fd).size;
    this.fileErrorReported = false;
  }

  private closeFile(): void {
    if (this.fd !== null) {
      try {
        closeSync(this.fd);
      } catch {
        // already gone
      }
    }
    this.fd = null;
  }

  private writeFile(line: string): void {
    const buf = Buffer.from(line, 'utf8');
    try {
      if (this.size > 0 && this.size + buf.length > this.maxBytes) this.rotate();
      if (this.fd === null) return;
      let off = 0;
      while (off < buf.length) off += writeSync(this.fd, buf, off, buf.length - off);
      this.size += buf.length;
    } catch (e) {
      this.reportFileError(e as Error);
    }
  }

  private rotate(): void {
    const base = this.filePath!;
    const dir = this.dir!;
    this.closeFile();
    try {
      if (this.maxFiles === 0) {
        unlinkSync(base);
      } else {
        const oldest = `${base}.${this.maxFiles}`;
        if (existsSync(oldest)) unlinkSync(oldest);
        for (let i = this.maxFiles - 1; i >= 1; i--) {
          if (existsSync(`${base}.${i}`)) renameSync(`${base}.${i}`, `${base}.${i + 1}`);
        }
        renameSync(base, `${base}.1`);
      }
    } finally {
      // Whatever happened to the old files, keep logging to the base name.
      this.openIn(dir);
    }
  }

  private reportFileError(e: Error): void {
    if (this.fileErrorReported) return;
    this.fileErrorReported = true;
    if (this.sink) {
      try {
        this.sink.write(formatLogLine(this.clock(), this.pid, LogLevel.ERROR, `log file ${this.filePath ?? ''} write failed: ${e.message}`));
      } catch {
        // nowhere left to say it
      }
    }
  }
}

/** A device's view of the logger: same levels, lines prefixed with `<dev>: `. */
export class DeviceLogger implements LogMethods {
  constructor(readonly logger: Logger, readonly dev: string) {}
  crit(msg: string): void {
    this.logger.log(LogLevel.CRIT, msg, this.dev);
  }
  error(msg: string): void {
    this.logger.log(LogLevel.ERROR, msg, this.dev);
  }
  warn(msg: string): void {
    this.logger.log(LogLevel.WARN, msg, this.dev);
  }
  info(msg: string): void {
    this.logger.log(LogLevel.INFO, msg, this.dev);
  }
  debug(msg: string): void {
    this.logger.log(LogLevel.DEBUG, msg, this.dev);
  }
  debugScsiCmd(msg: string): void {
    this.logger.log(LogLevel.DEBUG_SCSI_CMD, msg, this.dev);
  }
  enabled(level: number): boolean {
    return this.logger.enabled(level);
  }
}

/**
 * mkdir -p, one level at a time: Node 20's mkdirSync({ recursive: true })
 * never returns for a path under /proc (a log_dir there hung the daemon).
 */
function mkdirs(dir: string): void {
  const parent = dirname(dir);
  if (parent !== dir && !existsSync(parent)) mkdirs(parent);
  mkdirSync(dir, { mode: 0o755 });
}
