/**
 * ALUA on a device worker: which commands the local target port group's
 * state lets through, REPORT/SET TARGET PORT GROUPS, and the handler lock
 * that drives active/optimized vs standby, after tcmu-runner's alua.c and
 * tcmur_device.c.
 *
 * Two models, chosen by whether the handler implements the lock API:
 *  - no lock (a local store): the local group's configured access state
 *    decides, as the kernel's own ALUA emulation would (standby gives
 *    NOT READY, TARGET PORT IN STANDBY STATE, and so on);
 *  - lock (a store shared between nodes, like rbd): implicit failover takes
 *    the lock on the first write while answering BUSY; explicit failover
 *    takes it on SET TARGET PORT GROUPS to active/optimized, and media
 *    access without it is NOT READY (standby). REPORT TARGET PORT GROUPS
 *    shows the group whose tag holds the lock as active/optimized and the
 *    rest standby.
 */
import {
  AluaState, AluaStatus, NO_LOCK_TAG, ScsiError, accessStateError, enabledPort, explicitTransitionFailed,
  reportTargetPortGroupsData, stateSupported, statusForError,
  type AluaGroupInfo, type AluaInfo, type DeviceHandler, type StpgDescriptor,
} from '@tcmu-ts/core';
import { ScsiStatus } from '@tcmu-ts/ring/abi';

/** tcmu-runner's TCMUR_DEV_LOCK_* states. */
export type LockState = 'unknown' | 'unlocked' | 'read-locking' | 'read-locked' | 'write-locking' | 'write-locked';

/** Answer BUSY: the initiator retries (a lock acquisition is under way, or the backend is unreachable for now). */
export class BusySignal extends Error {
  /** statusForError answers EBUSY with BUSY. */
  readonly code = 'EBUSY';
  constructor(reason: string) {
    super(reason);
    this.name = 'BusySignal';
  }
}

export interface AluaLog {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
}

export class AluaController {
  lockState: LockState = 'unlocked';
  /** Lock acquisitions started in the background, for tests waiting on them. */
  private pending: Promise<void> = Promise.resolve();
  lockLostCount = 0;

  constructor(
    readonly alua: AluaInfo,
    private readonly handler: DeviceHandler,
    private readonly log: AluaLog,
    /** Group states changed (to be written back to configfs). */
    private readonly onChange: (groups: readonly AluaGroupInfo[]) => void,
  ) {}

  /** The handler implements the lock API (tcmu-runner's lock_is_required). */
  get hasLock(): boolean {
    return typeof this.handler.lock === 'function';
  }

  get localGroup(): AluaGroupInfo | undefined {
    return enabledPort(this.alua)?.group;
  }

  /** Settles when background lock work started so far is done. */
  idle(): Promise<void> {
    return this.pending;
  }

  /**
   * May this media-access command run? undefined: yes. Throws BusySignal
   * or the ScsiError to answer with. (alua_check_state)
   */
  check(isRead: boolean): void {
    const local = this.localGroup;
    if (!local) return;
    if (!this.hasLock) {
      const err = accessStateError(local.state);
      if (err) throw err;
      return;
    }
    switch (this.alua.failover) {
      case 'explicit':
        if (this.lockState !== 'write-locked') throw ScsiError.standby();
        return;
      case 'implicit':
        this.implicitTransition(isRead);
        return;
      default:
        return;
    }
  }

  /** alua_implicit_transition: take the lock in the background and have the initiator retry. */
  private implicitTransition(isRead: boolean): void {
    switch (this.lockState) {
      case 'write-locked':
        return;
      case 'write-locking':
      case 'read-locking':
        throw new BusySignal('lock acquisition in progress');
      default:
        break;
    }
    if (isRead) {
      if (this.lockState === 'read-locked') return;
      this.log.info('starting read lock acquisition');
      this.lockState = 'read-locking';
    } else {
      this.log.info('starting write lock acquisition');
      this.lockState = 'write-locking';
    }
    this.pending = this.pending.then(() => this.acquire(NO_LOCK_TAG).then(() => undefined, () => undefined));
    throw new BusySignal('implicit ALUA transition: taking the lock');
  }

  /**
   * tcmu_acquire_dev_lock. A read "lock" takes nothing from the handler
   * (tcmu-runner only reopens the device); a write lock calls lock(tag).
   */
  private async acquire(tag: number): Promise<void> {
    if (this.lockState === 'read-locking') {
      this.lockState = 'read-locked';
      this.log.info('read lock acquisition successful');
      return;
    }
    try {
      await this.handler.lock!(tag);
      this.lockState = 'write-locked';
      this.log.info('write lock acquisition successful');
    } catch (e) {
      this.lockState = 'unlocked';
      this.log.warn(`lock acquisition unsuccessful: ${e instanceof Error ? e.message : String(e)}`);
      throw e;
    }
  }

