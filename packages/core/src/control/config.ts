/**
 * /etc/tcmu/tcmu.conf, parsed the way tcmu-runner parses it (libtcmu_config.c),
 * with clear errors where tcmu-runner would silently guess (or hang). Reading
 * and watching the file is host/config.ts.
 *
 * Syntax tcmu-runner accepts, and so do we:
 *   - blank lines; lines whose first non-blank character is '#' (comments)
 *   - `key = value` with any blanks (spaces, tabs) around key, '=' and value
 *   - integer options: `log_level = 3`
 *   - string options: `log_dir = /var/log`, `log_dir = "/var/log"`,
 *     `log_dir = '/var/log'` (one pair of surrounding quotes is removed, so
 *     `'Tom is a "boy"'` gives `Tom is a "boy"`)
 *   - boolean options: a key alone on its line means true
 *   - LF, CRLF or CR line ends; a later line for the same key wins
 * Where we are stricter (each is reported as an error with its line number,
 * and the value is ignored so the next source in the precedence applies):
 *   - a line starting with something other than a letter, '#' or a blank
 *     (tcmu-runner loops forever on it)
 *   - log_level not a plain decimal in 0..5 (tcmu-runner takes the first
 *     digits it finds: "-1" is 1, "3abc" is 3, and clamps out-of-range values)
 *   - log_dir empty, not absolute, with an unmatched quote, or too long
 *   - an integer followed by anything but an optional `# comment`
 * Keys: log_level (0 CRIT, 1 ERROR, 2 WARNING, 3 INFO, 4 DEBUG, 5 DEBUG SCSI
 * CMD) and log_dir. `log_dir_path`, the name before tcmu-runner 1.4.1
 * renamed it, is accepted as an alias with a warning. Unknown keys are kept
 * in `extra` with a warning.
 *
 * Precedence (tcmu-runner README "Logger setting and system configuration",
 * and what main.c/libtcmu_config.c really do), highest first:
 *   1. the config file, for each key it sets (and re-read on every change);
 *   2. daemon arguments: -d/--debug sets log_level 5, -l/--tcmu-log-dir DIR
 *      sets log_dir;
 *   3. the environment: TCMU_LOGDIR sets log_dir (there is no variable for
 *      the level);
 *   4. defaults: log_level 3 (INFO), log_dir /var/log.
 * Commenting a key out of the file brings back the value from 2..4 on the
 * next reload, as in tcmu-runner. */
import { join, isAbsolute } from 'node:path';

export const TCMU_CONF_PATH = '/etc/tcmu/tcmu.conf';
export const TCMU_DEFAULT_LOG_LEVEL = 3;
export const TCMU_DEFAULT_LOG_DIR = '/var/log';
export const TCMU_LOGDIR_ENV = 'TCMU_LOGDIR';
export const TCMU_LOG_LEVEL_MIN = 0;
export const TCMU_LOG_LEVEL_MAX = 5;
/** PATH_MAX minus room for the log file's name, as tcmu_log_dir_check allows. */
export const TCMU_LOG_DIR_MAX = 4096 - 32 - 1;

export interface ConfIssue {
  line: number;
  message: string;
  /** The offending line as written. */
  text: string;
}

export interface TcmuConfFile {
  logLevel?: number;
  logDir?: string;
  /** Keys we do not know: string, integer, or true for a bare key. */
  extra: Record<string, string | number | boolean>;
  errors: ConfIssue[];
  warnings: ConfIssue[];
}

/** Render an issue as `file:line: message`. */
export function formatConfIssue(i: ConfIssue, file = 'tcmu.conf'): string {
  return `${file}:${i.line}: ${i.message}`;
}

const BLANK = /^[ \t]*/;
const KEY_RE = /^[A-Za-z][A-Za-z0-9_]*$/;

function unquote(v: string): { value: string } | { error: string } {
  const first = v[0];
  if (first === '"' || first === "'") {
    if (v.length < 2 || v[v.length - 1] !== first) return { error: `unmatched ${first} in ${v}` };
    return { value: v.slice(1, -1) };
  }
  const last = v[v.length - 1];
  if (last === '"' || last === "'") return { error: `unmatched ${last} in ${v}` };
  return { value: v };
}

