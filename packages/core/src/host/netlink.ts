/**
 * A generic netlink socket bound through koffi, family resolution through
 * nlctrl, and the TCM-USER daemon side on top of it. The messages and
 * errors are pure code in control/ (nlattr.ts, netlink.ts, tcmu-nl.ts).
 *
 * The socket is non-blocking; one "pump" drains it whenever a request is
 * outstanding or a listener is set, and waits for more with poll() on a
 * libuv pool thread (koffi async), so the event loop never blocks. Only
 * datagrams sent by the kernel (source port 0) are accepted.
 */
import koffi from 'koffi';
import { pollIn } from '@tcmu-ts/ring';
import { constants as osConstants } from 'node:os';
import { type NlMsg, decodeNlMsgs, decodeNlError, encodeGenlMsg, NlMsgType, NlmFlag } from '../control/nlattr.js';
import {
  type GenlFamily, type GenlListener, type GenlTransport, CtrlCmd, GENL_ID_CTRL, GENL_NAMSIZ, GenlFamilyNotFoundError,
  NetlinkError, NetlinkTimeoutError, TcmuNotLoadedError, decodeGenlFamily, encodeGetFamily, errnoCode,
} from '../control/netlink.js';
import {
  type TcmuEvent, TCMU_GENL_FAMILY, TCMU_MCGRP_CONFIG, TcmuEventError, decodeTcmuEvent, encodeTcmuDone, encodeSetFeatures,
  tcmuDoneCmd,
} from '../control/tcmu-nl.js';

const libc = koffi.load('libc.so.6');
const c = {
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  bind: libc.func('int bind(int fd, const uint8_t *addr, uint32_t len)'),
  getsockname: libc.func('int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int name, const uint8_t *val, uint32_t len)'),
  sendto: libc.func('long sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t alen)'),
  recvfrom: libc.func('long recvfrom(int fd, _Out_ uint8_t *buf, size_t len, int flags, _Out_ uint8_t *addr, _Inout_ uint32_t *alen)'),
  close: libc.func('int close(int fd)'),
};

export const AF_NETLINK = 16;
export const NETLINK_GENERIC = 16;
const SOCK_RAW = 3;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
export const SOL_NETLINK = 270;
export const NETLINK_ADD_MEMBERSHIP = 1;
export const NETLINK_DROP_MEMBERSHIP = 2;
const NETLINK_CAP_ACK = 10;
const NETLINK_EXT_ACK = 11;
const MSG_DONTWAIT = 0x40;
const MSG_TRUNC = 0x20;
const SOCKADDR_NL_LEN = 12;

/** A failed socket system call. */
export class NetlinkSysError extends Error {
  readonly code: string;
  constructor(readonly call: string, readonly errno: number) {
    super(`${call} failed: ${errnoCode(errno)}`);
    this.name = 'NetlinkSysError';
    this.code = errnoCode(errno);
  }
}

interface Pending {
  what: string;
  replies: NlMsg[];
  resolve(m: NlMsg[]): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export interface GenlSocketOptions {
  /** SO_RCVBUF in bytes (best effort); events are lost (ENOBUFS) if it fills. Default 1 MiB. */
  rcvbuf?: number;
  /** How long one poll() on the pool thread may last; bounds close() latency. Default 200 ms. */
  pollSliceMs?: number;
}

/** A NETLINK_GENERIC socket. */
export class GenlSocket implements GenlTransport {
  readonly fd: number;
  readonly portId: number;
  private seq: number;
  private readonly pending = new Map<number, Pending>();
  private listener: GenlListener | null = null;
  private pumping: Promise<void> | null = null;
  private closed = false;
  /** A fatal receive error: the socket is unusable from then on. */
  private broken: Error | null = null;
  private readonly rbuf = new Uint8Array(65536);
  private readonly pollSliceMs: number;

