import type { AluaInfo } from '@tcmu-ts/core';

/**
 * What the supervisor tells a device worker at start: plain data only, since
 * it crosses a thread or process boundary by structured clone.
 */
export interface RingEndpoint {
  /** fd to mmap MAP_SHARED at offset 0 (the /dev/uioN fd, or a memfd under the simulator). */
  readonly mapFd: number;
  /** fd to poll for POLLIN / read 4 bytes from / write 4 bytes to (equal to mapFd on a real UIO device). */
  readonly eventFd: number;
  readonly mapSize: number;
}

export interface DeviceSpec {
  /** Our name for the device (the configfs device name, or the simulator's). */
  readonly name: string;
  /** Handler subtype, e.g. "file". */
  readonly subtype: string;
  /** The handler's part of the cfgstring, after "<subtype>/". */
  readonly cfgstring: string;
  /** Where to load the handler from: a built-in subtype, a path, or a package name. */
  readonly handlerSpec: string;
  readonly blockSize: number;
  readonly numLbas: number;
  readonly maxXferBlocks: number;
  readonly writeCache: boolean;
  readonly serial: string;
  readonly wwn: string;
  readonly ring: RingEndpoint;
  /**
   * tcmu-runner's `tcmur_cmd_time_out` in seconds (0/absent: off): commands
   * running longer are logged, and the handler is told the value. The
   * supervisor reads it from the device's dev_config when not given.
   */
  readonly cmdTimeOut?: number;
  /**
   * The kernel's attrib/cmd_time_out in seconds (0/absent: off or unknown):
   * the engine counts commands it holds longer as the kernel's timeouts.
   */
  readonly kernelCmdTimeOut?: number;
  /**
   * ALUA target port groups (from configfs alua/). The supervisor reads them
   * when the backend has a configfs device and none are given; absent or
   * without an enabled member port: no ALUA.
   */
  readonly alua?: AluaInfo;
  /** Tests only: run COMPARE AND WRITE without the LBA range lock, to show what the lock prevents. */
  readonly unsafeNoCawLock?: boolean;
}

/** An error crossing a thread boundary: sense for a ScsiError, else an errno-style code. */
export interface WireError {
  key?: number;
  asc?: number;
  ascq?: number;
  code?: string;
  message: string;
}

/** What a device worker learns about another LUN of this daemon for EXTENDED COPY. */
export interface PeerInfo {
  name: string;
  blockSize: number;
  numLbas: number;
  maxXferBlocks: number;
}

/**
 * The blocks of one EXTENDED COPY IO between two LUNs, `bytes` long. A
 * worker thread shares memory with the supervisor: `buf` is a
 * SharedArrayBuffer the serving worker reads or fills from byte `offset`. A
 * child process shares none (a SharedArrayBuffer cannot cross a process), so
 * `buf` is absent and the bytes travel in the messages: a write's `data`
 * here, a read's in its PeerIoDone.
 */
export interface PeerBlocks {
  buf?: SharedArrayBuffer;
  offset: number;
  bytes: number;
  data?: Uint8Array;
}

/** The end of a peer IO; `data`: what a read found, when the asker shares no memory. */
export interface PeerIoDone {
  type: 'peer-io-done';
  id: number;
  error?: WireError;
  data?: Uint8Array;
}

/** 'scsi' is tcmu-runner's level 5: one line per SCSI command. */
export type LogLevelName = 'scsi' | 'debug' | 'info' | 'warn' | 'error';

/** Messages a device worker posts to the supervisor. */
export type WorkerEvent =
  /** tid: the worker's thread (for a device process, its main thread), whose CPU priority the supervisor may change. */
  | { type: 'ready'; numLbas: number; tid: number }
  | { type: 'open-failed'; reason: string; errno: number }
  | { type: 'ring-broken'; reason: string }
  | { type: 'reconfig-done'; id: number; errno: number; reason?: string }
  | { type: 'stopped' }
  /** A device process's uncaught exception, just before it exits (a thread's shows as its 'error' event). */
  | { type: 'crashed'; message: string }
  | { type: 'log'; level: LogLevelName; msg: string }
  /** ALUA group states changed on the worker (STPG, lock holder moved); persisted to configfs. */
  | { type: 'alua-state'; groups: { name: string; state: number; status: number }[] }
  /** EXTENDED COPY: which LUN has this NAA designator (hex)? */
  | { type: 'peer-lookup'; id: number; naa: string }
  /** EXTENDED COPY: read or write blocks of another LUN (the data: PeerBlocks). */
  | ({ type: 'peer-io'; id: number; device: string; op: 'read' | 'write'; lba: number; blocks: number } & PeerBlocks)
  /** The answer to a peer-io this worker served for another one. */
  | PeerIoDone;

/** Messages the supervisor posts to a device worker. */
export type SupervisorCommand =
  | { type: 'stop' }
  | { type: 'log-cdbs'; enabled: boolean }
  /** cfgstring: a new handler config to apply in place (ReconfigChange 'config'); EOPNOTSUPP asks for a reopen. */
  | { type: 'reconfig'; id: number; numLbas?: number; writeCache?: boolean; cfgstring?: string }
  | { type: 'peer-lookup-result'; id: number; peer?: PeerInfo }
  /** Serve a block read/write for another worker's EXTENDED COPY. */
  | ({ type: 'peer-io'; id: number; op: 'read' | 'write'; lba: number; blocks: number } & PeerBlocks)
  | PeerIoDone;
