/**
 * REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), derived from the planner
 * itself so the report cannot drift from what is answered: a command is
 * listed when its planner does not refuse it as an invalid operation code
 * (or, for a service action, at its SERVICE ACTION field) for this device, and a CDB bit is reported as used unless the planner
 * refuses that bit alone with INVALID FIELD IN CDB pointing at it, or at a
 * higher bit of the same byte (the top of the field it belongs to).
 * Every bit is tried on a baseline CDB the planner accepts (a handful of
 * commands need a non-zero field, see BASELINE), so a reserved-bit check
 * placed after another field's check is still reached.
 */

import { be16, be32, put16, put32 } from './bytes.js';
import { cdbLength, checkControlByte, requireClear, requireZeroBytes } from './cdb.js';
import type { ScsiDeviceInfo } from './device.js';
import { Asc, ScsiError } from './sense.js';

/** One operation code (and service action) the planner table serves. */
export interface CommandEntry {
  readonly opcode: number;
  /** Set for commands that have service actions: the value in byte 1 bits 4:0. */
  readonly serviceAction?: number;
}

/** What planning one CDB came to, as far as the report needs it. */
export type ProbeVerdict = 'accepted' | 'invalid-opcode' | { byte: number; bit?: number } | 'other-error';

/** Plans one CDB without side effects on the device and says how it went. */
export type PlanProbe = (cdb: Uint8Array) => ProbeVerdict;

/** Reporting options of byte 2, bits 2:0. */
export const ReportingOption = {
  ALL: 0b000,
  ONE_NO_SERVICE_ACTION: 0b001,
  ONE_WITH_SERVICE_ACTION: 0b010,
  ONE_EITHER: 0b011,
} as const;

/**
 * Fields a CDB needs non-zero for the planner to reach all of its checks:
 * a WRITE SAME or COMPARE AND WRITE of zero blocks and a MODE SENSE of page 0
 * are refused before the reserved bits after them are looked at.
 */
const BASELINE: ReadonlyMap<number, readonly (readonly [number, number])[]> = new Map([
  [0x41, [[8, 1]]], // WRITE SAME (10): 1 block
  [0x93, [[13, 1]]], // WRITE SAME (16): 1 block
  [0x89, [[13, 1]]], // COMPARE AND WRITE: 1 block
  [0x1a, [[2, 0x3f]]], // MODE SENSE (6): all pages
  [0x5a, [[2, 0x3f]]], // MODE SENSE (10): all pages
]);

export function baselineCdb(c: CommandEntry): Uint8Array {
  const cdb = new Uint8Array(cdbLength(c.opcode) ?? 16);
  cdb[0] = c.opcode;
  if (c.serviceAction !== undefined) cdb[1] = c.serviceAction;
  for (const [byte, value] of BASELINE.get(c.opcode) ?? []) cdb[byte] = value;
  return cdb;
}

/** The CDB USAGE DATA of one command, or undefined when the device does not support it. */
export function cdbUsage(c: CommandEntry, probe: PlanProbe): Uint8Array | undefined {
  const base = baselineCdb(c);
  const v0 = probe(base);
  if (v0 === 'invalid-opcode') return undefined;
  // A service action the device does not offer is refused at the SERVICE ACTION field.
  if (c.serviceAction !== undefined && typeof v0 === 'object' && v0.byte === 1 && v0.bit === 4) return undefined;
  const usage = new Uint8Array(base.length);
  usage[0] = c.opcode;
  const cdb = new Uint8Array(base.length);
  for (let byte = 1; byte < base.length; byte++) {
    for (let bit = 0; bit < 8; bit++) {
      const mask = 1 << bit;
      // The service action field identifies the command: it is reported as its value.
      if (byte === 1 && c.serviceAction !== undefined && mask & 0x1f) {
        usage[1] |= c.serviceAction & mask;
        continue;
      }
      cdb.set(base);
      cdb[byte] ^= mask;
      const v = probe(cdb);
      const refused = typeof v === 'object' && v.byte === byte && v.bit !== undefined && v.bit >= bit;
      if (!refused) usage[byte] |= mask;
    }
  }
  return usage;
}

/** COMMAND TIMEOUTS DESCRIPTOR (SPC-4 6.35.4): 12 bytes, nominal and recommended timeouts in seconds. */
function timeoutsDescriptor(dev: ScsiDeviceInfo): Uint8Array {
  const d = new Uint8Array(12);
  put16(d, 0, 0x0a);
  put32(d, 4, 0); // NOMINAL COMMAND PROCESSING TIMEOUT: not known per command
  put32(d, 8, Math.max(0, dev.commandTimeoutSeconds ?? 0));
  return d;
}

