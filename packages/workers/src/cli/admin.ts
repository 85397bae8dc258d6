/**
 * `tcmu-ts create | list | delete`: manage TCMU user backstores (and their
 * tcm_loop exports) through LIO's configfs, for machines without targetcli.
 *
 * Everything goes through host/configfs.ts with an injectable root and
 * io, so tests run it against a kernel stand-in on a temp tree. Paths are
 * printed as the kernel shows them (relative to the root, with a leading '/').
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { randomUUID } from 'node:crypto';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseSize } from '@tcmu-ts/core/handler';
import { HandlerRegistry, splitCfgstring } from '@tcmu-ts/core';
import { naaDesignator } from '@tcmu-ts/core/scsi/inquiry';
import {
  ConfigfsError,
  ConfigfsValueError,
  TCMU_CONFIG_LEN,
  randomNaaWwn,
  targetDir,
  userDeviceDir,
  userHbaDir,
  validateUserBackstoreSpec,
  type UserBackstoreSpec,
} from '@tcmu-ts/core/control/configfs';
import {
  TcmuConfigfsDevice,
  createLoopExport,
  createUserBackstore,
  deleteLoopExport,
  deleteUserBackstore,
  nodeConfigfsIo,
  readLunTarget,
  type ConfigfsIo,
} from '@tcmu-ts/core/host/configfs';
import { scanUioDevices, type UioDevice } from '@tcmu-ts/core/host/uio';

export interface AdminIo {
  out: (s: string) => void;
  err: (s: string) => void;
}

export interface AdminOptions {
  /** Filesystem root, '/' by default. */
  root?: string;
  configfsIo?: ConfigfsIo;
  /** How long `create --loop` waits for the SCSI disk to appear (ms, default 5000). */
  diskWaitMs?: number;
}

export const ADMIN_COMMANDS: string[] = ['create', 'list', 'delete', 'reconfig'];

export const ADMIN_HELP = `Backstore administration (no targetcli needed; run as root):
  tcmu-ts create <name> <subtype>/<config> --size <size> [options]
                          create and enable a user backstore, optionally
                          exported through tcm_loop as a local SCSI disk
  tcmu-ts list [--json]   list user backstores, their uio devices and exports
  tcmu-ts delete <name> [--hba <n>]
                          remove a backstore and its tcm_loop exports
  tcmu-ts reconfig <name> <subtype>/<config> [--hba <n>]
                          give a running backstore a new configuration
                          (fault options change in place)
  tcmu-ts <command> --help
                          the options of one command
`;

const CREATE_HELP = `Usage: tcmu-ts create <name> <subtype>/<config> --size <size> [options]

Create a TCMU user backstore in LIO's configfs and enable it. The kernel then
offers it (as /dev/uioN) to the running tcmu-ts daemon, which serves it with
the handler named by <subtype>. Like targetcli's
  /backstores/user:<subtype> create <name> <size> <config>

Arguments:
  <name>                  the backstore's name: letters, digits and _ . : -
  <subtype>/<config>      the handler and its configuration, e.g.
                          file//var/lib/disk.img or ram/64M
                          (at most ${TCMU_CONFIG_LEN - 1} bytes, no ',' or newline)

Options:
  --size <size>           device size in bytes, or with a unit (k, M, G, T:
                          powers of 1024), e.g. 64M or 1.5G; a multiple of the
                          block size (required)
  --hba <n>               the HBA: the device goes under core/user_<n> (default 0)
  --block-size <bytes>    512, 1024, 2048 or 4096 (default 512)
  --max-sectors <n>       largest transfer in blocks (kernel default 128)
  --max-data-area-mb <n>  data area shared with the daemon, MiB (kernel default 1024)
  --cmd-time-out <s>      seconds before the kernel fails an unanswered command
                          (kernel default 30; 0: never)
  --serial <text>         unit serial number (VPD page 80h, also the source of
                          the NAA id); default: a random UUID, as targetcli does
  --loop                  also export it through tcm_loop as a local SCSI disk
  --loop-wwn <naa.X>      the tcm_loop target's WWN, naa.<16 hex digits>
                          (default: a random naa.5001405...)
  -h, --help              show this help

With --loop the kernel scans the new LUN at once: the tcmu-ts daemon must be
running to answer it, or the link waits cmd_time_out seconds and no disk
appears. Needs the target_core_user module and configfs at /sys/kernel/config.
`;

