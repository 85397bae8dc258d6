/**
 * Discovery of TCMU devices through sysfs UIO entries.
 *
 * The kernel (target_core_user.c, tcmu_update_uio_info) names a device's UIO
 * entry `tcm-user/<hba host_id>/<dev name>/<dev_config>`, or
 * `tcm-user/<hba>/<dev name>` when no dev_config was set. dev_config is what
 * was written with `dev_config=` to the device's configfs `control` file:
 * by convention (rtslib/targetcli, tcmu-runner's find_handler)
 * `<handler subtype>/<handler config>`, e.g. `file//var/lib/disk.img`.
 *
 * tcmu-runner lets daemon options ride in the config: each one is written
 * `;name=value;` (README: "they must start before the handler specific
 * arguments and each argument must start and end with a semicolon"), e.g.
 * `rbd/;tcmur_cmd_time_out=20;pool/img`. Its parser (main.c,
 * parse_tcmu_runner_args) walks every ';', removes each recognised
 * `;tcmur_cmd_time_out=N;` segment (from its opening ';' through its closing
 * ';', or to the end of the string) wherever it appears, and leaves anything
 * else alone. We do the same so handlers see the same cfgstring.
 *
 * Finding the devices in sysfs is host/uio.ts.
 */
export const UIO_NAME_PREFIX = 'tcm-user';

/** Options tcmu-runner accepts inside a device's cfgstring. */
export interface DaemonOptions {
  /** `tcmur_cmd_time_out=N`: seconds before a command is logged as timed out (0: off). */
  cmdTimeOut?: number;
}

/** A parsed `tcm-user/...` UIO name. */
export interface TcmuUioName {
  /** The whole name as the kernel reported it. */
  raw: string;
  /** The HBA's host id; its configfs directory is `user_<hba>`. */
  hba: number;
  /** The backstore device's configfs name. */
  devName: string;
  /** dev_config as written to configfs (`<subtype>/<cfg>`), before daemon options are taken out. */
  devConfig: string;
  /** The handler subtype (text before the first '/' of dev_config). */
  subtype: string;
  /** The handler's own configuration: dev_config after `<subtype>/`, daemon options removed. */
  cfgstring: string;
  daemonOptions: DaemonOptions;
}

export type UioNameProblem =
  | 'not-tcmu' // does not start with "tcm-user/"
  | 'bad-hba' // hba part missing or not a decimal number
  | 'bad-dev-name' // device name missing or empty
  | 'no-config' // the device was enabled without dev_config
  | 'bad-subtype' // dev_config does not start with a handler subtype
  | 'bad-option'; // a recognised daemon option with a malformed value

/** A UIO name that is not a well-formed TCMU device name. */
export class UioNameError extends Error {
  constructor(readonly uioName: string, readonly problem: UioNameProblem, detail: string) {
    super(`invalid TCMU uio name ${JSON.stringify(uioName)}: ${detail}`);
    this.name = 'UioNameError';
  }
}

/** A sysfs/devfs problem reading a UIO device (missing files, unreadable size). */
export class UioDeviceError extends Error {
  constructor(readonly uio: string, message: string, cause?: unknown) {
    super(`${uio}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = 'UioDeviceError';
  }
}

const DAEMON_OPTION_KEYS = { tcmur_cmd_time_out: 'cmdTimeOut' } as const;

/**
 * Take tcmu-runner daemon options out of a handler config, with tcmu-runner's
 * exact rules (see the module comment). Returns the cleaned string and the
 * options found; a later duplicate wins, as in tcmu-runner.
 */
export function extractDaemonOptions(cfg: string, uioName = cfg): { cfgstring: string; options: DaemonOptions } {
  const options: DaemonOptions = {};
  let s = cfg;
  let pos = 0;
  for (;;) {
    const semi = s.indexOf(';', pos);
    if (semi < 0) break;
    const argStart = semi + 1;
    let matched = false;
    for (const [key, field] of Object.entries(DAEMON_OPTION_KEYS)) {
      const prefix = `${key}=`;
      if (!s.startsWith(prefix, argStart)) continue;
      const close = s.indexOf(';', argStart);
      const valueEnd = close < 0 ? s.length : close;
      const value = s.slice(argStart + prefix.length, valueEnd);
      if (!/^\d{1,9}$/.test(value)) {
        throw new UioNameError(uioName, 'bad-option', `${key} needs a non-negative integer, got ${JSON.stringify(value)}`);
      }
      options[field] = Number(value);
      s = s.slice(0, semi) + s.slice(close < 0 ? s.length : close + 1);
      matched = true;
      break;
    }
    if (!matched) pos = argStart;
  }
  return { cfgstring: s, options };
}

/**
 * Parse a UIO name. Throws UioNameError for anything that is not
 * `tcm-user/<decimal hba>/<dev>/<subtype>[/<cfg>]`.
 */
export function parseUioName(raw: string): TcmuUioName {
  const prefix = `${UIO_NAME_PREFIX}/`;
  if (!raw.startsWith(prefix)) throw new UioNameError(raw, 'not-tcmu', `does not start with "${prefix}"`);
  const rest = raw.slice(prefix.length);
  const s1 = rest.indexOf('/');
  if (s1 < 0) throw new UioNameError(raw, 'bad-dev-name', 'no device name after the hba');
  const hbaStr = rest.slice(0, s1);
  if (!/^\d{1,10}$/.test(hbaStr) || Number(hbaStr) > 0xffffffff) {
    throw new UioNameError(raw, 'bad-hba', `hba ${JSON.stringify(hbaStr)} is not a u32 decimal number`);
  }
  const afterHba = rest.slice(s1 + 1);
  const s2 = afterHba.indexOf('/');
  const devName = s2 < 0 ? afterHba : afterHba.slice(0, s2);
  if (devName.length === 0) throw new UioNameError(raw, 'bad-dev-name', 'empty device name');
  if (s2 < 0) throw new UioNameError(raw, 'no-config', `device ${devName} has no dev_config (no handler can claim it)`);
  const devConfig = afterHba.slice(s2 + 1);
  const s3 = devConfig.indexOf('/');
  const subtype = s3 < 0 ? devConfig : devConfig.slice(0, s3);
  if (!/^[A-Za-z0-9_.+-]+$/.test(subtype)) {
    throw new UioNameError(raw, 'bad-subtype', `dev_config ${JSON.stringify(devConfig)} does not start with a handler subtype`);
  }
  const handlerPart = s3 < 0 ? '' : devConfig.slice(s3 + 1);
  const { cfgstring, options } = extractDaemonOptions(handlerPart, raw);
  return { raw, hba: Number(hbaStr), devName, devConfig, subtype, cfgstring, daemonOptions: options };
}

/** Parse map0/size: a hex number ("0x40800000"), which must fit a safe integer and be > 0. */
export function parseMapSize(text: string, uio = 'uio'): number {
  const t = text.trim();
  if (!/^0x[0-9a-fA-F]{1,16}$/.test(t)) throw new UioDeviceError(uio, `map0 size ${JSON.stringify(text)} is not a hex number`);
  const v = BigInt(t);
  if (v === 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) throw new UioDeviceError(uio, `map0 size ${t} out of range`);
  return Number(v);
}