  /** The handler found it lost the lock (tcmu_notify_lock_lost). */
  lockLost(): void {
    if (this.lockState === 'write-locking') return; // a stale completion while re-acquiring
    this.log.warn(`lock lost (state was ${this.lockState})`);
    this.lockState = 'unlocked';
    this.lockLostCount++;
  }

  private setState(group: AluaGroupInfo, state: number, status: number): boolean {
    if (group.state === state && group.status === status) return false;
    this.log.debug(`group ${group.id} (${group.name}): state ${group.state} -> ${state}`);
    group.state = state;
    group.status = status;
    return true;
  }

  /**
   * alua_sync_state before REPORT TARGET PORT GROUPS: implicit failover
   * checks the handler still holds the lock it thinks it has; explicit
   * failover asks who holds it and shows that group active/optimized.
   */
  private async sync(): Promise<void> {
    if (!this.hasLock) return;
    if (this.alua.failover === 'implicit') {
      if (!this.handler.getLockState) return;
      const state = await this.handler.getLockState();
      if (this.lockState === 'write-locked' && state !== 'locked') {
        this.log.debug('updated out of sync lock state');
        this.lockLost();
      }
      return;
    }
    if (this.alua.failover !== 'explicit' || !this.handler.getLockTag) return;
    let holder: number | null;
    try {
      holder = await this.handler.getLockTag();
    } catch (e) {
      // tcmu-runner drops the session; we have the initiator retry.
      throw new BusySignal(`cannot get the lock holder: ${e instanceof Error ? e.message : String(e)}`);
    }
    const local = this.localGroup;
    let changed = false;
    for (const g of this.alua.groups) {
      const state = holder === g.id ? AluaState.ACTIVE_OPTIMIZED : AluaState.STANDBY;
      if (state !== AluaState.ACTIVE_OPTIMIZED && g === local && this.lockState === 'write-locked') {
        // Another node took the lock: the first command to notice drops ours.
        this.log.debug('dropping lock');
        this.lockState = 'unlocked';
      }
      if (g.state !== state) changed = this.setState(g, state, AluaStatus.ALTERED_BY_IMPLICIT_ALUA) || changed;
    }
    if (changed) this.onChange(this.alua.groups);
  }

  /** REPORT TARGET PORT GROUPS data, cut to the allocation length. */
  async reportTargetPortGroups(extended: boolean, allocationLength: number): Promise<Uint8Array> {
    await this.sync();
    const data = reportTargetPortGroupsData(this.alua, extended);
    return data.subarray(0, Math.min(allocationLength, data.length));
  }

  /** SET TARGET PORT GROUPS (tcmu_emulate_set_tgt_port_grps), descriptor by descriptor. */
  async setTargetPortGroups(descriptors: readonly StpgDescriptor[]): Promise<void> {
    const local = this.localGroup;
    for (const d of descriptors) {
      const group = this.alua.groups.find((g) => g.id === d.groupId);
      // tcmu-runner answers a transition failure here; SPC-4 6.38 names this error.
      if (!group) throw ScsiError.invalidParameter(d.offset + 2);
      if (group !== local) {
        this.log.warn(`STPG for group ${d.groupId}: remote groups cannot be transitioned from here`);
        throw explicitTransitionFailed();
      }
      await this.explicitTransition(group, d);
    }
  }

  private async explicitTransition(group: AluaGroupInfo, d: StpgDescriptor): Promise<void> {
    const state = d.state;
    if (!stateSupported(state, group.supported)) throw ScsiError.invalidParameter(d.offset, 3);
    const status = AluaStatus.ALTERED_BY_EXPLICIT_STPG;
    let changed = false;
    switch (state) {
      case AluaState.ACTIVE_OPTIMIZED:
        if (this.hasLock) {
          try {
            this.lockState = 'write-locking';
            await this.acquire(group.id);
          } catch (e) {
            // Errors the status table retries (ETIMEDOUT, EAGAIN, EBUSY, ESTALE, ...) mean "later", not "failed".
            if (statusForError(e).status === ScsiStatus.BUSY) throw new BusySignal(`lock: ${(e as { code?: string }).code}`);
            throw explicitTransitionFailed();
          }
        }
        // One active group: every other one goes to standby.
        for (const g of this.alua.groups) if (g !== group) changed = this.setState(g, AluaState.STANDBY, status) || changed;
        break;
      case AluaState.STANDBY:
        if (this.hasLock && this.lockState === 'write-locked') {
          try {
            await this.handler.unlock?.();
          } catch (e) {
            this.log.warn(`lock not cleanly released: ${e instanceof Error ? e.message : String(e)}`);
          }
          this.lockState = 'unlocked';
        }
        break;
      default:
        // tcmu-runner supports transitions to active/optimized and standby only.
        throw ScsiError.invalidParameter(d.offset, 3);
    }
    changed = this.setState(group, state, status) || changed;
    if (changed) this.onChange(this.alua.groups);
  }
}
