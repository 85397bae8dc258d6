/**
 * What the supervisor tells a device worker at start: plain data only, since
 * it crosses a thread boundary by structured clone.
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
}

/** 'scsi' is tcmu-runner's level 5: one line per SCSI command. */
export type LogLevelName = 'scsi' | 'debug' | 'info' | 'warn' | 'error';

/** Messages a device worker posts to the supervisor. */
export type WorkerEvent =
  | { type: 'ready'; numLbas: number }
  | { type: 'open-failed'; reason: string; errno: number }
  | { type: 'ring-broken'; reason: string }
  | { type: 'reconfig-done'; id: number; errno: number; reason?: string }
  | { type: 'stopped' }
  | { type: 'log'; level: LogLevelName; msg: string };

/** Messages the supervisor posts to a device worker. */
export type SupervisorCommand =
  | { type: 'stop' }
  | { type: 'log-cdbs'; enabled: boolean }
  | { type: 'reconfig'; id: number; numLbas?: number; writeCache?: boolean };