  private constructor(fd: number, portId: number, pollSliceMs: number) {
    this.fd = fd;
    this.portId = portId;
    this.pollSliceMs = pollSliceMs;
    this.seq = (Math.floor(Math.random() * 0x7fffffff) | 1) >>> 0;
  }

  static open(opts: GenlSocketOptions = {}): GenlSocket {
    const fd = Number(c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_GENERIC));
    if (fd < 0) throw new NetlinkSysError('socket(AF_NETLINK, NETLINK_GENERIC)', koffi.errno());
    try {
      const sa = new Uint8Array(SOCKADDR_NL_LEN);
      new DataView(sa.buffer).setUint16(0, AF_NETLINK, true);
      if (Number(c.bind(fd, sa, SOCKADDR_NL_LEN)) < 0) throw new NetlinkSysError('bind', koffi.errno());
      const out = new Uint8Array(SOCKADDR_NL_LEN);
      const len = new Uint32Array([SOCKADDR_NL_LEN]);
      if (Number(c.getsockname(fd, out, len)) < 0) throw new NetlinkSysError('getsockname', koffi.errno());
      const portId = new DataView(out.buffer).getUint32(4, true);
      // Best effort: smaller acks and readable error strings.
      setIntOpt(fd, SOL_NETLINK, NETLINK_CAP_ACK, 1);
      setIntOpt(fd, SOL_NETLINK, NETLINK_EXT_ACK, 1);
      setIntOpt(fd, SOL_SOCKET, SO_RCVBUF, opts.rcvbuf ?? 1 << 20);
      return new GenlSocket(fd, portId, opts.pollSliceMs ?? 200);
    } catch (e) {
      c.close(fd);
      throw e;
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  nextSeq(): number {
    this.seq = (this.seq + 1) >>> 0;
    if (this.seq === 0) this.seq = 1;
    return this.seq;
  }

  addMembership(groupId: number): void {
    if (!setIntOpt(this.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, groupId)) {
      throw new NetlinkSysError(`setsockopt(NETLINK_ADD_MEMBERSHIP, ${groupId})`, koffi.errno());
    }
  }

  dropMembership(groupId: number): void {
    if (!setIntOpt(this.fd, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, groupId)) {
      throw new NetlinkSysError(`setsockopt(NETLINK_DROP_MEMBERSHIP, ${groupId})`, koffi.errno());
    }
  }

  /** Send one datagram to the kernel. */
  send(bytes: Uint8Array): void {
    if (this.closed) throw new Error('netlink socket is closed');
    const to = new Uint8Array(SOCKADDR_NL_LEN);
    new DataView(to.buffer).setUint16(0, AF_NETLINK, true);
    for (;;) {
      const n = Number(c.sendto(this.fd, bytes, bytes.byteLength, 0, to, SOCKADDR_NL_LEN));
      if (n === bytes.byteLength) return;
      const err = koffi.errno();
      if (n < 0 && err === osConstants.errno.EINTR) continue;
      throw new NetlinkSysError('sendto', n < 0 ? err : osConstants.errno.EMSGSIZE);
    }
  }

  /**
   * Send a message built by `build(seq, portId)` with NLM_F_ACK set in it and
   * collect the replies up to the ack. Rejects with NetlinkError when the
   * kernel answers with an error, NetlinkTimeoutError after `timeoutMs`.
   */
  request(what: string, build: (seq: number, portId: number) => Uint8Array, timeoutMs = 5000): Promise<NlMsg[]> {
    if (this.closed) return Promise.reject(new Error('netlink socket is closed'));
    if (this.broken) return Promise.reject(this.broken);
    const seq = this.nextSeq();
    const bytes = build(seq, this.portId);
    return new Promise<NlMsg[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(seq);
        reject(new NetlinkTimeoutError(what, timeoutMs));
      }, timeoutMs);
      this.pending.set(seq, { what, replies: [], resolve, reject, timer });
      try {
        this.send(bytes);
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(seq);
        reject(e as Error);
        return;
      }
      this.ensurePump();
    });
  }

  /** Resolve a generic netlink family (id, version, multicast groups) by name through nlctrl. */
  async resolveFamily(name: string, timeoutMs = 5000): Promise<GenlFamily> {
    // GENL_NAMSIZ is 16 with the NUL; nlctrl rejects longer names with EINVAL.
    if (Buffer.byteLength(name) > GENL_NAMSIZ - 1) throw new GenlFamilyNotFoundError(name);
    let replies: NlMsg[];
    try {
      replies = await this.request(`CTRL_CMD_GETFAMILY ${name}`, (seq, pid) => encodeGetFamily(name, seq, pid), timeoutMs);
    } catch (e) {
      if (e instanceof NetlinkError && e.code === 'ENOENT') throw new GenlFamilyNotFoundError(name);
      throw e;
    }
    const reply = replies.find((m) => m.header.type === GENL_ID_CTRL);
    if (!reply) throw new NetlinkError(`CTRL_CMD_GETFAMILY ${name}: ack without a family`, -71);
    return decodeGenlFamily(reply);
  }

  /** Every registered generic netlink family (a CTRL_CMD_GETFAMILY dump). */
  async listFamilies(timeoutMs = 5000): Promise<GenlFamily[]> {
    const replies = await this.request('CTRL_CMD_GETFAMILY dump', (seq, pid) => encodeGenlMsg(
      { family: GENL_ID_CTRL, flags: NlmFlag.REQUEST | NlmFlag.DUMP, seq, pid, cmd: CtrlCmd.GETFAMILY, version: 1 },
    ), timeoutMs);
    return replies.filter((m) => m.header.type === GENL_ID_CTRL).map((m) => decodeGenlFamily(m));
  }

  /** Receive unsolicited messages (multicast) until unlisten() or close(). */
  listen(listener: GenlListener): void {
    if (this.closed) throw new Error('netlink socket is closed');
    this.listener = listener;
    this.ensurePump();
  }

  unlisten(): void {
    this.listener = null;
  }

  /** Stop the pump, fail outstanding requests and close the fd. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.listener = null;
    for (const [seq, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new Error(`${p.what}: netlink socket closed`));
      this.pending.delete(seq);
    }
    // Never close an fd another thread is polling: wait for the slice to end.
    if (this.pumping) await this.pumping;
    c.close(this.fd);
  }

  private wanted(): boolean {
    return !this.closed && !this.broken && (this.pending.size > 0 || this.listener !== null);
  }

  private ensurePump(): void {
    if (this.pumping || !this.wanted()) return;
    this.pumping = this.pump().finally(() => {
      this.pumping = null;
      this.ensurePump();
    });
  }

  private async pump(): Promise<void> {
    try {
      while (this.wanted()) {
        if (this.drain() > 0) continue;
        if (!this.wanted()) break;
        await pollIn(this.fd, this.pollSliceMs);
      }
    } catch (e) {
      this.fail(e instanceof Error ? e : new Error(String(e)));
    }
  }

  /** Read every datagram queued now. Returns how many were read. */
  private drain(): number {
    let count = 0;
    const from = new Uint8Array(SOCKADDR_NL_LEN);
    const fromLen = new Uint32Array(1);
    while (!this.closed) {
      fromLen[0] = SOCKADDR_NL_LEN;
      const n = Number(c.recvfrom(this.fd, this.rbuf, this.rbuf.byteLength, MSG_DONTWAIT | MSG_TRUNC, from, fromLen));
      if (n < 0) {
        const err = koffi.errno();
        if (err === osConstants.errno.EAGAIN || err === osConstants.errno.EINTR) return count;
        if (err === osConstants.errno.ENOBUFS) {
          count++;
          this.report((l) => l.onOverrun?.());
          continue;
        }
        this.fail(new NetlinkSysError('recvfrom', err));
        return count;
      }
      count++;
      if (n > this.rbuf.byteLength) {
        this.reportError(new NetlinkSysError(`recvfrom: ${n}-byte datagram truncated`, osConstants.errno.EMSGSIZE));
        continue;
      }
      const fromPid = new DataView(from.buffer).getUint32(4, true);
      if (fromPid !== 0) continue; // not from the kernel
      let msgs: NlMsg[];
      try {
        // Copy: the receive buffer is reused for the next datagram.
        msgs = decodeNlMsgs(this.rbuf.slice(0, n));
      } catch (e) {
        this.reportError(e as Error);
        continue;
      }
      for (const m of msgs) this.dispatch(m);
    }
    return count;
  }

  private dispatch(m: NlMsg): void {
    const p = m.header.seq !== 0 ? this.pending.get(m.header.seq) : undefined;
    if (!p) {
      if (m.header.type === NlMsgType.NOOP) return;
      if (this.listener) {
        try {
          this.listener.onMessage(m);
        } catch (e) {
          this.reportError(e as Error);
        }
      }
      return;
    }
    if (m.header.type === NlMsgType.ERROR) {
      this.pending.delete(m.header.seq);
      clearTimeout(p.timer);
      try {
        const e = decodeNlError(m);
        if (e.error === 0) p.resolve(p.replies);
        else p.reject(new NetlinkError(p.what, e.error, e.extMsg));
      } catch (err) {
        p.reject(err as Error);
      }
      return;
    }
    if (m.header.type === NlMsgType.DONE) {
      this.pending.delete(m.header.seq);
      clearTimeout(p.timer);
      p.resolve(p.replies);
      return;
    }
    p.replies.push(m);
  }

  /** A fatal error: fail every request, tell the listener, stop pumping. */
  private fail(e: Error): void {
    this.broken = e;
    for (const [seq, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(seq);
    }
    this.reportError(e);
  }

  private report(fn: (l: GenlListener) => void): void {
    if (!this.listener) return;
    try {
      fn(this.listener);
    } catch {
      // a listener's own error handler threw: nothing sensible left to do
    }
  }

  private reportError(e: Error): void {
    this.report((l) => l.onError?.(e));
  }
}

