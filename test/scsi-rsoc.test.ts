/**
 * REPORT SUPPORTED OPERATION CODES: what it lists is what the planner
 * serves for the device (not a hand-kept list), every CDB bit it reports
 * unused is refused by the planner, every bit it reports used is not, and
 * the three reporting formats, RCTD and truncation follow SPC-4 6.35.
 */
import { expect } from 'chai';
import { PLANNED_OPCODES, ScsiError, baselineCdb, planCommand as plan, supportedCommands, type ScsiDeviceInfo, type ScsiOutcome } from '@tcmu-ts/core';
import { ramHandler } from '@tcmu-ts/handlers';
import { KernelSimulator, ScsiStatus } from '@tcmu-ts/ring';
import { serveDevice } from '@tcmu-ts/workers';
import { be16, be32, expectCheck, expectData, invalidField, makeDev } from './scsi-helpers.js';

/** Every command here is answered by the planner itself: a 'done' outcome. */
const planCommand = (cdb: Uint8Array, dev: ScsiDeviceInfo) => plan(cdb, dev) as ScsiOutcome;

const rsoc = (option: number, opcode = 0, sa = 0, alloc = 0x10000, rctd = false) =>
  Uint8Array.from([0xa3, 0x0c, (rctd ? 0x80 : 0) | option, opcode, sa >> 8, sa & 0xff, alloc >>> 24, (alloc >> 16) & 0xff, (alloc >> 8) & 0xff, alloc & 0xff, 0, 0]);

/** The descriptors of the all_commands format: [opcode, service action or undefined, cdb length, has timeouts]. */
function descriptors(d: Uint8Array): { opcode: number; sa?: number; cdbLength: number; ctdp: boolean }[] {
  const out = [];
  const end = 4 + be32(d, 0);
  for (let o = 4; o < end;) {
    const ctdp = (d[o + 5] & 0x02) !== 0;
    out.push({ opcode: d[o], ...(d[o + 5] & 0x01 ? { sa: be16(d, o + 2) } : {}), cdbLength: be16(d, o + 6), ctdp });
    o += ctdp ? 20 : 8;
  }
  return out;
}

const fullDisk = (over: Partial<ScsiDeviceInfo> = {}) =>
  makeDev({ lbpu: true, lbpws: true, maxUnmapLbaCount: 1024, maxUnmapDescriptors: 4, optimalUnmapGranularity: 8, maxCompareAndWriteBlocks: 1, maxWriteSameBlocks: 1 << 20, thirdPartyCopy: true, ...over });

