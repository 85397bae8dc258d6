/**
 * The DBus service tcmu-runner offers on the system bus, with the same
 * names, objects and methods, so targetcli and external handler processes
 * written against tcmu-runner work unchanged:
 *
 *   org.kernel.TCMUService1 (bus name)
 *   /org/kernel/TCMUService1            org.freedesktop.DBus.ObjectManager
 *   /org/kernel/TCMUService1/<subtype>  org.kernel.TCMUService1
 *       CheckConfig(s cfgstring) -> (b is_valid, s message); ConfigDesc: s (read)
 *   /org/kernel/TCMUService1/HandlerManager1  org.kernel.TCMUService1.HandlerManager1
 *       RegisterHandler(s subtype, s cfgstr_desc) -> (b succeeded, s message)
 *       UnregisterHandler(s subtype) -> (b succeeded, s message)
 *
 * The handler objects are what targetcli lists (GetManagedObjects; the last
 * path element is the subtype, the ConfigDesc property its help text) and
 * what it asks before creating a user backstore (CheckConfig with the whole
 * "<subtype>/<config>" string). The manager object is exported beside the
 * ObjectManager, not under it, as GDBus does for tcmu-runner, so it is not
 * listed as a handler.
 *
 * RegisterHandler follows tcmu-runner's main.c: the caller's own unique name
 * plays no part. The daemon looks for the owner of the well-known name
 * org.kernel.TCMUService1.HandlerManager1.<subtype>; the reply waits for that
 * lookup and is (true, "succeeded") when someone owns it and (false, "Cannot
 * find handler bus name: ...") when nobody does. From then on CheckConfig on
 * /org/kernel/TCMUService1/<subtype> is forwarded to that name, at
 * /org/kernel/TCMUService1/HandlerManager1/<subtype>, interface
 * org.kernel.TCMUService1, and the handler is dropped (object removed,
 * InterfacesRemoved sent, subtype freed) when the owner it had at
 * registration releases the name or leaves the bus (NameOwnerChanged).
 * Devices of that subtype are never served here: see external-handler.ts.
 *
 * Differences from tcmu-runner, all where it misbehaves:
 *  - RegisterHandler for a subtype that is already registered fails with a
 *    message; tcmu-runner reports success and replaces the existing object.
 *  - A subtype that cannot be an object path element fails with a message;
 *    tcmu-runner hits a GLib assertion.
 *  - A forwarded CheckConfig whose reply is not (bs) becomes (false, ...);
 *    tcmu-runner passes any reply through. Forwarding is asynchronous
 *    (tcmu-runner blocks its main loop for up to 25 s).
 *  - UnregisterHandler is served (tcmu-runner dropped it in 2017, relying on
 *    name-owner tracking only), with its old replies: (false, "unknown
 *    subtype"), (false, "cannot unregister internal handler"), (true,
 *    "succeeded").
 *  - The name is requested with DO_NOT_QUEUE: a second daemon fails to start
 *    instead of waiting silently in the queue.
 */
import { EventEmitter } from 'node:events';
import dbus from 'dbus-next';
import type { MessageBus, Message as DbusMessage } from 'dbus-next';
import { probeConfig, type Handler, type HandlerRegistry } from '@tcmu-ts/core';
import { ExternalDbusHandler, isExternalDbusHandler } from './external-handler.js';
import { describeProcess } from '../daemon/exclusive.js';
import {
  HANDLER_INTERFACE,
  MANAGER_INTERFACE,
  MANAGER_PATH,
  OBJECT_MANAGER_INTERFACE,
  ROOT_PATH,
  SERVICE_NAME,
  exportProblem,
  externalBusName,
  externalPath,
  externalSubtypeProblem,
  handlerPath,
} from './names.js';

const { Interface } = dbus.interface;
const { Message, Variant, DBusError } = dbus;

const DBUS_NAME = 'org.freedesktop.DBus';
const DBUS_PATH = '/org/freedesktop/DBus';
const SIGNAL = 4; // dbus-next MessageType.SIGNAL
const REQUEST_NAME_DO_NOT_QUEUE = 4;
const PRIMARY_OWNER = 1;
const ALREADY_OWNER = 4;
/** The default of libdbus and GDBus for a method call without a timeout. */
const DEFAULT_CALL_TIMEOUT_MS = 25_000;