const LIST_HELP = `Usage: tcmu-ts list [--json]

List every TCMU user backstore (core/user_<n>/<name> in LIO's configfs) with
its configuration, size, block size, whether it is enabled, the uio device the
daemon serves it through and the fabric LUNs (tcm_loop and others) exported
from it, with the SCSI disk a tcm_loop LUN shows up as.

Options:
  --json                  one JSON array on stdout, for scripts
  -h, --help              show this help
`;

const DELETE_HELP = `Usage: tcmu-ts delete <name> [--hba <n>]

Remove a TCMU user backstore. Its tcm_loop exports go first, in the order
that keeps LIO consistent: unlink the LUN, remove the LUN directory, then
(when the target has no LUN left) drop the nexus and remove the target. An
HBA directory (core/user_<n>) left empty is removed too. Exports through
other fabrics (iSCSI, ...) are left alone: remove them first.

Options:
  --hba <n>               the HBA the backstore is in (default: wherever the
                          name is, if only one HBA has it)
  -h, --help              show this help
`;

const RECONFIG_HELP = `Usage: tcmu-ts reconfig <name> <subtype>/<config> [--hba <n>]

Give an enabled backstore a new configuration: writes attrib/dev_config, which
the kernel passes to the daemon (netlink RECONFIG_DEVICE) and fails if the
daemon refuses it. The subtype cannot change. A handler that can apply the
change in place keeps running with its data: the fault handler swaps its fault
options this way, e.g.
  tcmu-ts reconfig disk0 'fault/ram/1G;error=EIO@0.01;latency=5'
  tcmu-ts reconfig disk0 'fault/ram/1G'             (faults off again)
Any other change reopens the handler (a ram store starts empty).

Options:
  --hba <n>               the HBA the backstore is in (default: wherever the
                          name is, if only one HBA has it)
  -h, --help              show this help
`;

const HELP: Record<string, string> = { create: CREATE_HELP, list: LIST_HELP, delete: DELETE_HELP, reconfig: RECONFIG_HELP };

/** A failure to report: the message (without the "tcmu-ts <cmd>: " prefix) and the exit code. */
class AdminError extends Error {
  constructor(message: string, readonly exitCode: number = 1) {
    super(message);
    this.name = 'AdminError';
  }
}
/** Bad command line: exit 2 and point at --help. */
class UsageError extends AdminError {
  constructor(message: string) {
    super(message, 2);
  }
}

interface Ctx {
  root: string;
  io: ConfigfsIo;
  out: (line: string) => void;
  diskWaitMs: number;
}

export async function runAdmin(argv: string[], io: AdminIo, opts: AdminOptions = {}): Promise<number> {
  const cmd = argv[0];
  if (cmd === undefined || !ADMIN_COMMANDS.includes(cmd)) {
    io.err(`tcmu-ts: unknown command ${JSON.stringify(cmd ?? '')}\n${ADMIN_HELP}`);
    return 2;
  }
  const ctx: Ctx = {
    root: resolve(opts.root ?? '/'),
    io: opts.configfsIo ?? nodeConfigfsIo,
    out: (line) => io.out(`${line}\n`),
    diskWaitMs: opts.diskWaitMs ?? 5000,
  };
  const args = argv.slice(1);
  if (args.includes('--help') || args.includes('-h')) {
    io.out(HELP[cmd]);
    return 0;
  }
  try {
    if (cmd === 'create') await create(ctx, args);
    else if (cmd === 'list') await list(ctx, args);
    else if (cmd === 'reconfig') await reconfig(ctx, args);
    else await remove(ctx, args);
    return 0;
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`tcmu-ts ${cmd}: ${e.message}\nTry 'tcmu-ts ${cmd} --help'.\n`);
      return e.exitCode;
    }
    if (e instanceof AdminError) {
      io.err(`tcmu-ts ${cmd}: ${e.message}\n`);
      return e.exitCode;
    }
    io.err(`tcmu-ts ${cmd}: ${describe(ctx, e)}\n`);
    return 1;
  }
}

// ---------------------------------------------------------------- helpers

/** A path as the kernel shows it, whatever the root. */
function show(ctx: Ctx, p: string): string {
  return `/${relative(ctx.root, p)}`;
}

