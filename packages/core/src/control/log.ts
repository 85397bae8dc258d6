/**
 * Log levels and the log line format, without the writer (host/log.ts).
 *
 * tcmu-runner's levels (libtcmu_config.h): 0 CRIT, 1 ERROR, 2 WARNING,
 * 3 INFO (default), 4 DEBUG, 5 DEBUG SCSI CMD; a message is written when its
 * level is <= the current level. A line is tcmu-runner's file format
 * (libtcmu_log.c output_to_fd):
 *   `2024-05-01 12:00:00.123 4242 [INFO] dev0: message`
 * (local time with milliseconds, pid, level tag, then the device prefix when
 * the event concerns a device). Embedded newlines are escaped so every event
 * stays one line.
 */

export const LogLevel = {
  CRIT: 0,
  ERROR: 1,
  WARN: 2,
  INFO: 3,
  DEBUG: 4,
  DEBUG_SCSI_CMD: 5,
} as const;
export type LogLevelValue = (typeof LogLevel)[keyof typeof LogLevel];

/** Names as tcmu.conf documents them (and tcmu-runner prints "log level now is ..."). */
export const LOG_LEVEL_NAMES = ['CRIT', 'ERROR', 'WARNING', 'INFO', 'DEBUG', 'DEBUG SCSI CMD'] as const;
/** Tags in each line, as tcmu-runner's loglevel_string. */
export const LOG_LEVEL_TAGS = ['CRIT', 'ERROR', 'WARN', 'INFO', 'DEBUG', 'DEBUG_SCSI_CMD'] as const;

export function clampLogLevel(level: number): LogLevelValue {
  if (!Number.isFinite(level)) return LogLevel.INFO;
  return Math.min(LogLevel.DEBUG_SCSI_CMD, Math.max(LogLevel.CRIT, Math.trunc(level))) as LogLevelValue;
}

function pad(n: number, w = 2): string {
  return String(n).padStart(w, '0');
}

/** tcmu-runner's time_string_now format, local time. */
export function formatLogTime(d: Date): string {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** One formatted line, with its newline. */
export function formatLogLine(time: Date, pid: number, level: LogLevelValue, msg: string, dev?: string): string {
  const body = msg.replace(/\r?\n$/, '').replace(/\r/g, '\\r').replace(/\n/g, '\\n');
  return `${formatLogTime(time)} ${pid} [${LOG_LEVEL_TAGS[level]}] ${dev ? `${dev}: ` : ''}${body}\n`;
}

/** The logging calls, for the daemon or for one device. */
export interface LogMethods {
  crit(msg: string): void;
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  debugScsiCmd(msg: string): void;
  enabled(level: number): boolean;
}