export type DbusLogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface ExternalHandlerEvent {
  readonly kind: 'added' | 'removed';
  readonly handler: ExternalDbusHandler;
  /**
   * Why it was removed: its owner released the name or left the bus
   * ('vanished'), UnregisterHandler or a registry change ('unregistered'),
   * or the service stopped or lost the bus ('stopped').
   */
  readonly reason?: 'vanished' | 'unregistered' | 'stopped';
}

export interface DbusServiceOptions {
  /** Handlers to publish; external registrations are added to it and removed again. */
  registry: HandlerRegistry;
  /** Default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus socket. */
  busAddress?: string;
  /** Called after an external handler is registered and after it is removed. */
  onExternalHandler?: (event: ExternalHandlerEvent) => void;
  /** Called once if the connection to the bus ends while the service runs. */
  onDisconnected?: (error?: Error) => void;
  /** Default: warnings and errors to stderr. */
  log?: (level: DbusLogLevel, msg: string) => void;
  /** How long a forwarded CheckConfig may take (default 25 s, as libdbus and GDBus). */
  callTimeoutMs?: number;
  /** How long to wait for the bus to accept the connection (default 10 s). */
  connectTimeoutMs?: number;
}

export interface DbusService {
  readonly busAddress: string;
  /** Our unique name on the bus (":1.7"). */
  readonly uniqueName: string;
  /** The connection, for callers that need more than this API. */
  readonly bus: MessageBus;
  /**
   * Publish the registry as it is now: export an object for each handler
   * added since the last call, remove those of handlers it no longer has
   * (InterfacesAdded/InterfacesRemoved go out). Call it after loading or
   * unloading handlers; the service does it itself for external ones.
   */
  sync(): void;
  /** Subtypes with an object under /org/kernel/TCMUService1, sorted. */
  exportedSubtypes(): string[];
  externalHandlers(): ExternalDbusHandler[];
  /** Drop external handlers, release the name and disconnect. */
  close(): Promise<void>;
}

export class DbusServiceError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DbusServiceError';
  }
}

type Reply = [boolean, string];
type PropertyMap = Record<string, InstanceType<typeof Variant>>;
type InterfaceMap = Record<string, PropertyMap>;

/** org.kernel.TCMUService1 on /org/kernel/TCMUService1/<subtype>. */
class HandlerObject extends Interface {
  constructor(
    readonly handler: Handler,
    private readonly check: (cfgstring: string) => Promise<Reply>,
  ) {
    super(HANDLER_INTERFACE);
  }
  get ConfigDesc(): string {
    return this.handler.configDescription;
  }
  CheckConfig(cfgstring: string): Promise<Reply> {
    return this.check(cfgstring);
  }
}
HandlerObject.configureMembers({
  properties: { ConfigDesc: { signature: 's', access: 'read' } },
  methods: { CheckConfig: { inSignature: 's', outSignature: 'bs' } },
});

class ObjectManagerObject extends Interface {
  constructor(private readonly managed: () => Record<string, InterfaceMap>) {
    super(OBJECT_MANAGER_INTERFACE);
  }
  GetManagedObjects(): Record<string, InterfaceMap> {
    return this.managed();
  }
  InterfacesAdded(path: string, interfaces: InterfaceMap): [string, InterfaceMap] {
    return [path, interfaces];
  }
  InterfacesRemoved(path: string, interfaces: string[]): [string, string[]] {
    return [path, interfaces];
  }
}
ObjectManagerObject.configureMembers({
  methods: { GetManagedObjects: { inSignature: '', outSignature: 'a{oa{sa{sv}}}' } },
  signals: { InterfacesAdded: { signature: 'oa{sa{sv}}' }, InterfacesRemoved: { signature: 'oas' } },
});

class HandlerManagerObject extends Interface {
  constructor(
    private readonly register: (subtype: string, desc: string) => Promise<Reply>,
    private readonly unregister: (subtype: string) => Promise<Reply>,
  ) {
    super(MANAGER_INTERFACE);
  }
  RegisterHandler(subtype: string, cfgDesc: string): Promise<Reply> {
    return this.register(subtype, cfgDesc);
  }
  UnregisterHandler(subtype: string): Promise<Reply> {
    return this.unregister(subtype);
  }
}
HandlerManagerObject.configureMembers({
  methods: {
    RegisterHandler: { inSignature: 'ss', outSignature: 'bs' },
    UnregisterHandler: { inSignature: 's', outSignature: 'bs' },
  },
});