function describe(ctx: Ctx, e: unknown): string {
  if (e instanceof ConfigfsError) {
    const path = e.path.startsWith(ctx.root) ? show(ctx, e.path) : e.path;
    return `${e.op} ${path}: ${e.code ?? (e.cause as Error | undefined)?.message ?? e.message}`;
  }
  return (e as Error)?.message ?? String(e);
}

/** node:util parseArgs' messages, as one line in our words. */
export function parseArgsMessage(e: Error & { code?: string }): string {
  const opt = /'(?:-\w, )?(-[^' ]+)/.exec(e.message)?.[1];
  switch (e.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${opt}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return /argument missing/.test(e.message) ? `option ${opt} needs a value`
        : /ambiguous/.test(e.message) ? `option ${opt} needs a value (for one that starts with '-', write ${opt}=<value>)`
          : /does not take an argument/.test(e.message) ? `option ${opt} takes no value` : e.message.split('\n')[0];
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL': {
      const arg = /'([^']*)'/.exec(e.message)?.[1] ?? '';
      return `unknown command '${arg}' (commands: ${ADMIN_COMMANDS.join(', ')}; the daemon takes options only)`;
    }
    default:
      return e.message.split('\n')[0];
  }
}

type Parsed = { values: Record<string, string | boolean | undefined>; positionals: string[] };

function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>): Parsed {
  try {
    const r = parseArgs({ args, options, allowPositionals: true, strict: true });
    return { values: r.values as Parsed['values'], positionals: r.positionals };
  } catch (e) {
    throw new UsageError(parseArgsMessage(e as Error));
  }
}

const NAME_RE = /^[A-Za-z0-9_.:-]+$/;

function checkDeviceName(name: string): void {
  if (!NAME_RE.test(name) || name === '.' || name === '..') {
    throw new UsageError(`invalid backstore name ${JSON.stringify(name)}: use letters, digits and _ . : -`);
  }
}

function intOption(name: string, text: string | undefined, min: number, max: number, what: string): number | undefined {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`--${name} must be ${what}, got ${JSON.stringify(text)}`);
  return Number(text);
}

function hbaOption(text: string | undefined): number | undefined {
  return intOption('hba', text, 0, 0xffffffff, 'a number from 0 to 4294967295');
}

/** "1 GiB" when the size is a whole number of some unit, else "". */
function humanSize(n: number): string {
  const units: [number, string][] = [[2 ** 40, 'TiB'], [2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [u, name] of units) if (n >= u && n % u === 0) return `${n / u} ${name}`;
  return '';
}

function sizeText(n: number): string {
  const h = humanSize(n);
  return h ? `${n} bytes (${h})` : `${n} bytes`;
}

/** target_core_user loaded and configfs mounted. */
async function checkKernel(ctx: Ctx, needModule: boolean): Promise<void> {
  if (needModule && (await ctx.io.kind(join(ctx.root, 'sys', 'module', 'target_core_user'))) !== 'dir') {
    throw new AdminError('target_core_user is not loaded: modprobe target_core_user');
  }
  if ((await ctx.io.kind(targetDir(ctx.root))) !== 'dir') {
    throw new AdminError('configfs is not mounted at /sys/kernel/config (there is no /sys/kernel/config/target): mount -t configfs none /sys/kernel/config');
  }
}

/** Subdirectories of a configfs directory, or [] when it is missing. */
async function subdirs(ctx: Ctx, dir: string): Promise<string[]> {
  if ((await ctx.io.kind(dir)) !== 'dir') return [];
  const out: string[] = [];
  for (const n of await ctx.io.readdir(dir)) if ((await ctx.io.kind(join(dir, n))) === 'dir') out.push(n);
  return out;
}

/** The user_<n> HBA numbers present, in order. */
async function userHbas(ctx: Ctx): Promise<number[]> {
  return (await subdirs(ctx, join(targetDir(ctx.root), 'core')))
    .map((n) => /^user_(\d+)$/.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => Number(m[1]))
    .sort((a, b) => a - b);
}

/** A fabric LUN symlink to a user backstore. */
interface LunLink {
  fabric: string;
  wwn: string;
  tpgt: number;
  lun: number;
  lunDir: string;
  linkPath: string;
  target: { hba: number; name: string };
}

const numbered = (prefix: string) => (n: string) => new RegExp(`^${prefix}_(\\d+)$`).test(n);
const byNumber = (a: string, b: string) => Number(a.replace(/^\D+/, '')) - Number(b.replace(/^\D+/, ''));

/** Every <fabric>/<wwn>/tpgt_<n>/lun/lun_<m>/<link> that points at a user backstore. */
async function scanLunLinks(ctx: Ctx): Promise<LunLink[]> {
  const top = targetDir(ctx.root);
  const out: LunLink[] = [];
  for (const fabric of (await subdirs(ctx, top)).filter((f) => f !== 'core').sort()) {
    for (const wwn of (await subdirs(ctx, join(top, fabric))).sort()) {
      for (const tpg of (await subdirs(ctx, join(top, fabric, wwn))).filter(numbered('tpgt')).sort(byNumber)) {
        const lunRoot = join(top, fabric, wwn, tpg, 'lun');
        for (const lun of (await subdirs(ctx, lunRoot)).filter(numbered('lun')).sort(byNumber)) {
          const lunDir = join(lunRoot, lun);
          for (const entry of (await ctx.io.readdir(lunDir)).sort()) {
            const linkPath = join(lunDir, entry);
            if ((await ctx.io.kind(linkPath)) !== 'link') continue;
            const target = await readLunTarget(linkPath, { io: ctx.io });
            if (!target) continue;
            out.push({ fabric, wwn, tpgt: Number(tpg.slice(5)), lun: Number(lun.slice(4)), lunDir, linkPath, target });
          }
        }
      }
    }
  }
  return out;
}

const sameDevice = (t: { hba: number; name: string }, hba: number, name: string) => t.hba === hba && t.name === name;

async function findUio(ctx: Ctx, hba: number, name: string): Promise<UioDevice | undefined> {
  const { devices } = await scanUioDevices({ root: ctx.root });
  return devices.find((d) => d.name.hba === hba && d.name.devName === name);
}

async function readText(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return undefined;
  }
}