function setIntOpt(fd: number, level: number, name: number, value: number): boolean {
  const v = new Uint8Array(4);
  new DataView(v.buffer).setInt32(0, value, true);
  return Number(c.setsockopt(fd, level, name, v, 4)) === 0;
}

// ---------------------------------------------------------------- TCM-USER

export interface TcmuNetlinkOptions extends GenlSocketOptions {
  /** Send SET_FEATURES SUPP_KERN_CMD_REPLY=1 (default true), promising a DONE for every event. */
  kernCmdReply?: boolean;
  /** Per-request timeout, default 5000 ms. */
  timeoutMs?: number;
}

export interface TcmuEventHandlers {
  /**
   * Called once per event, in arrival order. When the kernel waits for
   * replies (kernCmdReply) the handler must end with reply(ev, status).
   */
  onEvent(ev: TcmuEvent): void;
  /**
   * Undecodable events (a -EINVAL DONE has already been sent when the event
   * carried a device id), overruns and socket errors.
   */
  onError?(err: Error): void;
  /** The kernel dropped messages: rescan devices (uio.ts) to resync. */
  onOverrun?(): void;
}

/**
 * The daemon's TCM-USER channel: resolves the family, joins the "config"
 * multicast group, announces kernel-command-reply support, delivers
 * ADDED/REMOVED/RECONFIG_DEVICE events and sends the *_DONE answers.
 */