function errorText(e: unknown): string {
  if (e instanceof DBusError) return `${e.type}: ${e.text}`;
  return e instanceof Error ? e.message : String(e);
}

function nameOwnerChangedRule(name: string): string {
  return `type='signal',sender='${DBUS_NAME}',path='${DBUS_PATH}',interface='${DBUS_NAME}',member='NameOwnerChanged',arg0='${name}'`;
}

interface Exported {
  readonly handler: Handler;
  readonly object: HandlerObject;
}

class TcmuDbusService implements DbusService {
  readonly uniqueName: string;
  private readonly registry: HandlerRegistry;
  private readonly log: (level: DbusLogLevel, msg: string) => void;
  private readonly callTimeoutMs: number;
  private readonly exported = new Map<string, Exported>();
  private readonly externals = new Map<string, ExternalDbusHandler>();
  /** Subtypes whose RegisterHandler is waiting for the name lookup. */
  private readonly pending = new Set<string>();
  private readonly objectManager: ObjectManagerObject;
  private readonly manager: HandlerManagerObject;
  /** No InterfacesAdded while publishing the start-up set, before anyone can see the name. */
  private announce = false;
  /** Set by close() and when the connection is lost: nothing more is sent. */
  private closed = false;
  private readonly inFlight = new Set<(why: string) => void>();

  constructor(
    readonly bus: MessageBus,
    readonly busAddress: string,
    private readonly opts: DbusServiceOptions,
  ) {
    this.uniqueName = (bus as unknown as { name: string }).name;
    this.registry = opts.registry;
    this.log = opts.log ?? ((level, msg) => {
      if (level === 'warn' || level === 'error') process.stderr.write(`dbus: ${msg}\n`);
    });
    this.callTimeoutMs = opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS;
    this.objectManager = new ObjectManagerObject(() => this.managedObjects());
    this.manager = new HandlerManagerObject(
      (s, d) => this.registerExternal(s, d),
      (s) => Promise.resolve(this.unregisterExternal(s)),
    );
    bus.on('message', (msg: DbusMessage) => this.onMessage(msg));
    // dbus-next reports a dropped connection as 'error' on the bus and as
    // 'end' on its (private) connection object.
    bus.on('error', (e: Error) => this.connectionLost(e));
    (bus as unknown as { _connection: EventEmitter })._connection.on('end', () => this.connectionLost());
  }

  private connectionLost(e?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.announce = false;
    this.abortCalls(e?.message ?? 'the bus closed the connection');
    this.log('error', `connection to ${this.busAddress} lost${e ? `: ${e.message}` : ''}`);
    // Their owners can no longer be watched nor reached: free the subtypes.
    for (const ext of [...this.externals.values()]) this.dropExternal(ext, 'stopped');
    this.opts.onDisconnected?.(e);
  }

  /** Settle calls still waiting for a reply: dbus-next never does once the connection is gone. */
  private abortCalls(why: string): void {
    for (const abort of [...this.inFlight]) abort(why);
  }

  async start(): Promise<void> {
    this.bus.export(ROOT_PATH, this.objectManager);
    this.bus.export(MANAGER_PATH, this.manager);
    this.sync();
    this.announce = true;
    let reply: number;
    try {
      reply = await this.bus.requestName(SERVICE_NAME, REQUEST_NAME_DO_NOT_QUEUE);
    } catch (e) {
      const denied = e instanceof DBusError && e.type === 'org.freedesktop.DBus.Error.AccessDenied';
      throw new DbusServiceError(
        `cannot own ${SERVICE_NAME} on ${this.busAddress}: ${errorText(e)}` +
          (denied ? ' (is packaging/dbus/org.kernel.TCMUService1.conf installed in /etc/dbus-1/system.d, and are we root?)' : ''),
        { cause: e },
      );
    }
    if (reply !== PRIMARY_OWNER && reply !== ALREADY_OWNER) {
      let owner = 'another process';
      try {
        owner = await this.getNameOwner(SERVICE_NAME) ?? owner;
      } catch { /* keep the generic wording */ }
      let who = 'is tcmu-runner or another tcmu-ts running?';
      try {
        const pid = (await this.busCall('GetConnectionUnixProcessID', 's', [owner])).body[0] as number;
        who = `${describeProcess(pid)} (pid ${pid}) is running`;
      } catch { /* keep the question */ }
      throw new DbusServiceError(`${SERVICE_NAME} is already owned by ${owner} on ${this.busAddress}: ${who}`);
    }
    this.log('info', `owning ${SERVICE_NAME} as ${this.uniqueName} on ${this.busAddress}`);
  }

