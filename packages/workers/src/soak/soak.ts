/**
 * The soak (issue 17, item 5): minutes of load on a `file` and a `qcow` LUN
 * while, at random times, a device worker or the whole daemon is killed, an
 * admin resets a ring, a LUN grows (dev_size) or gets a new dev_config; at
 * the end every sector is checked against the journal of acknowledged
 * writes (./journal.ts).
 *
 * This process plays the kernel: it owns the stand-in tree and one
 * KernelSimulator per LUN (../standin/kernel-standin.ts), and its initiator
 * drives them. The daemon is the real `Daemon` in a child process
 * (./daemon-child.ts) holding the rings as inherited fds, so its kill -9 is
 * a real one: rings, commands on them and the configfs state stay here, and
 * the next child adopts the devices (block, reset_ring, unblock).
 *
 * Events are one at a time: each waits until its LUN (every LUN, for a
 * daemon kill) completes a command submitted after it, which is the
 * recovery time reported; a dev_size change also waits until the initiator
 * has seen CAPACITY DATA HAS CHANGED and read the new capacity.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, type WriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { mulberry32 } from '@tcmu-ts/core';
import { Initiator, ScsiStatus, cdbSynchronizeCache10, type ScsiResponse } from '@tcmu-ts/ring';
import { KernelStandIn, type StandInDevice } from '../standin/kernel-standin.js';
import { LunJournal, SECTOR, addOutcome, emptyOutcome, fillSectors, type CheckOutcome } from './journal.js';
import type { FromDaemon, SoakChildConfig, ToDaemon } from './daemon-child.js';

export const SOAK_EVENTS = ['worker-kill', 'daemon-kill', 'ring-reset', 'dev-size', 'dev-config'] as const;
export type SoakEvent = (typeof SOAK_EVENTS)[number];

export interface SoakOptions {
  /** How long the load runs, events included (the final check comes after). */
  durationMs: number;
  seed: number;
  /** Where the images and the daemons' log go; a temp dir (removed if the soak passes) by default. */
  dir?: string;
  /** Commands in flight per LUN. Default 16. */
  queueDepth?: number;
  /** Pause between two events, drawn from [min, max] ms. Default [1500, 5000]. */
  eventGapMs?: [number, number];
  /** The kinds of event to draw from; all by default. */
  events?: readonly SoakEvent[];
  /** A progress line now and then. */
  progress?: (line: string) => void;
  progressEveryMs?: number;
}

export interface RecoveryFigures {
  count: number;
  minMs: number;
  medianMs: number;
  maxMs: number;
}

export interface SoakLunReport {
  name: string;
  subtype: string;
  blockSize: number;
  startBytes: number;
  endBytes: number;
  commands: number;
  writes: number;
  fuaWrites: number;
  ackedWrites: number;
  unackedWrites: number;
  reads: number;
  verifiedReads: number;
  syncs: number;
  capacityUnitAttentions: number;
  otherUnitAttentions: number;
  failures: Record<string, number>;
}

export interface SoakReport {
  seed: number;
  seconds: number;
  commands: number;
  iops: number;
  ackedWrites: number;
  events: Record<SoakEvent, number>;
  recovery: Record<SoakEvent, RecoveryFigures>;
  daemons: number;
  luns: SoakLunReport[];
  /** Reads during the run, checked against the journal as they came back. */
  duringRun: CheckOutcome;
  /** Every sector of every LUN after a clean restart at the end. */
  final: CheckOutcome;
  /** qemu-img check of the qcow image at the end (corruptions must be 0; leaks are allowed after a kill -9). */
  qcowCheck?: { corruptions: number; leaks: number; checkErrors: number } | { error: string };
  /** Open fds of each daemon: right after start and when it was killed or stopped, with its worker restarts in between. */
  daemonFds: { atStart: number; atEnd: number; workerRestarts: number }[];
  /** Every event: seconds from the start, kind, LUN; and when a read during the run first came back wrong. */
  timeline: { at: number; event: SoakEvent; lun: string }[];
  firstBadReadAt?: number;
  /** What went wrong besides the data (a refused reconfiguration, a LUN that did not recover). */
  anomalies: string[];
  /** lost, torn, mismatches and anomalies all 0, every kind of event at least once. */
  passed: boolean;
  dir: string;
}

