/**
 * Asymmetric logical unit access (SPC-4 5.15): the target port groups a LUN
 * is reached through, REPORT TARGET PORT GROUPS data, SET TARGET PORT GROUPS
 * parameter lists, and which sense a command gets in each access state.
 *
 * The groups come from configfs (core/<hba>/<dev>/alua/<group>/), read by
 * the control plane. TCMU does not tell userspace which target port a
 * command arrived on, so, like tcmu-runner, the group holding the first
 * enabled port is taken as "the local group": its state decides what
 * commands may do, and it is the one SET TARGET PORT GROUPS may change.
 */

import { be16, be32, put16, put32 } from './bytes.js';
import { checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import { Asc, ScsiError, SenseKey } from './sense.js';

/** ASYMMETRIC ACCESS STATE values (SPC-4 table 198). */
export const AluaState = {
  ACTIVE_OPTIMIZED: 0x0,
  ACTIVE_NON_OPTIMIZED: 0x1,
  STANDBY: 0x2,
  UNAVAILABLE: 0x3,
  LBA_DEPENDENT: 0x4,
  OFFLINE: 0xe,
  TRANSITIONING: 0xf,
} as const;

/** Supported-state bits of a target port group descriptor (byte 1). */
export const AluaSupport = {
  AO: 0x01,
  AN: 0x02,
  S: 0x04,
  U: 0x08,
  LBD: 0x10,
  O: 0x40,
  T: 0x80,
} as const;

/** STATUS CODE of a target port group descriptor. */
export const AluaStatus = {
  NONE: 0x00,
  ALTERED_BY_EXPLICIT_STPG: 0x01,
  ALTERED_BY_IMPLICIT_ALUA: 0x02,
} as const;

/** TPGS field of standard INQUIRY: implicit (01b), explicit (10b). */
export const Tpgs = {
  NONE: 0,
  IMPLICIT: 1,
  EXPLICIT: 2,
  BOTH: 3,
} as const;

/** MAINTENANCE IN / OUT service actions. */
export const MaintenanceIn = {
  REPORT_TARGET_PORT_GROUPS: 0x0a,
  REPORT_SUPPORTED_OPERATION_CODES: 0x0c,
} as const;
export const MaintenanceOut = {
  SET_TARGET_PORT_GROUPS: 0x0a,
} as const;

/** A target port a group lists as a member (configfs `members`: fabric/wwn/tpgt_N/lun_M). */
export interface AluaTargetPort {
  readonly fabric: string;
  readonly wwn: string;
  readonly tpgt: number;
  /** RELATIVE TARGET PORT IDENTIFIER (scsi_port/indx in the LUN's statistics). */
  readonly relativePortId: number;
  /** PROTOCOL IDENTIFIER (scsi_transport/proto_id), e.g. 5 for iSCSI. */
  readonly protocolId: number;
  /** The port's TPG is enabled on this node. */
  readonly enabled: boolean;
}

/**
 * How the device fails over, from the groups' alua_access_type, as
 * tcmu-runner decides it: "None" is all-active (reported as implicit),
 * "Implicit" takes the handler's lock on the first IO, and explicit
 * transitions happen through SET TARGET PORT GROUPS.
 */
export type AluaFailover = 'all-active' | 'implicit' | 'explicit';

export interface AluaGroupInfo {
  readonly name: string;
  /** tg_pt_gp_id. */
  readonly id: number;
  /** Current ASYMMETRIC ACCESS STATE; the engine changes it on transitions. */
  state: number;
  /** AluaSupport bits. */
  readonly supported: number;
  readonly preferred: boolean;
  /** AluaStatus of the last change. */
  status: number;
  readonly implicitTransitionSecs: number;
  readonly ports: readonly AluaTargetPort[];
}

export interface AluaInfo {
  readonly failover: AluaFailover;
  readonly groups: AluaGroupInfo[];
}

/** The first enabled member port and its group (tcmu_get_enabled_port). */
export function enabledPort(alua: AluaInfo | undefined): { group: AluaGroupInfo; port: AluaTargetPort } | undefined {
  if (!alua) return undefined;
  for (const group of alua.groups) {
    for (const port of group.ports) if (port.enabled) return { group, port };
  }
  return undefined;
}

/** TPGS for standard INQUIRY: explicit failover reports explicit only, so initiators always send STPG. */
export function tpgsOf(alua: AluaInfo | undefined): number {
  if (!enabledPort(alua)) return Tpgs.NONE;
  return alua!.failover === 'explicit' ? Tpgs.EXPLICIT : Tpgs.IMPLICIT;
}

/** Is a transition to `state` allowed by the group's supported-state bits? (alua_check_sup_state) */
export function stateSupported(state: number, supported: number): boolean {
  switch (state) {
    case AluaState.ACTIVE_OPTIMIZED:
      return (supported & AluaSupport.AO) !== 0;
    case AluaState.ACTIVE_NON_OPTIMIZED:
      return (supported & AluaSupport.AN) !== 0;
    case AluaState.STANDBY:
      return (supported & AluaSupport.S) !== 0;
    case AluaState.UNAVAILABLE:
      return (supported & AluaSupport.U) !== 0;
    default:
      return false;
  }
}

/**
 * The error a media-access command gets in an access state, or undefined
 * when the state lets it through (SPC-4 5.15.2.4).
 */
export function accessStateError(state: number): ScsiError | undefined {
  switch (state) {
    case AluaState.ACTIVE_OPTIMIZED:
    case AluaState.ACTIVE_NON_OPTIMIZED:
    case AluaState.LBA_DEPENDENT:
      return undefined;
    case AluaState.STANDBY:
      return ScsiError.standby();
    case AluaState.UNAVAILABLE:
      return ScsiError.notReady(Asc.NOT_READY_TARGET_PORT_IN_UNAVAILABLE_STATE);
    case AluaState.TRANSITIONING:
      return ScsiError.notReady(Asc.NOT_READY_ASYMMETRIC_ACCESS_STATE_TRANSITION);
    case AluaState.OFFLINE:
      return ScsiError.notReady(Asc.NOT_READY_OFFLINE);
    default:
      return ScsiError.notReady(Asc.NOT_READY_TARGET_PORT_IN_UNAVAILABLE_STATE);
  }
}

export interface RtpgRequest {
  /** PARAMETER DATA FORMAT 001b: extended header with the implicit transition time. */
  readonly extended: boolean;
  readonly allocationLength: number;
}

/** REPORT TARGET PORT GROUPS CDB (MAINTENANCE IN, service action 0Ah). Throws ScsiError. */
export function decodeReportTargetPortGroups(cdb: Uint8Array): RtpgRequest {
  const format = cdb[1] >> 5;
  if (format !== 0 && format !== 1) throw ScsiError.invalidField(1, 7);
  requireZeroBytes(cdb, 2, 6);
  requireZeroBytes(cdb, 10, 11);
  checkControlByte(cdb, 12);
  const allocationLength = be32(cdb, 6);
  // tcmu-runner refuses an allocation length that cannot hold the header.
  if (allocationLength < 4) throw ScsiError.invalidField(6);
  return { extended: format === 1, allocationLength };
}

/**
 * REPORT TARGET PORT GROUPS parameter data, untruncated. RETURN DATA LENGTH
 * counts the descriptors only, as LIO and tcmu-runner fill it.
 */
export function reportTargetPortGroupsData(alua: AluaInfo, extended: boolean): Uint8Array {
  const hdr = extended ? 8 : 4;
  const descLen = alua.groups.reduce((n, g) => n + 8 + 4 * g.ports.length, 0);
  const b = new Uint8Array(hdr + descLen);
  put32(b, 0, descLen);
  if (extended) {
    b[4] = 0x10; // FORMAT TYPE 001b
    // tcmu-runner: every group is assumed to share the first group's transition time.
    b[5] = Math.min(0xff, alua.groups[0]?.implicitTransitionSecs ?? 0);
  }
  let off = hdr;
  for (const g of alua.groups) {
    b[off] = (g.preferred ? 0x80 : 0) | (g.state & 0x0f);
    b[off + 1] = g.supported & 0xff;
    put16(b, off + 2, g.id);
    b[off + 5] = g.status & 0xff;
    b[off + 7] = Math.min(0xff, g.ports.length);
    off += 8;
    for (const p of g.ports) {
      put16(b, off + 2, p.relativePortId);
      off += 4;
    }
  }
  return b;
}

/** One descriptor of a SET TARGET PORT GROUPS parameter list. */
export interface StpgDescriptor {
  readonly state: number;
  readonly groupId: number;
  /** Offset of the descriptor in the parameter list, for field pointers. */
  readonly offset: number;
}

/**
 * SET TARGET PORT GROUPS (MAINTENANCE OUT, service action 0Ah): CDB checks
 * and the parameter list (4 reserved bytes, then 4-byte descriptors).
 * An empty list is no error. Throws ScsiError.
 */
export function decodeSetTargetPortGroups(cdb: Uint8Array, dataOut: Uint8Array | undefined): StpgDescriptor[] {
  requireClear(cdb, 1, 0xe0);
  requireZeroBytes(cdb, 2, 6);
  requireZeroBytes(cdb, 10, 11);
  checkControlByte(cdb, 12);
  const len = be32(cdb, 6);
  if (len === 0) return [];
  if (!dataOut || dataOut.length < len) throw ScsiError.parameterListLength();
  if (len < 4 || (len - 4) % 4 !== 0) throw ScsiError.parameterListLength();
  const out: StpgDescriptor[] = [];
  for (let off = 4; off < len; off += 4) {
    if (dataOut[off] & 0xf0) throw ScsiError.invalidParameter(off, 7);
    out.push({ state: dataOut[off] & 0x0f, groupId: be16(dataOut, off + 2), offset: off });
  }
  return out;
}

/** Target-port designators for VPD page 83h (tcmu-runner adds the same four). */
export function portDesignators(port: AluaTargetPort, group: AluaGroupInfo): Uint8Array[] {
  const proto = (port.protocolId & 0x0f) << 4;
  const binary = (type: number, value: number): Uint8Array => {
    const d = new Uint8Array(8);
    d[0] = proto | 0x1; // binary
    d[1] = 0x80 | 0x10 | type; // PIV, association: target port
    d[3] = 4;
    put16(d, 6, value);
    return d;
  };
  const nameString = (assoc: number, text: string): Uint8Array => {
    const raw = new TextEncoder().encode(text);
    // Null-terminated, null-padded to a multiple of four, at most 256 bytes.
    let len = Math.min(256, (raw.length + 1 + 3) & ~3);
    const d = new Uint8Array(4 + len);
    d[0] = proto | 0x3; // UTF-8
    d[1] = 0x80 | (assoc << 4) | 0x8; // PIV, SCSI name string
    d[3] = len;
    d.set(raw.subarray(0, len - 1), 4);
    return d;
  };
  return [
    binary(0x4, port.relativePortId), // relative target port identifier
    binary(0x5, group.id), // target port group
    nameString(1, `${port.wwn},t,0x${port.tpgt.toString(16).padStart(4, '0')}`), // target port name
    nameString(2, port.wwn), // target device name
  ];
}

/** Sense for a transition SET TARGET PORT GROUPS could not make. */
export function explicitTransitionFailed(): ScsiError {
  return ScsiError.of(SenseKey.HARDWARE_ERROR, Asc.EXPLICIT_ASYMMETRIC_ACCESS_STATE_TRANSITION_FAILED);
}
