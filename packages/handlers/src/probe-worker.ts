/**
 * A handler's probeConfig on a worker thread: asking a cluster can block
 * for as long as the cluster takes to answer, which the supervisor thread,
 * serving netlink and DBus, must never do. The worker (`entry`) posts one
 * ConfigCheck; a worker that fails, or exits without answering, is a
 * refusal that says so.
 */
import { Worker } from 'node:worker_threads';
import { configError, type ConfigCheck } from '@tcmu-ts/core';

/** `what`: what the probe checks ("the image"), for the refusals; `endOnAnswer`: terminate the worker once it has answered. */
export function probeOnWorker(entry: URL, workerData: unknown, what: string, endOnAnswer = false): Promise<ConfigCheck> {
  return new Promise((resolve) => {
    const w = new Worker(entry, { workerData });
    let answered = false;
    w.once('message', (r: ConfigCheck) => {
      answered = true;
      resolve(r);
      if (endOnAnswer) void w.terminate();
    });
    w.once('error', (e) => resolve(configError(`cannot check ${what}: ${e.message}`)));
    w.once('exit', (code) => {
      if (!answered) resolve(configError(`cannot check ${what}: the probe exited with status ${code}`));
    });
  });
}
