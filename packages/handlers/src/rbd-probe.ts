/**
 * Worker-thread entry for the rbd handler's probeConfig: connecting to a
 * cluster blocks in librados for as long as the monitors take to answer,
 * which the supervisor thread, serving netlink and DBus, must never do.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { probeImage, type ProbeRequest } from './rbd.js';

parentPort!.postMessage(probeImage(workerData as ProbeRequest));
