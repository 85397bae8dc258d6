/**
 * The TCM-USER generic netlink messages (linux/target_core_user.h), as pure
 * encode/decode functions. The socket side lives in netlink.ts.
 *
 * Kernel facts (drivers/target/target_core_user.c):
 * - Events are multicast on the family's "config" group, genl version 2,
 *   seq 0, attributes DEVICE (the uio name, NUL-terminated), MINOR (u32),
 *   DEVICE_ID (u32, se_device dev_index), and for RECONFIG_DEVICE exactly one
 *   of DEV_CFG (string), DEV_SIZE (u64, maybe preceded by PAD on
 *   architectures that need 64-bit alignment) or WRITECACHE (u8).
 * - The kernel waits for an *_DONE reply (CMD_STATUS s32, DEVICE_ID u32) only
 *   when a daemon sent SET_FEATURES with SUPP_KERN_CMD_REPLY=1 and the
 *   device's nl_reply_supported is > 0; the configfs write that caused the
 *   event then fails with the status. Replies need CAP_NET_ADMIN.
 * - tcmu-runner (libtcmu.c handle_netlink) replies to every version > 1
 *   event, and drops events without MINOR or DEVICE.
 */
import {
  type NlMsg, type GenlMsg, decodeGenlMsg, encodeGenlMsg, attrMap, attrString, attrU32, attrU64, attrU8, attrS32, nla,
  NlmFlag, NetlinkDecodeError,
} from './nlattr.js';

export const TCMU_GENL_FAMILY = 'TCM-USER';
export const TCMU_GENL_VERSION = 2;
export const TCMU_MCGRP_CONFIG = 'config';

/** enum tcmu_genl_cmd. */
export const TcmuNlCmd = {
  UNSPEC: 0,
  ADDED_DEVICE: 1,
  REMOVED_DEVICE: 2,
  RECONFIG_DEVICE: 3,
  ADDED_DEVICE_DONE: 4,
  REMOVED_DEVICE_DONE: 5,
  RECONFIG_DEVICE_DONE: 6,
  SET_FEATURES: 7,
} as const;

/** enum tcmu_genl_attr. */
export const TcmuNlAttr = {
  UNSPEC: 0,
  DEVICE: 1,
  MINOR: 2,
  PAD: 3,
  DEV_CFG: 4,
  DEV_SIZE: 5,
  WRITECACHE: 6,
  CMD_STATUS: 7,
  DEVICE_ID: 8,
  SUPP_KERN_CMD_REPLY: 9,
} as const;

export type TcmuEventKind = 'added' | 'removed' | 'reconfig';

/** What a RECONFIG_DEVICE event asks to change. */
export type TcmuReconfig =
  | { what: 'dev_config'; devConfig: string }
  | { what: 'dev_size'; devSize: bigint }
  | { what: 'write_cache'; writeCache: boolean };

export interface TcmuEvent {
  kind: TcmuEventKind;
  /** TcmuNlCmd.ADDED_DEVICE / REMOVED_DEVICE / RECONFIG_DEVICE. */
  cmd: number;
  /** genl header version (2 on every kernel since 4.16). */
  version: number;
  /** TCMU_ATTR_DEVICE: the device's uio name, `tcm-user/<hba>/<dev>/<config>`. */
  device: string;
  /** TCMU_ATTR_MINOR: N of /dev/uioN. */
  minor: number;
  /** TCMU_ATTR_DEVICE_ID: the id a reply must carry; null only for version 1 events. */
  deviceId: number | null;
  /** For reconfig events; undefined when the kernel sent no known change (answer -EOPNOTSUPP). */
  reconfig?: TcmuReconfig;
  seq: number;
}

/**
 * An event that cannot be used. When `deviceId` is known the kernel may be
 * waiting for an answer: reply to `cmd` with an error status.
 */
export class TcmuEventError extends Error {
  constructor(message: string, readonly cmd: number, readonly version: number, readonly deviceId: number | null) {
    super(`TCMU netlink event: ${message}`);
    this.name = 'TcmuEventError';
  }
}

const EVENT_KINDS: Record<number, TcmuEventKind> = {
  [TcmuNlCmd.ADDED_DEVICE]: 'added',
  [TcmuNlCmd.REMOVED_DEVICE]: 'removed',
  [TcmuNlCmd.RECONFIG_DEVICE]: 'reconfig',
};

const DONE_FOR: Record<number, number> = {
  [TcmuNlCmd.ADDED_DEVICE]: TcmuNlCmd.ADDED_DEVICE_DONE,
  [TcmuNlCmd.REMOVED_DEVICE]: TcmuNlCmd.REMOVED_DEVICE_DONE,
  [TcmuNlCmd.RECONFIG_DEVICE]: TcmuNlCmd.RECONFIG_DEVICE_DONE,
};

/** The *_DONE command answering an event command. */
export function tcmuDoneCmd(eventCmd: number): number {
  const d = DONE_FOR[eventCmd];
  if (d === undefined) throw new RangeError(`no DONE command answers TCMU command ${eventCmd}`);
  return d;
}

function asGenl(msg: NlMsg | GenlMsg): GenlMsg {
  return 'genl' in msg ? msg : decodeGenlMsg(msg);
}

