/**
 * A device worker as the supervisor sees it: a worker thread (the default)
 * or a child process. Both run the same engine (engine/device-runner.ts);
 * the supervisor talks to either through this one shape.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { SupervisorCommand, WorkerEvent } from './device-spec.js';
import type { WorkerInput } from './engine/device-runner.js';
import type { ProcessWorkerInit } from './engine/device-process.js';

/**
 * Where a device's worker runs. 'thread': a worker_thread of the daemon,
 * as cheap as it gets, but a native crash (abort(), SIGSEGV in a C library
 * reached through koffi) ends the whole daemon. 'process': a child process,
 * so such a crash ends that device's worker only, which is restarted.
 */
export type Isolation = 'thread' | 'process';

/**
 * Events: 'message' (WorkerEvent), 'error' (Error: why the worker dies, when
 * it says), 'exit' (code: number | null, signal: string | null).
 */
export interface DeviceWorkerHandle extends EventEmitter {
  readonly isolation: Isolation;
  /** The thread's threadId, or the process's pid. */
  readonly id: number;
  post(cmd: SupervisorCommand): void;
  /** End it now, whatever it is doing. */
  kill(): void;
}

const THREAD_URL = new URL('./engine/device-worker.js', import.meta.url);
const PROCESS_PATH = fileURLToPath(new URL('./engine/device-process.js', import.meta.url));

class ThreadWorker extends EventEmitter implements DeviceWorkerHandle {
  readonly isolation = 'thread';
  private readonly worker: Worker;

  constructor(input: WorkerInput, heapMb: number) {
    super();
    this.worker = new Worker(THREAD_URL, {
      workerData: input,
      stdout: false,
      stderr: false,
      ...(heapMb > 0 ? { resourceLimits: { maxOldGenerationSizeMb: heapMb } } : {}),
    });
    this.worker.on('message', (e: WorkerEvent) => this.emit('message', e));
    this.worker.on('error', (err) => this.emit('error', err));
    this.worker.on('exit', (code) => this.emit('exit', code, null));
  }

  get id(): number {
    return this.worker.threadId;
  }
  post(cmd: SupervisorCommand): void {
    this.worker.postMessage(cmd);
  }
  kill(): void {
    void this.worker.terminate();
  }
}

class ProcessWorker extends EventEmitter implements DeviceWorkerHandle {
  readonly isolation = 'process';
  private readonly child: ChildProcess;

  /** `countersFd`: the memfd behind the device's counter block (input.counters is the supervisor's mapping of it). */
  constructor(input: WorkerInput, countersFd: number, heapMb: number) {
    super();
    // The child inherits each fd at its index in stdio: 0-2 stdio, 3 the IPC channel, then these.
    const { ring } = input.spec;
    const fds = [...new Set([ring.mapFd, ring.eventFd, input.wakeFd, countersFd])];
    const inChild = (fd: number) => 4 + fds.indexOf(fd);
    const node = [process.execPath, ...process.execArgv, ...(heapMb > 0 ? [`--max-old-space-size=${heapMb}`] : []), PROCESS_PATH];
    // A demoted child starts under nice(1): every thread of it (V8's GC threads, the libuv pool) inherits the nice value.
    const [cmd, ...args] = input.nice > 0 ? ['nice', '-n', String(input.nice), ...node] : node;
    this.child = spawn(cmd, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc', ...fds], serialization: 'advanced' });
    this.child.on('message', (e: WorkerEvent) => {
      if (e.type === 'crashed') this.emit('error', new Error(e.message));
      else this.emit('message', e);
    });
    // Failing to send to the child: it is gone or going, and 'exit' follows. Failing to start it: no 'exit' comes, so say it here.
    this.child.on('error', (err) => {
      this.emit('error', err);
      if (this.child.pid === undefined) this.emit('exit', null, null);
    });
    this.child.on('exit', (code, signal) => this.emit('exit', code, signal));
    const init: ProcessWorkerInit = {
      type: 'init',
      spec: { ...input.spec, ring: { ...ring, mapFd: inChild(ring.mapFd), eventFd: inChild(ring.eventFd) } },
      reopen: input.reopen,
      logCdbs: input.logCdbs,
      wakeFd: inChild(input.wakeFd),
      nice: input.nice,
      heapNice: input.heapNice,
      heapMb: input.heapMb,
      countersFd: inChild(countersFd),
    };
    this.child.send(init, () => {});
  }

  get id(): number {
    return this.child.pid ?? -1;
  }
  post(cmd: SupervisorCommand): void {
    // A send to a child that just died fails; its 'exit' tells the supervisor.
    if (this.child.connected) this.child.send(cmd, () => {});
  }
  kill(): void {
    this.child.kill('SIGKILL');
  }
}

/** Start a device worker. `countersFd` is required for a process (the memfd of input.counters). */
export function startDeviceWorker(isolation: Isolation, input: WorkerInput, heapMb: number, countersFd?: number): DeviceWorkerHandle {
  if (isolation === 'thread') return new ThreadWorker(input, heapMb);
  if (countersFd === undefined) throw new Error('a device process needs its counter block as a memfd');
  return new ProcessWorker(input, countersFd, heapMb);
}