  // ------------------------------------------------------------ objects

  private managedObjects(): Record<string, InterfaceMap> {
    const out: Record<string, InterfaceMap> = {};
    for (const [subtype, e] of this.exported) out[handlerPath(subtype)] = this.interfacesOf(e.handler);
    return out;
  }

  private interfacesOf(h: Handler): InterfaceMap {
    return { [HANDLER_INTERFACE]: { ConfigDesc: new Variant('s', h.configDescription) } };
  }

  private exportHandler(h: Handler): void {
    const problem = exportProblem(h.subtype);
    if (problem) {
      this.log('warn', `handler "${h.name}" is not published on DBus: ${problem}`);
      return;
    }
    const check = isExternalDbusHandler(h)
      ? (cfg: string) => this.forwardCheckConfig(h.subtype, cfg)
      : (cfg: string) => this.localCheckConfig(h, cfg);
    const object = new HandlerObject(h, check);
    const path = handlerPath(h.subtype);
    this.bus.export(path, object);
    this.exported.set(h.subtype, { handler: h, object });
    if (this.announce) this.objectManager.InterfacesAdded(path, this.interfacesOf(h));
  }

  private unexportHandler(subtype: string): void {
    const e = this.exported.get(subtype);
    if (!e) return;
    this.exported.delete(subtype);
    const path = handlerPath(subtype);
    this.bus.unexport(path, e.object);
    if (this.announce) this.objectManager.InterfacesRemoved(path, [HANDLER_INTERFACE]);
  }

  sync(): void {
    if (this.closed) return;
    const want = new Map(this.registry.list().map((h) => [h.subtype, h] as const));
    for (const [subtype, ext] of [...this.externals]) {
      if (want.get(subtype) !== ext) this.dropExternal(ext, 'unregistered');
    }
    for (const [subtype, e] of [...this.exported]) {
      if (want.get(subtype) !== e.handler) this.unexportHandler(subtype);
    }
    for (const h of want.values()) {
      if (this.exported.has(h.subtype)) continue;
      // An external handler some other service instance put in this registry has nobody to forward to.
      if (isExternalDbusHandler(h) && this.externals.get(h.subtype) !== h) continue;
      this.exportHandler(h);
    }
  }

  exportedSubtypes(): string[] {
    return [...this.exported.keys()].sort();
  }

  externalHandlers(): ExternalDbusHandler[] {
    return [...this.externals.values()];
  }

  // ------------------------------------------------------------ CheckConfig

  /**
   * targetcli sends the whole "<subtype>/<config>" string (and tcmu-runner
   * hands it to its handler as is); our handlers take only the part after
   * "<subtype>/", so that prefix is removed when present.
   */
  private async localCheckConfig(h: Handler, cfgstring: string): Promise<Reply> {
    const prefix = `${h.subtype}/`;
    const config = cfgstring.startsWith(prefix) ? cfgstring.slice(prefix.length) : cfgstring;
    const r = await probeConfig(h, config);
    return r.ok ? [true, 'success'] : [false, r.reason || 'unknown'];
  }

  /** tcmu-runner's on_dbus_check_config: the same call, on the external handler's name. */
  private async forwardCheckConfig(subtype: string, cfgstring: string): Promise<Reply> {
    const msg = new Message({
      destination: externalBusName(subtype),
      path: externalPath(subtype),
      interface: HANDLER_INTERFACE,
      member: 'CheckConfig',
      signature: 's',
      body: [cfgstring],
    });
    let reply: DbusMessage;
    try {
      reply = await this.call(msg, this.callTimeoutMs);
    } catch (e) {
      return [false, errorText(e)];
    }
    if (reply.signature !== 'bs') {
      return [false, `${externalBusName(subtype)} answered CheckConfig with signature "${reply.signature ?? ''}" instead of "bs"`];
    }
    return [reply.body[0] as boolean, reply.body[1] as string];
  }