/** Decode an ADDED/REMOVED/RECONFIG_DEVICE event. Throws NetlinkDecodeError or TcmuEventError. */
export function decodeTcmuEvent(msg: NlMsg | GenlMsg): TcmuEvent {
  const g = asGenl(msg);
  const { cmd, version } = g.genl;
  const a = attrMap(g.attrs);
  let deviceId: number | null = null;
  const idAttr = a.get(TcmuNlAttr.DEVICE_ID);
  if (idAttr) deviceId = attrU32(idAttr);
  const kind = EVENT_KINDS[cmd];
  if (!kind) throw new TcmuEventError(`unknown command ${cmd} (version ${version})`, cmd, version, deviceId);
  if (version > 1 && deviceId === null) {
    throw new TcmuEventError(`DEVICE_ID missing in a version ${version} ${kind} event`, cmd, version, null);
  }
  const devAttr = a.get(TcmuNlAttr.DEVICE);
  const minorAttr = a.get(TcmuNlAttr.MINOR);
  if (!devAttr || !minorAttr) throw new TcmuEventError(`DEVICE or MINOR missing in a ${kind} event`, cmd, version, deviceId);
  let device: string;
  let minor: number;
  try {
    device = attrString(devAttr);
    minor = attrU32(minorAttr);
  } catch (e) {
    throw new TcmuEventError((e as Error).message, cmd, version, deviceId);
  }
  const ev: TcmuEvent = { kind, cmd, version, device, minor, deviceId, seq: g.header.seq };
  if (kind === 'reconfig') {
    // Same priority as tcmu-runner's reconfig_device; the kernel sends one.
    const cfg = a.get(TcmuNlAttr.DEV_CFG);
    const size = a.get(TcmuNlAttr.DEV_SIZE);
    const wc = a.get(TcmuNlAttr.WRITECACHE);
    try {
      if (cfg) ev.reconfig = { what: 'dev_config', devConfig: attrString(cfg) };
      else if (size) ev.reconfig = { what: 'dev_size', devSize: attrU64(size) };
      else if (wc) ev.reconfig = { what: 'write_cache', writeCache: attrU8(wc) !== 0 };
    } catch (e) {
      throw new TcmuEventError((e as Error).message, cmd, version, deviceId);
    }
  }
  return ev;
}

export interface TcmuEventInit {
  cmd: number;
  device: string;
  minor: number;
  deviceId: number;
  reconfig?: TcmuReconfig;
}

/** Build an event the way the kernel does (for simulators and tests). */
export function encodeTcmuEvent(ev: TcmuEventInit, o: { family: number; seq?: number; version?: number }): Uint8Array {
  const attrs = [nla.string(TcmuNlAttr.DEVICE, ev.device), nla.u32(TcmuNlAttr.MINOR, ev.minor), nla.u32(TcmuNlAttr.DEVICE_ID, ev.deviceId)];
  const r = ev.reconfig;
  if (r?.what === 'dev_config') attrs.push(nla.string(TcmuNlAttr.DEV_CFG, r.devConfig));
  else if (r?.what === 'dev_size') attrs.push(nla.u64(TcmuNlAttr.DEV_SIZE, r.devSize));
  else if (r?.what === 'write_cache') attrs.push(nla.u8(TcmuNlAttr.WRITECACHE, r.writeCache ? 1 : 0));
  return encodeGenlMsg({ family: o.family, flags: 0, seq: o.seq ?? 0, pid: 0, cmd: ev.cmd, version: o.version ?? TCMU_GENL_VERSION }, attrs);
}

export interface TcmuDone {
  /** ADDED_DEVICE_DONE / REMOVED_DEVICE_DONE / RECONFIG_DEVICE_DONE. */
  cmd: number;
  deviceId: number;
  /** 0 or -errno. */
  status: number;
}

/** Build an *_DONE reply: CMD_STATUS then DEVICE_ID, as libtcmu's send_netlink_reply does. */
export function encodeTcmuDone(d: TcmuDone, o: { family: number; seq: number; pid?: number; flags?: number }): Uint8Array {
  if (!Number.isInteger(d.status) || d.status > 0 || d.status < -0x80000000) {
    throw new RangeError(`CMD_STATUS must be 0 or -errno, got ${d.status}`);
  }
  return encodeGenlMsg(
    { family: o.family, flags: o.flags ?? NlmFlag.REQUEST | NlmFlag.ACK, seq: o.seq, pid: o.pid ?? 0, cmd: d.cmd, version: TCMU_GENL_VERSION },
    [nla.s32(TcmuNlAttr.CMD_STATUS, d.status), nla.u32(TcmuNlAttr.DEVICE_ID, d.deviceId)],
  );
}

/** Decode an *_DONE reply (the kernel's side, for simulators and tests). */
export function decodeTcmuDone(msg: NlMsg | GenlMsg): TcmuDone {
  const g = asGenl(msg);
  const a = attrMap(g.attrs);
  const st = a.get(TcmuNlAttr.CMD_STATUS);
  const id = a.get(TcmuNlAttr.DEVICE_ID);
  if (!st || !id) throw new NetlinkDecodeError('CMD_STATUS or DEVICE_ID missing in a DONE reply', g.header.len);
  return { cmd: g.genl.cmd, deviceId: attrU32(id), status: attrS32(st) };
}

/** SET_FEATURES with SUPP_KERN_CMD_REPLY (u8), asking for an ack. */
export function encodeSetFeatures(o: { family: number; seq: number; pid?: number; kernCmdReply?: boolean }): Uint8Array {
  return encodeGenlMsg(
    { family: o.family, flags: NlmFlag.REQUEST | NlmFlag.ACK, seq: o.seq, pid: o.pid ?? 0, cmd: TcmuNlCmd.SET_FEATURES, version: TCMU_GENL_VERSION },
    [nla.u8(TcmuNlAttr.SUPP_KERN_CMD_REPLY, o.kernCmdReply === false ? 0 : 1)],
  );
}
