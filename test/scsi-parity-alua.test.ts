/**
 * ALUA end to end, after tcmu-runner's alua.c: REPORT / SET TARGET PORT
 * GROUPS, the access-state sense codes, implicit and explicit transitions
 * driven by a handler's lock (two LUNs sharing one lock file stand for two
 * nodes sharing an rbd image), and the groups read from configfs by the
 * daemon.
 */
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Initiator, ScsiStatus, type ScsiResponse } from '@tcmu-ts/ring';
import { AluaState, HandlerRegistry, decodeSense, type AluaFailover, type AluaGroupInfo } from '@tcmu-ts/core';
import { Logger } from '@tcmu-ts/core/host';
import { Daemon, Supervisor, SimulatedBackend, type DeviceSpec } from '@tcmu-ts/workers';
import { KernelStandIn } from './fixtures/kernel-standin.js';
import { retryBusy } from './scsi-helpers.js';

const BS = 512;
const HANDLER = fileURLToPath(new URL('./scsi-parity-handler.test.js', import.meta.url));
const AO = AluaState.ACTIVE_OPTIMIZED;
const SB = AluaState.STANDBY;

function put(b: Uint8Array, off: number, len: number, v: number): void {
  for (let i = len - 1; i >= 0; i--, v = Math.floor(v / 256)) b[off + i] = v & 0xff;
}
function rtpgCdb(alloc = 255, extended = false): Uint8Array {
  const c = new Uint8Array(12);
  c[0] = 0xa3;
  c[1] = (extended ? 0x20 : 0) | 0x0a;
  put(c, 6, 4, alloc);
  return c;
}
function stpg(ini: Initiator, descs: [state: number, group: number][]): Promise<ScsiResponse> {
  const p = new Uint8Array(4 + 4 * descs.length);
  descs.forEach(([st, id], i) => {
    p[4 + i * 4] = st;
    put(p, 6 + i * 4, 2, id);
  });
  const c = new Uint8Array(12);
  c[0] = 0xa4;
  c[1] = 0x0a;
  put(c, 6, 4, p.length);
  return ini.send(c, { dataOut: p });
}

interface RtpgGroup {
  pref: boolean;
  state: number;
  supported: number;
  id: number;
  status: number;
  ports: number[];
}
async function rtpg(ini: Initiator, extended = false): Promise<{ groups: RtpgGroup[]; transitionSecs?: number; raw: Uint8Array }> {
  const r = await ini.send(rtpgCdb(255, extended), { dataInLength: 255 });
  expectGood(r, 'REPORT TARGET PORT GROUPS');
  const d = r.data;
  const len = ((d[0] << 24) | (d[1] << 16) | (d[2] << 8) | d[3]) >>> 0;
  let off = extended ? 8 : 4;
  const end = off + len;
  const groups: RtpgGroup[] = [];
  while (off < end) {
    const n = d[off + 7];
    const ports: number[] = [];
    for (let i = 0; i < n; i++) ports.push((d[off + 8 + i * 4 + 2] << 8) | d[off + 8 + i * 4 + 3]);
    groups.push({ pref: (d[off] & 0x80) !== 0, state: d[off] & 0x0f, supported: d[off + 1], id: (d[off + 2] << 8) | d[off + 3], status: d[off + 5], ports });
    off += 8 + 4 * n;
  }
  return { groups, ...(extended ? { transitionSecs: d[5] } : {}), raw: d };
}

function expectGood(r: ScsiResponse, what = 'GOOD'): void {
  const d = r.sense.length ? decodeSense(r.sense) : undefined;
  expect(r.status, `${what}${d ? ` (sense ${d.key}/${d.asc.toString(16)}/${d.ascq.toString(16)})` : ''}`).to.equal(ScsiStatus.GOOD);
}
function expectSense(r: ScsiResponse, key: number, asc: number, ascq = 0) {
  expect(r.status, 'CHECK CONDITION').to.equal(ScsiStatus.CHECK_CONDITION);
  const d = decodeSense(r.sense)!;
  expect({ key: d.key, asc: d.asc, ascq: d.ascq }).to.deep.equal({ key, asc, ascq });
  return d;
}

