/**
 * tcmu-runner's external handler model end to end: a second process owns
 * org.kernel.TCMUService1.HandlerManager1.<subtype>, registers the subtype
 * with our service over a private dbus-daemon (packaged policy), answers the
 * CheckConfig the service forwards, and serves its device's ring itself with
 * serveDevice(). The ring is a KernelSimulator in this process whose memfd
 * and event socket the child inherits as fds 3 and 4, as it would open
 * /dev/uioN; the I/O written here is stored and read back by the child.
 */
import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import dbus from 'dbus-next';
import type { MessageBus } from 'dbus-next';
import { HandlerRegistry } from '@tcmu-ts/core';
import { Initiator, KernelSimulator } from '@tcmu-ts/ring';
import { startDbusService, type DbusService, type ExternalHandlerEvent } from '@tcmu-ts/workers/dbus/service';
import { isExternalDbusHandler } from '@tcmu-ts/workers/dbus/external-handler';
import { SERVICE_NAME, ROOT_PATH } from '@tcmu-ts/workers/dbus/names';
import { startTestBus, type TestBus } from './fixtures/dbus-bus.js';
import { haveCommand } from './fixtures/host-tools.js';
import { FixtureProcess, Recorder } from './fixtures/child.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/dbus-external-io-handler.js', import.meta.url));
const SUBTYPE = 'extram';
const BLOCK = 512;
const NUM_LBAS = (16 << 20) / BLOCK;

