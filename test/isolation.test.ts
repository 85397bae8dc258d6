/**
 * Issue 17, items 2 and 3 on the simulator: two LUNs of one supervisor, A
 * misbehaving, B a plain ram LUN.
 *
 *  - A hangs (fault handler, hang=1): its commands time out in the simulated
 *    kernel (cmd_time_out), A's engine sees the initiator's ABORT TASK and
 *    LUN RESET, counts the commands past tcmur_cmd_time_out (/metrics), the
 *    late completions are dropped once the hang is released, A serves again,
 *    and B's commands keep completing meanwhile.
 *  - A's worker dies (uncaught exception, process.exit, a JS heap leak up to
 *    the worker's heap limit): A restarts on a reset ring and serves again;
 *    B completes every command meanwhile.
 *  - A runs in a device process (isolation 'process') and dies by a signal:
 *    process.abort() in its handler (what a native abort() or SIGSEGV does)
 *    or kill -9 from outside. The rest of the daemon (B, mocha) lives on, A
 *    restarts on a reset ring, its counters still reach /metrics.
 *
 * No timing is asserted: B must complete commands, every one of them GOOD
 * and none timed out by its kernel, while A's are held. How fast B goes
 * beside a misbehaving A is a figure for the bench (npm run bench --
 * --isolation), not a pass mark: on a loaded 2-core machine a rate window
 * varies several times over by itself.
 */
import { expect } from 'chai';
import { fileURLToPath } from 'node:url';
import { once } from 'node:events';
import { readFileSync, readdirSync } from 'node:fs';
import { Child } from './fixtures/child.js';
import { performance } from 'node:perf_hooks';
import { Initiator, ScsiStatus, cdbRead16 } from '@tcmu-ts/ring';
import { startMetricsServer } from '@tcmu-ts/workers/metrics';
import { SimulatedBackend, Supervisor, type CounterSnapshot, type ManagedDevice } from '@tcmu-ts/workers';
import { LunHarness } from './fixtures/lun-tests.js';

