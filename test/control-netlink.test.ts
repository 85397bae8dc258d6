import { expect } from 'chai';
import {
  decodeNlMsgs, decodeGenlMsg, encodeNlMsg, encodeGenlMsg, nla, NlmFlag, NlMsgType, NetlinkDecodeError, type NlMsg,
} from '@tcmu-ts/core/control/nlattr';
import {
  TcmuNlCmd, TcmuNlAttr, decodeTcmuEvent, encodeTcmuEvent, encodeTcmuDone, decodeTcmuDone, encodeSetFeatures, tcmuDoneCmd,
  TcmuEventError, type TcmuEvent,
} from '@tcmu-ts/core/control/tcmu-nl';
import {
  GenlFamilyNotFoundError, TcmuNotLoadedError, NetlinkError, NetlinkTimeoutError, decodeGenlFamily, encodeGetFamily,
  GENL_ID_CTRL, type GenlTransport, type GenlListener, type GenlFamily,
} from '@tcmu-ts/core/control/netlink';
import { GenlSocket, TcmuNetlink } from '@tcmu-ts/core/host/netlink';

function hex(s: string): Uint8Array {
  const clean = s.replace(/#[^\n]*/g, '').replace(/\s+/g, '');
  return Uint8Array.from(clean.match(/../g) ?? [], (b) => parseInt(b, 16));
}
const toHex = (b: Uint8Array) => Buffer.from(b).toString('hex');
const one = (b: Uint8Array): NlMsg => decodeNlMsgs(b)[0];

// TCMU_CMD_RECONFIG_DEVICE with DEV_SIZE, as tcmu_send_dev_size_event builds it on x86_64 (no PAD needed).
const RECONFIG_SIZE = hex(`
  48000000 1b00 0000 00000000 00000000   # len 72
  03 02 0000
  1600 0100 74636d2d75736572 2f332f6d792f7261 6d 00 0000     # DEVICE "tcm-user/3/my/ram\\0"
  0800 0200 05000000                                         # MINOR 5
  0800 0800 2a000000                                         # DEVICE_ID 42
  0c00 0500 0000004000000000                                 # DEV_SIZE 0x4000_0000 (1 GiB)
`);

// REMOVED_DEVICE from a version 1 kernel (no DEVICE_ID).
const REMOVED_V1 = hex(`
  34000000 1b00 0000 00000000 00000000   # len 52
  02 01 0000
  1600 0100 74636d2d75736572 2f302f642f66696c 65 00 0000     # "tcm-user/0/d/file"
  0800 0200 07000000
`);

// SET_FEATURES, as libtcmu's set_genl_features sends it.
const SET_FEATURES = hex(`
  1c000000 1b00 0500 05000000 00000000   # len 28, REQUEST|ACK, seq 5
  07 02 0000
  0500 0900 01 000000                    # SUPP_KERN_CMD_REPLY 1
`);

describe('control/tcmu-nl: TCM-USER messages', () => {
  it('decodes an ADDED_DEVICE event', () => {
    const bytes = encodeTcmuEvent({ cmd: TcmuNlCmd.ADDED_DEVICE, device: 'tcm-user/0/dev0/file/foo', minor: 0, deviceId: 3 }, { family: 0x1b });
    const ev = decodeTcmuEvent(one(bytes));
    expect(ev).to.deep.equal({ kind: 'added', cmd: 1, version: 2, device: 'tcm-user/0/dev0/file/foo', minor: 0, deviceId: 3, seq: 0 });
  });

  it('decodes a RECONFIG_DEVICE carrying DEV_SIZE from a fixture, and encodes it identically', () => {
    const ev = decodeTcmuEvent(one(RECONFIG_SIZE));
    expect(ev).to.deep.include({ kind: 'reconfig', device: 'tcm-user/3/my/ram', minor: 5, deviceId: 42 });
    expect(ev.reconfig).to.deep.equal({ what: 'dev_size', devSize: 0x40000000n });
    const again = encodeTcmuEvent({ cmd: 3, device: ev.device, minor: 5, deviceId: 42, reconfig: ev.reconfig }, { family: 0x1b });
    expect(toHex(again)).to.equal(toHex(RECONFIG_SIZE));
  });

  it('decodes DEV_CFG and WRITECACHE reconfigs, and skips a PAD attribute', () => {
    const cfg = decodeTcmuEvent(one(encodeTcmuEvent({ cmd: 3, device: 'tcm-user/0/d/file/a', minor: 1, deviceId: 9, reconfig: { what: 'dev_config', devConfig: 'file/b' } }, { family: 0x1b })));
    expect(cfg.reconfig).to.deep.equal({ what: 'dev_config', devConfig: 'file/b' });
    const wc = decodeTcmuEvent(one(encodeTcmuEvent({ cmd: 3, device: 'tcm-user/0/d/file/a', minor: 1, deviceId: 9, reconfig: { what: 'write_cache', writeCache: true } }, { family: 0x1b })));
    expect(wc.reconfig).to.deep.equal({ what: 'write_cache', writeCache: true });
    const padded = encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 3, version: 2 }, [
      nla.string(1, 'tcm-user/0/d/file/a'), nla.u32(2, 1), nla.u32(8, 9), nla.raw(TcmuNlAttr.PAD, new Uint8Array(0)), nla.u64(5, 4096n),
    ]);
    expect(decodeTcmuEvent(one(padded)).reconfig).to.deep.equal({ what: 'dev_size', devSize: 4096n });
    const none = decodeTcmuEvent(one(encodeTcmuEvent({ cmd: 3, device: 'tcm-user/0/d/file/a', minor: 1, deviceId: 9 }, { family: 0x1b })));
    expect(none.reconfig).to.equal(undefined);
  });

  it('accepts a version 1 event without DEVICE_ID', () => {
    expect(decodeTcmuEvent(one(REMOVED_V1))).to.deep.include({ kind: 'removed', version: 1, device: 'tcm-user/0/d/file', minor: 7, deviceId: null });
  });

  it('refuses events it cannot act on, keeping the device id for the reply', () => {
    const noId = encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 1, version: 2 }, [nla.string(1, 'tcm-user/0/a/b'), nla.u32(2, 0)]);
    expect(() => decodeTcmuEvent(one(noId))).to.throw(TcmuEventError, /DEVICE_ID missing/);
    const noDev = encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 2, version: 2 }, [nla.u32(2, 0), nla.u32(8, 11)]);
    try {
      decodeTcmuEvent(one(noDev));
      expect.fail('decoded');
    } catch (e) {
      expect(e).to.be.instanceOf(TcmuEventError);
      expect(e).to.include({ cmd: 2, version: 2, deviceId: 11 });
    }
    const badMinor = encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 1, version: 2 }, [nla.string(1, 'x'), nla.u8(2, 0), nla.u32(8, 4)]);
    expect(() => decodeTcmuEvent(one(badMinor))).to.throw(TcmuEventError, /must be 4 bytes/);
    const unknown = encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 9, version: 2 }, [nla.u32(8, 4)]);
    expect(() => decodeTcmuEvent(one(unknown))).to.throw(TcmuEventError, /unknown command 9/);
    expect(() => decodeTcmuEvent(one(RECONFIG_SIZE.subarray(0, 40)))).to.throw(NetlinkDecodeError);
  });

  it('encodes the DONE replies and SET_FEATURES byte for byte', () => {
    expect(toHex(encodeTcmuDone({ cmd: TcmuNlCmd.ADDED_DEVICE_DONE, deviceId: 3, status: -19 }, { family: 0x1b, seq: 7 }))).to.equal(
      '240000001b00050007000000000000000402000008000700edffffff0800080003000000');
    expect(toHex(encodeTcmuDone({ cmd: TcmuNlCmd.REMOVED_DEVICE_DONE, deviceId: 0x01020304, status: 0 }, { family: 0x1c, seq: 1, pid: 0x99 }))).to.equal(
      '240000001c000500010000009900000005020000080007000000000008000800' + '04030201');
    expect(toHex(encodeSetFeatures({ family: 0x1b, seq: 5 }))).to.equal(toHex(SET_FEATURES));
    const done = decodeTcmuDone(one(encodeTcmuDone({ cmd: 6, deviceId: 8, status: -95 }, { family: 0x1b, seq: 2 })));
    expect(done).to.deep.equal({ cmd: 6, deviceId: 8, status: -95 });
    expect(() => encodeTcmuDone({ cmd: 4, deviceId: 1, status: 5 }, { family: 0x1b, seq: 1 })).to.throw(RangeError);
    expect(() => encodeTcmuDone({ cmd: 4, deviceId: 1, status: 0.5 }, { family: 0x1b, seq: 1 })).to.throw(RangeError);
  });

  it('maps each event to its DONE command', () => {
    expect([1, 2, 3].map(tcmuDoneCmd)).to.deep.equal([4, 5, 6]);
    expect(() => tcmuDoneCmd(7)).to.throw(RangeError);
  });
});

