/**
 * One TCMU daemon per kernel. Two userspace daemons on one target_core_user
 * race for every netlink event and reply (tcmu-runner issue #678) and reset
 * each other's rings, so a second one must find out before it touches
 * anything: before netlink, before any UIO device, before configfs.
 *
 * 1. The lock file. We take tcmu-runner's own /run/tcmu.lock, so the
 *    exclusion holds against tcmu-runner both ways (it fcntl(F_SETLK)s the
 *    whole file; our OFD lock conflicts with that). The lock belongs to the
 *    open file, so it goes when the process goes, however it ends: no stale
 *    pid file to judge. Node has no flock()/fcntl(), so it is a koffi call
 *    (packages/ring/src/sys.ts). The holder: F_OFD_GETLK names the pid of a
 *    classic lock (tcmu-runner's); for ours we write our pid into the file.
 * 2. The UIO devices. target_core_user lets one process at a time open
 *    /dev/uioN (EBUSY otherwise), so a device we would serve that is open
 *    elsewhere means a daemon we cannot see through the lock (another mount
 *    namespace, a tcmu-runner without /run): refuse too, and leave it alone.
 */
import { mkdirSync, readFileSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { closeFd, lockFileExclusive } from '@tcmu-ts/ring';

/** The exit status of a daemon that found another TCMU daemon serving the kernel. */
export const EXIT_ANOTHER_DAEMON = 3;

export class AnotherDaemonError extends Error {
  readonly exitCode = EXIT_ANOTHER_DAEMON;
  constructor(message: string, readonly pid?: number) {
    super(message);
    this.name = 'AnotherDaemonError';
  }
}

/** "tcmu-runner", "tcmu-ts" (a node process) or the process's own name. */
export function describeProcess(pid: number): string {
  let comm: string;
  try {
    comm = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return 'another TCMU daemon';
  }
  if (comm === 'tcmu-runner') return 'tcmu-runner';
  if (comm === 'node' || comm.startsWith('tcmu-ts') || pid === process.pid) return 'another tcmu-ts';
  return `another TCMU daemon ("${comm}")`;
}

/** The pid holding an OFD lock on `path`, from /proc/locks (by inode), or undefined. */
function pidFromProcLocks(path: string): number | undefined {
  try {
    const ino = statSync(path).ino;
    for (const line of readFileSync('/proc/locks', 'utf8').split('\n')) {
      const f = line.trim().split(/\s+/);
      // 1: OFDLCK ADVISORY WRITE 1234 08:01:5678 0 EOF
      if (f.length >= 6 && f[5].endsWith(`:${ino}`) && Number(f[4]) > 0) return Number(f[4]);
    }
  } catch { /* no /proc/locks */ }
  return undefined;
}

export interface DaemonLock {
  readonly path: string;
  release(): void;
}

/** Take the daemon lock or throw AnotherDaemonError naming its holder. */
export function acquireDaemonLock(path: string): DaemonLock {
  mkdirSync(dirname(path), { recursive: true });
  const r = lockFileExclusive(path);
  if ('fd' in r) {
    let fd = r.fd;
    return {
      path,
      release: () => {
        if (fd >= 0) closeFd(fd);
        fd = -1;
      },
    };
  }
  let pid = r.held.pid > 0 ? r.held.pid : undefined;
  if (pid === undefined) {
    const text = (() => { try { return readFileSync(path, 'utf8').trim(); } catch { return ''; } })();
    pid = /^\d+$/.test(text) ? Number(text) : pidFromProcLocks(path);
  }
  const who = pid === undefined ? 'another TCMU daemon' : `${describeProcess(pid)} (pid ${pid})`;
  throw new AnotherDaemonError(`${who} is running: it holds ${path}, and only one TCMU daemon may serve the kernel`, pid);
}

/** The pid of a process that has `devPath` open, by /proc/<pid>/fd (best effort: root sees all). */
export function findOpener(devPath: string): number | undefined {
  const target = devPath;
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return undefined;
  }
  for (const p of pids) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (readlinkSync(`/proc/${p}/fd/${fd}`) === target) return Number(p);
      } catch { /* gone */ }
    }
  }
  return undefined;
}
