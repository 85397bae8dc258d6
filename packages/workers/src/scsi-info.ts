import { createDeviceInfo, type ScsiDeviceInfo } from '@tcmu-ts/core';
import type { DeviceSpec } from './device-spec.js';

/** The SCSI core's view of a device, built from what the supervisor knows. */
export function scsiInfoFromSpec(spec: DeviceSpec, numLbas: number): ScsiDeviceInfo {
  return createDeviceInfo({
    blockSize: spec.blockSize,
    numLbas,
    maxXferBlocks: spec.maxXferBlocks,
    writeCache: spec.writeCache,
    serial: spec.serial,
    wwn: spec.wwn,
    product: `TCMU ${spec.subtype}`.slice(0, 16),
  });
}