export class TcmuNetlink {
  /** True when the kernel accepted SET_FEATURES (it will wait for DONE replies). */
  kernCmdReply = false;

  private constructor(readonly sock: GenlTransport, readonly family: GenlFamily, readonly groupId: number, private readonly timeoutMs: number) {}

  /**
   * Open the channel. Throws TcmuNotLoadedError when the TCM-USER family is
   * not registered (module not loaded). Joins the group before announcing
   * SET_FEATURES so no event promised a reply can be missed.
   */
  static open(opts: TcmuNetlinkOptions = {}): Promise<TcmuNetlink> {
    return TcmuNetlink.attach(GenlSocket.open(opts), opts);
  }

  /** Like open(), over a given transport (which is closed if this fails). */
  static async attach(sock: GenlTransport, opts: Omit<TcmuNetlinkOptions, keyof GenlSocketOptions> = {}): Promise<TcmuNetlink> {
    const timeoutMs = opts.timeoutMs ?? 5000;
    try {
      let family: GenlFamily;
      try {
        family = await sock.resolveFamily(TCMU_GENL_FAMILY, timeoutMs);
      } catch (e) {
        if (e instanceof GenlFamilyNotFoundError) throw new TcmuNotLoadedError(`no generic netlink family "${TCMU_GENL_FAMILY}"`);
        throw e;
      }
      const groupId = family.groups[TCMU_MCGRP_CONFIG];
      if (groupId === undefined) throw new TcmuNotLoadedError(`family "${TCMU_GENL_FAMILY}" has no "${TCMU_MCGRP_CONFIG}" multicast group`);
      sock.addMembership(groupId);
      const nl = new TcmuNetlink(sock, family, groupId, timeoutMs);
      if (opts.kernCmdReply !== false) nl.kernCmdReply = await nl.setFeatures(true);
      return nl;
    } catch (e) {
      await sock.close();
      throw e;
    }
  }

