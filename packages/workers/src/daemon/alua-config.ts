/**
 * The control plane's side of ALUA and of tcmu-runner's per-device daemon
 * options: read a TCMU device's target port groups from configfs (as
 * tcmu-runner's tcmu_get_alua_grps and tcmu_get_tgt_port do), write back the
 * state changes a worker makes, and find tcmur_cmd_time_out in dev_config.
 *
 *   core/user_<hba>/<dev>/alua/<group>/{tg_pt_gp_id, alua_access_state,
 *     alua_access_status, alua_access_type, alua_support_*, preferred,
 *     implicit_trans_secs, members}
 *   <fabric>/<wwn>/tpgt_<n>/{enable, lun/lun_<m>/statistics/scsi_port/indx,
 *     lun/lun_<m>/statistics/scsi_transport/proto_id}
 */
import { join } from 'node:path';
import {
  AluaStatus, AluaSupport, ConfigfsError, extractDaemonOptions,
  type AluaFailover, type AluaGroupInfo, type AluaInfo, type AluaTargetPort,
} from '@tcmu-ts/core';
import type { TcmuConfigfsDevice } from '@tcmu-ts/core/host';

const SUPPORT_FILES: readonly [string, number][] = [
  ['alua_support_active_optimized', AluaSupport.AO],
  ['alua_support_active_nonoptimized', AluaSupport.AN],
  ['alua_support_standby', AluaSupport.S],
  ['alua_support_unavailable', AluaSupport.U],
  ['alua_support_lba_dependent', AluaSupport.LBD],
  ['alua_support_offline', AluaSupport.O],
  ['alua_support_transitioning', AluaSupport.T],
];

const STATUS_TEXT: Record<string, number> = {
  None: AluaStatus.NONE,
  'Altered by Explicit STPG': AluaStatus.ALTERED_BY_EXPLICIT_STPG,
  'Altered by Implicit ALUA': AluaStatus.ALTERED_BY_IMPLICIT_ALUA,
};

/** alua_access_type to failover mode. tcmu-runner refuses the explicit ones for now; we serve them. */
export function failoverOf(accessType: string | undefined): AluaFailover | undefined {
  switch (accessType) {
    case 'None':
      return 'all-active';
    case 'Implicit':
      return 'implicit';
    case 'Explicit':
    case 'Implicit and Explicit':
      return 'explicit';
    default:
      return undefined;
  }
}

async function readText(dev: TcmuConfigfsDevice, path: string): Promise<string | undefined> {
  try {
    return (await dev.io.readFile(path)).trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ConfigfsError('read', path, e);
  }
}

async function readInt(dev: TcmuConfigfsDevice, path: string): Promise<number | undefined> {
  const s = await readText(dev, path);
  return s !== undefined && /^-?\d+$/.test(s) ? Number(s) : undefined;
}

/** A member line "fabric/wwn/tpgt_N/lun_M" as tcmu_get_tgt_port reads it; undefined when it cannot be. */
export async function readTargetPort(dev: TcmuConfigfsDevice, member: string): Promise<AluaTargetPort | undefined> {
  const m = /^([^/]{1,16})\/([^/]+)\/tpgt_(\d+)\/lun_(\d+)$/.exec(member.trim());
  if (!m) return undefined;
  // iSCSI's fabric name and its configfs directory differ.
  const fabric = m[1] === 'iSCSI' ? 'iscsi' : m[1];
  const tpg = join(dev.root, 'sys/kernel/config/target', fabric, m[2], `tpgt_${m[3]}`);
  const stats = join(tpg, 'lun', `lun_${m[4]}`, 'statistics');
  const relativePortId = await readInt(dev, join(stats, 'scsi_port', 'indx'));
  const protocolId = await readInt(dev, join(stats, 'scsi_transport', 'proto_id'));
  const enabled = await readInt(dev, join(tpg, 'enable'));
  if (relativePortId === undefined || protocolId === undefined || enabled === undefined) return undefined;
  return { fabric, wwn: m[2], tpgt: Number(m[3]), relativePortId, protocolId, enabled: enabled !== 0 };
}

/**
 * The device's ALUA groups other than default_tg_pt_gp (tcmu-runner only
 * does ALUA for groups the administrator made). undefined when there are
 * none, or none has an enabled member port.
 */
export async function readAluaInfo(dev: TcmuConfigfsDevice): Promise<AluaInfo | undefined> {
  const groups: AluaGroupInfo[] = [];
  const types: (string | undefined)[] = [];
  for (const name of await dev.listAluaGroups()) {
    if (name === 'default_tg_pt_gp') continue;
    const g = await dev.readAluaGroup(name);
    const dir = join(dev.path, 'alua', name);
    let supported = 0;
    for (const [file, bit] of SUPPORT_FILES) if ((await readInt(dev, join(dir, file))) ?? 0) supported |= bit;
    const ports: AluaTargetPort[] = [];
    for (const member of g.members ?? []) {
      const p = await readTargetPort(dev, member);
      if (p) ports.push(p);
    }
    groups.push({
      name,
      id: g.tgPtGpId ?? 0,
      state: g.accessState ?? 0,
      supported,
      preferred: (g.preferred ?? 0) !== 0,
      status: STATUS_TEXT[(await readText(dev, join(dir, 'alua_access_status'))) ?? 'None'] ?? AluaStatus.NONE,
      implicitTransitionSecs: (await readInt(dev, join(dir, 'implicit_trans_secs'))) ?? 0,
      ports,
    });
    types.push(g.accessType);
  }
  const local = groups.findIndex((g) => g.ports.some((p) => p.enabled));
  if (local < 0) return undefined;
  const failover = failoverOf(types[local]);
  if (!failover) return undefined;
  return { failover, groups };
}

/** Write a group's new state and status back, as tcmu-runner's alua_set_state does. */
export async function writeAluaState(dev: TcmuConfigfsDevice, group: string, state: number, status: number): Promise<void> {
  const dir = join(dev.path, 'alua', group);
  await dev.io.writeFile(join(dir, 'alua_access_state'), String(state));
  try {
    await dev.io.writeFile(join(dir, 'alua_access_status'), String(status));
  } catch {
    // tcmu-runner ignores this one too: RTPG's status byte is informational.
  }
}

/** tcmur_cmd_time_out from the device's dev_config attribute, if it has one. */
export async function readCmdTimeOut(dev: TcmuConfigfsDevice): Promise<number | undefined> {
  let devConfig: string;
  try {
    devConfig = await dev.readAttribute('dev_config');
  } catch {
    return undefined;
  }
  return extractDaemonOptions(devConfig).options.cmdTimeOut;
}