/**
 * The /dev/sdX of a LIO disk with this unit serial: a scsi_device whose
 * vendor is LIO-ORG and whose VPD page 80h or wwid (NAA from the serial, or
 * the T10 vendor id) matches.
 */
async function findDisk(ctx: Ctx, serial: string): Promise<string | undefined> {
  if (!serial) return undefined;
  const classDir = join(ctx.root, 'sys', 'class', 'scsi_device');
  let entries: string[];
  try {
    entries = await readdir(classDir);
  } catch {
    return undefined;
  }
  const naa = `naa.${Buffer.from(naaDesignator(serial)).toString('hex')}`;
  for (const e of entries.sort()) {
    const dev = join(classDir, e, 'device');
    if ((await readText(join(dev, 'vendor')))?.trim() !== 'LIO-ORG') continue;
    let match = false;
    try {
      const pg80 = await readFile(join(dev, 'vpd_pg80'));
      if (pg80.length > 4) {
        const len = pg80.readUInt16BE(2);
        match = pg80.subarray(4, 4 + len).toString('latin1').replace(/\0.*$/s, '').trim() === serial;
      }
    } catch {
      // no page 80h in sysfs (older kernels): try wwid
    }
    if (!match) {
      const wwid = (await readText(join(dev, 'wwid')))?.trim().toLowerCase();
      match = wwid !== undefined && (wwid === naa || (wwid.startsWith('t10.lio-org') && wwid.slice(11).trim() === serial.toLowerCase()));
    }
    if (!match) continue;
    try {
      const blocks = (await readdir(join(dev, 'block'))).filter((b) => /^sd[a-z]+$/.test(b));
      if (blocks.length > 0) return `/dev/${blocks[0]}`;
    } catch {
      // matched but its block device is not there (yet)
    }
  }
  return undefined;
}

/** findDisk, retried until `ms` have passed; no waiting on a machine without a scsi_device class. */
async function waitForDisk(ctx: Ctx, serial: string, ms: number): Promise<string | undefined> {
  const deadline = Date.now() + ms;
  const classDir = join(ctx.root, 'sys', 'class', 'scsi_device');
  for (;;) {
    const d = await findDisk(ctx, serial);
    if (d !== undefined) return d;
    if (Date.now() >= deadline || !(await isDir(classDir))) return undefined;
    await sleep(Math.min(100, Math.max(1, deadline - Date.now())));
  }
}

