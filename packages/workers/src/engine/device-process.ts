/**
 * Entry point of a device worker in a child process (isolation 'process'):
 * the same engine as the thread (device-runner.ts), talking to the
 * supervisor over the IPC channel (advanced serialization). A native crash
 * here (abort(), SIGSEGV in a koffi call) ends this process only.
 *
 * The supervisor passes the ring's fds, the wake eventfd and the counter
 * memfd as inherited fds; its first message (ProcessWorkerInit) names them
 * with their numbers in this process.
 */
import { mapShared } from '@tcmu-ts/ring';
import { COUNTER_BYTES } from '../counters.js';
import type { SupervisorCommand, WorkerEvent } from '../device-spec.js';
import { runDeviceWorker, type SupervisorLink, type WorkerInput } from './device-runner.js';

/** The first message a device process receives: WorkerInput with the counter block as an fd to map. */
export interface ProcessWorkerInit extends Omit<WorkerInput, 'counters'> {
  type: 'init';
  countersFd: number;
}

const send = process.send!.bind(process);
let listener: ((m: SupervisorCommand) => void) | undefined;
const early: SupervisorCommand[] = [];
let unsent = 0;
let closing = false;
/** Disconnect once everything posted has been written: the parent must see 'stopped' or 'open-failed'. */
const disconnectWhenFlushed = () => {
  if (closing && unsent === 0 && process.connected) process.disconnect();
};
const link: SupervisorLink = {
  sharesMemory: false,
  post: (e: WorkerEvent) => {
    if (!process.connected) return;
    unsent++;
    send(e, undefined, undefined, () => {
      unsent--;
      disconnectWhenFlushed();
    });
  },
  onMessage: (l: (m: SupervisorCommand) => void) => {
    listener = l;
    for (const m of early.splice(0)) l(m);
  },
  close: () => {
    closing = true;
    disconnectWhenFlushed();
  },
};

// As a dying worker thread's 'error' event: the supervisor logs why, then sees the exit.
process.on('uncaughtException', (e) => {
  const message = e instanceof Error ? (e.stack ?? e.message) : String(e);
  if (!process.connected) process.exit(1);
  send({ type: 'crashed', message } satisfies WorkerEvent, undefined, undefined, () => process.exit(1));
});
// The supervisor gone (it died): nobody will reset this ring or read its counters.
process.on('disconnect', () => {
  if (!closing) process.exit(1);
});

process.on('message', (m: ProcessWorkerInit | SupervisorCommand) => {
  if (m.type !== 'init') {
    // A worker thread's port holds messages until the engine listens; so does this.
    if (listener) listener(m);
    else early.push(m);
    return;
  }
  const counters = mapShared(m.countersFd, COUNTER_BYTES).buffer;
  const input: WorkerInput = { spec: m.spec, counters, reopen: m.reopen, logCdbs: m.logCdbs, wakeFd: m.wakeFd, nice: m.nice, heapNice: m.heapNice, heapMb: m.heapMb };
  runDeviceWorker(input, link).catch((e) => {
    setImmediate(() => { throw e; });
  });
});