  // ------------------------------------------------------------ HandlerManager1

  private async registerExternal(subtype: string, cfgDesc: string): Promise<Reply> {
    if (this.closed) return [false, 'tcmu-ts is stopping'];
    const problem = externalSubtypeProblem(subtype);
    if (problem) return [false, `failed to watch for DBus handler name: ${problem}`];
    const existing = this.registry.get(subtype);
    if (existing) return [false, `a handler for subtype "${subtype}" is already registered (${existing.name})`];
    if (this.pending.has(subtype)) return [false, `a registration for subtype "${subtype}" is already in progress`];

    const busName = externalBusName(subtype);
    this.pending.add(subtype);
    let owner: string | undefined;
    try {
      // Watch first, then look: an owner that leaves after the lookup is seen as a NameOwnerChanged.
      await this.busCall('AddMatch', 's', [nameOwnerChangedRule(busName)]);
      owner = await this.getNameOwner(busName);
    } catch (e) {
      this.pending.delete(subtype);
      void this.removeMatch(busName);
      return [false, `failed to watch for DBus handler name ${busName}: ${errorText(e)}`];
    }
    this.pending.delete(subtype);
    if (owner === undefined || this.closed) {
      void this.removeMatch(busName);
      return [false, `Cannot find handler bus name: ${busName}`];
    }
    const ext = new ExternalDbusHandler(subtype, cfgDesc, busName, owner, (cfg) => this.forwardCheckConfig(subtype, cfg));
    try {
      this.registry.register(ext);
    } catch (e) {
      void this.removeMatch(busName);
      return [false, errorText(e)];
    }
    this.externals.set(subtype, ext);
    this.exportHandler(ext);
    this.log('info', `handler "${subtype}" registered by ${owner} (${busName})`);
    this.notify({ kind: 'added', handler: ext });
    return [true, 'succeeded'];
  }

  private unregisterExternal(subtype: string): Reply {
    const ext = this.externals.get(subtype);
    if (ext) {
      this.dropExternal(ext, 'unregistered');
      return [true, 'succeeded'];
    }
    if (this.registry.has(subtype)) return [false, 'cannot unregister internal handler'];
    return [false, 'unknown subtype'];
  }

  private dropExternal(ext: ExternalDbusHandler, reason: 'vanished' | 'unregistered' | 'stopped'): void {
    if (this.externals.get(ext.subtype) !== ext) return;
    this.externals.delete(ext.subtype);
    if (this.exported.get(ext.subtype)?.handler === ext) this.unexportHandler(ext.subtype);
    if (this.registry.get(ext.subtype) === ext) this.registry.unregister(ext.subtype);
    void this.removeMatch(ext.busName);
    this.log('info', `handler "${ext.subtype}" of ${ext.owner} removed (${reason})`);
    this.notify({ kind: 'removed', handler: ext, reason });
  }

  private notify(event: ExternalHandlerEvent): void {
    try {
      this.opts.onExternalHandler?.(event);
    } catch (e) {
      this.log('error', `onExternalHandler threw: ${errorText(e)}`);
    }
  }

  private onMessage(msg: DbusMessage): void {
    if (
      msg.type !== SIGNAL ||
      msg.sender !== DBUS_NAME ||
      msg.interface !== DBUS_NAME ||
      msg.member !== 'NameOwnerChanged' ||
      msg.signature !== 'sss'
    ) return;
    const [name, oldOwner, newOwner] = msg.body as [string, string, string];
    for (const ext of this.externals.values()) {
      // GDBus reports an owner change as "vanished" then "appeared"; tcmu-runner drops the handler on the first.
      if (ext.busName === name && oldOwner === ext.owner && newOwner !== ext.owner) {
        this.dropExternal(ext, 'vanished');
        break;
      }
    }
  }

  // ------------------------------------------------------------ bus helpers

