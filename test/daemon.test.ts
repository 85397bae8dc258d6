import { expect } from 'chai';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { mkdirSync, symlinkSync } from 'node:fs';
import { HandlerRegistry } from '@tcmu-ts/core';
import { Logger } from '@tcmu-ts/core/host';
import { Initiator, ScsiStatus, cdbModeSense6, cdbRead16 } from '@tcmu-ts/ring';
import { AnotherDaemonError, Daemon, EXIT_ANOTHER_DAEMON } from '@tcmu-ts/workers';
import { runDaemon } from '@tcmu-ts/workers/daemon/main';
import { KernelStandIn } from './fixtures/kernel-standin.js';
import { fileURLToPath } from 'node:url';

const ENOENT = 2;

/** Resolves when `ok()` holds (checked every 5 ms); fails after `ms`. */
async function until(ok: () => boolean, ms = 10000): Promise<void> {
  const t0 = performance.now();
  while (!ok()) {
    if (performance.now() - t0 > ms) throw new Error(`condition not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
const EINVAL = 22;

describe('daemon control plane against a stand-in kernel (fake sysfs/configfs, simulator behind UIO, fake netlink)', function () {
  this.timeout(30000);
  let k: KernelStandIn;
  let dir: string;
  let daemon: Daemon | undefined;
  let lines: string[];

  beforeEach(() => {
    k = new KernelStandIn();
    dir = mkdtempSync(join(tmpdir(), 'tcmu-daemon-'));
    lines = [];
  });
  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
    await k.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function newDaemon(level = 4, extra: { lockFile?: string; out?: string[] } = {}): Promise<Daemon> {
    const registry = new HandlerRegistry();
    await registry.loadBuiltins();
    const out = extra.out ?? lines;
    const logger = new Logger({ level, stderr: { write: (l: string) => out.push(l) } });
    return new Daemon({
      logger, registry, handlerSources: new Map(registry.list().map((h) => [h.subtype, h.subtype])),
      root: k.root, configfsIo: k.configfsIo, openNetlink: k.openNetlink, openUio: k.openUio, lockFile: extra.lockFile,
    });
  }

  async function startDaemon(level = 4): Promise<Daemon> {
    daemon = await newDaemon(level);
    await daemon.start();
    return daemon;
  }

  it('adopts devices present at start: block, reset the ring, serve, unblock', async () => {
    const dev = k.addDevice({ name: 'disk0', subtype: 'file', cfgstring: join(dir, 'a.img') });
    // Left on the ring by a daemon that died: nobody will ever answer these.
    const stale = new Initiator(dev.sim).write(0, new Uint8Array(512).fill(9));
    const d = await startDaemon();
    expect(dev.actions).to.deep.equal(['block_dev=1', 'reset_ring=1', 'block_dev=0']);
    expect((await stale).status).to.equal(ScsiStatus.BUSY);
    expect(d.devices.size).to.equal(1);
    const ini = new Initiator(dev.sim);
    expect((await ini.write(0, new Uint8Array(1024).fill(7))).ok).to.equal(true);
    expect((await ini.read(0, 2)).data.every((b) => b === 7)).to.equal(true);
    expect(lines.some((l) => /disk0: uio0: serving file\//.test(l))).to.equal(true);
  });

  it('leaves a device whose subtype has no handler alone, and says so', async () => {
    const odd = k.addDevice({ name: 'odd', subtype: 'nosuch', cfgstring: '/x.img' });
    k.addDevice({ name: 'fine', subtype: 'ram', cfgstring: '4M' });
    const d = await startDaemon();
    expect(d.devices.size).to.equal(1);
    expect(odd.actions).to.deep.equal([]);
    expect(lines.some((l) => /odd: uio0: no handler for subtype "nosuch"/.test(l))).to.equal(true);
  });

  it('answers ADDED_DEVICE and REMOVED_DEVICE with their DONE replies carrying the device id', async () => {
    const d = await startDaemon();
    const { dev, done } = await k.added({ name: 'new0', subtype: 'ram', cfgstring: '8M', sizeBytes: 8 << 20 });
    expect(done).to.deep.equal({ cmd: 4, deviceId: dev.deviceId, status: 0 });
    const ini = new Initiator(dev.sim);
    expect((await ini.readCapacity()).capacity!.lastLba).to.equal(BigInt((8 << 20) / 512 - 1));
    const rm = await k.removed(dev);
    expect(rm).to.deep.equal({ cmd: 5, deviceId: dev.deviceId, status: 0 });
    expect(d.devices.size).to.equal(0);
    expect(d.supervisor.devices.size).to.equal(0);
    expect(d.netlinkEvents).to.equal(2);
  });

  it('replies -ENOENT for an unknown subtype and -EINVAL for a bad handler config, and keeps serving', async () => {
    await startDaemon();
    const a = await k.added({ name: 'nope', subtype: 'nosuch', cfgstring: 'whatever' });
    expect(a.done.status).to.equal(-ENOENT);
    const b = await k.added({ name: 'bad', subtype: 'file', cfgstring: join(dir, 'no-such-dir', 'x.img') });
    expect(b.done.status).to.equal(-EINVAL);
    expect(lines.some((l) => /bad: uio1: bad configuration/.test(l))).to.equal(true);
    const c = await k.added({ name: 'ok', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
    expect(c.done.status).to.equal(0);
    expect((await new Initiator(c.dev.sim).testUnitReady()).ok).to.equal(true);
  });

  it('RECONFIG_DEVICE dev_size: DONE 0, CAPACITY DATA HAS CHANGED, new READ CAPACITY', async () => {
    await startDaemon();
    const { dev } = await k.added({ name: 'grow', subtype: 'file', cfgstring: join(dir, 'g.img'), sizeBytes: 1 << 20 });
    const done = await k.reconfig(dev, { what: 'dev_size', devSize: 2n << 20n });
    expect(done).to.deep.equal({ cmd: 6, deviceId: dev.deviceId, status: 0 });
    const ini = new Initiator(dev.sim);
    expect((await ini.testUnitReady()).senseInfo).to.include({ key: 6, asc: 0x2a, ascq: 0x09 });
    expect((await ini.readCapacity()).capacity!.lastLba).to.equal(BigInt((2 << 20) / 512 - 1));
    expect(statSync(join(dir, 'g.img')).size).to.equal(2 << 20);
    expect((await k.reconfig(dev, { what: 'dev_size', devSize: 1000n })).status).to.equal(-EINVAL);
  });

  it('RECONFIG_DEVICE write_cache shows in the caching mode page; dev_config reopens the handler', async () => {
    await startDaemon();
    const { dev } = await k.added({ name: 'wc', subtype: 'file', cfgstring: join(dir, 'one.img'), sizeBytes: 1 << 20 });
    const ini = new Initiator(dev.sim);
    expect((await ini.write(0, new Uint8Array(512).fill(1))).ok).to.equal(true);
    expect((await k.reconfig(dev, { what: 'write_cache', writeCache: false })).status).to.equal(0);
    await ini.testUnitReady();
    const ms = await ini.send(cdbModeSense6(0x08), { dataInLength: 0xff });
    expect(ms.data[4 + ms.data[3] + 2] & 0x04).to.equal(0);
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: `file/${join(dir, 'two.img')}` })).status).to.equal(0);
    expect((await ini.read(0, 1)).data.every((b) => b === 0)).to.equal(true);
    expect(statSync(join(dir, 'two.img')).size).to.equal(1 << 20);
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: `file/${join(dir, 'nodir', 'x')}` })).status).to.equal(-EINVAL);
  });

  it('RECONFIG_DEVICE dev_config of a fault device: new fault options in place, data kept; a new inner config reopens', async () => {
    await startDaemon();
    const { dev } = await k.added({ name: 'flt', subtype: 'fault', cfgstring: 'ram/1M', sizeBytes: 1 << 20 });
    const ini = new Initiator(dev.sim);
    expect((await ini.write(7, new Uint8Array(512).fill(0x5a))).ok).to.equal(true);
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/ram/1M;rerror=EIO@1' })).status).to.equal(0);
    const failed = await ini.read(7, 1);
    expect(failed.ok).to.equal(false);
    expect(failed.senseInfo).to.include({ key: 3, asc: 0x11 });
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/ram/1M' })).status).to.equal(0);
    expect((await ini.read(7, 1)).data.every((b) => b === 0x5a)).to.equal(true);
    expect(lines.some((l) => /flt.*applied in place/.test(l))).to.equal(true);
    // tcmu-runner's daemon options in the new dev_config are not the handler's: still in place, data kept
    // (found writing test/kernel/timeouts.sh: they made the daemon reopen the handler).
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/;tcmur_cmd_time_out=5;ram/1M;rerror=EIO@1' })).status).to.equal(0);
    expect((await ini.read(7, 1)).ok).to.equal(false);
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/;tcmur_cmd_time_out=5;ram/1M' })).status).to.equal(0);
    expect((await ini.read(7, 1)).data.every((b) => b === 0x5a)).to.equal(true);
    expect(lines.filter((l) => /flt.*reopening the handler/.test(l))).to.have.length(0);
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/ram/1M;error=EBOGUS' })).status).to.equal(-EINVAL);
    // Another inner cfgstring: the handler is reopened (a new ram store).
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/ram/1M;chunk=4k' })).status).to.equal(0);
    expect((await ini.read(7, 1)).data.every((b) => b === 0)).to.equal(true);
  });

  // Found on the real kernel (test/kernel/timeouts.sh): LIO creates a device with tmr_notification 0,
  // so an initiator's ABORT TASK never reached the ring and tcmu_tmr_total stayed 0.
  it('turns on attrib/tmr_notification (the kernel creates devices with it off): an ABORT TASK reaches the engine', async () => {
    await startDaemon();
    const { dev, done } = await k.added({ name: 'hung', subtype: 'fault', cfgstring: 'ram/1M;hang=1', sizeBytes: 1 << 20 });
    expect(done.status).to.equal(0);
    const attr = join(k.root, 'sys/kernel/config/target/core/user_0/hung/attrib/tmr_notification');
    expect(readFileSync(attr, 'utf8').trim()).to.equal('1');
    expect(dev.sim.tmrNotification).to.equal(true);
    const task = dev.sim.start(cdbRead16(0, 1), { dataInLength: 512 });
    const abort = dev.sim.abortTask(task);
    await until(() => lines.some((l) => /hung: task management ABORT_TASK for 1 command\(s\)/.test(l)));
    // Release the held command: the abort completes, and it was on the ring for the daemon to see.
    expect((await k.reconfig(dev, { what: 'dev_config', devConfig: 'fault/ram/1M' })).status).to.equal(0);
    expect(await abort).to.include({ notified: true, found: true });
    expect((await task.result).status).to.equal(ScsiStatus.GOOD);
  });

  it('logs every CDB at log level 5 and none below it', async () => {
    const d = await startDaemon(5);
    const { dev } = await k.added({ name: 'loud', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
    const ini = new Initiator(dev.sim);
    await ini.write(3, new Uint8Array(512));
    const cdbLine = () => lines.find((l) => /\[DEBUG_SCSI_CMD\] loud: cmd \d+: CDB 2a 00 00 00 00 03 00 00 01 00/.test(l));
    for (let i = 0; i < 100 && !cdbLine(); i++) await new Promise((r) => setTimeout(r, 10));
    expect(cdbLine(), lines.join('')).to.be.a('string');
    d.supervisor.setLogCdbs(false);
    await new Promise((r) => setTimeout(r, 20));
    const before = lines.length;
    await ini.read(3, 1);
    await new Promise((r) => setTimeout(r, 50));
    expect(lines.slice(before).some((l) => l.includes('CDB 28'))).to.equal(false);
  });

  describe('one daemon per kernel', () => {
    it('a second daemon finds the lock, names the holder and touches nothing; the first keeps every event', async () => {
      const dev = k.addDevice({ name: 'one', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
      const first = await startDaemon();
      const lockFile = join(k.root, 'run', 'tcmu.lock');
      expect(readFileSync(lockFile, 'utf8').trim()).to.equal(String(process.pid));
      expect(k.netlinkOpens).to.equal(1);
      const listener = k.genl.listener;
      const actions = [...dev.actions];
      const second = await newDaemon(4, { out: [] });
      const err = await second.start().then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(AnotherDaemonError);
      expect((err as AnotherDaemonError).exitCode).to.equal(EXIT_ANOTHER_DAEMON);
      expect((err as Error).message).to.equal(`another tcmu-ts (pid ${process.pid}) is running: it holds ${lockFile}, and only one TCMU daemon may serve the kernel`);
      // Nothing touched: no netlink (no SET_FEATURES, no multicast join), no UIO open, no configfs write.
      expect(k.netlinkOpens).to.equal(1);
      expect(k.genl.listener).to.equal(listener);
      expect(dev.actions).to.deep.equal(actions);
      // The first still gets (and answers) every event.
      const before = first.netlinkEvents;
      const a = await k.added({ name: 'two', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
      expect(a.done.status).to.equal(0);
      expect((await k.reconfig(a.dev, { what: 'write_cache', writeCache: false })).status).to.equal(0);
      expect(await k.removed(a.dev)).to.include({ status: 0 });
      expect(first.netlinkEvents).to.equal(before + 3);
      expect((await new Initiator(dev.sim).testUnitReady()).ok).to.equal(true);
    });

    it('the lock goes with the first daemon: a new one then starts and adopts the devices', async () => {
      const dev = k.addDevice({ name: 'one', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
      const first = await startDaemon();
      await first.stop();
      daemon = undefined;
      expect(k.opened.size).to.equal(0);
      const next = await startDaemon();
      expect(next.devices.size).to.equal(1);
      expect((await new Initiator(dev.sim).testUnitReady()).ok).to.equal(true);
    });

    it('a device open in another process (EBUSY): refused before netlink, its ring left alone', async () => {
      const dev = k.addDevice({ name: 'held', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20 });
      await startDaemon();
      const actions = [...dev.actions];
      // A daemon that cannot see our lock (another mount namespace): the UIO open tells.
      const other = await newDaemon(4, { lockFile: join(dir, 'elsewhere', 'tcmu.lock'), out: [] });
      const err = await other.start().then(() => undefined, (e: unknown) => e);
      expect(err).to.be.instanceOf(AnotherDaemonError);
      expect((err as Error).message).to.equal('uio0 (held) is open in another process: another TCMU daemon serves this kernel');
      expect(k.netlinkOpens).to.equal(1);
      expect(dev.actions).to.deep.equal(actions);
      // Its lock was given back.
      const again = await newDaemon(4, { lockFile: join(dir, 'elsewhere', 'tcmu.lock'), out: [] });
      expect(await again.start().then(() => 'started', (e: Error) => e.message)).to.match(/uio0 \(held\) is open/);
    });

    it('an ADDED device already open elsewhere is answered -EBUSY and left alone', async () => {
      const d = await startDaemon();
      const { dev, done } = await k.added({ name: 'taken', subtype: 'ram', cfgstring: '1M', sizeBytes: 1 << 20, openElsewhere: true });
      expect(done.status).to.equal(-16);
      expect(dev.actions).to.deep.equal([]);
      expect(d.devices.size).to.equal(0);
      expect(lines.some((l) => /taken: uio0: .*uio0 is open in another process: another TCMU daemon serves it; leaving it alone/.test(l)), lines.join('')).to.equal(true);
    });

    it('tcmu-runner holding /run/tcmu.lock is named: "tcmu-runner (pid N) is running"', async () => {
      const lockFile = join(k.root, 'run', 'tcmu.lock');
      mkdirSync(join(k.root, 'run'), { recursive: true });
      const exe = join(dir, 'tcmu-runner');
      symlinkSync(process.execPath, exe);
      const child = spawn(exe, [fileURLToPath(new URL('./fixtures/fake-tcmu-runner.js', import.meta.url)), lockFile], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        const first = await new Promise<string>((resolve) => child.stdout!.once('data', (b: Buffer) => resolve(b.toString())));
        expect(first.trim()).to.equal('locked');
        const d = await newDaemon(4, { out: [] });
        const err = await d.start().then(() => undefined, (e: unknown) => e);
        expect(err).to.be.instanceOf(AnotherDaemonError);
        expect((err as Error).message).to.equal(`tcmu-runner (pid ${child.pid}) is running: it holds ${lockFile}, and only one TCMU daemon may serve the kernel`);
        expect(k.netlinkOpens).to.equal(0);
      } finally {
        child.kill();
      }
    });

    it('runDaemon exits with status 3 and one log line when another daemon holds the lock', async () => {
      await startDaemon();
      const out: string[] = [];
      const code = await runDaemon({
        cli: { logDir: dir }, configPath: join(dir, 'tcmu.conf'), stderr: { write: (l: string) => out.push(l) },
        daemonOptions: { root: k.root, configfsIo: k.configfsIo, openNetlink: k.openNetlink, openUio: k.openUio },
      });
      expect(code).to.equal(3);
      const crit = out.filter((l) => /CRIT/.test(l));
      expect(crit).to.have.length(1);
      expect(crit[0]).to.match(/another tcmu-ts \(pid \d+\) is running: it holds .*run\/tcmu.lock/);
      expect(k.netlinkOpens).to.equal(1);
    });
  });

  it('stops cleanly: commands on the ring are answered, handlers closed', async () => {
    const d = await startDaemon();
    const { dev } = await k.added({ name: 's', subtype: 'file', cfgstring: join(dir, 's.img') });
    const ini = new Initiator(dev.sim);
    const writes = Array.from({ length: 16 }, (_, i) => ini.write(i, new Uint8Array(512).fill(i)));
    await d.stop();
    daemon = undefined;
    expect((await Promise.all(writes)).every((r) => r.ok)).to.equal(true);
  });
});
