import { KernelSimulator, type SimulatorOptions } from '@tcmu-ts/ring';
import type { DeviceBackend } from '../supervisor.js';

/** A device whose "kernel" is the in-process simulator: configfs actions map onto its methods. */
export class SimulatedBackend implements DeviceBackend {
  readonly sim: KernelSimulator;
  constructor(opts: SimulatorOptions = {}) {
    this.sim = new KernelSimulator(opts);
  }
  get endpoint() {
    return this.sim.endpoint;
  }
  block(): void {
    this.sim.block();
  }
  unblock(): void {
    this.sim.unblock();
  }
  resetRing(): void {
    this.sim.resetRing(1);
  }
  close(): Promise<void> {
    return this.sim.close();
  }
}