  /**
   * SET_FEATURES with SUPP_KERN_CMD_REPLY. Returns false when the kernel does
   * not know the command (EOPNOTSUPP: pre-4.16 kernels; tcmu-runner then runs
   * without replies); other errors (EPERM without CAP_NET_ADMIN) throw.
   */
  async setFeatures(kernCmdReply: boolean): Promise<boolean> {
    try {
      await this.sock.request('TCMU_CMD_SET_FEATURES', (seq, pid) => encodeSetFeatures({ family: this.family.id, seq, pid, kernCmdReply }), this.timeoutMs);
      return kernCmdReply;
    } catch (e) {
      if (e instanceof NetlinkError && e.code === 'EOPNOTSUPP') return false;
      throw e;
    }
  }

  listen(h: TcmuEventHandlers): void {
    this.sock.listen({
      onMessage: (m) => {
        if (m.header.type !== this.family.id) return;
        let ev: TcmuEvent;
        try {
          ev = decodeTcmuEvent(m);
        } catch (e) {
          if (e instanceof TcmuEventError && e.deviceId !== null && e.version > 1 && e.cmd >= 1 && e.cmd <= 3) {
            this.reply({ cmd: e.cmd, version: e.version, deviceId: e.deviceId }, -osConstants.errno.EINVAL).catch((re) => h.onError?.(re as Error));
          }
          h.onError?.(e as Error);
          return;
        }
        h.onEvent(ev);
      },
      onOverrun: () => h.onOverrun?.(),
      onError: (e) => h.onError?.(e),
    });
  }

  /**
   * Answer an event with its *_DONE (status 0 or -errno) and wait for the
   * kernel's ack. Version 1 events and events without a device id get no
   * reply (as in tcmu-runner). The kernel answers ENODEV when it was not
   * waiting (reply support off for that device); that is not an error here.
   */
  async reply(ev: Pick<TcmuEvent, 'cmd' | 'version' | 'deviceId'>, status: number): Promise<void> {
    if (ev.version < 2 || ev.deviceId === null) return;
    const done = { cmd: tcmuDoneCmd(ev.cmd), deviceId: ev.deviceId, status };
    try {
      await this.sock.request(`TCMU DONE ${done.cmd} dev ${done.deviceId}`, (seq, pid) => encodeTcmuDone(done, { family: this.family.id, seq, pid }), this.timeoutMs);
    } catch (e) {
      if (e instanceof NetlinkError && e.code === 'ENODEV') return;
      throw e;
    }
  }

  close(): Promise<void> {
    return this.sock.close();
  }
}