const BS = 512;
const NUM_LBAS = 8192; // ram/4M
const MISBEHAVING = fileURLToPath(new URL('./fixtures/misbehaving-handler.js', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const lunSpec = (subtype: string, handlerSpec: string, cfgstring: string, cmdTimeOut?: number) => ({
  subtype, handlerSpec, cfgstring, blockSize: BS, numLbas: NUM_LBAS, maxXferBlocks: 1024, writeCache: true,
  ...(cmdTimeOut !== undefined ? { cmdTimeOut } : {}),
});

interface Window {
  completed: number;
  failed: number;
}

/** `qd` 4 KiB reads and writes kept outstanding on `ini` until `until` resolves (or for `ms`). */
async function closedLoop(ini: Initiator, qd: number, until: Promise<unknown> | number): Promise<Window> {
  let stop = false;
  const w = { completed: 0, failed: 0 };
  const data = new Uint8Array(8 * BS).fill(0x5a);
  const lane = async (k: number) => {
    for (let i = 0; !stop; i++) {
      const lba = ((k * 997 + i * 61) % (NUM_LBAS / 8)) * 8;
      const r = i % 2 ? await ini.read(lba, 8) : await ini.write(lba, data);
      if (r.status === ScsiStatus.GOOD) w.completed++;
      else w.failed++;
    }
  };
  const lanes = Array.from({ length: qd }, (_, k) => lane(k));
  await (typeof until === 'number' ? sleep(until) : until);
  stop = true;
  await Promise.all(lanes);
  return w;
}

/** The nice value of a thread or process (/proc/<id>/stat, field 19). */
function niceOf(id: number): number {
  const stat = readFileSync(`/proc/${id}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
}
/** The nice values of every thread of process `pid`, as a sorted set. */
function nicesOfThreads(pid: number): number[] {
  return [...new Set(readdirSync(`/proc/${pid}/task`).map((t) => niceOf(Number(t))))].sort();
}

/** B served throughout, GOOD every time; A's ring reset once and its worker (thread or process) replaced once. */
function expectOneRestart(during: Window, resets: number, devA: ManagedDevice, firstWorkerId: number): void {
  expect(during.failed).to.equal(0);
  expect(during.completed).to.be.greaterThan(0);
  expect(resets).to.equal(1);
  expect(devA.restarts).to.equal(1);
  expect(devA.state).to.equal('running');
  expect(devA.worker!.id).to.not.equal(firstWorkerId);
}

async function until<T>(read: () => T, ok: (v: T) => boolean, ms = 5000): Promise<T> {
  const end = performance.now() + ms;
  let v = read();
  while (!ok(v) && performance.now() < end) {
    await sleep(5);
    v = read();
  }
  return v;
}

describe('isolation: one LUN misbehaving next to a healthy one', function () {
  this.timeout(30000);
  // A small heap per worker, so the leaking handler reaches it in a moment.
  const h = new LunHarness('ISOLATION_DEBUG', { workerHeapMb: 48 });
  const snap = (name: string): CounterSnapshot => h.sup.snapshot(name)!;

  it('a hung LUN: kernel timeout, ABORT TASK and LUN RESET seen, late completions dropped, A serves again, B unaffected', async () => {
    const KERNEL_TMO_MS = 800;
    // tcmur_cmd_time_out 0.3 s (the engine counts commands past it), the kernel's cmd_time_out 0.8 s.
    const a = await h.lun(() => 'lunA', lunSpec('fault', 'fault', 'ram/4M;hang=1', 0.3), 16, { cmdTimeOutMs: KERNEL_TMO_MS });
    const b = await h.lun(() => 'lunB', lunSpec('ram', 'ram', '4M', 0.3));
    const simA = a.backend.sim;

    const baseline = await closedLoop(b.ini, 4, 600);
    expect(baseline.failed).to.equal(0);
    expect(baseline.completed).to.be.greaterThan(0);

    // Two commands on A hang; the initiator aborts one, then resets the LUN.
    const t1 = simA.start(cdbRead16(0, 1), { dataInLength: BS });
    const t2 = simA.start(cdbRead16(1, 1), { dataInLength: BS });
    const hangStart = performance.now();
    const abort = simA.abortTask(t2);
    const reset = simA.lunReset();
    const during = await closedLoop(b.ini, 4, Promise.all([t1.result, t2.result]));
    const r1 = await t1.result;
    const r2 = await t2.result;
    expect(performance.now() - hangStart).to.be.at.least(KERNEL_TMO_MS - 1);
    for (const r of [r1, r2]) expect(r).to.include({ timedOut: true, failure: 'cmd-timeout', status: ScsiStatus.CHECK_CONDITION });
    expect((await abort).notified).to.equal(true);
    expect((await reset).cmdIds).to.have.length(2);
    expect(simA.counters()).to.include({ cmdTimeouts: 2, tmrEntries: 2, lateCompletions: 0 });

    // B: served while A's commands were held, every command answered GOOD, none timed out.
    expect(during.completed).to.be.greaterThan(0);
    expect(during.failed).to.equal(0);
    expect(b.backend.sim.counters().cmdTimeouts).to.equal(0);

    // A's engine saw both TMRs and counted both commands past tcmur_cmd_time_out; B none.
    const sa = await until(() => snap('lunA'), (s) => s.tmrSeen === 2 && s.cmdTimeOutExceeded === 2);
    expect(sa).to.include({ tmrSeen: 2, cmdTimeOutExceeded: 2, inFlight: 2 });
    expect(snap('lunB')).to.include({ tmrSeen: 0, cmdTimeOutExceeded: 0 });
    expect(h.logs.some((l) => /lunA: task management ABORT_TASK for 1 command/.test(l))).to.equal(true);
    expect(h.logs.some((l) => /lunA: task management LUN_RESET for 2 command/.test(l))).to.equal(true);

    // The same through /metrics.
    const m = await startMetricsServer(h.sup, { host: '127.0.0.1', port: 0 });
    try {
      const text = await (await fetch(m.url)).text();
      const metric = (name: string, dev: string) => Number(new RegExp(`^${name}\\{device="${dev}"\\} (\\S+)$`, 'm').exec(text)?.[1]);
      expect(metric('tcmu_cmd_time_out_exceeded_total', 'lunA')).to.equal(2);
      expect(metric('tcmu_cmd_time_out_exceeded_total', 'lunB')).to.equal(0);
      expect(metric('tcmu_timeouts_total', 'lunA')).to.equal(2);
      expect(metric('tcmu_tmr_total', 'lunA')).to.equal(2);
      expect(metric('tcmu_timeouts_total', 'lunB')).to.equal(0);
    } finally {
      await m.close();
    }

    // Swap the fault off at run time: the held commands run and complete late; the kernel drops both.
    expect(await h.sup.reconfigure('lunA', { cfgstring: 'ram/4M' })).to.equal(0);
    const c = await until(() => simA.counters(), (x) => x.lateCompletions === 2);
    expect(c).to.include({ lateCompletions: 2, idsInUse: 0, inflight: 0 });
    expect(h.logs.some((l) => /lunA: timed out command id \d+ completed after/.test(l))).to.equal(true);
    // A serves new commands, on the same worker (no restart).
    const data = new Uint8Array(BS).fill(0xa7);
    expect((await a.ini.write(5, data)).status).to.equal(ScsiStatus.GOOD);
    const back = await a.ini.read(5, 1);
    expect(back.status).to.equal(ScsiStatus.GOOD);
    expect(back.data[0]).to.equal(0xa7);
    expect(h.sup.devices.get('lunA')!.restarts).to.equal(0);
  });

  for (const mode of ['crash', 'exit', 'leak'] as const) {
    it(`a worker that dies (${mode}) restarts on a reset ring and serves again; B answers every command meanwhile`, async () => {
      const a = await h.lun(() => 'lunA', lunSpec('misbehave', MISBEHAVING, `${mode}-once/4M`));
      const b = await h.lun(() => 'lunB', lunSpec('ram', 'ram', '4M'));
      let resets = 0;
      const backendA: SimulatedBackend = a.backend;
      const resetRing = backendA.resetRing.bind(backendA);
      backendA.resetRing = () => { resets++; resetRing(); };
      const devA = h.sup.devices.get('lunA')!;
      const firstThread = devA.worker!.id;
      const restarted = new Promise((r) => h.sup.once('device-restarted', r));

      // A load on A that kills its worker (a leak takes a few hundred 64 KiB writes), B under load meanwhile.
      let stopA = false;
      const loadA = (async () => {
        const big = new Uint8Array(128 * BS).fill(1);
        let i = 0;
        while (!stopA) {
          const rs = await Promise.all(Array.from({ length: 4 }, () => a.ini.write((i++ % 60) * 128, big)));
          // While A is blocked for its restart the kernel answers at once: let the event loop turn.
          if (rs.some((r) => r.status !== ScsiStatus.GOOD)) await sleep(1);
        }
      })();
      const during = await closedLoop(b.ini, 4, restarted);
      stopA = true;
      await loadA;

      expectOneRestart(during, resets, devA, firstThread);
      const why = { crash: /deliberate crash/, exit: /worker exited \(code 3\)/, leak: /ERR_WORKER_OUT_OF_MEMORY|out of memory/i }[mode];
      // The restarted worker thread runs demoted (nice is per thread on Linux), no other thread of this process is.
      expect(nicesOfThreads(process.pid)).to.deep.equal([0, 10]);
      // A leaking worker steps down once past half its heap limit, before it is ended.
      if (mode === 'leak') expect(h.logs.some((l) => /^warn lunA: JS heap at \d+ MiB of its \d+ MiB limit \(a leak\?\): running at CPU nice 10/.test(l)), h.logs.join('\n')).to.equal(true);
      expect(h.logs.some((l) => l.startsWith('error lunA') || l.startsWith('warn lunA') ? why.test(l) : false), `log: ${h.logs.join('\n')}`).to.equal(true);
      expect(h.sup.devices.get('lunB')!.restarts).to.equal(0);
      // A serves again (the "-once" modes misbehave only in the first worker), B still fine.
      const data = new Uint8Array(BS).fill(0x3c);
      expect((await a.ini.write(7, data)).status).to.equal(ScsiStatus.GOOD);
      expect((await a.ini.read(7, 1)).data[0]).to.equal(0x3c);
      expect((await b.ini.read(0, 8)).status).to.equal(ScsiStatus.GOOD);
    });
  }
  // A device process dies by a signal: raised by its own handler (abort) or sent from outside (kill -9).
  for (const how of ['abort', 'kill'] as const) {
    it(`a device process killed by ${how === 'abort' ? 'process.abort() in its handler' : 'kill -9 from outside'} restarts on a reset ring; B, a thread, answers every command`, async () => {
      const a = await h.lun(() => 'lunA', lunSpec('misbehave', MISBEHAVING, how === 'abort' ? 'abort-once/4M' : 'ok/4M'), 16, {}, { isolation: 'process' });
      const b = await h.lun(() => 'lunB', lunSpec('ram', 'ram', '4M'));
      const devA = h.sup.devices.get('lunA')!;
      expect(devA.isolation).to.equal('process');
      expect(h.sup.devices.get('lunB')!.isolation).to.equal('thread');
      const firstPid = devA.worker!.id;
      expect(firstPid).to.not.equal(process.pid);
      let resets = 0;
      const backendA: SimulatedBackend = a.backend;
      const resetRing = backendA.resetRing.bind(backendA);
      backendA.resetRing = () => { resets++; resetRing(); };

      // A serves from its process before the fault (kill: a few writes; abort: none, the first IO aborts).
      const before = new Uint8Array(BS).fill(0x77);
      if (how === 'kill') {
        expect((await a.ini.write(3, before)).status).to.equal(ScsiStatus.GOOD);
        // Its counters come from the child through the shared memfd.
        expect((await until(() => snap('lunA'), (s) => s.ops.write.commands >= 1)).ops.write.commands).to.equal(1);
      }

      const restarted = once(h.sup, 'device-restarted');
      const exited = once(devA.worker!, 'exit');
      let stopA = false;
      const loadA = (async () => {
        const data = new Uint8Array(8 * BS).fill(2);
        for (let i = 0; !stopA; i++) {
          const r = await a.ini.write((i % 100) * 8, data);
          if (r.status !== ScsiStatus.GOOD) await sleep(1);
        }
      })();
      if (how === 'kill') process.kill(firstPid, 'SIGKILL');
      const during = await closedLoop(b.ini, 4, restarted);
      stopA = true;
      await loadA;

      const [code, signal] = await exited;
      expect({ code, signal }).to.deep.equal({ code: null, signal: how === 'abort' ? 'SIGABRT' : 'SIGKILL' });
      expectOneRestart(during, resets, devA, firstPid);
      // The restarted worker yields the CPU to the LUNs that behave (SupervisorOptions.demotedNice).
      expect(niceOf(devA.worker!.id)).to.equal(10);
      const sig = how === 'abort' ? 'SIGABRT' : 'SIGKILL';
      expect(h.logs.some((l) => l.startsWith('warn lunA') && l.includes(`worker exited (signal ${sig}); resetting the ring`)), `log: ${h.logs.join('\n')}`).to.equal(true);
      expect(h.sup.devices.get('lunB')!.restarts).to.equal(0);

      // A serves again from a new process (the "-once" fault only in the first), B still fine.
      const data = new Uint8Array(BS).fill(0x3c);
      expect((await a.ini.write(7, data)).status).to.equal(ScsiStatus.GOOD);
      expect((await a.ini.read(7, 1)).data[0]).to.equal(0x3c);
      expect((await b.ini.read(0, 8)).status).to.equal(ScsiStatus.GOOD);
      // The new process continues the counters the old one left in the memfd.
      const s = await until(() => snap('lunA'), (x) => x.ops.read.commands >= 1);
      expect(s.ops.read.commands).to.equal(1);
      expect(s.ops.write.commands).to.be.greaterThan(how === 'kill' ? 1 : 0);
    });
  }
  it('a handler failing every command: each answered CHECK CONDITION and counted, its log kept to a few lines a second, none lost uncounted', async () => {
    const a = await h.lun(() => 'lunA', lunSpec('misbehave', MISBEHAVING, 'throw/4M'));
    const b = await h.lun(() => 'lunB', lunSpec('ram', 'ram', '4M'));
    const N = 400;
    const data = new Uint8Array(BS).fill(1);
    const t0 = performance.now();
    const answers = await Promise.all(Array.from({ length: N }, (_, i) => a.ini.write(i, data)));
    expect(answers.every((r) => r.status === ScsiStatus.CHECK_CONDITION)).to.equal(true);
    // The worker publishes its counters after a drain, not per command: wait for the publication.
    expect((await until(() => snap('lunA'), (c) => c.handlerErrors === N)).handlerErrors).to.equal(N);
    expect((await b.ini.read(0, 1)).status).to.equal(ScsiStatus.GOOD);
    await h.sup.removeDevice('lunA'); // the worker sums up what it left out before it stops
    const windows = Math.ceil((performance.now() - t0) / 1000) + 1;
    const errorLines = h.logs.filter((l) => l.startsWith('warn lunA: cmd ') && l.includes('handler error: misbehaving handler: throw'));
    const leftOut = h.logs.reduce((n, l) => n + Number(/^warn lunA: (\d+) more log line\(s\) left out/.exec(l)?.[1] ?? 0), 0);
    expect(errorLines.length, 'the first failures are logged').to.be.greaterThan(0);
    expect(errorLines.length, `at most 20 lines in each of ${windows} 1 s windows`).to.be.at.most(20 * windows);
    expect(errorLines.length + leftOut, h.logs.join('\n')).to.equal(N);
  });

  it('a restarted worker runs at demotedNice and gets its CPU priority back after a restart window up', async () => {
    const logs: string[] = [];
    const sup = new Supervisor({ restartWindowMs: 400, demotedNice: 7, log: (l, d, m) => logs.push(`${l} ${d}: ${m}`) });
    const backend = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 60 });
    try {
      const dev = await sup.addDevice({ ...lunSpec('ram', 'ram', '4M'), name: 'lunA', serial: 'a', wwn: 'a', ring: backend.endpoint }, backend, { isolation: 'process' });
      const first = dev.worker!.id;
      expect(niceOf(first)).to.equal(0);
      const restarted = once(sup, 'device-restarted');
      process.kill(first, 'SIGKILL');
      await restarted;
      const second = dev.worker!.id;
      // Started under nice: every thread of the new process, V8's and libuv's included.
      expect(nicesOfThreads(second)).to.deep.equal([7]);
      expect(await until(() => nicesOfThreads(second), (n) => n.length === 1 && n[0] === 0, 5000)).to.deep.equal([0]);
      expect(logs.some((l) => l === 'info lunA: worker up for 0.4 s since its restart: back to normal CPU priority'), logs.join('\n')).to.equal(true);
    } finally {
      await sup.stop();
      await backend.close();
    }
  });

  it('a crash loop is restarted with a growing back-off, the first restart at once', async () => {
    const logs: { at: number; line: string }[] = [];
    const restartedAt: number[] = [];
    let removal: Promise<void> | undefined;
    const sup: Supervisor = new Supervisor({
      restartBackoffMs: 100,
      log: (l, d, m) => {
        logs.push({ at: performance.now(), line: `${l} ${d}: ${m}` });
        if (/restart 4, in/.test(m)) removal = sup.removeDevice('lunA');
      },
    });
    sup.on('device-restarted', () => restartedAt.push(performance.now()));
    const backend = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 60 });
    try {
      await sup.addDevice({ ...lunSpec('misbehave', MISBEHAVING, 'exit/4M'), name: 'lunA', serial: 'a', wwn: 'a', ring: backend.endpoint }, backend);
      const ini = new Initiator(backend.sim, { blockSize: BS });
      // Every worker exits on its first IO; keep IO coming until the device is removed.
      while (!removal) {
        const r = await ini.write(0, new Uint8Array(BS));
        if (r.status !== ScsiStatus.GOOD) await new Promise((res) => setImmediate(res));
      }
      await removal;
      const restarting = logs.filter((x) => /resetting the ring and restarting/.test(x.line));
      expect(restarting.map((x) => /\(restart (\d+)(?:, in (\d+) ms)?\)/.exec(x.line)!.slice(1).map((v) => v && Number(v)))).to.deep.equal([
        [1, undefined], [2, 100], [3, 200], [4, 400],
      ]);
      // Each delayed restart came no sooner than its delay after the death that caused it.
      expect(restartedAt).to.have.length(3);
      expect(restartedAt[1] - restarting[1].at).to.be.at.least(100);
      expect(restartedAt[2] - restarting[2].at).to.be.at.least(200);
      expect(sup.devices.has('lunA')).to.equal(false);
    } finally {
      await sup.stop();
      await backend.close();
    }
  });

  it('removing a device cuts its restart back-off short', async () => {
    let removal: Promise<void> | undefined;
    let backOffLoggedAt = 0;
    const sup: Supervisor = new Supervisor({
      restartBackoffMs: 20_000,
      log: (l, d, m) => {
        if (!/restart 2, in 20000 ms/.test(m)) return;
        backOffLoggedAt = performance.now();
        removal = sup.removeDevice('lunA');
      },
    });
    const backend = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 60 });
    try {
      const dev = await sup.addDevice({ ...lunSpec('misbehave', MISBEHAVING, 'exit/4M'), name: 'lunA', serial: 'a', wwn: 'a', ring: backend.endpoint }, backend);
      const ini = new Initiator(backend.sim, { blockSize: BS });
      while (!removal) {
        const r = await ini.write(0, new Uint8Array(BS));
        if (r.status !== ScsiStatus.GOOD) await new Promise((res) => setImmediate(res));
      }
      await removal;
      expect(performance.now() - backOffLoggedAt, 'removal waited out the 20 s back-off').to.be.below(10_000);
      expect(dev.state).to.equal('stopped');
      expect(dev.worker).to.equal(undefined);
    } finally {
      await sup.stop();
      await backend.close();
    }
  });

  for (const isolation of ['thread', 'process'] as const) {
    it(`removing a device while its ${isolation} worker is being restarted: the restart ends with the device, no worker left behind`, async () => {
      const logs: string[] = [];
      let removal: Promise<void> | undefined;
      const sup: Supervisor = new Supervisor({
        log: (l, d, m) => {
          logs.push(`${l} ${d}: ${m}`);
          // The moment the supervisor decides to restart, the device goes (as the bench's run ends, or a netlink REMOVED_DEVICE).
          if (/resetting the ring and restarting/.test(m)) removal ??= sup.removeDevice('lunA');
        },
      });
      const backend = new SimulatedBackend({ cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 60 });
      try {
        const dev = await sup.addDevice({ ...lunSpec('misbehave', MISBEHAVING, 'exit/4M'), name: 'lunA', serial: 'a', wwn: 'a', ring: backend.endpoint }, backend, { isolation });
        const ini = new Initiator(backend.sim, { blockSize: BS });
        void ini.write(0, new Uint8Array(BS)); // its worker exits on this one
        await until(() => removal, (r) => r !== undefined);
        await removal;
        expect(dev.state).to.equal('stopped');
        expect(dev.worker).to.equal(undefined);
        expect(sup.devices.has('lunA')).to.equal(false);
        expect(dev.restarts).to.equal(1);
        expect(logs.filter((l) => /restart failed|worker crashed|giving up/.test(l)), logs.join('\n')).to.deep.equal([]);
      } finally {
        await sup.stop();
        await backend.close();
      }
    });
  }

  it('tcmu-ts --simulate --isolate-process: a device process per LUN, its counters in /metrics, a clean stop', async () => {
    const cli = fileURLToPath(new URL('../../packages/workers/dist/cli/main.js', import.meta.url));
    const d = new Child('tcmu-ts --isolate-process', process.execPath, [
      cli, '--simulate', '--isolate-process', '--no-dbus', '--metrics-address', '127.0.0.1:0', '--queue-depth', '4', '--lun-size-mb', '16',
    ]);
    try {
      const url = (await d.waitFor((l) => l.startsWith('metrics: '), 'its metrics URL', 15_000)).slice('metrics: '.length).trim();
      await d.waitFor((l) => /^\[\s*\d+s\] ram0 /.test(l), 'a first figures line', 15_000);
      const pid = d.proc.pid!;
      const children = readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
      const devices = children.filter((c) => readFileSync(`/proc/${c}/cmdline`, 'utf8').includes('device-process.js'));
      expect(devices, `children of ${pid}: ${children.join(' ')}`).to.have.length(2);
      const text = await (await fetch(url)).text();
      for (const dev of ['ram0', 'file0']) {
        const n = Number(new RegExp(`^tcmu_commands_total\\{device="${dev}",op="write"\\} (\\S+)$`, 'm').exec(text)?.[1]);
        expect(n, `${dev} writes in /metrics`).to.be.greaterThan(0);
      }
      d.proc.kill('SIGTERM');
      const summary = await d.waitFor((l) => l.startsWith('summary: '), 'its summary', 15_000);
      await d.exited();
      expect(summary, d.stderr).to.match(/ 0 errors, 0 verify failures$/);
      expect(d.proc.exitCode, d.stderr).to.equal(0);
      // The device processes went with it.
      for (const c of devices) expect(() => readFileSync(`/proc/${c}/cmdline`, 'utf8'), `device process ${c}`).to.throw();
    } finally {
      if (d.proc.exitCode === null && d.proc.signalCode === null) await d.kill();
    }
  });
  it('tcmu-ts --isolate-process killed -9: its device processes exit too (none keeps a ring open against the next daemon)', async () => {
    const cli = fileURLToPath(new URL('../../packages/workers/dist/cli/main.js', import.meta.url));
    const d = new Child('tcmu-ts --isolate-process', process.execPath, [cli, '--simulate', '--isolate-process', '--no-dbus', '--no-metrics', '--lun-size-mb', '16']);
    let devices: string[] = [];
    try {
      await d.waitFor((l) => /^\[\s*\d+s\] file0 /.test(l), 'a figures line', 15_000);
      const pid = d.proc.pid!;
      devices = readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean));
      expect(devices).to.have.length(2);
    } finally {
      await d.kill('SIGKILL');
    }
    const alive = () => devices.filter((c) => { try { return readFileSync(`/proc/${c}/stat`, 'utf8').split(') ')[1][0] !== 'Z'; } catch { return false; } });
    expect(await until(alive, (a) => a.length === 0, 10_000), 'device processes still running').to.deep.equal([]);
  });
});