describe('control/netlink: nlctrl codec', () => {
  it('encodes GETFAMILY with the caller port and decodes a NEWFAMILY with groups', () => {
    expect(toHex(encodeGetFamily('TCM-USER', 1))).to.equal('24000000100005000100000000000000030100000d00020054434d2d5553455200000000');
    const reply = encodeGenlMsg({ family: GENL_ID_CTRL, flags: 0, seq: 1, cmd: 1, version: 2 }, [
      nla.string(2, 'TCM-USER'), nla.u16(1, 0x1b), nla.u32(3, 2), nla.u32(4, 0), nla.u32(5, 9),
      nla.nested(7, [nla.nested(1, [nla.u32(2, 12), nla.string(1, 'config')], false)], false),
    ]);
    expect(decodeGenlFamily(one(reply))).to.deep.equal({ id: 0x1b, name: 'TCM-USER', version: 2, hdrsize: 0, maxattr: 9, groups: { config: 12 } });
  });
});

describe('control/netlink: generic netlink over a real socket', function () {
  let sock: GenlSocket;
  beforeEach(() => {
    sock = GenlSocket.open({ pollSliceMs: 50 });
  });
  afterEach(async () => {
    await sock.close();
  });

  it('binds and learns its port id', () => {
    expect(sock.portId).to.be.greaterThan(0);
    expect(sock.fd).to.be.greaterThan(2);
  });

  it('resolves nlctrl itself: id 0x10 and its "notify" group, and joins that group', async () => {
    const f = await sock.resolveFamily('nlctrl');
    expect(f).to.include({ id: GENL_ID_CTRL, name: 'nlctrl' });
    expect(f.version).to.be.at.least(1);
    expect(f.groups).to.have.property('notify');
    sock.addMembership(f.groups.notify);
    sock.dropMembership(f.groups.notify);
  });

  it('lists the registered families and resolves each one that exists here the same way', async () => {
    const all = await sock.listFamilies();
    const names = all.map((f) => f.name);
    expect(names).to.include('nlctrl');
    for (const name of ['devlink', 'ethtool', 'nl80211', 'thermal'].filter((n) => names.includes(n))) {
      const f = await sock.resolveFamily(name);
      expect(f).to.deep.equal(all.find((x) => x.name === name));
    }
  });

  it('reports an unknown family as GenlFamilyNotFoundError (ENOENT), and a name too long to exist too', async () => {
    for (const name of ['nosuchfamily', 'no-such-family-xyz']) {
      await sock.resolveFamily(name).then(() => expect.fail('resolved'), (e) => {
        expect(e).to.be.instanceOf(GenlFamilyNotFoundError);
        expect(e.family).to.equal(name);
      });
    }
  });

  it('surfaces other kernel errors as NetlinkError with the errno', async () => {
    // GETFAMILY by id 0 is invalid: nlctrl answers with an error, not a family.
    await sock.request('bad GETFAMILY', (seq, pid) => encodeGenlMsg(
      { family: GENL_ID_CTRL, flags: NlmFlag.REQUEST | NlmFlag.ACK, seq, pid, cmd: 3, version: 1 }, [nla.u16(1, 0)],
    )).then(() => expect.fail('acked'), (e) => {
      expect(e).to.be.instanceOf(NetlinkError);
      expect(e.errno).to.be.greaterThan(0);
    });
  });

  it('times out a request the kernel never answers', async () => {
    // A NOOP without NLM_F_ACK: the kernel drops it silently.
    await sock.request('noop', (seq) => encodeNlMsg({ type: NlMsgType.NOOP, flags: NlmFlag.REQUEST, seq, pid: 0 }), 150)
      .then(() => expect.fail('answered'), (e) => expect(e).to.be.instanceOf(NetlinkTimeoutError));
  });

  it('ignores datagrams that do not come from the kernel', async () => {
    const seen: NlMsg[] = [];
    const errors: Error[] = [];
    sock.listen({ onMessage: (m) => seen.push(m), onError: (e) => errors.push(e) });
    const forger = GenlSocket.open();
    try {
      // A forged TCMU event sent straight to our port by another process.
      const forged = encodeTcmuEvent({ cmd: 1, device: 'tcm-user/0/evil/file//etc/shadow', minor: 0, deviceId: 1 }, { family: 0x1b });
      const { default: koffi } = await import('koffi');
      const libc = koffi.load('libc.so.6');
      const sendto = libc.func('long sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t alen)');
      const to = new Uint8Array(12);
      new DataView(to.buffer).setUint16(0, 16, true);
      new DataView(to.buffer).setUint32(4, sock.portId, true);
      expect(Number(sendto(forger.fd, forged, forged.length, 0, to, 12))).to.equal(forged.length);
      // A request sent afterwards is answered after the forged datagram was read.
      await sock.resolveFamily('nlctrl');
      expect(seen).to.deep.equal([]);
      expect(errors).to.deep.equal([]);
    } finally {
      await forger.close();
    }
  });

  it('fails requests after close and closes twice quietly', async () => {
    const p = sock.request('noop', (seq) => encodeNlMsg({ type: NlMsgType.NOOP, flags: NlmFlag.REQUEST, seq, pid: 0 }), 10_000)
      .then(() => new Error('answered'), (e: Error) => e);
    await sock.close();
    expect((await p).message).to.match(/closed/);
    await sock.close();
    await sock.resolveFamily('nlctrl').then(() => expect.fail('resolved'), (e) => expect(e.message).to.match(/closed/));
  });

  it('TcmuNetlink.open says target_core_user is not loaded when TCM-USER is missing', async function () {
    const families = (await sock.listFamilies()).map((f) => f.name);
    if (families.includes('TCM-USER')) this.skip();
    await TcmuNetlink.open().then(() => expect.fail('opened'), (e) => {
      expect(e).to.be.instanceOf(TcmuNotLoadedError);
      expect(e.message).to.match(/target_core_user not loaded/);
      expect(e.message).to.match(/TCM-USER/);
    });
  });
});