const CHILD = fileURLToPath(new URL('./daemon-child.js', import.meta.url));
const MIB = 1 << 20;
const RECOVERY_LIMIT_MS = 60_000;
/** The supervisor gives up on a device after 5 restarts in 60 s; worker kills and ring resets (one restart each) stay under that. */
const RESTARTS_PER_MINUTE = 4;

interface LunSpec {
  name: string;
  subtype: 'file' | 'qcow';
  blockSize: number;
  startBytes: number;
  maxBytes: number;
  growBytes: number;
  path: string;
  /** The two dev_configs a dev_config event toggles between. */
  configs: [string, string];
}

class SoakLun {
  readonly ini: Initiator;
  readonly journal: LunJournal;
  /** Blocks with a command in flight: no two overlapping commands at once. */
  readonly busy: Uint8Array;
  usableBlocks: number;
  configIndex = 0;
  /** Commands submitted up to this tag do not end a wait for recovery. */
  private recoveryAfterTag = Infinity;
  /** The wait starts at the daemon's next ring reset of this LUN (its restart path, or adoption by a new daemon). */
  private recoveryArmsOnReset = false;
  private recovered: (() => void) | undefined;
  capacityWanted = 0;
  private capacityReached: (() => void) | undefined;
  readingCapacity = false;
  restartTimes: number[] = [];
  /** From an admin's ring reset until the LUN serves again: writes failed by a reset now leave their range indeterminate. */
  adminResetWindow = false;
  readonly stats = {
    commands: 0, writes: 0, fuaWrites: 0, reads: 0, verifiedReads: 0, syncs: 0, capacityUnitAttentions: 0, otherUnitAttentions: 0,
    failures: {} as Record<string, number>,
  };

  constructor(readonly index: number, readonly spec: LunSpec, readonly dev: StandInDevice) {
    this.ini = new Initiator(dev.sim, { blockSize: spec.blockSize });
    this.journal = new LunJournal(index, spec.maxBytes / SECTOR);
    this.busy = new Uint8Array(spec.maxBytes / spec.blockSize);
    this.usableBlocks = spec.startBytes / spec.blockSize;
  }

  get sim() {
    return this.dev.sim;
  }

  /**
   * Resolves at the first GOOD completion of a command submitted after now,
   * or, with `afterDaemonReset`, after the daemon's next reset of this ring:
   * until then the old worker may still complete commands.
   */
  recovery(afterDaemonReset: boolean): Promise<void> {
    this.recoveryArmsOnReset = afterDaemonReset;
    this.recoveryAfterTag = afterDaemonReset ? Infinity : this.sim.counters().submitted;
    return new Promise((resolve) => {
      this.recovered = resolve;
    });
  }

  /** The daemon wrote action/reset_ring for this LUN. */
  daemonReset(): void {
    if (!this.recoveryArmsOnReset) return;
    this.recoveryArmsOnReset = false;
    this.recoveryAfterTag = this.sim.counters().submitted;
  }