describe('DBus external handler serving real I/O with serveDevice (private dbus-daemon, simulator ring in another process)', function () {
  this.timeout(30_000);
  let bus: TestBus;
  let service: DbusService;
  let registry: HandlerRegistry;
  let client: MessageBus;
  let sim: KernelSimulator;
  let child: FixtureProcess | undefined;
  const external = new Recorder<ExternalHandlerEvent>();

  async function checkConfig(cfgstring: string): Promise<[boolean, string]> {
    const reply = await client.call(new dbus.Message({
      destination: SERVICE_NAME, path: `${ROOT_PATH}/${SUBTYPE}`, interface: 'org.kernel.TCMUService1', member: 'CheckConfig', signature: 's', body: [cfgstring],
    }));
    return reply!.body as [boolean, string];
  }

  before(async () => {
    if (!haveCommand('dbus-daemon')) throw new Error('missing dbus-daemon: install the Debian package dbus');
    if (process.getuid?.() !== 0) throw new Error('these tests run as root: the policy under test gives root the handler manager');
    bus = await startTestBus();
    registry = new HandlerRegistry();
    await registry.loadBuiltins();
    service = await startDbusService({ registry, busAddress: bus.address, onExternalHandler: (e) => external.push(e), callTimeoutMs: 5000, log: () => {} });
    client = dbus.sessionBus({ busAddress: bus.address });
    await new Promise<void>((resolve, reject) => { client.once('connect', () => resolve()); client.once('error', reject); });
    // A short cmd_time_out: a ring nobody serves fails the test in seconds, not at mocha's timeout.
    sim = new KernelSimulator({ name: 'dbus-external-io', cmdRingSizeMb: 1, maxDataAreaMb: 8, cmdTimeOutSec: 5 });
  });

  after(async () => {
    await child?.kill();
    client?.disconnect();
    await service?.close();
    await sim?.close();
    await bus?.stop();
  });

  it('forwards CheckConfig to the registering process, which serves the ring byte for byte, and drops the subtype when it dies', async () => {
    const t0 = Date.now();
    const { mapFd, eventFd, mapSize } = sim.endpoint;
    // Our fds, given to the child as its fds 3 (map) and 4 (events).
    const p = new FixtureProcess(FIXTURE, [bus.address, SUBTYPE, String(mapSize), String(BLOCK), String(NUM_LBAS)], { extraFds: [mapFd, eventFd] });
    child = p;

    const own = await p.event('own');
    expect(own.ok, JSON.stringify(own)).to.equal(true);
    expect((await p.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    const serving = await p.event('serving');
    expect(serving.numLbas).to.equal(NUM_LBAS);
    const added = await external.waitFor((e) => e.kind === 'added' && e.handler.subtype === SUBTYPE, 'added event');
    expect(added.handler.owner).to.equal(own.uniqueName);
    expect(service.exportedSubtypes()).to.include(SUBTYPE);
    const tRegistered = Date.now();

    // CheckConfig on our object is answered by the other process, as the caller sent it.
    expect(await checkConfig(`${SUBTYPE}/16M`)).to.deep.equal([true, `OK from pid ${String(own.pid)}`]);
    const check = await p.event('check', (e) => e.cfgstring === `${SUBTYPE}/16M`);
    expect(check.sender, 'forwarded by the service').to.equal(service.uniqueName);
    expect(await checkConfig(`${SUBTYPE}/lots`)).to.deep.equal([false, '"lots" is not a size']);
    // The daemon side never opens the subtype's devices: they are the other process's.
    const h = registry.get(SUBTYPE);
    expect(isExternalDbusHandler(h)).to.equal(true);
    const openErr = await h!.open({} as never, false).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(openErr?.code).to.equal('ENODEV');

    // I/O through the simulated kernel, served by the child's serveDevice().
    const ini = new Initiator(sim, { blockSize: BLOCK });
    const inq = await ini.inquiry(96);
    expect(inq.ok, JSON.stringify(inq.senseInfo)).to.equal(true);
    expect(Buffer.from(inq.data.subarray(16, 32)).toString('latin1').trim()).to.equal(`TCMU ${SUBTYPE}`);
    const cap = await ini.readCapacity();
    expect(cap.capacity).to.deep.equal({ lastLba: BigInt(NUM_LBAS - 1), blockSize: BLOCK });

    const extents: [lba: number, blocks: number][] = [[0, 1], [7, 3], [100, 64], [1000, 256], [NUM_LBAS - 8, 8], [4096, 1024]];
    const patterns = extents.map(([, blocks]) => new Uint8Array(randomBytes(blocks * BLOCK)));
    const tIo = Date.now();
    let bytes = 0;
    for (let i = 0; i < extents.length; i++) {
      const w = await ini.write(extents[i][0], patterns[i]);
      expect(w.ok, `write ${String(extents[i])}: ${JSON.stringify(w.senseInfo)}`).to.equal(true);
      bytes += patterns[i].length;
    }
    // Concurrent writes too: several commands on the ring at once.
    const more = Array.from({ length: 16 }, (_, k) => ({ lba: 20_000 + k * 16, data: new Uint8Array(randomBytes(16 * BLOCK)) }));
    for (const r of await Promise.all(more.map((m) => ini.write(m.lba, m.data)))) expect(r.ok).to.equal(true);
    bytes += more.length * 16 * BLOCK;
    for (let i = 0; i < extents.length; i++) {
      const r = await ini.read(extents[i][0], extents[i][1]);
      expect(r.ok, `read ${String(extents[i])}`).to.equal(true);
      expect(Buffer.compare(Buffer.from(r.data), Buffer.from(patterns[i])), `data at ${String(extents[i])}`).to.equal(0);
    }
    const reads = await Promise.all(more.map((m) => ini.read(m.lba, 16)));
    reads.forEach((r, k) => expect(Buffer.compare(Buffer.from(r.data), Buffer.from(more[k].data)), `data at ${more[k].lba}`).to.equal(0));
    // Never written: the child's RAM is zero there.
    const blank = await ini.read(30_000, 4);
    expect(blank.ok, JSON.stringify(blank.senseInfo)).to.equal(true);
    expect(blank.data.every((b) => b === 0)).to.equal(true);
    const ioMs = Date.now() - tIo;

    // The data went through the child's handler, not anything in this process.
    p.send('stats');
    const stats = await p.event('stats');
    expect(stats.writes).to.equal(extents.length + more.length);
    expect(stats.bytesWritten).to.equal(bytes);
    expect(p.lines.items.filter((e) => e.event === 'error'), 'errors reported by the child').to.deep.equal([]);

    // The process dies: its subtype leaves the service.
    const tKill = Date.now();
    await p.kill();
    const removed = await external.waitFor((e) => e.kind === 'removed' && e.handler.subtype === SUBTYPE, 'removed event');
    expect(removed.reason).to.equal('vanished');
    expect(registry.has(SUBTYPE)).to.equal(false);
    expect(service.exportedSubtypes()).not.to.include(SUBTYPE);
    const gone = await checkConfig(`${SUBTYPE}/16M`).then(() => 'answered', (e: unknown) => (e instanceof dbus.DBusError ? e.type : String(e)));
    expect(gone).to.match(/UnknownMethod|UnknownObject/);
    const tEnd = Date.now();
    // eslint-disable-next-line no-console
    console.log(`      registered in ${tRegistered - t0} ms; ${(bytes / 1024).toFixed(0)} KiB written and read back in ${ioMs} ms; removed ${tEnd - tKill} ms after SIGKILL`);
  });
});
