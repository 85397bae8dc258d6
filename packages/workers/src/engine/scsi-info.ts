import { TCMU_RUNNER_LIMITS, createDeviceInfo, tpgsOf, type AluaInfo, type DeviceHandler, type ScsiDeviceInfo } from '@tcmu-ts/core';
import type { DeviceSpec } from '../device-spec.js';

/** A private, mutable copy: the worker changes group states on ALUA transitions. */
function cloneAlua(a: AluaInfo | undefined): AluaInfo | undefined {
  if (!a) return undefined;
  return { failover: a.failover, groups: a.groups.map((g) => ({ ...g, ports: g.ports.map((p) => ({ ...p })) })) };
}

/**
 * The SCSI core's view of a device, built from what the supervisor knows
 * and, once it is open, from what the handler can do: tcmu-runner's choices
 * (main.c dev_added, scsi.c) for what each callout makes available.
 *  - unmap(): UNMAP and WRITE SAME with UNMAP (LBPU, LBPWS, LBPWS10), and
 *    LBPRZ since the handler API promises unmapped blocks read as zeros;
 *    1 Mi blocks (tcmu-runner: 32 Mi) and 4 descriptors per UNMAP, optimal granularity one
 *    maximum transfer, alignment 0 (UGAVALID set, as tcmu-runner reports).
 *  - compareAndWrite(), or read() and write(): COMPARE AND WRITE of 1 block.
 *  - write() or writeSame(): WRITE SAME up to FFFFFFFFh blocks.
 *  - read() and write(): EXTENDED COPY (3PC).
 *  - lbaStatus(): GET LBA STATUS.
 * What the handler's `limits` say overrides these defaults (rbd: its object size);
 * its `identity` changes what INQUIRY says the device is (zbc, fbo).
 * D_SENSE is changeable by MODE SELECT.
 */
export function scsiInfoFromSpec(spec: DeviceSpec, numLbas: number, handler?: DeviceHandler): ScsiDeviceInfo {
  const h: Partial<DeviceHandler> = handler ?? {};
  const unmap = typeof h.unmap === 'function';
  const rw = typeof h.read === 'function' && typeof h.write === 'function';
  const alua = cloneAlua(spec.alua);
  const limits = h.limits ?? {};
  const id = h.identity ?? {};
  return createDeviceInfo({
    blockSize: spec.blockSize,
    numLbas,
    maxXferBlocks: spec.maxXferBlocks,
    writeCache: spec.writeCache,
    serial: spec.serial,
    wwn: spec.wwn,
    product: `TCMU ${spec.subtype}`.slice(0, 16),
    changeableDSense: true,
    ...(handler
      ? {
          lbpu: unmap,
          ...(typeof h.lbaStatus === 'function' ? { getLbaStatus: true } : {}),
          lbpws: unmap,
          lbprz: unmap && (limits.unmapReadsZeros ?? true),
          maxUnmapLbaCount: unmap ? limits.maxUnmapBlocks ?? TCMU_RUNNER_LIMITS.maxUnmapLbaCount : 0,
          maxUnmapDescriptors: unmap ? TCMU_RUNNER_LIMITS.maxUnmapDescriptors : 0,
          optimalUnmapGranularity: unmap ? limits.unmapGranularity ?? spec.maxXferBlocks : 0,
          ...(unmap ? { unmapGranularityAlignment: limits.unmapGranularityAlignment ?? 0 } : {}),
          ...(limits.optimalTransferBlocks ? { optimalXferBlocks: limits.optimalTransferBlocks } : {}),
          ...(limits.writeProtect ? { writeProtect: true } : {}),
          ...(limits.atomicWriteBlocks && typeof h.write === 'function'
            ? { maxAtomicBlocks: Math.min(limits.atomicWriteBlocks, spec.maxXferBlocks), atomicAlignmentBlocks: limits.atomicAlignmentBlocks ?? 0 }
            : {}),
          maxCompareAndWriteBlocks: typeof h.compareAndWrite === 'function' || rw ? TCMU_RUNNER_LIMITS.maxCompareAndWriteBlocks : 0,
          maxWriteSameBlocks: typeof h.write === 'function' || typeof h.writeSame === 'function' ? TCMU_RUNNER_LIMITS.maxWriteSameBlocks : 0,
          thirdPartyCopy: rw,
          ...(id.peripheralType !== undefined ? { peripheralType: id.peripheralType } : {}),
          ...(id.removable ? { removable: true } : {}),
          ...(id.versionDescriptors ? { versionDescriptors: id.versionDescriptors } : {}),
          ...(id.blockVpdPages ? { blockVpdPages: id.blockVpdPages } : {}),
          ...(id.zoned ? { zoned: id.zoned } : {}),
          ...(id.vpdPages ? { extraVpdPages: id.vpdPages } : {}),
        }
      : {}),
    ...(alua ? { alua, tpgs: tpgsOf(alua) } : {}),
  });
}
