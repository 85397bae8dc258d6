/**
 * One command on its way from the ring to the handler and back: tcmu-ts's
 * `struct tcmur_cmd`. The engine keeps a pool of these and reuses each for
 * command after command, so the per-command path allocates nothing once the
 * pool has warmed up: the ring consumer fills the record in place (id, CDB,
 * iovecs), the executor plans into it and hands the handler its BlockIo,
 * and the handler's promise (if it returns one) settles into callbacks bound
 * once per record.
 */
import { RingSlot, ScsiStatus } from '@tcmu-ts/ring';
import type { BlockIo, BlockPlan, IoVec } from '@tcmu-ts/core';

/** Counter classes (the order of counters.ts OP_CLASSES). */
export const CommandClass = { READ: 0, WRITE: 1, FLUSH: 2, OTHER: 3 } as const;

/** Where a command's outcome goes: the engine writes it to the ring. */
export interface CommandSink {
  complete(cmd: Command, status: number, sense: Uint8Array | undefined, readLen: number): void;
  fail(cmd: Command, err: unknown): void;
}

/** The BlockIo a READ/WRITE hands its handler: the record's own, rewritten for each command. */
class RecordIo implements BlockIo {
  lba = 0;
  blocks = 0;
  offset = 0;
  length = 0;
  buffers: readonly Uint8Array[] = [];
  iovecs: readonly IoVec[] | undefined = undefined;
  fua = false;
}

export class Command extends RingSlot {
  /** Counter class; OTHER unless the plan says READ, WRITE or FLUSH. */
  cls: number = CommandClass.OTHER;
  /** Whether a failure is a write's (EIO: WRITE ERROR rather than UNRECOVERED READ ERROR). */
  write = false;
  /** performance.now() when the command was read off the ring. */
  start = 0;
  /** Bytes the counters record for the command when it succeeds. */
  bytes = 0;
  /** Data-In bytes a successful READ reports (READ_LEN); -1: none. */
  readLen = -1;
  /** The LBA range lock hold to release at completion; 0: none. */
  lockId = 0;
  /** Between take() and completion; guards against a second completion. */
  live = false;
  /** Logged once when it ran past tcmur_cmd_time_out. */
  timedOut = false;
  /** Counted once when it ran past the kernel's cmd_time_out (the kernel has failed it). */
  kernelTimedOut = false;
  /** Views on the data area, one per iovec. */
  readonly buffers: Uint8Array[] = [];
  /** READ/WRITE/SYNCHRONIZE CACHE plans land here instead of in a new object. */
  readonly plan: BlockPlan = { kind: 'read', lba: 0, blocks: 0, fua: false };
  readonly io = new RecordIo();
  /** For a handler's promise: `.then(cmd.succeed, cmd.failed)`, no closure per command. */
  readonly succeed: () => void;
  readonly failed: (err: unknown) => void;

  constructor(private readonly sink: CommandSink) {
    super();
    this.succeed = () => this.sink.complete(this, ScsiStatus.GOOD, undefined, this.readLen);
    this.failed = (err) => this.sink.fail(this, err);
  }

  /** Complete with `status` (GOOD by default), sense for CHECK CONDITION, READ_LEN when >= 0. */
  done(status: number = ScsiStatus.GOOD, sense?: Uint8Array, readLen = -1): void {
    this.sink.complete(this, status, sense, readLen);
  }

  /** Complete with what the status table makes of `err`. */
  fail(err: unknown): void {
    this.sink.fail(this, err);
  }
}