/** A kernel stand-in: answers nlctrl and TCM-USER requests and can multicast events. */
class FakeKernel implements GenlTransport {
  readonly portId = 4242;
  listener: GenlListener | null = null;
  readonly sent: NlMsg[] = [];
  readonly memberships: number[] = [];
  closed = false;
  /** errno (positive) to answer a command with, by genl cmd. */
  failCmd = new Map<number, number>();
  constructor(readonly family: GenlFamily | null) {}

  async request(what: string, build: (seq: number, portId: number) => Uint8Array): Promise<NlMsg[]> {
    const m = one(build(this.sent.length + 1, this.portId));
    this.sent.push(m);
    const g = decodeGenlMsg(m);
    const errno = this.failCmd.get(g.genl.cmd);
    if (errno) throw new NetlinkError(what, -errno);
    return [];
  }
  async resolveFamily(name: string): Promise<GenlFamily> {
    if (!this.family || this.family.name !== name) throw new GenlFamilyNotFoundError(name);
    return this.family;
  }
  addMembership(g: number): void {
    this.memberships.push(g);
  }
  listen(l: GenlListener): void {
    this.listener = l;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
  emit(bytes: Uint8Array): void {
    for (const m of decodeNlMsgs(bytes)) this.listener?.onMessage(m);
  }
}

describe('control/netlink: TcmuNetlink over a fake kernel', () => {
  const TCMU: GenlFamily = { id: 0x1b, name: 'TCM-USER', version: 2, hdrsize: 0, maxattr: 9, groups: { config: 12 } };

  it('joins "config", sends SET_FEATURES, delivers events and answers them with DONE', async () => {
    const k = new FakeKernel(TCMU);
    const nl = await TcmuNetlink.attach(k);
    expect(k.memberships).to.deep.equal([12]);
    expect(nl.kernCmdReply).to.equal(true);
    const sf = decodeGenlMsg(k.sent[0]);
    expect(sf.genl.cmd).to.equal(TcmuNlCmd.SET_FEATURES);
    expect(sf.header.flags & NlmFlag.ACK).to.equal(NlmFlag.ACK);

    const events: TcmuEvent[] = [];
    nl.listen({ onEvent: (ev) => events.push(ev) });
    k.emit(encodeTcmuEvent({ cmd: 1, device: 'tcm-user/0/dev0/file/foo', minor: 0, deviceId: 3 }, { family: 0x1b }));
    k.emit(encodeTcmuEvent({ cmd: 2, device: 'tcm-user/0/dev0/file/foo', minor: 0, deviceId: 3 }, { family: 0x1b }));
    k.emit(encodeGenlMsg({ family: 0x99, flags: 0, seq: 0, cmd: 1, version: 2 }, [])); // another family: ignored
    expect(events.map((e) => e.kind)).to.deep.equal(['added', 'removed']);
    await nl.reply(events[0], 0);
    await nl.reply(events[1], -16);
    const dones = k.sent.slice(1).map((m) => decodeTcmuDone(m));
    expect(dones).to.deep.equal([{ cmd: 4, deviceId: 3, status: 0 }, { cmd: 5, deviceId: 3, status: -16 }]);
    await nl.close();
    expect(k.closed).to.equal(true);
  });

  it('does not reply to version 1 events', async () => {
    const k = new FakeKernel(TCMU);
    const nl = await TcmuNetlink.attach(k, { kernCmdReply: false });
    expect(k.sent).to.have.length(0);
    await nl.reply(decodeTcmuEvent(one(REMOVED_V1)), 0);
    expect(k.sent).to.have.length(0);
  });

  it('answers an undecodable event that names a device with -EINVAL and reports it', async () => {
    const k = new FakeKernel(TCMU);
    const nl = await TcmuNetlink.attach(k);
    const errors: Error[] = [];
    nl.listen({ onEvent: () => expect.fail('event'), onError: (e) => errors.push(e) });
    k.emit(encodeGenlMsg({ family: 0x1b, flags: 0, seq: 0, cmd: 1, version: 2 }, [nla.u32(2, 0), nla.u32(8, 5)]));
    await new Promise((r) => setImmediate(r));
    expect(errors).to.have.length(1);
    expect(errors[0]).to.be.instanceOf(TcmuEventError);
    expect(decodeTcmuDone(k.sent[1])).to.deep.equal({ cmd: 4, deviceId: 5, status: -22 });
  });

  it('runs without kernel replies when SET_FEATURES is not supported (EOPNOTSUPP)', async () => {
    const k = new FakeKernel(TCMU);
    k.failCmd.set(TcmuNlCmd.SET_FEATURES, 95);
    const nl = await TcmuNetlink.attach(k);
    expect(nl.kernCmdReply).to.equal(false);
  });

  it('fails to open on EPERM from SET_FEATURES and closes the transport', async () => {
    const k = new FakeKernel(TCMU);
    k.failCmd.set(TcmuNlCmd.SET_FEATURES, 1);
    await TcmuNetlink.attach(k).then(() => expect.fail('opened'), (e) => expect(e).to.be.instanceOf(NetlinkError).and.include({ code: 'EPERM' }));
    expect(k.closed).to.equal(true);
  });

  it('treats ENODEV to a DONE (kernel was not waiting) as success, other errors as failures', async () => {
    const k = new FakeKernel(TCMU);
    const nl = await TcmuNetlink.attach(k);
    const ev = { cmd: 1, version: 2, deviceId: 1 };
    k.failCmd.set(TcmuNlCmd.ADDED_DEVICE_DONE, 19);
    await nl.reply(ev, 0);
    k.failCmd.set(TcmuNlCmd.ADDED_DEVICE_DONE, 22);
    await nl.reply(ev, 0).then(() => expect.fail('ok'), (e) => expect(e).to.be.instanceOf(NetlinkError).and.include({ errno: 22 }));
  });

  it('reports a missing family or group as TcmuNotLoadedError', async () => {
    await TcmuNetlink.attach(new FakeKernel(null)).then(() => expect.fail('opened'), (e) => expect(e).to.be.instanceOf(TcmuNotLoadedError));
    const noGroup = new FakeKernel({ ...TCMU, groups: {} });
    await TcmuNetlink.attach(noGroup).then(() => expect.fail('opened'), (e) => expect(e.message).to.match(/no "config" multicast group/));
    expect(noGroup.closed).to.equal(true);
  });
});
