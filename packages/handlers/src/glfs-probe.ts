/**
 * Worker-thread entry for the glfs handler's probeConfig: glfs_init blocks
 * until glusterd answers or gives up, which the supervisor thread, serving
 * netlink and DBus, must never do.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { probeFile, type ProbeRequest } from './glfs.js';

parentPort!.postMessage(probeFile(workerData as ProbeRequest));
