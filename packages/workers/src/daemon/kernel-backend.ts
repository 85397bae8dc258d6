import { closeFd, openFile, O_RDWR, O_CLOEXEC, O_NONBLOCK } from '@tcmu-ts/ring';
import type { TcmuConfigfsDevice, UioDevice } from '@tcmu-ts/core/host';
import type { RingEndpoint } from '../device-spec.js';
import type { DeviceBackend, DeviceExtras } from '../supervisor.js';
import { readAluaInfo, readCmdTimeOut, writeAluaState } from './alua-config.js';

/** A device served by the real target_core_user: the UIO fd for the ring, configfs for the actions. */
export class KernelBackend implements DeviceBackend {
  constructor(readonly endpoint: RingEndpoint & { close?(): void }, readonly configfs: TcmuConfigfsDevice) {}

  /**
   * Opens /dev/uioN once: one fd serves mmap, irq reads and kicks. Non-blocking,
   * because the engine reads every pending event after a poll and a blocking
   * UIO read would wait for the next interrupt.
   */
  static openUio(uio: UioDevice): RingEndpoint & { close(): void } {
    const fd = openFile(uio.devPath, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    return { mapFd: fd, eventFd: fd, mapSize: uio.mapSize, close: () => closeFd(fd) };
  }

  async block(): Promise<void> {
    await this.configfs.blockDevice(true);
  }
  async unblock(): Promise<void> {
    await this.configfs.blockDevice(false);
  }
  async resetRing(): Promise<void> {
    await this.configfs.resetRing(1);
  }
  async readDeviceExtras(): Promise<DeviceExtras> {
    const [cmdTimeOut, alua] = await Promise.all([readCmdTimeOut(this.configfs).catch(() => undefined), readAluaInfo(this.configfs)]);
    return { cmdTimeOut, alua };
  }
  writeAluaState(group: string, state: number, status: number): Promise<void> {
    return writeAluaState(this.configfs, group, state, status);
  }
  close(): void {
    this.endpoint.close?.();
  }
}
