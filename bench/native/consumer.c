/*
 * A native consumer of the TCMU command ring, for the ring bench: the
 * baseline tcmu-ts is measured against in the same run, on the same
 * simulated ring (the simulator on the bench's main thread produces, this
 * process consumes).
 *
 * It does what tcmu-ts' engine does with the ram handler, in C and with no
 * framework: poll the event fd, read what lies between our read position and
 * cmd_head, copy data between the data area and a RAM buffer (or the file,
 * with --file), and complete by the out-of-order rule: the response goes into
 * the entry at cmd_tail, which takes the id of the command being completed.
 * Completions of one pass are written in reverse order on purpose, so the OOO
 * path is the one exercised. One kick per pass (--kick-each: one per command).
 *
 * The map and the event socket are inherited: fd 3 is the memfd, fd 4 the
 * consumer end of the event socketpair (see bench/lib/native.ts).
 *
 *   consumer [--null] [--kick-each] [--file PATH] MAP_SIZE LUN_BYTES BLOCK_SIZE
 *   consumer --memcpy MIB      memcpy bandwidth of this machine, one thread
 *
 * SIGTERM stops it after the current pass; it prints one JSON line of
 * counters on stdout and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MAP_FD 3
#define EVENT_FD 4

/* linux/target_core_user.h, mailbox version 2 */
#define MB_VERSION 0
#define MB_FLAGS 2
#define MB_CMDR_OFF 4
#define MB_CMDR_SIZE 8
#define MB_CMD_HEAD 12
#define MB_CMD_TAIL 64
#define OP_PAD 0
#define OP_CMD 1
#define OP_TMR 2
#define OP_MASK 7u
#define HDR_CMD_ID 4
#define HDR_UFLAGS 7
#define REQ_IOV_CNT 8
#define REQ_CDB_OFF 24
#define REQ_IOV 48
#define RSP_STATUS 8
#define RSP_READ_LEN 12
#define CAP_READ_LEN 2
#define UFLAG_READ_LEN 2

static volatile sig_atomic_t stop_flag;
static void on_term(int sig) { (void)sig; stop_flag = 1; }

static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline uint64_t be(const uint8_t *p, int n) { uint64_t v = 0; for (int i = 0; i < n; i++) v = (v << 8) | p[i]; return v; }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int memcpy_bench(long mib) {
  size_t n = (size_t)mib << 20;
  uint8_t *a = malloc(n), *b = malloc(n);
  if (!a || !b) return 1;
  memset(a, 1, n);
  memset(b, 2, n);
  double best = 0;
  for (int round = 0; round < 3; round++) {
    double t0 = now_s();
    int reps = 0;
    do {
      memcpy(reps & 1 ? a : b, reps & 1 ? b : a, n);
      reps++;
    } while (now_s() - t0 < 0.3);
    double gbps = (double)n * reps / (now_s() - t0) / 1e9;
    if (gbps > best) best = gbps;
  }
  printf("{\"memcpyGBps\":%.3f,\"bufferMiB\":%ld}\n", best, mib);
  free(a);
  free(b);
  return 0;
}

struct cmd {
  uint16_t id;
  uint8_t status;
  uint32_t read_len;
};