async function isDir(p: string): Promise<boolean> {
  try {
    await readdir(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * A built-in handler's own check of the config, before anything is written:
 * the daemon runs on this host and would refuse it at enable, after the
 * backstore directory was made. Subtypes we do not know (handler modules,
 * handlers registered over DBus) are left to the daemon.
 */
async function checkHandlerConfig(devConfig: string): Promise<void> {
  const { subtype, config } = splitCfgstring(devConfig);
  const registry = new HandlerRegistry();
  await registry.loadBuiltins();
  const h = registry.get(subtype);
  if (!h) return;
  const check = h.checkConfig(config);
  if (!check.ok) throw new AdminError(`${subtype} refuses config ${JSON.stringify(config)}: ${check.reason}`, 2);
}

// ---------------------------------------------------------------- create

async function create(ctx: Ctx, argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    size: { type: 'string' },
    hba: { type: 'string' },
    'block-size': { type: 'string' },
    'max-sectors': { type: 'string' },
    'max-data-area-mb': { type: 'string' },
    'cmd-time-out': { type: 'string' },
    serial: { type: 'string' },
    loop: { type: 'boolean' },
    'loop-wwn': { type: 'string' },
  });
  const v = values;
  const str = (k: string) => v[k] as string | undefined;
  if (positionals.length < 2) throw new UsageError('needs <name> and <subtype>/<config>');
  if (positionals.length > 2) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[2])}`);
  const [name, devConfig] = positionals;
  checkDeviceName(name);

  if (/[,\n\0]/.test(devConfig)) throw new UsageError(`config ${JSON.stringify(devConfig)} may not contain ',' or a newline (the kernel splits control writes on them)`);
  if (!/^[A-Za-z0-9_.+-]+\//.test(devConfig)) {
    throw new UsageError(`config ${JSON.stringify(devConfig)} has no handler subtype: write it as <subtype>/<config>, e.g. file//var/lib/disk.img`);
  }
  const cfgBytes = Buffer.byteLength(devConfig);
  if (cfgBytes > TCMU_CONFIG_LEN - 1) throw new UsageError(`config is ${cfgBytes} bytes; the kernel takes at most ${TCMU_CONFIG_LEN - 1}`);

  const sizeText0 = str('size');
  if (sizeText0 === undefined) throw new UsageError('--size is required (bytes, or with a unit: 64M, 1G)');
  const size = parseSize(sizeText0);
  if (size === undefined) throw new UsageError(`--size ${JSON.stringify(sizeText0)} is not a size (bytes, or with a unit: 64M, 1G)`);
  if (size <= 0) throw new UsageError('--size must be more than 0');
  const hba = hbaOption(str('hba')) ?? 0;
  const bsText = str('block-size');
  let blockSize = 512;
  if (bsText !== undefined) {
    if (!['512', '1024', '2048', '4096'].includes(bsText)) throw new UsageError(`--block-size must be 512, 1024, 2048 or 4096, got ${JSON.stringify(bsText)}`);
    blockSize = Number(bsText);
  }
  if (size % blockSize !== 0) throw new UsageError(`--size ${sizeText0} (${size} bytes) is not a multiple of the block size ${blockSize}`);
  const maxSectors = intOption('max-sectors', str('max-sectors'), 1, 0x7fffffff, 'a positive number of blocks');
  const maxDataAreaMb = intOption('max-data-area-mb', str('max-data-area-mb'), 1, 0x7fffffff, 'a positive number of MiB');
  const cmdTimeOut = intOption('cmd-time-out', str('cmd-time-out'), 0, 0x7fffffff, 'a whole number of seconds (0: never)');
  const serial = str('serial');
  if (serial !== undefined && !/^[\x21-\x7e]{1,254}$/.test(serial)) throw new UsageError('--serial must be 1 to 254 printable ASCII characters without spaces');
  const loop = v.loop === true;
  const loopWwnText = str('loop-wwn');
  if (loopWwnText !== undefined && !loop) throw new UsageError('--loop-wwn needs --loop');
  if (loopWwnText !== undefined && !/^(naa\.[0-9a-fA-F]{16}|iqn\.[\x21-\x7e]+|fc\.[0-9a-fA-F]{16})$/.test(loopWwnText)) {
    throw new UsageError(`--loop-wwn ${JSON.stringify(loopWwnText)} must be naa.<16 hex digits>, e.g. naa.5001405abcdef012`);
  }

  const spec: UserBackstoreSpec = { hba, name, devConfig, devSize: size, hwBlockSize: blockSize, unitSerial: serial ?? randomUUID() };
  if (maxSectors !== undefined) spec.hwMaxSectors = maxSectors;
  if (maxDataAreaMb !== undefined) spec.maxDataAreaMb = maxDataAreaMb;
  if (cmdTimeOut !== undefined) spec.cmdTimeOut = cmdTimeOut;
  try {
    validateUserBackstoreSpec(spec);
  } catch (e) {
    if (e instanceof ConfigfsValueError) throw new UsageError(e.message);
    throw e;
  }

  await checkHandlerConfig(devConfig);
  await checkKernel(ctx, true);
  const label = `user_${hba}/${name}`;
  const devDir = userDeviceDir(hba, name, ctx.root);
  if ((await ctx.io.kind(devDir)) !== null) throw new AdminError(`a user backstore named ${JSON.stringify(name)} already exists in user_${hba}`);
  const loopWwn = loop ? (loopWwnText ?? randomNaaWwn()) : undefined;
  if (loopWwn !== undefined && (await ctx.io.kind(join(targetDir(ctx.root), 'loopback', loopWwn, 'tpgt_1'))) !== null) {
    throw new AdminError(`the tcm_loop target ${loopWwn} already has tpgt_1: pick another --loop-wwn, or leave it out for a random one`);
  }
  const hbaExisted = (await ctx.io.kind(userHbaDir(hba, ctx.root))) === 'dir';

  let dev: TcmuConfigfsDevice;
  try {
    dev = await createUserBackstore(spec, { root: ctx.root, io: ctx.io });
  } catch (e) {
    let msg = `cannot create ${label}: ${describe(ctx, e)}`;
    if (e instanceof ConfigfsError && e.path.endsWith('/enable')) msg += ' (the kernel refused to enable it; the tcmu-ts daemon log says why if the daemon refused it)';
    throw new AdminError(msg);
  }
  const uio = await findUio(ctx, hba, name);
  ctx.out(`Created ${label}: ${devConfig}, ${sizeText(size)}, block size ${blockSize}${uio ? `, ${uio.uio}` : ''}`);
  if (loopWwn === undefined) return;

  let linkPath: string;
  try {
    ({ linkPath } = await createLoopExport(dev, { wwn: loopWwn }, { root: ctx.root, io: ctx.io }));
  } catch (e) {
    let msg = `cannot export ${label} through tcm_loop: ${describe(ctx, e)}`;
    if (e instanceof ConfigfsError && e.op === 'mkdir' && e.path === join(targetDir(ctx.root), 'loopback')) msg += ' (is tcm_loop available? modprobe tcm_loop)';
    const undo = await deleteLoopExport({ wwn: loopWwn, tpgt: 1 }, { root: ctx.root, io: ctx.io })
      .then(() => deleteUserBackstore(hba, name, { root: ctx.root, io: ctx.io, removeHbaIfEmpty: !hbaExisted }))
      .then(() => `; removed ${label} again`, (u) => `; removing ${label} again failed too: ${describe(ctx, u)}`);
    throw new AdminError(msg + undo);
  }
  ctx.out(`Exported through tcm_loop: ${show(ctx, linkPath)}`);
  const disk = await waitForDisk(ctx, spec.unitSerial!, ctx.diskWaitMs);
  if (disk !== undefined) ctx.out(`SCSI disk: ${disk}`);
  else ctx.out("No SCSI disk found for it yet (the tcmu-ts daemon must be running to answer the kernel's scan)");
}