describe('scsi REPORT SUPPORTED OPERATION CODES', () => {
  it('lists exactly the commands the planner does not refuse as invalid opcodes, each with its CDB length', () => {
    const dev = fullDisk();
    const list = descriptors(expectData(planCommand(rsoc(0), dev)));
    const listed = new Set(list.map((c) => `${c.opcode}/${c.sa ?? ''}`));
    for (const op of PLANNED_OPCODES) {
      const probe = planCommand(baselineCdb({ opcode: op, ...(op === 0x9e ? { serviceAction: 0x10 } : op === 0xa3 ? { serviceAction: 0x0c } : {}) }), { ...dev });
      const refused = probe.kind === 'done' && probe.status === ScsiStatus.CHECK_CONDITION && probe.sense![12] === 0x20;
      const anyListed = [...listed].some((k) => k.startsWith(`${op}/`));
      if ([0xa4].includes(op)) continue; // MAINTENANCE OUT: only STPG, refused without explicit ALUA (below)
      expect(anyListed, `opcode ${op.toString(16)}`).to.equal(!refused);
    }
    for (const c of list) expect(c.cdbLength, `opcode ${c.opcode.toString(16)}`).to.equal(c.opcode < 0x20 ? 6 : c.opcode < 0x60 ? 10 : c.opcode < 0xa0 ? 16 : 12);
    expect(list.map((c) => c.opcode)).to.include.members([0x28, 0x2a, 0x42, 0x89, 0x83, 0x93, 0x9e]);
  });

  it('leaves out what the device does not offer: UNMAP, COMPARE AND WRITE, EXTENDED COPY, ALUA', () => {
    const list = descriptors(expectData(planCommand(rsoc(0), makeDev())));
    const ops = list.map((c) => c.opcode);
    for (const op of [0x42, 0x89, 0x83, 0x84]) expect(ops, `opcode ${op.toString(16)}`).not.to.include(op);
    expect(list.filter((c) => c.opcode === 0xa3).map((c) => c.sa), 'MAINTENANCE IN: RSOC, no RTPG without ALUA').to.deep.equal([0x0c]);
    expect(ops).not.to.include(0xa4);
  });

  it('reports service actions with SERVACTV (READ CAPACITY 16 under 9Eh, both RECEIVE COPY RESULTS)', () => {
    const list = descriptors(expectData(planCommand(rsoc(0), fullDisk())));
    expect(list.filter((c) => c.opcode === 0x9e).map((c) => c.sa)).to.deep.equal([0x10]);
    expect(list.filter((c) => c.opcode === 0x84).map((c) => c.sa)).to.deep.equal([0x00, 0x03]);
    expect(list.find((c) => c.opcode === 0x28)!.sa).to.equal(undefined);
    const withLbaStatus = descriptors(expectData(planCommand(rsoc(0), fullDisk({ getLbaStatus: true }))));
    expect(withLbaStatus.filter((c) => c.opcode === 0x9e).map((c) => c.sa), 'GET LBA STATUS when the handler can tell').to.deep.equal([0x10, 0x12]);
  });

  it('usage data: every bit reported unused is refused by the planner, every bit reported used is not refused at that bit', () => {
    const dev = fullDisk();
    for (const c of supportedCommands(dev)) {
      const base = baselineCdb(c);
      for (let byte = 1; byte < c.usage.length; byte++) {
        for (let bit = 0; bit < 8; bit++) {
          if (byte === 1 && c.serviceAction !== undefined && (1 << bit) & 0x1f) continue;
          const cdb = Uint8Array.from(base);
          cdb[byte] ^= 1 << bit;
          const o = planCommand(cdb, { ...dev });
          const s = o.kind === 'done' && o.status === ScsiStatus.CHECK_CONDITION ? o.sense! : undefined;
          const pointsHere = !!s && s[12] === 0x24 && (s[15] & 0xc8) === 0xc8 && be16(s, 16) === byte && (s[15] & 0x07) >= bit;
          const used = (c.usage[byte] & (1 << bit)) !== 0;
          expect(used, `opcode ${c.opcode.toString(16)}/${c.serviceAction ?? ''} byte ${byte} bit ${bit}`).to.equal(!pointsHere);
        }
      }
    }
  });

  it('usage data follows SBC: READ (16) uses DPO, FUA, FUA_NV but not RDPROTECT; WRITE SAME (16) UNMAP and NDOB; the control byte has no NACA or LINK', () => {
    const cmds = supportedCommands(fullDisk());
    const read16 = cmds.find((c) => c.opcode === 0x88)!.usage;
    expect(read16[1] & 0x1a).to.equal(0x1a);
    expect(read16[1] & 0xe0).to.equal(0);
    expect(read16[15] & 0x05, 'NACA, LINK').to.equal(0);
    expect(Array.from(read16.subarray(2, 14)).every((b) => b === 0xff), 'LBA and TRANSFER LENGTH').to.equal(true);
    const ws16 = cmds.find((c) => c.opcode === 0x93)!.usage;
    expect(ws16[1] & 0x09).to.equal(0x09);
    expect(cmds.find((c) => c.opcode === 0x9e)!.usage[1], 'service action field holds the service action').to.equal(0x10);
  });

  it('one command without service action (001b): SUPPORT 011b, CDB SIZE and the same usage data as supportedCommands', () => {
    const dev = fullDisk();
    const d = expectData(planCommand(rsoc(1, 0x2a), dev));
    expect(d[1] & 0x07).to.equal(0b011);
    expect(be16(d, 2)).to.equal(10);
    expect(Array.from(d.subarray(4, 14))).to.deep.equal(Array.from(supportedCommands(dev).find((c) => c.opcode === 0x2a)!.usage));
    expect(d.length).to.equal(14);
  });

  it('one command that is not supported: SUPPORT 001b and no usage data', () => {
    const d = expectData(planCommand(rsoc(1, 0x42), makeDev()));
    expect(d[1] & 0x07).to.equal(0b001);
    expect(be16(d, 2)).to.equal(0);
    expect(expectData(planCommand(rsoc(1, 0x01), makeDev()))[1] & 0x07).to.equal(0b001);
  });

  it('001b for an opcode with service actions, and 010b for one without, are invalid fields', () => {
    expectCheck(planCommand(rsoc(1, 0x9e), makeDev()), invalidField(3));
    expectCheck(planCommand(rsoc(2, 0x28), makeDev()), invalidField(4));
  });

  it('one command with service action (010b and 011b): READ CAPACITY (16)', () => {
    for (const opt of [2, 3]) {
      const d = expectData(planCommand(rsoc(opt, 0x9e, 0x10), makeDev()));
      expect(d[1] & 0x07, `option ${opt}`).to.equal(0b011);
      expect(be16(d, 2)).to.equal(16);
      expect(d[4]).to.equal(0x9e);
      expect(d[5]).to.equal(0x10);
    }
    expect(expectData(planCommand(rsoc(2, 0x9e, 0x11), makeDev()))[1] & 0x07, 'an unknown service action').to.equal(0b001);
    expect(expectData(planCommand(rsoc(3, 0x28, 0x55), makeDev()))[1] & 0x07, '011b ignores the SA of a command without').to.equal(0b011);
  });

  it('RCTD adds a command timeouts descriptor to every entry (CTDP set) with the recommended timeout', () => {
    const dev = fullDisk({ commandTimeoutSeconds: 30 });
    const d = expectData(planCommand(rsoc(0, 0, 0, 0x10000, true), dev));
    const list = descriptors(d);
    expect(list.length).to.be.greaterThan(20);
    expect(list.every((c) => c.ctdp)).to.equal(true);
    expect(be16(d, 4 + 8)).to.equal(0x0a);
    expect(be32(d, 4 + 8 + 8)).to.equal(30);
    const one = expectData(planCommand(rsoc(1, 0x28, 0, 0x100, true), dev));
    expect(one[1] & 0x80, 'CTDP').to.equal(0x80);
    expect(one.length).to.equal(4 + 10 + 12);
    expect(be32(one, 4 + 10 + 8)).to.equal(30);
  });

  it('is cut to the allocation length, keeping the full COMMAND DATA LENGTH', () => {
    const whole = expectData(planCommand(rsoc(0), fullDisk()));
    const cut = expectData(planCommand(rsoc(0, 0, 0, 10), fullDisk()));
    expect(cut.length).to.equal(10);
    expect(Array.from(cut)).to.deep.equal(Array.from(whole.subarray(0, 10)));
  });

  it('refuses a reserved reporting option and reserved bits', () => {
    expectCheck(planCommand(rsoc(4), makeDev()), invalidField(2, 2));
    const c = rsoc(0);
    c[10] = 1;
    expectCheck(planCommand(c, makeDev()), invalidField(10, 0));
    expect(ScsiError).to.be.a('function');
  });

  it('is answered through the engine and the simulator for a ram device (UNMAP listed: ram has unmap)', async () => {
    const sim = new KernelSimulator({ cmdRingSizeMb: 1, maxDataAreaMb: 4 });
    const served = await serveDevice({ ring: sim.endpoint, handler: ramHandler, cfgstring: '4M', name: 'rsoc', blockSize: 512, numLbas: 8192, maxXferBlocks: 1024, log: { warn() {}, error() {} } });
    try {
      const r = await sim.submit(rsoc(0, 0, 0, 4096), { dataInLength: 4096 });
      expect(r.status).to.equal(ScsiStatus.GOOD);
      const ops = descriptors(r.dataIn).map((c) => c.opcode);
      expect(ops).to.include.members([0x28, 0x2a, 0x42, 0x89, 0x93]);
    } finally {
      await served.stop();
      await sim.close();
    }
  });
});