  /** Count the command, end a wait for recovery, follow a capacity change; returns whether it succeeded. */
  completed(tag: number, r: ScsiResponse): boolean {
    this.stats.commands++;
    if (r.ok) {
      if (tag > this.recoveryAfterTag) {
        this.recoveryAfterTag = Infinity;
        const done = this.recovered;
        this.recovered = undefined;
        done?.();
      }
      return true;
    }
    const why = r.failure ?? (r.senseInfo ? `sense ${r.senseInfo.key}/${r.senseInfo.asc.toString(16)}/${r.senseInfo.ascq.toString(16)}` : `status ${r.status}`);
    this.stats.failures[why] = (this.stats.failures[why] ?? 0) + 1;
    if (r.status === ScsiStatus.CHECK_CONDITION && r.senseInfo?.key === 6) {
      if (r.senseInfo.asc === 0x2a && r.senseInfo.ascq === 0x09) {
        this.stats.capacityUnitAttentions++;
        void this.readCapacity();
      } else {
        this.stats.otherUnitAttentions++;
      }
    }
    return false;
  }

  /** After CAPACITY DATA HAS CHANGED the initiator reads the capacity and may use the new LBAs. */
  private async readCapacity(): Promise<void> {
    if (this.readingCapacity) return;
    this.readingCapacity = true;
    try {
      while (!this.sim.isClosed) {
        const r = await this.ini.readCapacity();
        if (!r.capacity) continue;
        this.usableBlocks = Math.min(Number(r.capacity.lastLba) + 1, this.busy.length);
        if (this.capacityWanted && this.usableBlocks >= this.capacityWanted) {
          const done = this.capacityReached;
          this.capacityReached = undefined;
          this.capacityWanted = 0;
          done?.();
        }
        return;
      }
    } finally {
      this.readingCapacity = false;
    }
  }

  /** Resolves once the initiator uses `blocks` blocks (it saw the unit attention and READ CAPACITY said so). */
  capacityAtLeast(blocks: number): Promise<void> {
    this.capacityWanted = blocks;
    return new Promise((resolve) => {
      this.capacityReached = resolve;
    });
  }

  /** A random free range of 1..maxBlocks blocks, marked busy; undefined if a few tries found none. */
  take(rand: () => number, maxBlocks: number): { lba: number; blocks: number } | undefined {
    for (let tries = 0; tries < 8; tries++) {
      const blocks = 1 + Math.floor(rand() * maxBlocks);
      if (blocks > this.usableBlocks) continue;
      const lba = Math.floor(rand() * (this.usableBlocks - blocks + 1));
      let free = true;
      for (let b = lba; b < lba + blocks && free; b++) free = this.busy[b] === 0;
      if (!free) continue;
      this.busy.fill(1, lba, lba + blocks);
      return { lba, blocks };
    }
    return undefined;
  }

  release(lba: number, blocks: number): void {
    this.busy.fill(0, lba, lba + blocks);
  }
}

const RESET_RING_PATH = /user_\d+\/([^/]+)\/action\/reset_ring$/;

/** The daemon in its child process, and the kernel's side of its IPC. */
class DaemonProcess {
  readonly proc: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly ready: Promise<void>;
  workerKills = 0;
  private fdWaiters = new Map<number, (n: number) => void>();
  private nextFdAsk = 1;