int main(int argc, char **argv) {
  int null_mode = 0, kick_each = 0;
  const char *file = NULL;
  int ai = 1;
  for (; ai < argc && argv[ai][0] == '-' && argv[ai][1] == '-'; ai++) {
    if (!strcmp(argv[ai], "--null")) null_mode = 1;
    else if (!strcmp(argv[ai], "--kick-each")) kick_each = 1;
    else if (!strcmp(argv[ai], "--file") && ai + 1 < argc) file = argv[++ai];
    else if (!strcmp(argv[ai], "--memcpy") && ai + 1 < argc) return memcpy_bench(atol(argv[ai + 1]));
    else { fprintf(stderr, "consumer: unknown option %s\n", argv[ai]); return 2; }
  }
  if (argc - ai != 3) {
    fprintf(stderr, "usage: consumer [--null] [--kick-each] [--file PATH] MAP_SIZE LUN_BYTES BLOCK_SIZE\n");
    return 2;
  }
  size_t map_size = strtoull(argv[ai], NULL, 10);
  uint64_t lun_bytes = strtoull(argv[ai + 1], NULL, 10);
  uint32_t block_size = strtoul(argv[ai + 2], NULL, 10);

  struct sigaction sa = { .sa_handler = on_term };
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);

  uint8_t *map = mmap(NULL, map_size, PROT_READ | PROT_WRITE, MAP_SHARED, MAP_FD, 0);
  if (map == MAP_FAILED) { perror("consumer: mmap"); return 1; }
  uint8_t *ram = NULL;
  int ffd = -1;
  if (file) {
    ffd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (ffd < 0 || ftruncate(ffd, (off_t)lun_bytes) < 0) { perror("consumer: file"); return 1; }
  } else if (!null_mode) {
    ram = calloc(1, lun_bytes); /* untouched pages stay unallocated, like the sparse ram handler */
    if (!ram) { perror("consumer: calloc"); return 1; }
  }
  int fl = fcntl(EVENT_FD, F_GETFL);
  fcntl(EVENT_FD, F_SETFL, fl | O_NONBLOCK);

  uint16_t flags = ld16(map + MB_FLAGS);
  uint32_t cmdr_off = ld32(map + MB_CMDR_OFF);
  uint32_t cmdr_size = ld32(map + MB_CMDR_SIZE);
  uint32_t *head_p = (uint32_t *)(map + MB_CMD_HEAD);
  uint32_t *tail_p = (uint32_t *)(map + MB_CMD_TAIL);
  uint8_t *cmdr = map + cmdr_off;
  if (ld16(map + MB_VERSION) != 2) { fprintf(stderr, "consumer: mailbox version %u\n", ld16(map + MB_VERSION)); return 1; }

  uint32_t read_pos = __atomic_load_n(tail_p, __ATOMIC_ACQUIRE);
  uint32_t unanswered = 0;
  size_t cap = 1024;
  struct cmd *batch = malloc(cap * sizeof *batch);
  uint64_t commands = 0, passes = 0, kicks = 0, wakeups = 0, bytes = 0, errors = 0, max_batch = 0;
  uint32_t kick_val = 1;

  while (!stop_flag) {
    uint32_t head = __atomic_load_n(head_p, __ATOMIC_ACQUIRE);
    if (head == read_pos) {
      struct pollfd p = { .fd = EVENT_FD, .events = POLLIN };
      int rc = poll(&p, 1, 100);
      if (rc > 0) {
        uint8_t buf[8];
        wakeups++;
        while (read(EVENT_FD, buf, sizeof buf) > 0) {}
      }
      continue;
    }
    size_t n = 0;
    while (read_pos != head) {
      uint8_t *e = cmdr + read_pos;
      uint32_t lo = ld32(e);
      uint32_t len = lo & ~OP_MASK;
      if (len == 0 || read_pos + len > cmdr_size) { fprintf(stderr, "consumer: bad entry length %u at %u\n", len, read_pos); return 1; }
      read_pos = (read_pos + len) % cmdr_size;
      if ((lo & OP_MASK) != OP_CMD) continue;
      unanswered++;
      if (n == cap) { cap *= 2; batch = realloc(batch, cap * sizeof *batch); }
      struct cmd *c = &batch[n++];
      c->id = ld16(e + HDR_CMD_ID);
      c->status = 0;
      c->read_len = 0;
      const uint8_t *cdb = map + ld64(e + REQ_CDB_OFF);
      uint32_t iov_cnt = ld32(e + REQ_IOV_CNT);
      uint64_t lba, blocks;
      int write;
      switch (cdb[0]) {
        case 0x88: case 0x8a: lba = be(cdb + 2, 8); blocks = be(cdb + 10, 4); write = cdb[0] == 0x8a; break;
        case 0x28: case 0x2a: lba = be(cdb + 2, 4); blocks = be(cdb + 7, 2); write = cdb[0] == 0x2a; break;
        case 0x35: case 0x91: if (ffd >= 0) fdatasync(ffd); continue;
        default: continue;
      }
      uint64_t off = lba * block_size, left = blocks * block_size;
      if (off + left > lun_bytes) { c->status = 2; errors++; continue; }
      if (!write) c->read_len = (uint32_t)left;
      bytes += left;
      for (uint32_t i = 0; i < iov_cnt && left > 0; i++) {
        const uint8_t *iov = e + REQ_IOV + 16 * i;
        uint64_t base = ld64(iov), l = ld64(iov + 8);
        if (l > left) l = left;
        if (base + l > map_size) { c->status = 2; errors++; break; }
        if (null_mode) {
          /* no data work: what is left is the ring protocol and the simulator */
        } else if (ffd >= 0) {
          ssize_t r = write ? pwrite(ffd, map + base, l, (off_t)off) : pread(ffd, map + base, l, (off_t)off);
          if (r != (ssize_t)l) { c->status = 2; errors++; break; }
        } else if (write) {
          memcpy(ram + off, map + base, l);
        } else {
          memcpy(map + base, ram + off, l);
        }
        off += l;
        left -= l;
      }
    }
    passes++;
    if (n > max_batch) max_batch = n;
    /* Complete newest first: the entry at the tail takes the id of whichever command we answer. */
    uint32_t tail = __atomic_load_n(tail_p, __ATOMIC_RELAXED);
    for (size_t k = n; k-- > 0;) {
      struct cmd *c = &batch[k];
      for (;;) {
        uint8_t *e = cmdr + tail;
        uint32_t lo = ld32(e);
        uint32_t len = lo & ~OP_MASK;
        tail = (tail + len) % cmdr_size;
        if ((lo & OP_MASK) != OP_CMD) continue;
        st16(e + HDR_CMD_ID, c->id);
        e[RSP_STATUS] = c->status;
        uint8_t uf = 0;
        if (c->read_len && (flags & CAP_READ_LEN)) { uf |= UFLAG_READ_LEN; st32(e + RSP_READ_LEN, c->read_len); }
        e[HDR_UFLAGS] = uf;
        break;
      }
      unanswered--;
      if (unanswered == 0) tail = read_pos; /* step over trailing PAD/TMR entries */
      __atomic_store_n(tail_p, tail, __ATOMIC_RELEASE);
      commands++;
      if (kick_each) { if (write(EVENT_FD, &kick_val, 4) == 4) kicks++; }
    }
    if (!kick_each && n) { if (write(EVENT_FD, &kick_val, 4) == 4) kicks++; }
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("{\"commands\":%llu,\"bytes\":%llu,\"errors\":%llu,\"passes\":%llu,\"kicks\":%llu,\"wakeups\":%llu,\"maxBatch\":%llu,"
         "\"cpuUserS\":%.6f,\"cpuSysS\":%.6f}\n",
         (unsigned long long)commands, (unsigned long long)bytes, (unsigned long long)errors, (unsigned long long)passes,
         (unsigned long long)kicks, (unsigned long long)wakeups, (unsigned long long)max_batch,
         ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
  fflush(stdout);
  return 0;
}
