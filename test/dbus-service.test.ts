/**
 * The org.kernel.TCMUService1 service against a real dbus-daemon whose
 * configuration is a distribution's system bus plus our packaged policy
 * file, with real clients: gdbus (GLib's GDBus, what tcmu-runner and
 * targetcli are built on), dbus-next, and handler processes of their own.
 */
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import dbus from 'dbus-next';
import type { MessageBus } from 'dbus-next';
import { BUILTIN_HANDLERS, HandlerRegistry, configError, configOk, defineHandler, type Handler } from '@tcmu-ts/core';
import { startDbusService, DbusServiceError, type DbusService, type ExternalHandlerEvent } from '@tcmu-ts/workers/dbus/service';
import { isExternalDbusHandler } from '@tcmu-ts/workers/dbus/external-handler';
import { SERVICE_NAME, ROOT_PATH, MANAGER_PATH } from '@tcmu-ts/workers/dbus/names';
import { ACTIVATION_FILE, POLICY_FILE, SYSTEMD_UNIT, startTestBus, type TestBus } from './fixtures/dbus-bus.js';
import { haveCommand } from './fixtures/host-tools.js';
import { FixtureProcess, Recorder } from './fixtures/child.js';
import { AS_NOBODY, fixturesForAll, type FixturesForAll } from './fixtures/other-users.js';

/** Every built-in handler is published, in name order. */
const BUILTINS = [...BUILTIN_HANDLERS].sort();
const EXTERNAL_FIXTURE = 'dbus-external-handler.js';
const fixture = (name: string): string => fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));

interface RunResult { code: number | null; stdout: string; stderr: string }

/** Run a command without blocking the event loop (the service under test lives in this process). */
function run(cmd: string, args: string[], opts: { timeoutMs?: number; cwd?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: opts.timeoutMs ?? 20_000, cwd: opts.cwd }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : null) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function gdbus(address: string, path: string, method: string, args: string[] = [], asNobody = false): Promise<RunResult> {
  const argv = ['call', '--address', address, '--dest', SERVICE_NAME, '--object-path', path, '--method', method, ...args];
  return asNobody ? run(AS_NOBODY[0], [...AS_NOBODY.slice(1), 'gdbus', ...argv]) : run('gdbus', argv);
}