/** Parse tcmu.conf text. Never throws: problems come back in errors/warnings. */
export function parseTcmuConf(text: string): TcmuConfFile {
  const out: TcmuConfFile = { extra: {}, errors: [], warnings: [] };
  const seen = new Map<string, number>();
  const failed = new Map<string, number>();
  const lines = text.split(/\r\n|\r|\n/);
  lines.forEach((raw, i) => {
    const line = i + 1;
    let name = '';
    const err = (message: string) => {
      out.errors.push({ line, message, text: raw });
      if (name) failed.set(name, line);
    };
    const warn = (message: string) => out.warnings.push({ line, message, text: raw });
    const s = raw.replace(BLANK, '');
    if (s === '' || s.startsWith('#')) return;
    if (!/^[A-Za-z]/.test(s)) {
      err(`expected an option name, found ${JSON.stringify(s[0])}`);
      return;
    }
    const eq = s.indexOf('=');
    let key: string;
    let value: string | null;
    if (eq < 0) {
      const m = /^(\S+)[ \t]*(.*)$/.exec(s)!;
      key = m[1];
      if (m[2] !== '' && !m[2].startsWith('#')) {
        err(`unexpected ${JSON.stringify(m[2])} after ${key} (did you mean ${key} = ...?)`);
        return;
      }
      value = null;
    } else {
      key = s.slice(0, eq).replace(/[ \t]+$/, '');
      value = s.slice(eq + 1).replace(BLANK, '').replace(/[ \t]+$/, '');
    }
    if (!KEY_RE.test(key)) {
      err(`invalid option name ${JSON.stringify(key)}`);
      return;
    }
    name = key;
    if (key === 'log_dir_path') {
      warn('log_dir_path is the old name of log_dir');
      name = 'log_dir';
    }
    const prev = seen.get(name);
    if (prev !== undefined) warn(`${name} set again (line ${prev} is overridden)`);
    seen.set(name, line);
    switch (name) {
      case 'log_level': {
        if (value === null || value === '') return err('log_level needs a value 0..5');
        const m = /^(-?\d+)(?:[ \t]*#.*)?$/.exec(value);
        if (!m) return err(`log_level must be a number 0..5, got ${JSON.stringify(value)}`);
        const n = Number(m[1]);
        if (n < TCMU_LOG_LEVEL_MIN || n > TCMU_LOG_LEVEL_MAX) {
          return err(`log_level ${n} out of range 0..5 (0 CRIT, 1 ERROR, 2 WARNING, 3 INFO, 4 DEBUG, 5 DEBUG SCSI CMD)`);
        }
        out.logLevel = n;
        return;
      }
      case 'log_dir': {
        if (value === null || value === '') return err('log_dir needs a directory');
        const u = unquote(value);
        if ('error' in u) return err(`log_dir: ${u.error}`);
        if (u.value === '') return err('log_dir is empty');
        if (!isAbsolute(u.value)) return err(`log_dir must be an absolute path, got ${JSON.stringify(u.value)}`);
        if (Buffer.byteLength(u.value) > TCMU_LOG_DIR_MAX) return err(`log_dir longer than ${TCMU_LOG_DIR_MAX} bytes`);
        if (u.value.includes('\0')) return err('log_dir contains a NUL');
        out.logDir = u.value;
        return;
      }
      default: {
        warn(`unknown option ${key} ignored`);
        if (value === null) out.extra[key] = true;
        else if (/^\d+$/.test(value)) out.extra[key] = Number(value);
        else {
          const u = unquote(value);
          out.extra[key] = 'error' in u ? value : u.value;
        }
      }
    }
  });
  // A key whose latest line was an error keeps no older value: tcmu-runner
  // would have used the latest line, so falling back is the honest choice.
  if (failed.has('log_level') && failed.get('log_level') === seen.get('log_level')) delete out.logLevel;
  if (failed.has('log_dir') && failed.get('log_dir') === seen.get('log_dir')) delete out.logDir;
  return out;
}

export interface ConfPathOptions {
  /** Filesystem root for the default path, '/' by default. */
  root?: string;
  /** An explicit file path (overrides root). */
  path?: string;
}

export function tcmuConfPath(opts: ConfPathOptions = {}): string {
  return opts.path ?? join(opts.root ?? '/', TCMU_CONF_PATH);
}

/** The daemon arguments that touch the configuration (tcmu-runner's -d and -l). */
export interface TcmuCliOptions {
  /** -d / --debug: log_level 5 (DEBUG SCSI CMD), as tcmu-runner sets def_log_level. */
  debug?: boolean;
  /** -l / --tcmu-log-dir DIR. */
  logDir?: string;
}

/** Pull -d/--debug and -l/--tcmu-log-dir DIR (or =DIR) out of argv; everything else is returned in `rest`. */
export function parseTcmuCliArgs(argv: readonly string[]): { options: TcmuCliOptions; rest: string[] } {
  const options: TcmuCliOptions = {};
  const rest: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '-d' || a === '--debug') options.debug = true;
    else if (a === '-l' || a === '--tcmu-log-dir') {
      const v = argv[i + 1];
      if (v === undefined) throw new Error(`${a} needs a directory`);
      options.logDir = v;
      i++;
    } else if (a.startsWith('--tcmu-log-dir=')) options.logDir = a.slice('--tcmu-log-dir='.length);
    else if (/^-l./.test(a)) options.logDir = a.slice(2);
    else rest.push(a);
  }
  return { options, rest };
}

export type ConfSource = 'file' | 'cli' | 'env' | 'default';

export interface ResolvedTcmuConfig {
  logLevel: number;
  logDir: string;
  sources: { logLevel: ConfSource; logDir: ConfSource };
}

/** Apply tcmu-runner's precedence: file > command line > environment > defaults. */
export function resolveTcmuConfig(input: {
  file?: Pick<TcmuConfFile, 'logLevel' | 'logDir'> | null;
  cli?: TcmuCliOptions;
  env?: Record<string, string | undefined>;
} = {}): ResolvedTcmuConfig {
  const file = input.file ?? {};
  const cli = input.cli ?? {};
  const envDir = input.env?.[TCMU_LOGDIR_ENV];
  let logLevel = TCMU_DEFAULT_LOG_LEVEL;
  let levelSrc: ConfSource = 'default';
  if (file.logLevel !== undefined) {
    logLevel = file.logLevel;
    levelSrc = 'file';
  } else if (cli.debug) {
    logLevel = TCMU_LOG_LEVEL_MAX;
    levelSrc = 'cli';
  }
  let logDir = TCMU_DEFAULT_LOG_DIR;
  let dirSrc: ConfSource = 'default';
  if (file.logDir !== undefined) {
    logDir = file.logDir;
    dirSrc = 'file';
  } else if (cli.logDir !== undefined && cli.logDir !== '') {
    logDir = cli.logDir;
    dirSrc = 'cli';
  } else if (envDir !== undefined && envDir !== '') {
    logDir = envDir;
    dirSrc = 'env';
  }
  return { logLevel, logDir, sources: { logLevel: levelSrc, logDir: dirSrc } };
}
