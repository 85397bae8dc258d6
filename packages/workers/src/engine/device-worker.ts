/**
 * Entry point of a device worker thread (the default isolation): the engine
 * of device-runner.ts, talking to the supervisor through parentPort.
 * Anything thrown here that the engine did not catch ends this thread only;
 * the supervisor restarts it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { SupervisorCommand, WorkerEvent } from '../device-spec.js';
import { runDeviceWorker, type SupervisorLink, type WorkerInput } from './device-runner.js';

const port = parentPort!;
const link: SupervisorLink = {
  sharesMemory: true,
  post: (e: WorkerEvent) => port.postMessage(e),
  onMessage: (listener: (m: SupervisorCommand) => void) => port.on('message', listener),
  close: () => port.close(),
};

runDeviceWorker(workerData as WorkerInput, link).catch((e) => {
  // Rethrown so the thread dies with an 'error' event the supervisor sees.
  setImmediate(() => { throw e; });
});