// ---------------------------------------------------------------- list

export interface ListedExport {
  fabric: string;
  wwn: string;
  tpgt: number;
  lun: number;
  link: string;
  /** /dev/sdX for a tcm_loop LUN, when found. */
  disk: string | null;
}

export interface ListedBackstore {
  hba: number;
  name: string;
  path: string;
  enabled: boolean | null;
  config: string | null;
  size: number | null;
  blockSize: number | null;
  maxSectors: number | null;
  serial: string | null;
  uio: { name: string; device: string; mapSize: number } | null;
  exports: ListedExport[];
}

async function orNull<T>(p: Promise<T>): Promise<T | null> {
  try {
    return await p;
  } catch {
    return null;
  }
}

async function list(ctx: Ctx, argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, { json: { type: 'boolean' } });
  if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}`);
  await checkKernel(ctx, false);
  const { devices: uios } = await scanUioDevices({ root: ctx.root });
  const links = await scanLunLinks(ctx);
  const out: ListedBackstore[] = [];
  for (const hba of await userHbas(ctx)) {
    for (const name of (await subdirs(ctx, userHbaDir(hba, ctx.root))).sort()) {
      if (!NAME_RE.test(name)) continue;
      const dev = new TcmuConfigfsDevice(hba, name, { root: ctx.root, io: ctx.io });
      const uio = uios.find((d) => d.name.hba === hba && d.name.devName === name);
      let config = await orNull(dev.readAttribute('dev_config'));
      if (!config) config = (await orNull(dev.readInfo()))?.config || uio?.name.devConfig || null;
      const serial = (await orNull(dev.readUnitSerial())) || null;
      const exports: ListedExport[] = [];
      for (const l of links.filter((x) => sameDevice(x.target, hba, name))) {
        const disk = l.fabric === 'loopback' && serial ? ((await findDisk(ctx, serial)) ?? null) : null;
        exports.push({ fabric: l.fabric, wwn: l.wwn, tpgt: l.tpgt, lun: l.lun, link: show(ctx, l.linkPath), disk });
      }
      out.push({
        hba,
        name,
        path: show(ctx, dev.path),
        enabled: await orNull(dev.isEnabled()),
        config,
        size: await orNull(dev.readDevSize()),
        blockSize: await orNull(dev.readIntAttribute('hw_block_size')),
        maxSectors: await orNull(dev.readIntAttribute('hw_max_sectors')),
        serial,
        uio: uio ? { name: uio.uio, device: show(ctx, uio.devPath), mapSize: uio.mapSize } : null,
        exports,
      });
    }
  }
  if (values.json) {
    ctx.out(JSON.stringify(out, null, 2));
    return;
  }
  if (out.length === 0) {
    ctx.out('No user backstores.');
    return;
  }
  const q = <T>(x: T | null, f: (y: T) => string = String) => (x === null ? '?' : f(x));
  for (const b of out) {
    ctx.out(`user_${b.hba}/${b.name}`);
    ctx.out(`  config:   ${q(b.config)}`);
    ctx.out(`  size:     ${q(b.size, sizeText)}`);
    ctx.out(`  block:    ${q(b.blockSize)}`);
    ctx.out(`  enabled:  ${q(b.enabled, (e) => (e ? 'yes' : 'no'))}`);
    ctx.out(`  uio:      ${b.uio ? `${b.uio.name} (${b.uio.device})` : 'none'}`);
    if (b.exports.length === 0) ctx.out('  exports:  none');
    for (const x of b.exports) {
      ctx.out(`  export:   ${x.fabric} ${x.wwn} tpgt_${x.tpgt} lun_${x.lun}${x.disk ? ` -> ${x.disk}` : ''}`);
    }
  }
}

// ---------------------------------------------------------------- delete

async function remove(ctx: Ctx, argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, { hba: { type: 'string' } });
  if (positionals.length < 1) throw new UsageError('needs <name>');
  if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`);
  const name = positionals[0];
  checkDeviceName(name);
  const hbaGiven = hbaOption(values.hba as string | undefined);
  await checkKernel(ctx, false);
  const hba = await findHba(ctx, name, hbaGiven);
  const label = `user_${hba}/${name}`;

  const links = (await scanLunLinks(ctx)).filter((l) => sameDevice(l.target, hba, name));
  const foreign = links.filter((l) => l.fabric !== 'loopback');
  if (foreign.length > 0) {
    const where = foreign.map((l) => `${l.fabric} ${l.wwn} tpgt_${l.tpgt} lun_${l.lun}`).join(', ');
    throw new AdminError(`${label} is exported through ${where}: remove that export first (tcmu-ts only removes tcm_loop exports)`);
  }

  // Per TPG: unlink our LUNs and remove their directories; a TPG left
  // without LUNs then goes as a whole (nexus NULL, TPG, WWN if empty).
  const tpgs = new Map<string, LunLink[]>();
  for (const l of links) {
    const key = `${l.wwn}\0${l.tpgt}`;
    tpgs.set(key, [...(tpgs.get(key) ?? []), l]);
  }
  for (const group of tpgs.values()) {
    const { wwn, tpgt } = group[0];
    for (const l of group) {
      await ctx.io.unlink(l.linkPath).catch((e) => { throw new ConfigfsError('unlink', l.linkPath, e); });
      await ctx.io.rmdir(l.lunDir).catch((e) => { throw new ConfigfsError('rmdir', l.lunDir, e); });
      ctx.out(`Removed tcm_loop LUN ${show(ctx, l.linkPath)}`);
    }
    const lunRoot = join(targetDir(ctx.root), 'loopback', wwn, `tpgt_${tpgt}`, 'lun');
    if ((await subdirs(ctx, lunRoot)).filter(numbered('lun')).length === 0) {
      await deleteLoopExport({ wwn, tpgt }, { root: ctx.root, io: ctx.io });
      ctx.out(`Removed tcm_loop target ${wwn} tpgt_${tpgt}`);
    }
  }
  await deleteUserBackstore(hba, name, { root: ctx.root, io: ctx.io, removeHbaIfEmpty: true });
  ctx.out(`Deleted ${label}`);
}