/** A group with one member port. S and AO supported unless told otherwise. */
function grp(name: string, id: number, state: number, port: { rel: number; enabled: boolean }, supported = 0x05, preferred = false): AluaGroupInfo {
  return {
    name, id, state, supported, preferred, status: 0, implicitTransitionSecs: 3,
    ports: [{ fabric: 'iscsi', wwn: `iqn.2003-01.org.example:${name}`, tpgt: 1, relativePortId: port.rel, protocolId: 5, enabled: port.enabled }],
  };
}

async function until(ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('tcmu-runner parity: ALUA', function () {
  this.timeout(30000);
  let sup: Supervisor;
  let dir: string;
  const backends: SimulatedBackend[] = [];

  beforeEach(() => {
    sup = new Supervisor({ log: () => {} });
    dir = mkdtempSync(join(tmpdir(), 'tcmu-alua-'));
  });
  afterEach(async () => {
    await sup.stop();
    for (const b of backends.splice(0)) await b.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function lun(name: string, cfg: string, alua?: { failover: AluaFailover; groups: AluaGroupInfo[] }): Promise<Initiator> {
    const b = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 20 });
    backends.push(b);
    const spec: DeviceSpec = {
      name, subtype: 'parity', cfgstring: cfg, handlerSpec: HANDLER, blockSize: BS, numLbas: 8192, maxXferBlocks: 1024,
      writeCache: true, serial: `serial-${name}`, wwn: `wwn-${name}`, ring: b.endpoint, ...(alua ? { alua } : {}),
    };
    await sup.addDevice(spec, b);
    return new Initiator(b.sim, { blockSize: BS });
  }

  it('without groups there is no ALUA: TPGS 0, REPORT/SET TARGET PORT GROUPS are not supported', async () => {
    const ini = await lun('none', '4M');
    expect((await ini.inquiry(36)).data[5] & 0x30).to.equal(0);
    expectSense(await ini.send(rtpgCdb(), { dataInLength: 255 }), 5, 0x20);
    expectSense(await stpg(ini, [[AO, 1]]), 5, 0x20);
    // A group whose ports are all disabled here is not ALUA either (tcmu_get_enabled_port).
    const off = await lun('off', '4M', { failover: 'implicit', groups: [grp('g', 1, AO, { rel: 1, enabled: false })] });
    expectSense(await off.send(rtpgCdb(), { dataInLength: 255 }), 5, 0x20);
  });

  it('reports the groups: INQUIRY TPGS and port designators, REPORT TARGET PORT GROUPS in both formats', async () => {
    const ini = await lun('rep', '4M', {
      failover: 'implicit',
      groups: [grp('local', 10, AO, { rel: 1, enabled: true }, 0x0f, true), grp('remote', 20, SB, { rel: 2, enabled: false })],
    });
    expect((await ini.inquiry(36)).data[5] & 0x30, 'TPGS implicit').to.equal(0x10);
    const v = (await ini.inquiry(255, 0x83)).data;
    const desc: { assoc: number; type: number; body: Uint8Array }[] = [];
    for (let off = 4; off + 4 <= v.length; off += 4 + v[off + 3]) desc.push({ assoc: (v[off + 1] >> 4) & 3, type: v[off + 1] & 0x0f, body: v.subarray(off + 4, off + 4 + v[off + 3]) });
    expect(desc.find((d) => d.type === 4)!.body[3], 'relative target port').to.equal(1);
    expect(desc.find((d) => d.type === 5)!.body[3], 'target port group').to.equal(10);
    const name = desc.find((d) => d.type === 8 && d.assoc === 1)!.body;
    expect(Buffer.from(name).toString('utf8').replace(/\0+$/, '')).to.equal('iqn.2003-01.org.example:local,t,0x0001');
    const r = await rtpg(ini);
    expect(r.groups).to.deep.equal([
      { pref: true, state: AO, supported: 0x0f, id: 10, status: 0, ports: [1] },
      { pref: false, state: SB, supported: 0x05, id: 20, status: 0, ports: [2] },
    ]);
    const x = await rtpg(ini, true);
    expect(x.raw[4], 'FORMAT TYPE 001b').to.equal(0x10);
    expect(x.transitionSecs).to.equal(3);
    expect(x.groups).to.deep.equal(r.groups);
    // Allocation length below the header: refused, as tcmu-runner does. Truncation keeps RETURN DATA LENGTH.
    expectSense(await ini.send(rtpgCdb(3), { dataInLength: 3 }), 5, 0x24);
    const t = await ini.send(rtpgCdb(8), { dataInLength: 8 });
    expectGood(t);
    expect(t.data.length).to.equal(8);
    expect(t.data[3]).to.equal(24);
  });

  for (const [state, ascq, name] of [[SB, 0x0b, 'standby'], [AluaState.UNAVAILABLE, 0x0c, 'unavailable'], [AluaState.TRANSITIONING, 0x0a, 'transitioning'], [AluaState.OFFLINE, 0x12, 'offline']] as const) {
    it(`a local group in ${name} turns media access away with NOT READY 04h/${ascq.toString(16)}h; other commands are answered`, async () => {
      const ini = await lun(`st${state}`, '4M', { failover: 'implicit', groups: [grp('g', 1, state, { rel: 1, enabled: true }, 0xff)] });
      expectSense(await ini.read(0, 1), 2, 0x04, ascq);
      expectSense(await ini.write(0, new Uint8Array(BS)), 2, 0x04, ascq);
      expectSense(await ini.synchronizeCache(), 2, 0x04, ascq);
      expectGood(await ini.inquiry());
      expectGood(await ini.testUnitReady());
      expectGood(await ini.readCapacity());
      await rtpg(ini);
    });
  }

  it('explicit failover without a lock: SET TARGET PORT GROUPS moves the local group between standby and active/optimized', async () => {
    const ini = await lun('expl', '4M', {
      failover: 'explicit',
      groups: [grp('local', 1, AO, { rel: 1, enabled: true }), grp('remote', 2, SB, { rel: 2, enabled: false })],
    });
    expect((await ini.inquiry(36)).data[5] & 0x30, 'TPGS explicit').to.equal(0x20);
    expectGood(await ini.read(0, 1));
    expectGood(await stpg(ini, [[SB, 1]]));
    expectSense(await ini.read(0, 1), 2, 0x04, 0x0b);
    let r = await rtpg(ini);
    expect(r.groups.map((g) => [g.id, g.state, g.status])).to.deep.equal([[1, SB, 1], [2, SB, 0]]);
    expectGood(await stpg(ini, [[AO, 1]]));
    expectGood(await ini.read(0, 1));
    r = await rtpg(ini);
    expect(r.groups.map((g) => [g.id, g.state, g.status])).to.deep.equal([[1, AO, 1], [2, SB, 1]]);
    // The new states are kept for a restart of the worker.
    expect(sup.devices.get('expl')!.spec.alua!.groups.map((g) => g.state)).to.deep.equal([AO, SB]);
    // Remote groups cannot be moved from here; unknown groups and unsupported states are refused.
    expectSense(await stpg(ini, [[AO, 2]]), 4, 0x67, 0x0a);
    const unknown = expectSense(await stpg(ini, [[AO, 9]]), 5, 0x26);
    expect(unknown.fieldPointer).to.deep.include({ byte: 6, cdb: false });
    expectSense(await stpg(ini, [[AluaState.ACTIVE_NON_OPTIMIZED, 1]]), 5, 0x26);
    // Malformed parameter lists.
    const c = new Uint8Array(12);
    c[0] = 0xa4;
    c[1] = 0x0a;
    put(c, 6, 4, 6);
    expectSense(await ini.send(c, { dataOut: new Uint8Array(6) }), 5, 0x1a);
    put(c, 6, 4, 8);
    expectSense(await ini.send(c, { dataOut: new Uint8Array(4) }), 5, 0x1a);
    put(c, 6, 4, 0);
    expectGood(await ini.send(c), 'empty list');
    // Implicit-only devices do not take SET TARGET PORT GROUPS.
    const impl = await lun('impl', '4M', { failover: 'implicit', groups: [grp('g', 1, AO, { rel: 1, enabled: true })] });
    expectSense(await stpg(impl, [[SB, 1]]), 5, 0x20);
  });

  it('explicit failover with a lock: the lock holder is active/optimized, the other node standby, as for rbd', async () => {
    const lock = join(dir, 'image.lock');
    // Two LUNs on one image: node n1 reaches it through group 1, node n2 through group 2.
    const groups = (local: 1 | 2) => [
      grp('g1', 1, SB, { rel: 1, enabled: local === 1 }),
      grp('g2', 2, SB, { rel: 2, enabled: local === 2 }),
    ];
    const n1 = await lun('n1', `4M;lockfile=${lock};lockid=n1;fence`, { failover: 'explicit', groups: groups(1) });
    const n2 = await lun('n2', `4M;lockfile=${lock};lockid=n2;fence`, { failover: 'explicit', groups: groups(2) });
    // Nobody holds the lock: media access is fenced, everything reports standby.
    expectSense(await n1.read(0, 1), 2, 0x04, 0x0b);
    expect((await rtpg(n1)).groups.map((g) => g.state)).to.deep.equal([SB, SB]);
    // n1 takes it with its group's id as the tag.
    expectGood(await stpg(n1, [[AO, 1]]));
    expect(JSON.parse(readFileSync(lock, 'utf8'))).to.deep.equal({ owner: 'n1', tag: 1 });
    expectGood(await n1.write(0, new Uint8Array(BS).fill(1)));
    expect((await rtpg(n2)).groups.map((g) => g.state), 'n2 sees g1 holding the lock').to.deep.equal([AO, SB]);
    expectSense(await n2.read(0, 1), 2, 0x04, 0x0b);
    // Failover: n2 takes the lock. n1 still thinks it has it until its next write is fenced.
    expectGood(await stpg(n2, [[AO, 2]]));
    expectGood(await n2.write(0, new Uint8Array(BS).fill(2)));
    expectSense(await n1.write(1, new Uint8Array(BS)), 2, 0x04, 0x0b);
    expectSense(await n1.read(0, 1), 2, 0x04, 0x0b); // the handler reported the lock lost
    expect((await rtpg(n1)).groups.map((g) => g.state)).to.deep.equal([SB, AO]);
    // Standby releases the lock.
    expectGood(await stpg(n2, [[SB, 2]]));
    expect(readFileSync(lock, 'utf8')).to.equal('');
    expectSense(await n2.read(0, 1), 2, 0x04, 0x0b);
  });

  it('a lock that cannot be taken fails SET TARGET PORT GROUPS (HARDWARE ERROR 67h/0Ah), or BUSY when worth retrying', async () => {
    const groups = [grp('g', 1, SB, { rel: 1, enabled: true })];
    const hard = await lun('lk1', `4M;lockfile=${join(dir, 'a.lock')};lockfail=EIO`, { failover: 'explicit', groups });
    expectSense(await stpg(hard, [[AO, 1]]), 4, 0x67, 0x0a);
    const soft = await lun('lk2', `4M;lockfile=${join(dir, 'b.lock')};lockfail=ETIMEDOUT`, { failover: 'explicit', groups: groups.map((g) => ({ ...g })) });
    expect((await stpg(soft, [[AO, 1]])).status).to.equal(ScsiStatus.BUSY);
    expectSense(await soft.read(0, 1), 2, 0x04, 0x0b);
  });

  it('implicit failover with a lock: the first write answers BUSY while the lock is taken, a lost lock is taken again', async () => {
    const lock = join(dir, 'imp.lock');
    const ini = await lun('imp', `4M;lockfile=${lock};lockid=me`, { failover: 'implicit', groups: [grp('g', 1, AO, { rel: 1, enabled: true })] });
    // A read only needs the read "lock" (tcmu-runner reopens, takes nothing).
    const rd = await retryBusy(() => ini.read(0, 1));
    expectGood(rd.r);
    expect(rd.busy).to.be.greaterThan(0);
    expect(existsSync(lock), 'no lock taken for reads').to.equal(false);
    const w = await retryBusy(() => ini.write(0, new Uint8Array(BS).fill(5)));
    expectGood(w.r);
    expect(w.busy).to.be.greaterThan(0);
    expect(JSON.parse(readFileSync(lock, 'utf8'))).to.deep.equal({ owner: 'me', tag: 0xffff });
    expectGood(await ini.write(1, new Uint8Array(BS)), 'no BUSY once locked');
    // Another node takes the lock; REPORT TARGET PORT GROUPS notices (get_lock_state), the next write takes it back.
    writeFileSync(lock, JSON.stringify({ owner: 'other', tag: 0xffff }));
    expect((await rtpg(ini)).groups[0].state, 'implicit: states stay as configured').to.equal(AO);
    expect((await ini.write(2, new Uint8Array(BS))).status).to.equal(ScsiStatus.BUSY);
    await until(() => JSON.parse(readFileSync(lock, 'utf8')).owner === 'me');
    expectGood((await retryBusy(() => ini.write(2, new Uint8Array(BS)))).r);
  });
});

describe('tcmu-runner parity: ALUA groups and tcmur_cmd_time_out from configfs through the daemon', function () {
  this.timeout(30000);
  let k: KernelStandIn;
  let daemon: Daemon | undefined;
  let lines: string[];

  beforeEach(() => {
    k = new KernelStandIn();
    lines = [];
  });
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
    await k.close();
  });

  function file(path: string, text: string): void {
    const p = join(k.root, path);
    mkdirSync(dirname(p), { recursive: true });
    writeFileSync(p, text);
  }

  it('reads the groups and member ports, serves them, and writes STPG transitions back', async () => {
    const dev = k.addDevice({ name: 'ad0', subtype: 'ram', cfgstring: '4M;tcmur_cmd_time_out=7;' });
    const core = 'sys/kernel/config/target/core/user_0/ad0/alua';
    const g: Record<string, string> = {
      tg_pt_gp_id: '17\n', alua_access_state: '2\n', alua_access_status: 'None\n', alua_access_type: 'Implicit and Explicit\n',
      alua_support_active_optimized: '1\n', alua_support_active_nonoptimized: '0\n', alua_support_standby: '1\n',
      alua_support_unavailable: '0\n', alua_support_lba_dependent: '0\n', alua_support_offline: '0\n', alua_support_transitioning: '0\n',
      preferred: '1\n', implicit_trans_secs: '5\n', members: 'iSCSI/iqn.2003-01.org.example:t1/tpgt_1/lun_0\n',
    };
    for (const [f, v] of Object.entries(g)) file(`${core}/tpg_a/${f}`, v);
    for (const [f, v] of Object.entries({ tg_pt_gp_id: '0\n', alua_access_state: '0\n', alua_access_type: 'Implicit\n', members: '' })) file(`${core}/default_tg_pt_gp/${f}`, v);
    const tpg = 'sys/kernel/config/target/iscsi/iqn.2003-01.org.example:t1/tpgt_1';
    file(`${tpg}/enable`, '1\n');
    file(`${tpg}/lun/lun_0/statistics/scsi_port/indx`, '3\n');
    file(`${tpg}/lun/lun_0/statistics/scsi_transport/proto_id`, '5\n');

    const registry = new HandlerRegistry();
    await registry.loadBuiltins();
    daemon = new Daemon({
      logger: new Logger({ level: 4, stderr: { write: (l: string) => lines.push(l) } }),
      registry, handlerSources: new Map(registry.list().map((h) => [h.subtype, h.subtype])),
      root: k.root, configfsIo: k.configfsIo, openNetlink: k.openNetlink, openUio: k.openUio,
    });
    await daemon.start();
    const ini = new Initiator(dev.sim);
    expect((await ini.inquiry(36)).data[5] & 0x30, 'TPGS explicit').to.equal(0x20);
    const r = await rtpg(ini, true);
    expect(r.transitionSecs).to.equal(5);
    expect(r.groups).to.deep.equal([{ pref: true, state: SB, supported: 0x05, id: 17, status: 0, ports: [3] }]);
    expectSense(await ini.read(0, 1), 2, 0x04, 0x0b);
    expectGood(await stpg(ini, [[AO, 17]]));
    expectGood(await ini.read(0, 1));
    await until(() => readFileSync(join(k.root, core, 'tpg_a/alua_access_state'), 'utf8').trim() === '0');
    // One write() at offset 0, as configfs takes it (the stand-in's files keep what lies beyond).
    await until(() => readFileSync(join(k.root, core, 'tpg_a/alua_access_status'), 'utf8').startsWith('1'));
    await until(() => lines.some((l) => /tcmur_cmd_time_out 7 s/.test(l)));
    expect(lines.some((l) => /ALUA: explicit failover, groups tpg_a\(17\)/.test(l)), lines.join('')).to.equal(true);
  });
});