  constructor(k: KernelStandIn, log: WriteStream, readonly serial: number, onDaemonReset: (device: string) => void) {
    const devs = [...k.devices.values()];
    const uio = devs.map((d, i) => ({ minor: d.minor, mapFd: 4 + 2 * i, eventFd: 5 + 2 * i, mapSize: d.sim.endpoint.mapSize }));
    const cfg: SoakChildConfig = { root: k.root, lockFile: join(k.root, 'run', 'tcmu.lock'), logLevel: Number(process.env.TCMU_SOAK_LOG_LEVEL ?? 3), uio };
    this.proc = spawn(process.execPath, [CHILD, JSON.stringify(cfg)], {
      stdio: ['ignore', 'pipe', 'pipe', 'ipc', ...devs.flatMap((d) => [d.sim.endpoint.mapFd, d.sim.endpoint.eventFd])],
      serialization: 'advanced',
      env: { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
    });
    const prefix = `[daemon ${serial}] `;
    for (const s of [this.proc.stdout!, this.proc.stderr!]) {
      s.setEncoding('utf8');
      s.on('data', (chunk: string) => log.write(chunk.split('\n').filter(Boolean).map((l) => `${prefix}${l}\n`).join('')));
    }
    this.exited = new Promise((resolve) => this.proc.once('exit', (code) => {
      // Its fds closed with it: the kernel's tcmu_release for every UIO device it had open.
      for (const d of devs) k.released(d.minor);
      k.genl.forward = undefined;
      for (const w of this.fdWaiters.values()) w(-1);
      this.fdWaiters.clear();
      log.write(`${prefix}exited (${code ?? 'killed'})\n`);
      resolve(code);
    }));
    k.genl.forward = (bytes) => this.send({ t: 'nl', bytes });
    this.ready = new Promise((resolve, reject) => {
      this.proc.on('message', (m: FromDaemon) => {
        switch (m.t) {
          case 'ready':
            resolve();
            break;
          case 'start-failed':
            reject(new Error(`daemon ${serial} did not start: ${m.error}`));
            break;
          case 'nl':
            k.genl.receive(m.bytes);
            break;
          case 'action': {
            let error: string | undefined;
            try {
              if (!k.applyAction(m.path, m.data)) error = `no device for ${m.path}`;
              const reset = RESET_RING_PATH.exec(m.path);
              if (reset) onDaemonReset(reset[1]);
            } catch (e) {
              error = e instanceof Error ? e.message : String(e);
            }
            this.send({ t: 'ack', id: m.id, ...(error ? { error } : {}) });
            break;
          }
          case 'uio-closed':
            k.released(m.minor);
            break;
          case 'worker-killed':
            break;
          case 'fds':
            this.fdWaiters.get(m.id)?.(m.count);
            this.fdWaiters.delete(m.id);
            break;
        }
      });
      void this.exited.then((code) => reject(new Error(`daemon ${serial} exited (${code ?? 'killed'}) before it was ready`)));
    });
  }

  send(m: ToDaemon): void {
    if (this.proc.connected) this.proc.send(m);
  }

  /** Open fds of the daemon process; -1 if it is gone. */
  fds(): Promise<number> {
    if (!this.proc.connected) return Promise.resolve(-1);
    const id = this.nextFdAsk++;
    return new Promise((resolve) => {
      this.fdWaiters.set(id, resolve);
      this.send({ t: 'fds', id });
    });
  }

  async kill9(): Promise<void> {
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  async stop(): Promise<number | null> {
    this.proc.kill('SIGTERM');
    return this.exited;
  }
}

function figures(ms: number[]): RecoveryFigures {
  const s = [...ms].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 10) / 10;
  return { count: s.length, minMs: s.length ? r(s[0]) : 0, medianMs: s.length ? r(s[Math.floor(s.length / 2)]) : 0, maxMs: s.length ? r(s[s.length - 1]) : 0 };
}

/** A wait that must end: past the limit the soak stops and says what did not happen. */
function withLimit<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${RECOVERY_LIMIT_MS / 1000} s`)), RECOVERY_LIMIT_MS);
  });
  return Promise.race([p, limit]).finally(() => clearTimeout(timer));
}

function qemuImg(args: string[]): void {
  const r = spawnSync('qemu-img', args, { encoding: 'utf8' });
  if (r.error) throw new Error(`qemu-img is needed for the qcow LUN (apt-get install qemu-utils): ${r.error.message}`);
  if (r.status !== 0) throw new Error(`qemu-img ${args.join(' ')} failed: ${r.stderr.trim()}`);
}

function qcowCheck(path: string): NonNullable<SoakReport['qcowCheck']> {
  const r = spawnSync('qemu-img', ['check', '--output=json', path], { encoding: 'utf8' });
  try {
    const j = JSON.parse(r.stdout) as { corruptions?: number; leaks?: number; 'check-errors'?: number };
    return { corruptions: j.corruptions ?? 0, leaks: j.leaks ?? 0, checkErrors: j['check-errors'] ?? 0 };
  } catch {
    return { error: `qemu-img check exited ${r.status}: ${r.stderr.trim()}` };
  }
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const rand = mulberry32(o.seed);
  const qd = o.queueDepth ?? 16;
  const [gapMin, gapMax] = o.eventGapMs ?? [1500, 5000];
  const progress = o.progress ?? (() => {});
  const dir = o.dir ?? mkdtempSync(join(tmpdir(), 'tcmu-soak-'));
  const log = createWriteStream(join(dir, 'daemon.log'));
  const anomalies: string[] = [];

  const specs: LunSpec[] = [
    {
      name: 'soakfile', subtype: 'file', blockSize: 4096, startBytes: 16 * MIB, maxBytes: 64 * MIB, growBytes: 2 * MIB,
      configs: [`file/${join(dir, 'file.img')}`, `file/${join(dir, 'file.img')};async`], path: join(dir, 'file.img'),
    },
    {
      name: 'soakqcow', subtype: 'qcow', blockSize: 512, startBytes: 16 * MIB, maxBytes: 64 * MIB, growBytes: 2 * MIB,
      configs: [`qcow/${join(dir, 'disk.qcow2')}`, `qcow/${join(dir, 'disk.qcow2')};l2cache=64k`], path: join(dir, 'disk.qcow2'),
    },
  ];
  // Fresh images: the journal starts from zeros.
  rmSync(specs[0].path, { force: true });
  qemuImg(['create', '-q', '-f', 'qcow2', specs[1].path, String(specs[1].maxBytes)]);

  const k = new KernelStandIn();
  const luns = specs.map((s, i) => {
    const dev = k.addDevice({
      name: s.name, subtype: s.subtype, cfgstring: s.configs[0].slice(s.subtype.length + 1), sizeBytes: s.startBytes, blockSize: s.blockSize,
      sim: { cmdRingSizeMb: 1, maxDataAreaMb: 16, cmdTimeOutSec: 30 },
    });
    return new SoakLun(i, s, dev);
  });
  const lunByName = new Map(luns.map((l) => [l.spec.name, l]));

  const events = Object.fromEntries(SOAK_EVENTS.map((e) => [e, 0])) as Record<SoakEvent, number>;
  const recoveryMs = Object.fromEntries(SOAK_EVENTS.map((e) => [e, [] as number[]])) as Record<SoakEvent, number[]>;
  const duringRun = emptyOutcome();
  const timeline: SoakReport['timeline'] = [];
  let firstBadReadAt: number | undefined;
  const daemonFds: SoakReport['daemonFds'] = [];
  let daemons = 0;
  let daemon: DaemonProcess | undefined;

  const startDaemon = async (): Promise<DaemonProcess> => {
    const d = new DaemonProcess(k, log, ++daemons, (name) => lunByName.get(name)?.daemonReset());
    await d.ready;
    daemonFds.push({ atStart: await d.fds(), atEnd: 0, workerRestarts: 0 });
    for (const l of luns) l.restartTimes = [];
    return d;
  };
  const endDaemon = async (how: 'kill9' | 'stop'): Promise<void> => {
    const d = daemon!;
    daemon = undefined;
    const f = daemonFds[daemonFds.length - 1];
    f.atEnd = await d.fds();
    f.workerRestarts = d.workerKills;
    if (how === 'kill9') {
      await d.kill9();
      return;
    }
    const code = await d.stop();
    if (code !== 0) anomalies.push(`daemon ${d.serial} exited ${code} on SIGTERM`);
  };

  // ---------------------------------------------------------------- the load
  let loadStopping = false;
  const t0 = performance.now();
  const maxXfer = (l: SoakLun) => Math.max(1, (64 * 1024) / l.spec.blockSize);

  async function slot(l: SoakLun, r: () => number): Promise<void> {
    const bs = l.spec.blockSize;
    const buf = new Uint8Array(maxXfer(l) * bs);
    let backOff = false;
    while (!loadStopping) {
      // A blocked device fails commands at once, in a microtask: back off as an initiator does after BUSY,
      // or this loop would never let the event loop (the daemon's configfs writes among it) run.
      if (backOff) await new Promise((res) => setTimeout(res, 1));
      const op = r();
      // Submission is synchronous: the command submitted next gets the simulator's next tag.
      const tag = l.sim.counters().submitted + 1;
      if (op < 0.04) {
        l.stats.syncs++;
        backOff = !l.completed(tag, await l.ini.send(cdbSynchronizeCache10()));
        continue;
      }
      const range = l.take(r, maxXfer(l));
      if (!range) {
        await new Promise((res) => setImmediate(res));
        continue;
      }
      const { lba, blocks } = range;
      const first = (lba * bs) / SECTOR;
      try {
        if (op < 0.62) {
          const fua = r() < 0.1;
          const seq = l.journal.issue(first, (blocks * bs) / SECTOR);
          const data = buf.subarray(0, blocks * bs);
          fillSectors(data, l.index, first, seq);
          l.stats.writes++;
          if (fua) l.stats.fuaWrites++;
          const res = await l.ini.write(lba, data, bs, { fua });
          if (res.ok) l.journal.acknowledged(seq);
          else l.journal.notAcknowledged(seq, res.cmdId !== 0, l.adminResetWindow && res.failure === 'reset');
          backOff = !l.completed(tag, res);
        } else {
          l.stats.reads++;
          const res = await l.ini.read(lba, blocks, bs);
          if (res.ok) {
            l.stats.verifiedReads++;
            const c = l.journal.check(first, res.data);
            if (c.lostWrites + c.tornWrites + c.staleSectors + c.mismatches > 0) firstBadReadAt ??= Math.round((performance.now() - t0) / 100) / 10;
            addOutcome(duringRun, c);
          }
          backOff = !l.completed(tag, res);
        }
      } finally {
        l.release(lba, blocks);
      }
    }
  }

  // ---------------------------------------------------------------- events
  const lunsFor = (e: SoakEvent): SoakLun[] => {
    const now = performance.now();
    return luns.filter((l) => {
      if (e === 'dev-size') return l.usableBlocks * l.spec.blockSize + l.spec.growBytes <= l.spec.maxBytes;
      if (e === 'worker-kill' || e === 'ring-reset') {
        l.restartTimes = l.restartTimes.filter((t) => now - t < 65_000);
        return l.restartTimes.length < RESTARTS_PER_MINUTE;
      }
      return true;
    });
  };

  async function runEvent(e: SoakEvent): Promise<void> {
    const candidates = lunsFor(e);
    if (candidates.length === 0) return;
    const l = candidates[Math.floor(rand() * candidates.length)];
    const t = performance.now();
    timeline.push({ at: Math.round((t - t0) / 100) / 10, event: e, lun: e === 'daemon-kill' ? 'all' : l.spec.name });
    switch (e) {
      case 'worker-kill': {
        l.restartTimes.push(t);
        const back = l.recovery(true);
        daemon!.workerKills++;
        daemon!.send({ t: 'kill-worker', name: l.spec.name });
        await withLimit(back, `${l.spec.name} serving again after its worker was killed`);
        break;
      }
      case 'ring-reset': {
        l.restartTimes.push(t);
        // The worker finds its ring reset under it (ring broken) and the supervisor restarts it on a ring it resets again.
        const back = l.recovery(true);
        l.adminResetWindow = true;
        const action = join(k.root, `sys/kernel/config/target/core/user_${l.dev.hba}/${l.dev.name}/action`);
        // What an admin does: echo 1 > block_dev; echo 1 > reset_ring; echo 0 > block_dev.
        k.applyAction(join(action, 'block_dev'), '1');
        k.applyAction(join(action, 'reset_ring'), '1');
        k.applyAction(join(action, 'block_dev'), '0');
        await withLimit(back, `${l.spec.name} serving again after a ring reset`);
        l.adminResetWindow = false;
        break;
      }
      case 'daemon-kill': {
        const back = Promise.all(luns.map((x) => x.recovery(true)));
        await endDaemon('kill9');
        // Down for a moment under load: commands pile up on the rings for the next daemon to fail.
        await new Promise((res) => setTimeout(res, Math.floor(rand() * 300)));
        daemon = await startDaemon();
        await withLimit(back, 'every LUN serving again after the daemon was killed');
        break;
      }
      case 'dev-size': {
        const bytes = l.usableBlocks * l.spec.blockSize + l.spec.growBytes;
        const grown = l.capacityAtLeast(bytes / l.spec.blockSize);
        const done = await withLimit(k.reconfig(l.dev, { what: 'dev_size', devSize: BigInt(bytes) }), `${l.spec.name}: RECONFIG dev_size answered`);
        if (done.status !== 0) {
          anomalies.push(`${l.spec.name}: dev_size ${bytes} refused (${done.status})`);
          break;
        }
        await withLimit(grown, `${l.spec.name}: the initiator using ${bytes} bytes after CAPACITY DATA HAS CHANGED`);
        break;
      }
      case 'dev-config': {
        const next = 1 - l.configIndex;
        const done = await withLimit(k.reconfig(l.dev, { what: 'dev_config', devConfig: l.spec.configs[next] }), `${l.spec.name}: RECONFIG dev_config answered`);
        if (done.status !== 0) {
          anomalies.push(`${l.spec.name}: dev_config ${l.spec.configs[next]} refused (${done.status})`);
          break;
        }
        l.configIndex = next;
        await withLimit(l.recovery(false), `${l.spec.name} serving again after a dev_config change`);
        break;
      }
    }
    events[e]++;
    recoveryMs[e].push(performance.now() - t);
  }

  const eventCount = () => Object.values(events).reduce((a, b) => a + b, 0);
  const totalCommands = () => luns.reduce((n, l) => n + l.stats.commands, 0);
  const line = () => {
    const s = (performance.now() - t0) / 1000;
    const bad = duringRun.lostWrites + duringRun.tornWrites + duringRun.mismatches + duringRun.staleSectors;
    return `[soak] ${s.toFixed(0)} s: ${eventCount()} events (${SOAK_EVENTS.map((e) => `${e} ${events[e]}`).join(', ')}), ` +
      `${totalCommands()} commands, ${Math.round(totalCommands() / s)} IOPS, ${luns.reduce((n, l) => n + l.journal.ackedWrites, 0)} writes acknowledged, ${bad} bad reads`;
  };

  let slots: Promise<void>[] = [];
  let ticker: NodeJS.Timeout | undefined;
  try {
    daemon = await startDaemon();
    slots = luns.flatMap((l) => Array.from({ length: qd }, (_, i) => slot(l, mulberry32((o.seed ^ (l.index * 7919 + i * 104729)) >>> 0))));
    ticker = setInterval(() => progress(line()), o.progressEveryMs ?? 5000);
    // Every kind once, in a seeded order, then kinds drawn at random.
    const kinds = o.events ?? SOAK_EVENTS;
    const firstRound = [...kinds].sort(() => rand() - 0.5);
    while (firstRound.length > 0 || performance.now() - t0 < o.durationMs) {
      await new Promise((res) => setTimeout(res, gapMin + rand() * (gapMax - gapMin)));
      if (firstRound.length === 0 && performance.now() - t0 >= o.durationMs) break;
      await runEvent(firstRound.shift() ?? kinds[Math.floor(rand() * kinds.length)]);
    }
  } catch (e) {
    anomalies.push(e instanceof Error ? e.message : String(e));
  } finally {
    loadStopping = true;
    clearInterval(ticker);
  }
  // Commands on the ring of a daemon that is gone come back only once a new one resets it.
  if (!daemon) daemon = await startDaemon().catch((e) => (anomalies.push(String(e)), undefined));
  await withLimit(Promise.all(slots), 'the load stopping').catch((e) => anomalies.push(String(e)));
  const seconds = (performance.now() - t0) / 1000;
  const commands = totalCommands();
  progress(line());

  // ---------------------------------------------------------------- the check
  const final = emptyOutcome();
  try {
    // A clean restart first: what the last daemon acknowledged must be there for the next one.
    if (daemon) await endDaemon('stop');
    daemon = await startDaemon();
    for (const l of luns) {
      const bs = l.spec.blockSize;
      const chunk = (256 * 1024) / bs;
      let cap = (await l.ini.readCapacity()).capacity;
      cap ??= (await l.ini.readCapacity()).capacity; // the first may meet a unit attention
      if (!cap || Number(cap.lastLba) + 1 !== l.usableBlocks) anomalies.push(`${l.spec.name}: ${cap ? Number(cap.lastLba) + 1 : 'no'} blocks at the end, the initiator used ${l.usableBlocks}`);
      for (let lba = 0; lba < l.usableBlocks; lba += chunk) {
        const n = Math.min(chunk, l.usableBlocks - lba);
        let r = await l.ini.read(lba, n, bs);
        for (let retry = 0; !r.ok && retry < 3; retry++) r = await l.ini.read(lba, n, bs);
        if (!r.ok) {
          anomalies.push(`${l.spec.name}: final read of ${n} blocks at ${lba} failed (${r.failure ?? `status ${r.status}`})`);
          continue;
        }
        addOutcome(final, l.journal.check((lba * bs) / SECTOR, r.data));
      }
    }
    await endDaemon('stop');
  } catch (e) {
    anomalies.push(`final check: ${e instanceof Error ? e.message : String(e)}`);
    if (daemon) await daemon.kill9();
  }
  const qcow = qcowCheck(specs[1].path);
  if ('corruptions' in qcow && qcow.corruptions > 0) anomalies.push(`qemu-img check: ${qcow.corruptions} corruptions in ${specs[1].path}`);
  if ('error' in qcow) anomalies.push(qcow.error);
  for (const e of o.events ?? SOAK_EVENTS) if (events[e] === 0) anomalies.push(`no ${e} event happened`);

  await k.close();
  await new Promise<void>((res) => log.end(() => res()));
  const bad = (c: CheckOutcome) => c.lostWrites + c.tornWrites + c.mismatches + c.staleSectors;
  const passed = bad(final) === 0 && bad(duringRun) === 0 && anomalies.length === 0;
  if (passed && !o.dir) rmSync(dir, { recursive: true, force: true });
  return {
    seed: o.seed,
    seconds: Math.round(seconds * 10) / 10,
    commands,
    iops: Math.round(commands / seconds),
    ackedWrites: luns.reduce((n, l) => n + l.journal.ackedWrites, 0),
    events,
    recovery: Object.fromEntries(SOAK_EVENTS.map((e) => [e, figures(recoveryMs[e])])) as Record<SoakEvent, RecoveryFigures>,
    daemons,
    luns: luns.map((l) => ({
      name: l.spec.name, subtype: l.spec.subtype, blockSize: l.spec.blockSize, startBytes: l.spec.startBytes, endBytes: l.usableBlocks * l.spec.blockSize,
      ...l.stats, ackedWrites: l.journal.ackedWrites, unackedWrites: l.journal.unackedWrites,
    })),
    duringRun,
    final,
    qcowCheck: qcow,
    daemonFds,
    timeline,
    ...(firstBadReadAt !== undefined ? { firstBadReadAt } : {}),
    anomalies,
    passed,
    dir,
  };
}