  private call(msg: DbusMessage, timeoutMs: number): Promise<DbusMessage> {
    if (this.closed) return Promise.reject(new DBusError('org.freedesktop.DBus.Error.Disconnected', 'the DBus service is closed'));
    return new Promise((resolve, reject) => {
      const done = () => { clearTimeout(timer); this.inFlight.delete(abort); };
      // dbus-next keeps a reply handler per serial until a reply comes; drop it when we give up.
      const forget = () => { delete (this.bus as unknown as { _methodReturnHandlers: Record<number, unknown> })._methodReturnHandlers[msg.serial!]; };
      const abort = (why: string) => { done(); forget(); reject(new DBusError('org.freedesktop.DBus.Error.Disconnected', why)); };
      const timer = setTimeout(() => {
        done();
        forget();
        reject(new DBusError('org.freedesktop.DBus.Error.NoReply', `no reply from ${msg.destination} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.inFlight.add(abort);
      this.bus.call(msg).then(
        (reply) => { done(); resolve(reply as DbusMessage); },
        (e: unknown) => { done(); reject(e); },
      );
    });
  }

  private busCall(member: string, signature: string, body: unknown[]): Promise<DbusMessage> {
    return this.call(new Message({ destination: DBUS_NAME, path: DBUS_PATH, interface: DBUS_NAME, member, signature, body }), this.callTimeoutMs);
  }

  /** The unique name owning `name`, or undefined when nobody does. */
  private async getNameOwner(name: string): Promise<string | undefined> {
    try {
      const reply = await this.busCall('GetNameOwner', 's', [name]);
      return reply.body[0] as string;
    } catch (e) {
      if (e instanceof DBusError && e.type === 'org.freedesktop.DBus.Error.NameHasNoOwner') return undefined;
      throw e;
    }
  }

  private async removeMatch(busName: string): Promise<void> {
    if (this.closed) return;
    try {
      await this.busCall('RemoveMatch', 's', [nameOwnerChangedRule(busName)]);
    } catch { /* the rule goes with the connection anyway */ }
  }

  async close(): Promise<void> {
    if (this.closed) {
      this.abortCalls('the DBus service is closed');
      try { this.bus.disconnect(); } catch { /* already gone */ }
      return;
    }
    for (const ext of [...this.externals.values()]) this.dropExternal(ext, 'stopped');
    try {
      await this.call(new Message({ destination: DBUS_NAME, path: DBUS_PATH, interface: DBUS_NAME, member: 'ReleaseName', signature: 's', body: [SERVICE_NAME] }), 2_000);
    } catch { /* disconnecting releases it too */ }
    this.closed = true;
    this.abortCalls('the DBus service is closed');
    for (const subtype of [...this.exported.keys()]) this.unexportHandler(subtype);
    this.bus.disconnect();
  }
}

/**
 * Connect to the bus, publish the registry's handlers and the handler
 * manager, then own org.kernel.TCMUService1 (objects first, so a client that
 * sees the name sees the handlers). Rejects with a DbusServiceError when the
 * bus cannot be reached or the name cannot be owned.
 */
export async function startDbusService(opts: DbusServiceOptions): Promise<DbusService> {
  const busAddress = opts.busAddress ?? process.env.DBUS_SYSTEM_BUS_ADDRESS ?? 'unix:path=/var/run/dbus/system_bus_socket';
  const bus = dbus.sessionBus({ busAddress });
  const connectTimeoutMs = opts.connectTimeoutMs ?? 10_000;
  await new Promise<void>((resolve, reject) => {
    const fail = (e: unknown) => {
      clearTimeout(timer);
      bus.removeListener('connect', ok);
      // Keep a listener: a late socket error must not become an uncaught 'error' event.
      bus.on('error', () => {});
      try { bus.disconnect(); } catch { /* never connected */ }
      reject(new DbusServiceError(`cannot connect to the DBus bus at ${busAddress}: ${errorText(e)}`, { cause: e }));
    };
    const ok = () => {
      clearTimeout(timer);
      bus.removeListener('error', fail);
      resolve();
    };
    const timer = setTimeout(() => fail(new Error(`no answer within ${connectTimeoutMs} ms`)), connectTimeoutMs);
    bus.once('connect', ok);
    bus.once('error', fail);
  });

  const service = new TcmuDbusService(bus, busAddress, opts);
  try {
    await service.start();
  } catch (e) {
    await service.close();
    throw e;
  }
  return service;
}