/** "(true, 'success')" -> [true, 'success'] */
function parseBs(r: RunResult): [boolean, string] {
  expect(r.stderr, 'gdbus stderr').to.equal('');
  const m = /^\((true|false), (['"])(.*)\2\)\s*$/s.exec(r.stdout);
  if (!m) throw new Error(`unexpected gdbus output: ${r.stdout}`);
  return [m[1] === 'true', m[3]];
}

/**
 * A handler process of its own (test/fixtures/dbus-external-handler.ts); as
 * nobody when given a copy of the fixtures that nobody can read.
 */
function externalProcess(address: string, subtype: string, desc: string, mode = 'normal', asNobody?: FixturesForAll): FixtureProcess {
  const args = [address, subtype, desc, mode];
  return asNobody
    ? new FixtureProcess(asNobody.fixture(EXTERNAL_FIXTURE), args, { prefix: AS_NOBODY, cwd: asNobody.root })
    : new FixtureProcess(fixture(EXTERNAL_FIXTURE), args);
}

async function connectClient(address: string): Promise<MessageBus> {
  const client = dbus.sessionBus({ busAddress: address });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

function requireTools(): void {
  const missing = ['dbus-daemon', 'gdbus', 'setpriv'].filter((c) => !haveCommand(c));
  if (missing.length) {
    throw new Error(`missing ${missing.join(', ')}: install the Debian packages dbus, libglib2.0-bin and util-linux`);
  }
  if (process.getuid?.() !== 0) throw new Error('these tests run as root: the policy under test gives root the handler manager');
}

const lateHandler: Handler = defineHandler({
  name: 'late',
  subtype: 'late',
  configDescription: 'late/<anything but "no">',
  checkConfig: (cfg) => (cfg === 'no' ? configError('late says no') : configOk),
  open: () => Promise.reject(new Error('not for opening')),
});

describe('DBus service org.kernel.TCMUService1 (private dbus-daemon, packaged policy)', function () {
  this.timeout(30_000);
  let bus: TestBus;
  let service: DbusService;
  let registry: HandlerRegistry;
  let client: MessageBus;
  const externalEvents = new Recorder<ExternalHandlerEvent>();
  const signals = new Recorder<{ signal: string; path: string; value: unknown }>();
  const logs: string[] = [];
  const children: FixtureProcess[] = [];

  function external(subtype: string, desc: string, mode?: string, asNobody?: FixturesForAll): FixtureProcess {
    const p = externalProcess(bus.address, subtype, desc, mode, asNobody);
    children.push(p);
    return p;
  }

  async function managed(): Promise<Record<string, Record<string, Record<string, { value: unknown }>>>> {
    const obj = await client.getProxyObject(SERVICE_NAME, ROOT_PATH);
    return (await obj.getInterface('org.freedesktop.DBus.ObjectManager').GetManagedObjects()) as Record<string, Record<string, Record<string, { value: unknown }>>>;
  }

  before(async () => {
    requireTools();
    bus = await startTestBus();
    registry = new HandlerRegistry();
    await registry.loadBuiltins();
    // A subtype that cannot be an object path element: kept out of DBus with a warning.
    registry.register(defineHandler({ ...lateHandler, name: 'dashed', subtype: 'dash-ed' }));
    service = await startDbusService({
      registry,
      busAddress: bus.address,
      onExternalHandler: (e) => externalEvents.push(e),
      callTimeoutMs: 1500,
      log: (level, msg) => logs.push(`${level}: ${msg}`),
    });
    client = await connectClient(bus.address);
    const om = (await client.getProxyObject(SERVICE_NAME, ROOT_PATH)).getInterface('org.freedesktop.DBus.ObjectManager');
    om.on('InterfacesAdded', (path: string, value: unknown) => signals.push({ signal: 'InterfacesAdded', path, value }));
    om.on('InterfacesRemoved', (path: string, value: unknown) => signals.push({ signal: 'InterfacesRemoved', path, value }));
  });

  afterEach(async () => {
    for (const c of children.splice(0)) await c.kill();
  });

  after(async () => {
    client?.disconnect();
    await service?.close();
    await bus?.stop();
  });

  it('owns org.kernel.TCMUService1 and lists each handler as /org/kernel/TCMUService1/<subtype> with ConfigDesc', async () => {
    const objects = await managed();
    expect(Object.keys(objects).sort()).to.deep.equal(BUILTINS.map((h) => `${ROOT_PATH}/${h}`));
    for (const h of BUILTINS) {
      expect(Object.keys(objects[`${ROOT_PATH}/${h}`])).to.deep.equal(['org.kernel.TCMUService1']);
      expect(objects[`${ROOT_PATH}/${h}`]['org.kernel.TCMUService1'].ConfigDesc.value).to.equal(registry.get(h)!.configDescription);
    }
    // The manager object is beside the ObjectManager, not under it: targetcli would take it for a handler.
    expect(objects).not.to.have.property(MANAGER_PATH);
    expect(service.exportedSubtypes()).to.deep.equal(BUILTINS);

    const r = await gdbus(bus.address, ROOT_PATH, 'org.freedesktop.DBus.ObjectManager.GetManagedObjects');
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.contain("'/org/kernel/TCMUService1/file': {'org.kernel.TCMUService1': {'ConfigDesc': <");
    const p = await gdbus(bus.address, `${ROOT_PATH}/ram`, 'org.freedesktop.DBus.Properties.Get', ['org.kernel.TCMUService1', 'ConfigDesc']);
    expect(p.code, p.stderr).to.equal(0);
    expect(p.stdout).to.contain(registry.get('ram')!.configDescription.slice(0, 30));
  });

  it('leaves out a handler whose subtype cannot be an object path element, with a warning', () => {
    expect(registry.has('dash-ed')).to.equal(true);
    expect(service.exportedSubtypes()).not.to.include('dash-ed');
    expect(logs.join('\n')).to.match(/dashed.*not published on DBus.*dash-ed/);
  });

  it('CheckConfig asks the local handler, with or without the "<subtype>/" prefix targetcli sends', async () => {
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/file`, 'org.kernel.TCMUService1.CheckConfig', ['file//tmp/tcmu-ts-dbus-check.img']))).to.deep.equal([true, 'success']);
    const [ok, msg] = parseBs(await gdbus(bus.address, `${ROOT_PATH}/file`, 'org.kernel.TCMUService1.CheckConfig', ['file//no-such-dir-for-tcmu-ts/x.img']));
    expect(ok).to.equal(false);
    expect(msg).to.contain('/no-such-dir-for-tcmu-ts');
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/file`, 'org.kernel.TCMUService1.CheckConfig', ['/tmp/tcmu-ts-dbus-check.img']))).to.deep.equal([true, 'success']);
    const [ok2, msg2] = parseBs(await gdbus(bus.address, `${ROOT_PATH}/file`, 'org.kernel.TCMUService1.CheckConfig', ['file/;direct']));
    expect(ok2).to.equal(false);
    expect(msg2).to.contain('no path given');
  });

  it('lets any user list handlers, read ConfigDesc and call CheckConfig', async () => {
    const list = await gdbus(bus.address, ROOT_PATH, 'org.freedesktop.DBus.ObjectManager.GetManagedObjects', [], true);
    expect(list.code, list.stderr).to.equal(0);
    expect(list.stdout).to.contain('/org/kernel/TCMUService1/ram');
    const prop = await gdbus(bus.address, `${ROOT_PATH}/ram`, 'org.freedesktop.DBus.Properties.GetAll', ['org.kernel.TCMUService1'], true);
    expect(prop.code, prop.stderr).to.equal(0);
    expect(prop.stdout).to.contain("'ConfigDesc'");
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/ram`, 'org.kernel.TCMUService1.CheckConfig', ['ram/1G'], true))).to.deep.equal([true, 'success']);
  });

  it('refuses RegisterHandler and UnregisterHandler to a user other than root (AccessDenied from the bus)', async () => {
    const reg = await gdbus(bus.address, MANAGER_PATH, 'org.kernel.TCMUService1.HandlerManager1.RegisterHandler', ['evil', 'desc'], true);
    expect(reg.code).to.not.equal(0);
    expect(reg.stderr).to.contain('org.freedesktop.DBus.Error.AccessDenied');
    expect(reg.stderr).to.contain('uid=65534');
    const unreg = await gdbus(bus.address, MANAGER_PATH, 'org.kernel.TCMUService1.HandlerManager1.UnregisterHandler', ['ram'], true);
    expect(unreg.stderr).to.contain('org.freedesktop.DBus.Error.AccessDenied');
    // A property write is not in the policy either (and the property is read-only anyway).
    const set = await gdbus(bus.address, `${ROOT_PATH}/ram`, 'org.freedesktop.DBus.Properties.Set', ['org.kernel.TCMUService1', 'ConfigDesc', "<'x'>"], true);
    expect(set.stderr).to.contain('org.freedesktop.DBus.Error.AccessDenied');
    expect(registry.has('evil')).to.equal(false);
    expect(service.exportedSubtypes()).to.deep.equal(BUILTINS);
  });

  it('refuses a user other than root the service name and the HandlerManager1.<subtype> names', async () => {
    // nobody runs its programs from a copy it can read: the checkout may be in /root or another private directory.
    const forNobody = fixturesForAll(['dbus-next']);
    try {
      const p = external('sneaky', 'nope', 'normal', forNobody);
      const own = await p.event('own');
      expect(own.ok).to.equal(false);
      expect(String(own.error)).to.contain('org.freedesktop.DBus.Error.AccessDenied');
      // As nobody: RequestName of the service name, then a RegisterHandler call with no interface field
      // (the policy's allow rules all name an interface, and dbus-daemon never matches those without one).
      const script =
        "import dbus from 'dbus-next';" +
        'const b = dbus.sessionBus({ busAddress: process.argv[1] });' +
        "const t = (p) => p.then((r) => console.log('ok', JSON.stringify(r.body ?? r)), (e) => console.log(e.type));" +
        "b.on('connect', async () => {" +
        '  await t(b.requestName(process.argv[2], 4));' +
        "  await t(b.call(new dbus.Message({ destination: process.argv[2], path: process.argv[3], member: 'RegisterHandler', signature: 'ss', body: ['x', 'y'] })));" +
        '  b.disconnect();' +
        '});';
      const r = await run(AS_NOBODY[0], [...AS_NOBODY.slice(1), process.execPath, '--input-type=module', '-e', script, bus.address, SERVICE_NAME, MANAGER_PATH], { cwd: forNobody.root });
      expect(r.stdout.trim().split('\n'), `exit status ${String(r.code)}, stderr: ${r.stderr}`).to.deep.equal(['org.freedesktop.DBus.Error.AccessDenied', 'org.freedesktop.DBus.Error.AccessDenied']);
      expect(registry.has('x')).to.equal(false);
      // The same script as root gets past the bus: the name is taken (3 = EXISTS), and the service itself
      // answers the interface-less call (dbus-next dispatches by interface and refuses it).
      const asRoot = await run(process.execPath, ['--input-type=module', '-e', script, bus.address, SERVICE_NAME, MANAGER_PATH], { cwd: forNobody.root });
      const lines = asRoot.stdout.trim().split('\n');
      expect(lines[0], `exit status ${String(asRoot.code)}, stderr: ${asRoot.stderr}`).to.equal('ok 3');
      expect(lines[1]).to.not.equal('org.freedesktop.DBus.Error.AccessDenied');
      expect(registry.has('x')).to.equal(false);
    } finally {
      forNobody.remove();
    }
  });

  it('registers a handler served by another process, forwards CheckConfig to it, and drops it when the process exits', async () => {
    signals.clear();
    const p = external('ext1', 'ext1/<good...>: served elsewhere');
    const own = await p.event('own');
    expect(own.ok, JSON.stringify(own)).to.equal(true);
    const registered = await p.event('registered');
    expect(registered.reply).to.deep.equal([true, 'succeeded']);

    const added = await externalEvents.waitFor((e) => e.kind === 'added' && e.handler.subtype === 'ext1', 'added event');
    expect(added.handler.owner).to.equal(own.uniqueName);
    expect(added.handler.busName).to.equal('org.kernel.TCMUService1.HandlerManager1.ext1');
    const h = registry.get('ext1');
    expect(isExternalDbusHandler(h)).to.equal(true);
    expect(h).to.equal(added.handler);

    const sig = await signals.waitFor((s) => s.signal === 'InterfacesAdded' && s.path === `${ROOT_PATH}/ext1`, 'InterfacesAdded');
    expect((sig.value as Record<string, Record<string, { value: unknown }>>)['org.kernel.TCMUService1'].ConfigDesc.value).to.equal('ext1/<good...>: served elsewhere');
    expect(Object.keys(await managed())).to.include(`${ROOT_PATH}/ext1`);

    // CheckConfig goes to the registering process, with the string as the caller sent it.
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/ext1`, 'org.kernel.TCMUService1.CheckConfig', ['ext1/good-image']))).to.deep.equal([true, `OK from pid ${String(own.pid)}`]);
    const check = await p.event('check', (e) => e.cfgstring === 'ext1/good-image');
    expect(check.sender, 'forwarded by the daemon').to.equal(service.uniqueName);
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/ext1`, 'org.kernel.TCMUService1.CheckConfig', ['ext1/bad-image'], true))).to.deep.equal([false, `pid ${String(own.pid)} refuses "bad-image"`]);
    expect(await added.handler.checkConfigRemote('ext1/good')).to.deep.equal({ ok: true });

    // The subtype is reserved, its devices are not ours, and the registry says why.
    expect(registry.checkConfig('ext1/good').ok).to.equal(false);
    const openErr = await h!.open({} as never, false).then(() => undefined, (e: unknown) => e as NodeJS.ErrnoException);
    expect(openErr?.code).to.equal('ENODEV');
    expect(openErr?.message).to.contain(String(own.uniqueName));
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, 'org.kernel.TCMUService1.HandlerManager1.RegisterHandler', ['ext1', 'again']))).to.deep.equal([false, 'a handler for subtype "ext1" is already registered (external handler org.kernel.TCMUService1.HandlerManager1.ext1)']);

    await p.kill('SIGKILL');
    const removed = await externalEvents.waitFor((e) => e.kind === 'removed' && e.handler.subtype === 'ext1', 'removed event');
    expect(removed.reason).to.equal('vanished');
    await signals.waitFor((s) => s.signal === 'InterfacesRemoved' && s.path === `${ROOT_PATH}/ext1`, 'InterfacesRemoved');
    const rem = signals.items.find((s) => s.signal === 'InterfacesRemoved')!;
    expect(rem.value).to.deep.equal(['org.kernel.TCMUService1']);
    expect(registry.has('ext1')).to.equal(false);
    expect(Object.keys(await managed())).not.to.include(`${ROOT_PATH}/ext1`);
    const gone = await gdbus(bus.address, `${ROOT_PATH}/ext1`, 'org.kernel.TCMUService1.CheckConfig', ['ext1/good']);
    expect(gone.code).to.not.equal(0);
    expect(gone.stderr).to.match(/UnknownMethod|UnknownObject/);

    // The subtype is free again for a new process.
    const p2 = external('ext1', 'second life');
    expect((await p2.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    expect(registry.get('ext1')?.configDescription).to.equal('second life');
  });

  it('drops an external handler whose owner releases the name but stays connected', async () => {
    const p = external('ext2', 'desc');
    expect((await p.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    p.send('release');
    await p.event('released');
    const removed = await externalEvents.waitFor((e) => e.kind === 'removed' && e.handler.subtype === 'ext2', 'removed ext2');
    expect(removed.reason).to.equal('vanished');
    expect(registry.has('ext2')).to.equal(false);
  });

  it('UnregisterHandler removes an external handler and refuses built-in and unknown ones', async () => {
    const p = external('ext3', 'desc');
    expect((await p.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    p.send('unregister');
    expect((await p.event('unregistered')).reply).to.deep.equal([true, 'succeeded']);
    const removed = await externalEvents.waitFor((e) => e.kind === 'removed' && e.handler.subtype === 'ext3', 'removed ext3');
    expect(removed.reason).to.equal('unregistered');
    expect(registry.has('ext3')).to.equal(false);
    expect(service.exportedSubtypes()).not.to.include('ext3');
    const m = 'org.kernel.TCMUService1.HandlerManager1.UnregisterHandler';
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, m, ['ram']))).to.deep.equal([false, 'cannot unregister internal handler']);
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, m, ['nosuch']))).to.deep.equal([false, 'unknown subtype']);
  });

  it('RegisterHandler fails as tcmu-runner does when nobody owns the handler name, and for unusable or taken subtypes', async () => {
    const m = 'org.kernel.TCMUService1.HandlerManager1.RegisterHandler';
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, m, ['ghost', 'desc']))).to.deep.equal([false, 'Cannot find handler bus name: org.kernel.TCMUService1.HandlerManager1.ghost']);
    for (const bad of ['dash-name', '9lives', 'HandlerManager1', 'a.b']) {
      const [ok, msg] = parseBs(await gdbus(bus.address, MANAGER_PATH, m, [bad, 'desc']));
      expect(ok, bad).to.equal(false);
      expect(msg, bad).to.match(/^failed to watch for DBus handler name: /);
    }
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, m, ['file', 'mine now']))).to.deep.equal([false, `a handler for subtype "file" is already registered (${registry.get('file')!.name})`]);
    // A process that owns the name may be registered by another caller, as in tcmu-runner.
    const p = external('ext4', 'desc', 'no-register');
    expect((await p.event('own')).ok).to.equal(true);
    expect(parseBs(await gdbus(bus.address, MANAGER_PATH, m, ['ext4', 'by proxy']))).to.deep.equal([true, 'succeeded']);
    expect(registry.get('ext4')?.configDescription).to.equal('by proxy');
    expect(service.externalHandlers().map((h) => h.subtype)).to.include('ext4');
  });

  it('answers (false, reason) when the external handler replies with the wrong signature or not at all', async () => {
    const bad = external('extbad', 'desc', 'bad-signature');
    expect((await bad.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    const [ok, msg] = parseBs(await gdbus(bus.address, `${ROOT_PATH}/extbad`, 'org.kernel.TCMUService1.CheckConfig', ['extbad/x']));
    expect(ok).to.equal(false);
    expect(msg).to.contain('signature "s" instead of "bs"');

    const silent = external('extsilent', 'desc', 'silent');
    expect((await silent.event('registered')).reply).to.deep.equal([true, 'succeeded']);
    const started = Date.now();
    const [ok2, msg2] = parseBs(await gdbus(bus.address, `${ROOT_PATH}/extsilent`, 'org.kernel.TCMUService1.CheckConfig', ['extsilent/x']));
    expect(ok2).to.equal(false);
    expect(msg2).to.contain('org.freedesktop.DBus.Error.NoReply');
    expect(Date.now() - started).to.be.lessThan(10_000);
  });

  it('sync() publishes handlers loaded later and withdraws unloaded ones, with ObjectManager signals', async () => {
    signals.clear();
    registry.register(lateHandler);
    service.sync();
    const added = await signals.waitFor((s) => s.signal === 'InterfacesAdded' && s.path === `${ROOT_PATH}/late`, 'InterfacesAdded late');
    expect((added.value as Record<string, Record<string, { value: unknown }>>)['org.kernel.TCMUService1'].ConfigDesc.value).to.equal('late/<anything but "no">');
    expect(parseBs(await gdbus(bus.address, `${ROOT_PATH}/late`, 'org.kernel.TCMUService1.CheckConfig', ['late/no']))).to.deep.equal([false, 'late says no']);
    registry.unregister('late');
    service.sync();
    await signals.waitFor((s) => s.signal === 'InterfacesRemoved' && s.path === `${ROOT_PATH}/late`, 'InterfacesRemoved late');
    expect(service.exportedSubtypes()).not.to.include('late');
  });

  it('will not start a second service while the name is owned', async () => {
    const err = await startDbusService({ registry: new HandlerRegistry(), busAddress: bus.address }).then(() => undefined, (e: unknown) => e as Error);
    expect(err).to.be.instanceOf(DbusServiceError);
    expect(err!.message).to.match(/org\.kernel\.TCMUService1 is already owned by :1\.\d+/);
    // The owner's process, from GetConnectionUnixProcessID and /proc/<pid>/comm (here: this very process).
    expect(err!.message).to.match(new RegExp(`: another tcmu-ts \\(pid ${process.pid}\\) is running$`));
  });
});

describe('DBus service: bus set-up', function () {
  this.timeout(30_000);
  before(requireTools);

  it('explains AccessDenied when the policy file is not installed', async () => {
    const bus = await startTestBus({ policyFiles: [] });
    try {
      const err = await startDbusService({ registry: new HandlerRegistry(), busAddress: bus.address }).then(() => undefined, (e: unknown) => e as Error);
      expect(err).to.be.instanceOf(DbusServiceError);
      expect(err!.message).to.contain('org.freedesktop.DBus.Error.AccessDenied');
      expect(err!.message).to.contain('/etc/dbus-1/system.d');
    } finally {
      await bus.stop();
    }
  });

  it('fails clearly when there is no bus at the address', async () => {
    const err = await startDbusService({ registry: new HandlerRegistry(), busAddress: 'unix:path=/nonexistent/tcmu-ts-bus' }).then(() => undefined, (e: unknown) => e as Error);
    expect(err).to.be.instanceOf(DbusServiceError);
    expect(err!.message).to.contain('cannot connect to the DBus bus at unix:path=/nonexistent/tcmu-ts-bus');
  });

  it('tells the daemon when the bus goes away, and frees the subtypes of external handlers', async () => {
    const bus = await startTestBus();
    let gone: (() => void) | undefined;
    const disconnected = new Promise<void>((r) => { gone = r; });
    const registry = new HandlerRegistry();
    const events: ExternalHandlerEvent[] = [];
    const service = await startDbusService({
      registry, busAddress: bus.address, onDisconnected: () => gone!(), log: () => {}, onExternalHandler: (e) => events.push(e),
    });
    const p = externalProcess(bus.address, 'extgone', 'desc');
    try {
      expect((await p.event('registered')).reply).to.deep.equal([true, 'succeeded']);
      expect(registry.has('extgone')).to.equal(true);
      await bus.stop();
      await disconnected;
      expect(registry.has('extgone')).to.equal(false);
      expect(events.map((e) => `${e.kind} ${e.handler.subtype} ${e.reason ?? ''}`)).to.deep.equal(['added extgone ', 'removed extgone stopped']);
      await service.close();
    } finally {
      await p.kill();
    }
  });

  it('is started by dbus-daemon through the packaged activation file', async () => {
    const bus = await startTestBus({ activationArgv: [process.execPath, fixture('dbus-service-main.js')] });
    try {
      const r = await gdbus(bus.address, ROOT_PATH, 'org.freedesktop.DBus.ObjectManager.GetManagedObjects');
      expect(r.code, `${r.stderr}\ndbus-daemon: ${bus.stderr()}`).to.equal(0);
      expect(r.stdout).to.contain('/org/kernel/TCMUService1/ram');
      expect(r.stdout).to.contain('/org/kernel/TCMUService1/file');
      const pid = await run('gdbus', ['call', '--address', bus.address, '--dest', 'org.freedesktop.DBus', '--object-path', '/org/freedesktop/DBus',
        '--method', 'org.freedesktop.DBus.GetConnectionUnixProcessID', SERVICE_NAME]);
      const m = /\(uint32 (\d+),\)/.exec(pid.stdout);
      expect(m, pid.stdout + pid.stderr).to.not.equal(null);
      process.kill(Number(m![1]), 'SIGTERM');
    } finally {
      await bus.stop();
    }
  });
});

describe('DBus packaging files', () => {
  function keys(text: string): Map<string, string> {
    const out = new Map<string, string>();
    for (const line of text.split('\n')) {
      const m = /^([A-Za-z]+)=(.*)$/.exec(line.trim());
      if (m) out.set(m[1], m[2]);
    }
    return out;
  }

  it('agree with each other and with the service names', () => {
    const activation = keys(readFileSync(ACTIVATION_FILE, 'utf8'));
    expect(basename(ACTIVATION_FILE)).to.equal(`${SERVICE_NAME}.service`);
    expect(activation.get('Name')).to.equal(SERVICE_NAME);
    expect(activation.get('User')).to.equal('root');
    expect(activation.get('SystemdService')).to.equal(basename(SYSTEMD_UNIT));
    const unit = keys(readFileSync(SYSTEMD_UNIT, 'utf8'));
    expect(unit.get('Type')).to.equal('dbus');
    expect(unit.get('BusName')).to.equal(SERVICE_NAME);
    expect(unit.get('ExecStart')).to.equal(activation.get('Exec'));
    expect(unit.get('Alias')).to.equal('tcmu-runner.service');
    const policy = readFileSync(POLICY_FILE, 'utf8');
    expect(policy).to.contain(`<allow own="${SERVICE_NAME}"/>`);
    expect(policy).to.contain(`<allow own_prefix="${SERVICE_NAME}.HandlerManager1"/>`);
  });
});
