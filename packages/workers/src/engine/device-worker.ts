/**
 * Entry point of a device worker thread (the default isolation): the engine
 * of device-runner.ts, talking to the supervisor through parentPort.
 * Anything thrown here that the engine did not catch ends this thread only;
 * the supervisor restarts it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { setThreadNice, threadTid } from '@tcmu-ts/ring';
import type { SupervisorCommand, WorkerEvent } from '../device-spec.js';
import type { SupervisorLink, WorkerInput } from './device-runner.js';

const port = parentPort!;
const input = workerData as WorkerInput;
const link: SupervisorLink = {
  sharesMemory: true,
  post: (e: WorkerEvent) => port.postMessage(e),
  onMessage: (listener: (m: SupervisorCommand) => void) => port.on('message', listener),
  close: () => port.close(),
};

// Demoted before the engine's modules load: loading them is most of what a restart costs.
if (input.nice > 0) {
  try {
    setThreadNice(threadTid(), input.nice);
  } catch (e) {
    link.post({ type: 'log', level: 'warn', msg: `cannot lower this worker's CPU priority: ${e instanceof Error ? e.message : String(e)}` });
  }
}
const { runDeviceWorker } = await import('./device-runner.js');

runDeviceWorker(input, link).catch((e) => {
  // Rethrown so the thread dies with an 'error' event the supervisor sees.
  setImmediate(() => { throw e; });
});