function allCommands(list: readonly CommandEntry[], probe: PlanProbe, dev: ScsiDeviceInfo, rctd: boolean): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const c of list) {
    const usage = cdbUsage(c, probe);
    if (!usage) continue;
    const d = new Uint8Array(8 + (rctd ? 12 : 0));
    d[0] = c.opcode;
    put16(d, 2, c.serviceAction ?? 0);
    d[5] = (rctd ? 0x02 : 0) | (c.serviceAction !== undefined ? 0x01 : 0); // CTDP, SERVACTV
    put16(d, 6, usage.length);
    if (rctd) d.set(timeoutsDescriptor(dev), 8);
    parts.push(d);
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(4 + total);
  put32(out, 0, total);
  let at = 4;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** SUPPORT field values of the one_command format. */
const Support = { NOT_SUPPORTED: 0b001, SUPPORTED: 0b011 } as const;

function oneCommand(c: CommandEntry | undefined, opcode: number, probe: PlanProbe, dev: ScsiDeviceInfo, rctd: boolean): Uint8Array {
  const usage = c ? cdbUsage(c, probe) : undefined;
  if (!usage) {
    // Not supported: no usage data (SPC-4 table 206: CDB SIZE 0).
    const out = new Uint8Array(4);
    out[1] = Support.NOT_SUPPORTED;
    return out;
  }
  const out = new Uint8Array(4 + usage.length + (rctd ? 12 : 0));
  out[1] = (rctd ? 0x80 : 0) | Support.SUPPORTED;
  put16(out, 2, usage.length);
  out.set(usage, 4);
  out[4] = opcode;
  if (rctd) out.set(timeoutsDescriptor(dev), 4 + usage.length);
  return out;
}

/**
 * The parameter data for a REPORT SUPPORTED OPERATION CODES CDB, cut to its
 * allocation length. `list` is every command of the planner table. Throws
 * ScsiError for a bad CDB.
 */
export function reportSupportedOpcodes(cdb: Uint8Array, dev: ScsiDeviceInfo, list: readonly CommandEntry[], probe: PlanProbe): Uint8Array {
  checkReportSupportedOpcodesCdb(cdb);
  const rctd = (cdb[2] & 0x80) !== 0;
  const option = cdb[2] & 0x07;
  const opcode = cdb[3];
  const sa = be16(cdb, 4);
  const alloc = be32(cdb, 6);
  const hasServiceActions = list.some((c) => c.opcode === opcode && c.serviceAction !== undefined);
  let data: Uint8Array;
  switch (option) {
    case ReportingOption.ALL:
      data = allCommands(list, probe, dev, rctd);
      break;
    case ReportingOption.ONE_NO_SERVICE_ACTION:
      // SPC-4: asking for a command that has service actions without one is an error.
      if (hasServiceActions) throw ScsiError.invalidField(3);
      data = oneCommand(list.find((c) => c.opcode === opcode), opcode, probe, dev, rctd);
      break;
    case ReportingOption.ONE_WITH_SERVICE_ACTION:
      if (!hasServiceActions && list.some((c) => c.opcode === opcode)) throw ScsiError.invalidField(4);
      data = oneCommand(list.find((c) => c.opcode === opcode && c.serviceAction === sa), opcode, probe, dev, rctd);
      break;
    case ReportingOption.ONE_EITHER:
      data = oneCommand(list.find((c) => c.opcode === opcode && (hasServiceActions ? c.serviceAction === sa : true)), opcode, probe, dev, rctd);
      break;
    default:
      throw ScsiError.invalidField(2, 2);
  }
  return data.subarray(0, Math.min(alloc, data.length));
}

/** The CDB checks alone (the usage probe of this very command stops here). */
export function checkReportSupportedOpcodesCdb(cdb: Uint8Array): void {
  checkControlByte(cdb, 12);
  requireClear(cdb, 1, 0xe0);
  requireClear(cdb, 2, 0x78);
  requireZeroBytes(cdb, 10, 11);
  if ((cdb[2] & 0x07) > ReportingOption.ONE_EITHER) throw ScsiError.invalidField(2, 2);
}

/** How a thrown ScsiError reads to the usage probe. */
export function verdictOf(e: ScsiError): ProbeVerdict {
  if (e.asc === Asc.INVALID_COMMAND_OPERATION_CODE.asc && e.ascq === Asc.INVALID_COMMAND_OPERATION_CODE.ascq) return 'invalid-opcode';
  if (e.asc === Asc.INVALID_FIELD_IN_CDB.asc && e.ascq === Asc.INVALID_FIELD_IN_CDB.ascq && e.fieldPointer?.cdb) {
    return { byte: e.fieldPointer.byte, ...(e.fieldPointer.bit !== undefined ? { bit: e.fieldPointer.bit } : {}) };
  }
  return 'other-error';
}
