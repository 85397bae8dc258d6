/**
 * A handler that another process registered over DBus
 * (org.kernel.TCMUService1.HandlerManager1.RegisterHandler).
 *
 * What tcmu-runner does with such a handler (main.c, libtcmu.c), and so what
 * this one stands for:
 *  - It reserves the subtype: a second registration, or a local handler of
 *    the same subtype, is refused while it is there.
 *  - It is listed like any handler (object /org/kernel/TCMUService1/<subtype>
 *    with ConfigDesc), and CheckConfig on that object is forwarded over DBus
 *    to the registering process.
 *  - It never serves I/O here. tcmu-runner's stand-in open() returns -1 and
 *    its handle_cmd() aborts, and neither is ever reached: libtcmu's handler
 *    table is copied once at start-up, before any DBus registration, so a
 *    device of that subtype is refused with "could not find handler" and
 *    left to the external process, which runs its own libtcmu and opens,
 *    maps and serves the device's UIO ring itself.
 * So `open()` here always fails with ENODEV, and the daemon should skip
 * devices whose subtype resolves to this class (see isExternalDbusHandler).
 */
import { configError, ErrnoError, type ConfigCheck, type DeviceHandler, type Handler } from '@tcmu-ts/core';
import { handlerPath } from './names.js';

export class ExternalDbusHandler implements Handler {
  readonly name: string;
  /** Marks the object for isExternalDbusHandler without instanceof (which fails across package copies). */
  readonly externalDbus = true as const;

  constructor(
    readonly subtype: string,
    readonly configDescription: string,
    /** org.kernel.TCMUService1.HandlerManager1.<subtype> */
    readonly busName: string,
    /** Unique name (":1.42") that owned busName when the handler was registered. */
    readonly owner: string,
    private readonly remoteCheck: (cfgstring: string) => Promise<readonly [boolean, string]>,
  ) {
    this.name = `external handler ${busName}`;
  }

  /**
   * The check needs a DBus round trip, so it cannot be answered here; the
   * result explains where the subtype is served. Use checkConfigRemote().
   */
  checkConfig(_cfgstring: string): ConfigCheck {
    return configError(
      `subtype "${this.subtype}" is served by the external process ${this.owner} (${this.busName}); ` +
        `its configuration is checked over DBus (CheckConfig on ${handlerPath(this.subtype)})`,
    );
  }

  /** Ask the registering process, as the DBus CheckConfig does. `cfgstring` is passed as is. */
  async checkConfigRemote(cfgstring: string): Promise<ConfigCheck> {
    const [ok, message] = await this.remoteCheck(cfgstring);
    return ok ? { ok: true } : configError(message);
  }

  open(): Promise<DeviceHandler> {
    return Promise.reject(
      new ErrnoError(
        'ENODEV',
        `subtype "${this.subtype}" is served by the external process ${this.owner} (${this.busName}); ` +
          'tcmu-ts leaves its devices to that process',
      ),
    );
  }
}

/** True for handlers registered by another process over DBus: the daemon must not open their devices. */
export function isExternalDbusHandler(h: Handler | undefined): h is ExternalDbusHandler {
  return h !== undefined && (h as Partial<ExternalDbusHandler>).externalDbus === true;
}
