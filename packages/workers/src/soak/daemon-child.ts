/**
 * The soak's daemon: the real `Daemon` in a process of its own, so the soak
 * (which plays the kernel, ./soak.ts) can kill -9 it. It reaches that kernel
 * where the real daemon reaches the real one:
 *  - each device's ring (the simulator's memfd) and "UIO fd" (one end of a
 *    socketpair) are inherited fds, given in argv[2] as { minor, mapFd, eventFd };
 *  - configfs action writes (block_dev, reset_ring) and netlink messages
 *    (events in, *_DONE replies out) cross the IPC channel; a configfs write
 *    returns when the kernel side has applied it, as the real write() does.
 * Everything else (attributes, uio names) is read from the stand-in tree
 * under `root`. Messages it takes besides: kill a device worker abruptly, and
 * say how many fds this process has open.
 */
import { readdirSync } from 'node:fs';
import { HandlerRegistry, decodeNlMsgs, type GenlListener, type GenlTransport, type NlMsg } from '@tcmu-ts/core';
import { Logger, TcmuNetlink, nodeConfigfsIo, type ConfigfsIo, type UioDevice } from '@tcmu-ts/core/host';
import { Daemon } from '../daemon/daemon.js';
import type { Supervisor } from '../supervisor.js';
import { STANDIN_GENL_FAMILY } from '../standin/kernel-standin.js';

export interface SoakChildConfig {
  root: string;
  lockFile: string;
  logLevel: number;
  uio: { minor: number; mapFd: number; eventFd: number; mapSize: number }[];
}

/** Kernel side -> daemon. */
export type ToDaemon =
  | { t: 'nl'; bytes: Uint8Array }
  | { t: 'ack'; id: number; error?: string }
  | { t: 'kill-worker'; name: string }
  | { t: 'fds'; id: number };

/** Daemon -> kernel side. */
export type FromDaemon =
  | { t: 'ready' }
  | { t: 'start-failed'; error: string }
  | { t: 'nl'; bytes: Uint8Array }
  | { t: 'action'; id: number; path: string; data: string }
  | { t: 'uio-closed'; minor: number }
  | { t: 'worker-killed'; name: string; ok: boolean }
  | { t: 'fds'; id: number; count: number };

/** What the kernel acts on at once: the actions, and tmr_notification (the daemon turns it on at adoption). */
const ACTION_PATH = /\/(action\/block_dev|action\/reset_ring|attrib\/tmr_notification)$/;

/**
 * A device worker ends without warning, as a crash in it would end it: the
 * supervisor sees the exit and takes its normal restart path (block, reset
 * the ring, new worker, unblock). The handle's kill() is Worker.terminate()
 * for a thread and SIGKILL for a device process: the handler is not closed
 * and nothing on the ring is answered.
 */
function killDeviceWorker(supervisor: Supervisor, name: string): boolean {
  const worker = supervisor.devices.get(name)?.worker;
  if (!worker) return false;
  worker.kill();
  return true;
}

function send(m: FromDaemon): void {
  process.send!(m);
}

/** Generic netlink over the IPC channel: requests go to the kernel side, events come from it. */
class IpcGenl implements GenlTransport {
  readonly portId = 778;
  listener: GenlListener | null = null;
  async request(_what: string, build: (seq: number, portId: number) => Uint8Array): Promise<NlMsg[]> {
    send({ t: 'nl', bytes: build(1, this.portId) });
    return [];
  }
  async resolveFamily() {
    return STANDIN_GENL_FAMILY;
  }
  addMembership(): void {}
  listen(l: GenlListener): void {
    this.listener = l;
  }
  async close(): Promise<void> {}
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2]) as SoakChildConfig;
  const genl = new IpcGenl();
  const acks = new Map<number, { resolve(): void; reject(e: Error): void }>();
  let nextAck = 1;
  let daemon: Daemon | undefined;

  process.on('message', (m: ToDaemon) => {
    switch (m.t) {
      case 'nl':
        for (const msg of decodeNlMsgs(m.bytes)) genl.listener?.onMessage(msg);
        break;
      case 'ack': {
        const a = acks.get(m.id);
        acks.delete(m.id);
        if (m.error) a?.reject(Object.assign(new Error(m.error), { errno: 5 }));
        else a?.resolve();
        break;
      }
      case 'kill-worker':
        send({ t: 'worker-killed', name: m.name, ok: daemon ? killDeviceWorker(daemon.supervisor, m.name) : false });
        break;
      case 'fds':
        send({ t: 'fds', id: m.id, count: readdirSync('/proc/self/fd').length });
        break;
    }
  });

  const configfsIo: ConfigfsIo = {
    ...nodeConfigfsIo,
    writeFile: async (path, data) => {
      if (ACTION_PATH.test(path)) {
        const id = nextAck++;
        await new Promise<void>((resolve, reject) => {
          acks.set(id, { resolve, reject });
          send({ t: 'action', id, path, data });
        });
      }
      await nodeConfigfsIo.writeFile(path, data);
    },
  };
  const byMinor = new Map(cfg.uio.map((u) => [u.minor, u]));
  const openUio = (uio: UioDevice) => {
    const u = byMinor.get(uio.minor);
    if (!u) throw Object.assign(new Error(`no device behind ${uio.devPath}`), { errno: 19 });
    return { mapFd: u.mapFd, eventFd: u.eventFd, mapSize: u.mapSize, close: () => send({ t: 'uio-closed', minor: uio.minor }) };
  };

  const registry = new HandlerRegistry();
  await registry.loadBuiltins();
  const logger = new Logger({ level: cfg.logLevel, stderr: { write: (l: string) => process.stderr.write(l) } });
  daemon = new Daemon({
    logger, registry, handlerSources: new Map(registry.list().map((h) => [h.subtype, h.subtype])),
    root: cfg.root, configfsIo, openNetlink: () => TcmuNetlink.attach(genl), openUio, lockFile: cfg.lockFile,
  });
  process.once('SIGTERM', () => {
    void daemon!.stop().then(() => process.exit(0), (e) => {
      process.stderr.write(`stop failed: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    });
  });
  try {
    await daemon.start();
  } catch (e) {
    send({ t: 'start-failed', error: e instanceof Error ? e.message : String(e) });
    process.exit(1);
  }
  send({ t: 'ready' });
}

void main();
