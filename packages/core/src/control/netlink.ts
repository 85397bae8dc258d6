/**
 * Generic netlink, the parts that do no I/O: the nlctrl controller family's
 * messages (family lookup by name), the errors a netlink conversation can
 * end in, and the transport interface TcmuNetlink talks through, so a
 * simulator or test can stand in for the kernel. The koffi socket that
 * implements the transport is host/netlink.ts.
 */
import { errnoName } from '@tcmu-ts/ring/errno';
import {
  type NlMsg, type GenlMsg, decodeGenlMsg, decodeNested, attrMap, attrString, attrU16, attrU32, encodeGenlMsg, nla, NlmFlag,
} from './nlattr.js';

/** nlctrl: the generic netlink controller family. */
export const GENL_ID_CTRL = 0x10;
export const GENL_NAMSIZ = 16;
export const CtrlCmd = { NEWFAMILY: 1, GETFAMILY: 3 } as const;
export const CtrlAttr = {
  FAMILY_ID: 1, FAMILY_NAME: 2, VERSION: 3, HDRSIZE: 4, MAXATTR: 5, OPS: 6, MCAST_GROUPS: 7,
} as const;
export const CtrlAttrMcastGrp = { NAME: 1, ID: 2 } as const;

export function errnoCode(errno: number): string {
  return errnoName(errno) ?? `errno ${Math.abs(errno)}`;
}

/** The kernel answered a request with an error (NLMSG_ERROR, error != 0). */
export class NetlinkError extends Error {
  /** Positive errno. */
  readonly errno: number;
  readonly code: string;
  constructor(what: string, error: number, readonly extMsg?: string) {
    super(`${what}: ${errnoCode(error)}${extMsg ? ` (${extMsg})` : ''}`);
    this.name = 'NetlinkError';
    this.errno = Math.abs(error);
    this.code = errnoCode(error);
  }
}

export class NetlinkTimeoutError extends Error {
  constructor(what: string, ms: number) {
    super(`${what}: no answer from the kernel in ${ms} ms`);
    this.name = 'NetlinkTimeoutError';
  }
}

/** nlctrl knows no family by that name. */
export class GenlFamilyNotFoundError extends Error {
  constructor(readonly family: string) {
    super(`generic netlink family ${JSON.stringify(family)} does not exist`);
    this.name = 'GenlFamilyNotFoundError';
  }
}

/** The TCM-USER family (or its "config" group) is missing: target_core_user is not loaded. */
export class TcmuNotLoadedError extends Error {
  constructor(detail: string) {
    super(`target_core_user not loaded: ${detail} (try: modprobe target_core_user)`);
    this.name = 'TcmuNotLoadedError';
  }
}

/** A family as nlctrl describes it. */
export interface GenlFamily {
  id: number;
  name: string;
  version: number;
  hdrsize: number;
  maxattr: number;
  /** Multicast group name -> group id. */
  groups: Record<string, number>;
}

/** Decode a CTRL_CMD_NEWFAMILY reply. */
export function decodeGenlFamily(msg: NlMsg | GenlMsg): GenlFamily {
  const g = 'genl' in msg ? msg : decodeGenlMsg(msg);
  const a = attrMap(g.attrs);
  const id = a.get(CtrlAttr.FAMILY_ID);
  const name = a.get(CtrlAttr.FAMILY_NAME);
  if (!id || !name) throw new NetlinkError('nlctrl reply without FAMILY_ID or FAMILY_NAME', -22);
  const num = (t: number) => {
    const x = a.get(t);
    return x ? attrU32(x) : 0;
  };
  const groups: Record<string, number> = {};
  const mc = a.get(CtrlAttr.MCAST_GROUPS);
  if (mc) {
    for (const grp of decodeNested(mc)) {
      const ga = attrMap(decodeNested(grp));
      const gn = ga.get(CtrlAttrMcastGrp.NAME);
      const gi = ga.get(CtrlAttrMcastGrp.ID);
      if (gn && gi) groups[attrString(gn)] = attrU32(gi);
    }
  }
  return { id: attrU16(id), name: attrString(name), version: num(CtrlAttr.VERSION), hdrsize: num(CtrlAttr.HDRSIZE), maxattr: num(CtrlAttr.MAXATTR), groups };
}

/** A CTRL_CMD_GETFAMILY request by name. */
export function encodeGetFamily(name: string, seq: number, pid = 0): Uint8Array {
  return encodeGenlMsg(
    { family: GENL_ID_CTRL, flags: NlmFlag.REQUEST | NlmFlag.ACK, seq, pid, cmd: CtrlCmd.GETFAMILY, version: 1 },
    [nla.string(CtrlAttr.FAMILY_NAME, name)],
  );
}

/** Messages we did not ask for (multicast events), plus trouble the pump ran into. */
export interface GenlListener {
  onMessage(msg: NlMsg): void;
  /** ENOBUFS: the kernel dropped messages for this socket; state must be re-read from sysfs/configfs. */
  onOverrun?(): void;
  /** A datagram that does not decode, or an exception from onMessage. */
  onError?(err: Error): void;
}

/** What TcmuNetlink needs from a socket; a simulator or test can stand in for the kernel. */
export interface GenlTransport {
  readonly portId: number;
  request(what: string, build: (seq: number, portId: number) => Uint8Array, timeoutMs?: number): Promise<NlMsg[]>;
  resolveFamily(name: string, timeoutMs?: number): Promise<GenlFamily>;
  addMembership(groupId: number): void;
  listen(listener: GenlListener): void;
  close(): Promise<void>;
}