/** The HBA holding backstore `name`: the given one, or the only one that has it. */
async function findHba(ctx: Ctx, name: string, hbaGiven: number | undefined): Promise<number> {
  if (hbaGiven !== undefined) {
    if ((await ctx.io.kind(userDeviceDir(hbaGiven, name, ctx.root))) !== 'dir') throw new AdminError(`no user backstore named ${JSON.stringify(name)} in user_${hbaGiven}`);
    return hbaGiven;
  }
  const found: number[] = [];
  for (const h of await userHbas(ctx)) if ((await ctx.io.kind(userDeviceDir(h, name, ctx.root))) === 'dir') found.push(h);
  if (found.length === 0) throw new AdminError(`no user backstore named ${JSON.stringify(name)}`);
  if (found.length > 1) throw new AdminError(`${JSON.stringify(name)} exists in ${found.map((h) => `user_${h}`).join(', ')}: say which with --hba`);
  return found[0];
}

// ---------------------------------------------------------------- reconfig

async function reconfig(ctx: Ctx, argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, { hba: { type: 'string' } });
  if (positionals.length < 2) throw new UsageError('needs <name> and <subtype>/<config>');
  if (positionals.length > 2) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[2])}`);
  const [name, devConfig] = positionals;
  checkDeviceName(name);
  if (/[,\n\0]/.test(devConfig)) throw new UsageError(`config ${JSON.stringify(devConfig)} may not contain ',' or a newline (the kernel splits control writes on them)`);
  if (!/^[A-Za-z0-9_.+-]+\//.test(devConfig)) throw new UsageError(`config ${JSON.stringify(devConfig)} has no handler subtype: write it as <subtype>/<config>`);
  const cfgBytes = Buffer.byteLength(devConfig);
  if (cfgBytes > TCMU_CONFIG_LEN - 1) throw new UsageError(`config is ${cfgBytes} bytes; the kernel takes at most ${TCMU_CONFIG_LEN - 1}`);
  const hbaGiven = hbaOption(values.hba as string | undefined);
  await checkHandlerConfig(devConfig);
  await checkKernel(ctx, false);
  const hba = await findHba(ctx, name, hbaGiven);
  const dir = userDeviceDir(hba, name, ctx.root);
  const old = (await orNull(ctx.io.readFile(join(dir, 'attrib', 'dev_config'))))?.trim();
  const oldSubtype = old ? old.slice(0, old.indexOf('/') < 0 ? old.length : old.indexOf('/')) : undefined;
  const newSubtype = devConfig.slice(0, devConfig.indexOf('/'));
  if (oldSubtype && oldSubtype !== newSubtype) throw new AdminError(`user_${hba}/${name} is a ${oldSubtype} backstore; the subtype cannot change (delete and create it again)`);
  const attr = join(dir, 'attrib', 'dev_config');
  // On an enabled device the kernel blocks this write until the daemon answers, and fails it when the daemon refuses.
  await ctx.io.writeFile(attr, devConfig).catch((e) => { throw new ConfigfsError('write', attr, e); });
  ctx.out(`Reconfigured user_${hba}/${name}: ${devConfig}`);
}
