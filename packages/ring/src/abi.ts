/**
 * The TCMU shared-memory ABI (linux/target_core_user.h, mailbox version 2):
 * offsets, sizes and constants only. Every reader and writer of the ring
 * (the consumer in the daemon and the kernel simulator) uses these names, so
 * a layout fact lives in exactly one place.
 */

export const TCMU_MAILBOX_VERSION = 2;

/** Mailbox flags (capabilities advertised by the kernel). */
export const MailboxFlag = {
  CAP_OOOC: 1 << 0,
  CAP_READ_LEN: 1 << 1,
  CAP_TMR: 1 << 2,
  CAP_KEEP_BUF: 1 << 3,
} as const;

/** struct tcmu_mailbox (packed, cmd_tail on its own 64-byte cache line). */
export const Mailbox = {
  VERSION: 0, // u16
  FLAGS: 2, // u16
  CMDR_OFF: 4, // u32
  CMDR_SIZE: 8, // u32
  CMD_HEAD: 12, // u32, kernel writes (store-release)
  CMD_TAIL: 64, // u32, userspace writes
  SIZE: 128,
} as const;

/** Entry opcodes, in the low 3 bits of len_op. */
export const EntryOp = { PAD: 0, CMD: 1, TMR: 2 } as const;
export type EntryOpValue = (typeof EntryOp)[keyof typeof EntryOp];
export const TCMU_OP_MASK = 0x7;
export const TCMU_OP_ALIGN_SIZE = 8;

/** struct tcmu_cmd_entry_hdr, at the start of every entry. */
export const EntryHdr = {
  LEN_OP: 0, // u32
  CMD_ID: 4, // u16
  KFLAGS: 6, // u8
  UFLAGS: 7, // u8
  SIZE: 8,
} as const;

/** Flags userspace sets in hdr.uflags. */
export const UFlag = {
  UNKNOWN_OP: 1 << 0,
  READ_LEN: 1 << 1,
  KEEP_BUF: 1 << 2,
} as const;

/** The request half of struct tcmu_cmd_entry (the inner struct is not packed: hole at 20). */
export const CmdReq = {
  IOV_CNT: 8, // u32
  IOV_BIDI_CNT: 12, // u32
  IOV_DIF_CNT: 16, // u32
  CDB_OFF: 24, // u64, from the start of the map
  IOV: 48, // struct iovec[]: { u64 base (offset from map start), u64 len }
  IOVEC_SIZE: 16,
} as const;

/** The response half of struct tcmu_cmd_entry, written by userspace. */
export const CmdRsp = {
  SCSI_STATUS: 8, // u8
  READ_LEN: 12, // u32
  SENSE: 16, // u8[96]
} as const;

export const TCMU_SENSE_BUFFERSIZE = 96;
/** sizeof(struct tcmu_cmd_entry): the smallest a CMD entry can be before its CDB. */
export const CMD_ENTRY_SIZE = 112;

/** struct tcmu_tmr_entry. */
export const TmrEntry = {
  TMR_TYPE: 8, // u8
  CMD_CNT: 12, // u32
  CMD_IDS: 32, // u16[]
  SIZE: 32,
} as const;

/** enum tcmu_tmr_type (include/uapi/linux/target_core_user.h: the PR OUT pseudo reset is 128, not 8). */
export const TmrType = {
  UNKNOWN: 0,
  ABORT_TASK: 1,
  ABORT_TASK_SET: 2,
  CLEAR_ACA: 3,
  CLEAR_TASK_SET: 4,
  LUN_RESET: 5,
  TARGET_WARM_RESET: 6,
  TARGET_COLD_RESET: 7,
  LUN_RESET_PRO: 128,
} as const;

/** SCSI status bytes the ring carries. */
export const ScsiStatus = {
  GOOD: 0x00,
  CHECK_CONDITION: 0x02,
  CONDITION_MET: 0x04,
  BUSY: 0x08,
  RESERVATION_CONFLICT: 0x18,
  TASK_SET_FULL: 0x28,
  ACA_ACTIVE: 0x30,
  TASK_ABORTED: 0x40,
} as const;

export const PAGE_SIZE = 4096;

/** Round `n` up to a multiple of `align` (a power of two). */
export function alignUp(n: number, align: number): number {
  return (n + align - 1) & ~(align - 1);
}

/** Size of a CMD entry with `iovCount` iovecs and a CDB of `cdbLen` bytes, as the kernel computes it. */
export function cmdEntrySize(iovCount: number, cdbLen: number): number {
  const base = Math.max(CmdReq.IOV + CmdReq.IOVEC_SIZE * iovCount, CMD_ENTRY_SIZE);
  return alignUp(base, TCMU_OP_ALIGN_SIZE) + alignUp(cdbLen, TCMU_OP_ALIGN_SIZE);
}

/** Size of a TMR entry aborting `cmdCount` commands. */
export function tmrEntrySize(cmdCount: number): number {
  return alignUp(TmrEntry.SIZE + 2 * cmdCount, TCMU_OP_ALIGN_SIZE);
}

export function lenOp(len: number, op: EntryOpValue): number {
  return ((len & ~TCMU_OP_MASK) | (op & TCMU_OP_MASK)) >>> 0;
}
export function entryLen(lenOpValue: number): number {
  return (lenOpValue & ~TCMU_OP_MASK) >>> 0;
}
export function entryOp(lenOpValue: number): number {
  return lenOpValue & TCMU_OP_MASK;
}

/** Bytes of ring in use between tail and head, with `size` not a power of two. */
export function ringUsed(head: number, tail: number, size: number): number {
  return (head - tail + size) % size;
}
/** Free ring bytes; the kernel keeps one byte free so a full ring differs from an empty one. */
export function ringFree(head: number, tail: number, size: number): number {
  return size - ringUsed(head, tail, size) - 1;
}
