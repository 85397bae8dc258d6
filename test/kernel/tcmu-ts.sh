#!/bin/bash
# Full real-kernel scenario for our daemon (npm run test:kernel):
#   A. start tcmu-ts (system dbus of its own), create a `file` and a `ram` user
#      backstore with our CLI (`create ... --loop`) and get their /dev/sdX
#   B. sg3_utils on both disks: INQUIRY (standard and VPD 00/80/83/b0/b1/b2),
#      READ CAPACITY(10/16), MODE SENSE, TEST UNIT READY, SYNCHRONIZE CACHE,
#      UNMAP, WRITE SAME(16), COMPARE AND WRITE (match and miscompare), EXTENDED COPY
#      (LIST ID USAGE 11b, 10b, 00b; sg node and /dev/sdX) and RECEIVE COPY RESULTS, answers checked
#   C. fio with verify=crc32c on both disks: 4 KiB randwrite QD32 then verify-read,
#      128 KiB sequential write QD8 then verify-read
#   D. ext4 on the file disk: mkfs, files, sync, umount, fsck -fn, remount, sha256 compare
#   E. live resize: attrib/dev_size on the enabled device (RECONFIG_DEVICE),
#      unit attention, READ CAPACITY, rescan, I/O at the new end
#   F. kill -9 of tcmu-ts during a fio write, restart: device adopted, the
#      write job completes without error, a verify-only pass checks every write
#   G. iSCSI export (LIO iscsi on 127.0.0.1:3260, demo mode) of a ram backstore,
#      libiscsi's iscsi-test-cu SCSI suites (per-suite logs, counted in the report)
#   Q. a qcow2 image (qemu-img create, 64 KiB clusters) through our `qcow` handler: fio
#      crc32c verify, qemu-img check of the live image, ext4 as in D, then with the image
#      closed: qemu-img check (no corruption, no leak) and qemu-img compare with a dump
#   Z. teardown with our CLI, clean daemon stop
#   H. (after Z) three short fio jobs, 4 KiB randrw QD8 and QD32, 128 KiB randrw
#      QD8, each through tcmu-ts and through Debian's tcmu-runner, back to back, one
#      daemon at a time, the side that goes first alternating, on two backends: a raw
#      file (tcmu-ts `file`, tcmu-runner `qcow` in raw mode) and a qcow2 image (`qcow`
#      on both, a fresh copy of the same image for each daemon); the report has both
#      and the ratios
#   kernel log clean
# Env (run.mjs --env NAME=VALUE): TS_PHASES (default ABCDEFGQH; A is always run),
# TS_CU_SUITES (space-free comma list of iscsi-test-cu suites, overrides the default set),
# TS_BENCH_SECONDS (fio runtime per job and daemon in H after a 3 s ramp, default 15; 12 jobs),
# TS_BENCH_BACKENDS (H's backends, comma list: file, qcow; default file,qcow),
# TS_BENCH_QCOW_PREALLOC (qemu-img preallocation of H's qcow2 image: off, metadata, falloc, full; default full),
# TS_BENCH_FIRST (tcmu-ts or tcmu-runner: the side that runs H's first job first, default tcmu-ts),
# TS_BENCH_WCE (attrib/emulate_write_cache of H's disks, default 1: write-back, as tcmu-runner's qcow),
# TS_BENCH_WARMUP_SECONDS (untimed fio at every daemon start in H, default 5),
# TS_CPU_PROF=1 (V8 CPU profiles of every tcmu-ts thread into the run's prof/; slows the daemon a lot, read shares not figures),
# TS_BENCH_FILE_OPTIONS (appended to tcmu-ts's file cfgstring in H, e.g. ';threads=2'),
# TS_BENCH_ROUNDS (H's three jobs N times, each round in the mirrored order of the one before, default 1),
# TS_ISCSI_CACHE_DYNAMIC_ACLS (G, default 1).
# Phase H alone (A and Z always run): node test/kernel/run.mjs --skip-prepare --timeout 900 --env TS_PHASES=H [--env TS_BENCH_ROUNDS=2] test/kernel/tcmu-ts.sh
. "$TCMU_REPO/test/kernel/lib.sh"
. "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"

PHASES=${TS_PHASES:-ABCDEFGQH}
phase() { [[ $PHASES == *"$1"* ]]; }
BENCH_S=${TS_BENCH_SECONDS:-15}
MB=$((1024 * 1024))
FILE_SIZE=$((128 * MB))
RAM_SIZE=$((64 * MB))
IQN=iqn.2003-01.org.linux-iscsi.tcmu-vm:tcmu-ts
FIO_COMMON=(--ioengine=libaio --direct=1 --randrepeat=1 --verify=crc32c --verify_fatal=1 --runtime=120)

tk_log "kernel $(uname -r), node $(node --version), daemon from $TCMU_BUILD, phases $PHASES"
mkdir -p /etc/target/pr   # LIO keeps APTPL persistent-reservation state here (PR OUT fails without it)

# ---------------------------------------------------------------- A. daemon + backstores
tk_check "A system dbus-daemon" ts_dbus
t0=$EPOCHREALTIME
if ts_start && ts_alive; then
  tk_pass "A tcmu-ts started" "pid $TS_PID"
  tk_timing A_daemon_ready "$(tk_since "$t0")"
else
  tk_fail "A tcmu-ts started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"
  tk_finish
fi
tk_check "A tcmu-ts owns org.kernel.TCMUService1" ts_log_has 'dbus: owning org.kernel.TCMUService1'

truncate -s $FILE_SIZE /tmp/ts-file.img
t0=$EPOCHREALTIME
SD_FILE=$(ts_create tsfile file//tmp/ts-file.img $FILE_SIZE)
tk_match "A create tsfile --loop gives a disk" '^sd[a-z]+$' "$SD_FILE"
tk_timing A_create_file_loop "$(tk_since "$t0")"
t0=$EPOCHREALTIME
SD_RAM=$(ts_create tsram ram/64M $RAM_SIZE)
tk_match "A create tsram --loop gives a disk" '^sd[a-z]+$' "$SD_RAM"
tk_timing A_create_ram_loop "$(tk_since "$t0")"
ts_cli list 2>&1 | sed 's/^/  list: /'
out=$(ts_cli list --json | node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>{for(const b of JSON.parse(s))console.log(b.name,b.uio?"uio":"-",b.exports.map((e)=>e.disk).join(","))})')
tk_match "A list --json: tsfile has a uio and /dev/$SD_FILE" "(^|
)tsfile uio /dev/$SD_FILE(\$|
)" "$out"
tk_match "A list --json: tsram has a uio and /dev/$SD_RAM" "(^|
)tsram uio /dev/$SD_RAM(\$|
)" "$out"
tk_check "A tsfile served (log)" ts_log_has 'tsfile: uio'
tk_check "A tsram served (log)" ts_log_has 'tsram: uio'
DISKS=()
[ -b "/dev/$SD_FILE" ] && DISKS+=("tsfile:$SD_FILE:$FILE_SIZE")
[ -b "/dev/$SD_RAM" ] && DISKS+=("tsram:$SD_RAM:$RAM_SIZE")
for d in "${DISKS[@]}"; do
  IFS=: read -r n s z <<<"$d"
  tk_check "A /dev/block link for /dev/$s ($(cat /sys/block/$s/dev 2>/dev/null))" ts_dev_block_link "$s"
done

# ---------------------------------------------------------------- B. sg3_utils
sg_checks() {
  local name=$1 sd=$2 size=$3 dev=/dev/$2 out rc serial p
  local P="B $name"
  serial=$(ts_serial "$name")
  out=$(sg_inq "$dev" 2>&1); rc=$?
  tk_eq "$P sg_inq exit" 0 $rc
  tk_match "$P vendor LIO-ORG" 'Vendor identification: LIO-ORG' "$out"
  tk_match "$P product TCMU" 'Product identification: TCMU' "$out"
  tk_match "$P device type disk" 'Peripheral device type: disk' "$out"
  tk_match "$P SPC-4 or later" 'version=0x0[6-7]' "$out"
  tk_match "$P CmdQue=1" 'CmdQue=1' "$out"
  tk_match "$P unit serial in standard INQUIRY" "Unit serial number: $serial" "$out"
  out=$(sg_inq -p 0x00 "$dev" 2>&1); rc=$?
  tk_eq "$P VPD 00h exit" 0 $rc
  for p in 0x80 0x83 0xb0 0xb1 0xb2; do tk_match "$P VPD 00h lists $p" "$p[[:space:]]" "$out"; done
  out=$(sg_inq -p 0x80 "$dev" 2>&1); rc=$?
  tk_eq "$P VPD 80h exit" 0 $rc
  tk_match "$P VPD 80h serial = configfs vpd_unit_serial" "Unit serial number: $serial\$" "$out"
  out=$(sg_inq -p 0x83 "$dev" 2>&1); rc=$?
  tk_eq "$P VPD 83h exit" 0 $rc
  tk_match "$P VPD 83h NAA designator (IEEE 0x1405)" 'designator_type: NAA.*NAA 6, IEEE Company_id: 0x1405' "$out"
  tk_match "$P VPD 83h T10 vendor id LIO-ORG" 'T10 vendor identification.*vendor id: LIO-ORG' "$out"
  out=$(sg_inq -p 0xb0 "$dev" 2>&1); rc=$?
  tk_eq "$P VPD b0h exit" 0 $rc
  local mx; read -r mx <"$CFG/core/user_0/$name/attrib/hw_max_sectors"
  tk_match "$P VPD b0h max transfer = hw_max_sectors ($mx)" "Maximum transfer length: $mx blocks" "$out"
  printf '%s\n' "$out" | grep -iE 'unmap|write same|compare' | sed 's/^/  b0h: /'
  out=$(sg_inq -p 0xb1 "$dev" 2>&1); rc=$?
  tk_eq "$P VPD b1h exit" 0 $rc
  out=$(sg_vpd -p lbpv "$dev" 2>&1); rc=$?
  tk_eq "$P VPD b2h (sg_vpd lbpv) exit" 0 $rc
  printf '%s\n' "$out" | sed 's/^/  b2h: /' | head -12
  out=$(sg_readcap "$dev" 2>&1); rc=$?
  tk_eq "$P READ CAPACITY(10) exit" 0 $rc
  tk_match "$P READ CAPACITY(10) last LBA" "Last LBA=$((size / 512 - 1)) " "$out"
  out=$(sg_readcap --16 "$dev" 2>&1); rc=$?
  tk_eq "$P READ CAPACITY(16) exit" 0 $rc
  tk_match "$P READ CAPACITY(16) blocks" "Number of logical blocks=$((size / 512))" "$out"
  tk_match "$P READ CAPACITY(16) block length 512" 'Logical block length=512 bytes' "$out"
  printf '%s\n' "$out" | grep -E 'lbpme|prot_en' | sed 's/^/  readcap16: /'
  out=$(sg_modes -a "$dev" 2>&1); rc=$?
  tk_eq "$P MODE SENSE (all pages) exit" 0 $rc
  tk_match "$P MODE SENSE has the Caching page" 'Caching' "$out"
  tk_match "$P MODE SENSE has the Control page" 'Control' "$out"
  local wce; read -r wce <"$CFG/core/user_0/$name/attrib/emulate_write_cache"
  # raw MODE SENSE(10) of page 08h: 8-byte header, block descriptors (length in
  # bytes 6-7), then the page: byte 0 = 08h (| PS), byte 2 bit 2 = WCE
  out=$(sg_modes -p 8 -r "$dev" 2>/dev/null | od -An -tx1 | tr -d '\n')
  local hex=($out) pg bd
  bd=$(( 0x${hex[6]:-0}${hex[7]:-0} )); pg=$((8 + bd))
  if [ -n "${hex[$pg]:-}" ] && (( (0x${hex[$pg]} & 0x3f) == 8 )); then
    tk_eq "$P caching page WCE = attrib/emulate_write_cache" "$wce" $(( (0x${hex[$((pg + 2))]} >> 2) & 1 ))
  else
    tk_fail "$P caching page WCE = attrib/emulate_write_cache" "no page 08h in: ${out:0:120}"
  fi
  sg_turs "$dev" >/dev/null 2>&1; tk_eq "$P TEST UNIT READY" 0 $?
  sg_sync "$dev" >/dev/null 2>&1; tk_eq "$P SYNCHRONIZE CACHE(10)" 0 $?
  sg_sync --16 "$dev" >/dev/null 2>&1; tk_eq "$P SYNCHRONIZE CACHE(16)" 0 $?

  # UNMAP 64 blocks at LBA 4096 (after writing them)
  head -c $((64 * 512)) /dev/urandom >/tmp/unmap.pat
  dd if=/tmp/unmap.pat of="$dev" bs=512 seek=4096 oflag=direct conv=notrunc status=none
  out=$(sg_unmap --force --lba=4096 --num=64 "$dev" 2>&1); rc=$?
  tk_eq "$P UNMAP (sg_unmap --lba=4096 --num=64)" 0 $rc
  [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sg_unmap: /' | head -5

  # WRITE SAME(16): one pattern block over 32 blocks at LBA 8192, read back
  head -c 512 /dev/urandom >/tmp/ws.blk
  out=$(sg_write_same --16 --lba=8192 --num=32 --in=/tmp/ws.blk "$dev" 2>&1); rc=$?
  tk_eq "$P WRITE SAME(16) 32 blocks" 0 $rc
  [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sg_write_same: /' | head -5
  for p in $(seq 32); do cat /tmp/ws.blk; done >/tmp/ws.exp
  tk_check "$P WRITE SAME data read back" cmp -s /tmp/ws.exp <(dd if="$dev" bs=512 skip=8192 count=32 iflag=direct status=none)
  out=$(sg_write_same --10 --lba=8300 --num=8 --in=/tmp/ws.blk "$dev" 2>&1); rc=$?
  tk_eq "$P WRITE SAME(10) 8 blocks" 0 $rc

  # COMPARE AND WRITE: compare with the current block, write a new one; then a stale compare must miscompare
  dd if="$dev" of=/tmp/caw.old bs=512 skip=12288 count=1 iflag=direct status=none
  head -c 512 /dev/urandom >/tmp/caw.new
  cat /tmp/caw.old /tmp/caw.new >/tmp/caw.in
  out=$(sg_compare_and_write --lba=12288 --num=1 --in=/tmp/caw.in "$dev" 2>&1); rc=$?
  tk_eq "$P COMPARE AND WRITE (match)" 0 $rc
  [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sg_compare_and_write: /' | head -5
  tk_check "$P COMPARE AND WRITE wrote the new block" cmp -s /tmp/caw.new <(dd if="$dev" bs=512 skip=12288 count=1 iflag=direct status=none)
  out=$(sg_compare_and_write --lba=12288 --num=1 --in=/tmp/caw.in "$dev" 2>&1); rc=$?
  tk_eq "$P COMPARE AND WRITE stale data: MISCOMPARE (exit 14)" 14 $rc
  tk_check "$P COMPARE AND WRITE miscompare left the block alone" cmp -s /tmp/caw.new <(dd if="$dev" bs=512 skip=12288 count=1 iflag=direct status=none)
  # above MAXIMUM COMPARE AND WRITE LENGTH (VPD b0h): ILLEGAL REQUEST (sg3_utils exit 5), nothing written
  local mcaw; mcaw=$(sg_inq -p 0xb0 "$dev" 2>/dev/null | sed -n 's/.*Maximum compare and write length: \([0-9]*\) blocks.*/\1/p')
  if [ -n "$mcaw" ] && [ "$mcaw" -gt 0 ] && [ "$mcaw" -lt 255 ]; then
    local n=$((mcaw + 1))
    dd if="$dev" of=/tmp/caw.old bs=512 skip=12800 count=$n iflag=direct status=none
    head -c $((n * 512)) /dev/urandom >/tmp/caw.new
    cat /tmp/caw.old /tmp/caw.new >/tmp/caw.in
    out=$(sg_compare_and_write --lba=12800 --num=$n --in=/tmp/caw.in "$dev" 2>&1); rc=$?
    tk_eq "$P COMPARE AND WRITE of $n blocks (max $mcaw): ILLEGAL REQUEST" 5 $rc
    [ $rc = 5 ] || printf '%s\n' "$out" | sed 's/^/  sg_compare_and_write: /' | head -5
    tk_check "$P COMPARE AND WRITE of $n blocks left the data alone" cmp -s /tmp/caw.old <(dd if="$dev" bs=512 skip=12800 count=$n iflag=direct status=none)
  fi
  # EXTENDED COPY (INQUIRY 3PC=1): block-to-block copies inside the LU with sg_xcopy, each
  # 16 blocks from LBA 16384 to a fresh destination, read back. LIST ID USAGE: 11b
  # (id_usage=disable), sg_xcopy's default 10b (no list id held), and 00b (hold, list id 7)
  # followed by RECEIVE COPY RESULTS COPY STATUS. Through the sg node (sg_xcopy opens it
  # directly) and through /dev/sdX (sg_xcopy then opens /dev/block/MAJ:MIN: ts_dev_block_link).
  local sg; sg=$(ls "/sys/block/$sd/device/scsi_generic/" 2>/dev/null)
  if sg_inq "$dev" 2>/dev/null | grep -q '3PC=1' && [ -c "/dev/$sg" ]; then
    head -c $((16 * 512)) /dev/urandom >/tmp/xcopy.pat
    dd if=/tmp/xcopy.pat of="$dev" bs=512 seek=16384 oflag=direct conv=notrunc status=none
    local seek=20480 node what args
    for what in "sg:11b" "sg:10b (default)" "sd:10b (default)" "sg:00b"; do
      if [ "${what%%:*}" = sg ]; then node=/dev/$sg; else node=$dev; fi
      case $what in
        *11b*) args=(id_usage=disable) ;;
        *00b*) args=(id_usage=hold list_id=7) ;;
        *) args=() ;;
      esac
      out=$(sg_xcopy if="$node" of="$node" bs=512 skip=16384 seek=$seek count=16 "${args[@]}" 2>&1); rc=$?
      tk_eq "$P EXTENDED COPY (sg_xcopy on $node, 16 blocks to LBA $seek, LIST ID USAGE ${what#*:})" 0 $rc
      [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sg_xcopy: /' | head -8
      tk_check "$P EXTENDED COPY data at LBA $seek" cmp -s /tmp/xcopy.pat <(dd if="$dev" bs=512 skip=$seek count=16 iflag=direct status=none)
      seek=$((seek + 4096))
    done
    # RECEIVE COPY RESULTS (84h), COPY STATUS (SA 00h) for list id 7, allocation length 12:
    # AVAILABLE DATA 8, COPY MANAGER STATUS 01h (completed), 1 segment, TRANSFER COUNT 8192 bytes
    rm -f /tmp/rcr.bin
    out=$(sg_raw -r 12 -o /tmp/rcr.bin "/dev/$sg" 84 00 07 00 00 00 00 00 00 00 00 00 00 0c 00 00 2>&1); rc=$?
    tk_eq "$P RECEIVE COPY RESULTS COPY STATUS (list id 7) exit" 0 $rc
    [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sg_raw: /' | head -8
    out=$(od -An -tx1 /tmp/rcr.bin 2>/dev/null | tr -s ' \n' ' '); out=${out# }; out=${out% }
    tk_eq "$P COPY STATUS data (completed, 1 segment, 8192 bytes)" "00 00 00 08 01 00 01 00 00 00 20 00" "$out"
    # the completed status was transferred whole: nothing held for list id 7 any more
    out=$(sg_raw -r 12 "/dev/$sg" 84 00 07 00 00 00 00 00 00 00 00 00 00 0c 00 00 2>&1); rc=$?
    tk_match "$P COPY STATUS again (list id 7 released): INVALID FIELD IN CDB" 'Invalid field in cdb' "$out"
  else
    tk_log "$P INQUIRY 3PC=0: no EXTENDED COPY check"
  fi
}
if phase B; then
  t0=$EPOCHREALTIME
  for d in "${DISKS[@]}"; do IFS=: read -r n s z <<<"$d"; sg_checks "$n" "$s" "$z"; done
  tk_timing B_sg3_utils "$(tk_since "$t0")"
fi

# ---------------------------------------------------------------- C. fio verify
if phase C; then
  for d in "${DISKS[@]}"; do
    IFS=: read -r n s z <<<"$d"
    ts_fio "verify-4k-randwrite-qd32-$n" --filename="/dev/$s" "${FIO_COMMON[@]}" --rw=randwrite --bs=4k --iodepth=32 --size=16M --do_verify=1
    tk_eq "C $n fio 4 KiB randwrite QD32 + crc32c verify" 0 $?
    ts_fio "verify-128k-seq-qd8-$n" --filename="/dev/$s" "${FIO_COMMON[@]}" --rw=write --bs=128k --iodepth=8 --offset=16M --size=32M --do_verify=1
    tk_eq "C $n fio 128 KiB sequential write QD8 + crc32c verify" 0 $?
  done
fi

# ---------------------------------------------------------------- D. ext4
# ext4_checks P SD: mkfs, files, sync, umount, fsck -fn, remount read-only after dropping
# the page cache, sha256 compare (also phase Q's, on the qcow disk)
ext4_checks() {
  local P=$1 dev=/dev/$2 out rc i
  mkdir -p /mnt/ts
  mkfs.ext4 -q -F "$dev" >/tmp/mkfs.out 2>&1; tk_eq "$P mkfs.ext4" 0 $?
  sed 's/^/  mkfs: /' /tmp/mkfs.out
  if mount -t ext4 "$dev" /mnt/ts; then
    tk_pass "$P mount"
    mkdir -p /mnt/ts/a/b/c
    for i in $(seq 1 12); do head -c $((i * 96 * 1024 + i)) /dev/urandom >"/mnt/ts/a/f$i"; done
    head -c $((6 * MB)) /dev/urandom >/mnt/ts/a/b/c/big
    seq 1 20000 >/mnt/ts/a/b/numbers.txt
    (cd /mnt/ts && find . -type f -print0 | sort -z | xargs -0 sha256sum) >/tmp/sums
    sync; tk_eq "$P sync" 0 $?
    umount /mnt/ts; tk_eq "$P umount" 0 $?
    out=$(fsck.ext4 -fn "$dev" 2>&1); rc=$?
    tk_eq "$P fsck.ext4 -fn clean" 0 $rc
    [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  fsck: /' | head -20
    echo 3 >/proc/sys/vm/drop_caches
    if mount -t ext4 -o ro "$dev" /mnt/ts; then
      tk_pass "$P remount"
      out=$(cd /mnt/ts && sha256sum -c --quiet /tmp/sums 2>&1); rc=$?
      tk_eq "$P sha256 of $(grep -c . /tmp/sums) files after remount" 0 $rc
      [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  sha256sum: /' | head
      umount /mnt/ts
    else
      tk_fail "$P remount"
    fi
  else
    tk_fail "$P mount"
  fi
}
if phase D && [ -b "/dev/$SD_FILE" ]; then
  t0=$EPOCHREALTIME
  ext4_checks D "$SD_FILE"
  tk_timing D_ext4 "$(tk_since "$t0")"
fi

# ---------------------------------------------------------------- E. live resize
if phase E && [ -b "/dev/$SD_FILE" ]; then
  NEW=$((FILE_SIZE + 64 * MB))
  DEVDIR=$CFG/core/user_0/tsfile
  # On 6.1, attrib/dev_size is writable; on an enabled device the kernel sends
  # RECONFIG_DEVICE (DEV_SIZE) and fails the write if the daemon refuses.
  # (`control` dev_size=N only updates the kernel's copy, with no event.)
  t0=$EPOCHREALTIME
  tk_put "$DEVDIR/attrib/dev_size" $NEW; tk_eq "E write attrib/dev_size=$NEW" 0 $?
  tk_timing E_reconfig_write "$(tk_since "$t0")"
  read -r v <"$DEVDIR/attrib/dev_size"; tk_eq "E attrib/dev_size reads back" $NEW "$v"
  tk_wait 5 ts_log_has "dev_size now $NEW bytes"; tk_eq "E daemon logged the new size" 0 $?
  out=$(sg_turs "/dev/$SD_FILE" 2>&1); rc=$?
  tk_match "E unit attention: capacity data has changed" 'Capacity data has changed' "$out"
  out=$(sg_readcap --16 "/dev/$SD_FILE" 2>&1)
  tk_match "E READ CAPACITY(16) shows the new size" "Number of logical blocks=$((NEW / 512))" "$out"
  echo 1 >"/sys/block/$SD_FILE/device/rescan"
  tk_wait 5 bash -c "[ \$(cat /sys/block/$SD_FILE/size) = $((NEW / 512)) ]"
  read -r v <"/sys/block/$SD_FILE/size"; tk_eq "E block device size after rescan (sectors)" $((NEW / 512)) "$v"
  head -c $MB /dev/urandom >/tmp/tail.pat
  dd if=/tmp/tail.pat of="/dev/$SD_FILE" bs=1M seek=$((NEW / MB - 1)) oflag=direct status=none; tk_eq "E write the last MiB" 0 $?
  tk_check "E read the last MiB back" cmp -s /tmp/tail.pat <(dd if="/dev/$SD_FILE" bs=1M skip=$((NEW / MB - 1)) count=1 iflag=direct status=none)
  tk_check "E backing file has the last MiB" cmp -s /tmp/tail.pat <(dd if=/tmp/ts-file.img bs=1M skip=$((NEW / MB - 1)) count=1 status=none)
  # READ(16) of the first block past the new end, straight to the daemon (sg_raw): LBA OUT OF RANGE
  lba=$(printf '%016x' $((NEW / 512)) | sed 's/../& /g')
  out=$(sg_raw -r 512 "/dev/$SD_FILE" 88 00 $lba 00 00 00 01 00 00 2>&1)
  tk_match "E READ(16) past the new end: LBA out of range" 'Logical block address out of range' "$out"
  lba=$(printf '%016x' $((NEW / 512 - 1)) | sed 's/../& /g')
  sg_raw -r 512 "/dev/$SD_FILE" 88 00 $lba 00 00 00 01 00 00 >/dev/null 2>&1; tk_eq "E READ(16) of the new last block" 0 $?
  # control's dev_size on a live device: the kernel takes it without asking the daemon
  tk_put "$DEVDIR/control" "dev_size=$NEW"; tk_log "info: control dev_size=$NEW on the enabled device: write status $?"
  FILE_SIZE=$NEW
fi

# ---------------------------------------------------------------- F. kill -9 during writes
if phase F && [ -b "/dev/$SD_FILE" ]; then
  KILLJOB=(--filename="/dev/$SD_FILE" "${FIO_COMMON[@]}" --rw=randwrite --bs=4k --iodepth=16 --size=32M)
  # let it write ~1500 commands, then kill the daemon under it
  ts_fio_writing kill9 "$SD_FILE" 1500 "${KILLJOB[@]}"
  tk_check "F fio still writing when the daemon dies" kill -0 $FIO
  OLD=$TS_PID
  kill -KILL "$OLD"; wait "$OLD" 2>/dev/null
  tk_log "killed tcmu-ts (pid $OLD) with SIGKILL $(tk_since "$FIO_T0") s into the write job"
  tk_sleep 1
  t1=$EPOCHREALTIME
  if ts_start && ts_alive; then tk_pass "F tcmu-ts restarted" "pid $TS_PID"; else tk_fail "F tcmu-ts restarted" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"; fi
  tk_timing F_restart_to_ready "$(tk_since "$t1")"
  tk_match "F device adopted after restart (log)" 'tsfile: uio[0-9]+: serving file//tmp/ts-file.img.*adopted, ring reset' "$(cat "$TS_OUT")"
  tk_match "F tsram adopted too (log)" 'tsram: uio[0-9]+: serving ram/64M.*adopted' "$(cat "$TS_OUT")"
  ts_fio_survived kill9 F "${KILLJOB[@]}"
  if dmesg | grep -E "I/O error.*$SD_FILE|$SD_FILE.*(FAILED|I/O error)" >/tmp/ioerr; then
    tk_fail "F no I/O error on /dev/$SD_FILE in the kernel log" "$(head -2 /tmp/ioerr | tr '\n' ' ')"
  else
    tk_pass "F no I/O error on /dev/$SD_FILE in the kernel log"
  fi
  dmesg | grep -E "$SD_FILE|tcmu|TCMU" | tail -8 | sed 's/^/  dmesg: /'
fi

# ---------------------------------------------------------------- G. iSCSI + iscsi-test-cu
# The SBC/SPC suites of libiscsi's SCSI family that apply to a disk; not run:
# Sanitize (needs -S), MultipathIO (needs two URLs), the iSCSI family (the
# kernel's iSCSI target, not the backstore), and for time the 12-byte variants
# Read12, Write12, Verify12, WriteVerify12 (same decoder paths as 10/16; ~90 s
# under TCG): TS_CU_SUITES=Read12,Write12,Verify12,WriteVerify12 runs them.
CU_DEFAULT=TestUnitReady,Inquiry,Mandatory,ReadCapacity10,ReadCapacity16,Read6,Read10,Read16,Write10,Write16,WriteVerify10,WriteVerify16,Verify10,Verify16,WriteSame10,WriteSame16,Unmap,CompareAndWrite,OrWrite,ModeSense6,StartStopUnit,PreventAllow,Prefetch10,Prefetch16,GetLBAStatus,ReadDefectData10,ReadDefectData12,ReportSupportedOpcodes,ReadOnly,NoMedia,Reserve6,PrinReadKeys,PrinServiceactionRange,PrinReportCapabilities,ProutRegister,ProutReserve,ProutClear,ProutPreempt,ExtendedCopy,ReceiveCopyResults,WriteAtomic16
if phase G; then
  t0=$EPOCHREALTIME
  # hw_max_sectors 65536: libiscsi 1.19's tests move up to 256 blocks per READ/WRITE
  # (WriteSame16.Unmap and ExtendedCopy.Simple 65536 and 2048) without reading the
  # Block Limits page; with the kernel's default 128 they fail on our (correct)
  # INVALID FIELD IN CDB for transfers above MAXIMUM TRANSFER LENGTH
  out=$(ts_cli create tsiscsi ram/64M --size $RAM_SIZE --max-sectors 65536 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/  create: /'
  tk_eq "G create tsiscsi (no --loop)" 0 $rc
  T=$CFG/iscsi/$IQN/tpgt_1
  ok=1
  mkdir -p "$T/lun/lun_0" && ln -s "$CFG/core/user_0/tsiscsi" "$T/lun/lun_0/tsiscsi_port" || ok=0
  mkdir -p "$T/np/127.0.0.1:3260" || ok=0
  tk_put "$T/attrib/authentication" 0 && tk_put "$T/attrib/generate_node_acls" 1 && tk_put "$T/attrib/cache_dynamic_acls" "${TS_ISCSI_CACHE_DYNAMIC_ACLS:-1}" \
    && tk_put "$T/attrib/demo_mode_write_protect" 0 && tk_put "$T/enable" 1 || ok=0
  tk_eq "G iSCSI target $IQN tpgt 1, LUN 0, portal 127.0.0.1:3260, demo mode" 1 $ok
  URL=iscsi://127.0.0.1/$IQN/0
  out=$(iscsi-inq "$URL" 2>&1); rc=$?
  tk_eq "G iscsi-inq exit" 0 $rc
  tk_match "G iscsi-inq vendor over iSCSI" 'Vendor:LIO-ORG' "$out"
  out=$(iscsi-readcapacity16 "$URL" 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/  iscsi-readcapacity16: /' | head -8
  tk_eq "G iscsi-readcapacity16 exit" 0 $rc
  tk_match "G iscsi-readcapacity16 size over iSCSI" "$((RAM_SIZE / 512))|$((RAM_SIZE / 512 - 1))|$RAM_SIZE" "$out"
  mkdir -p "$TCMU_OUT/iscsi-test-cu"
  IFS=, read -ra SUITES <<<"${TS_CU_SUITES:-$CU_DEFAULT}"
  for s in "${SUITES[@]}"; do
    log=$TCMU_OUT/iscsi-test-cu/$s.log
    t1=$EPOCHREALTIME
    timeout -k 5 150 iscsi-test-cu --dataloss -t "SCSI.$s" "$URL" >"$log" 2>&1
    rc=$?
    printf 'iscsi-test-cu exit status: %s\n' $rc >>"$log"
    sum=$(grep -E '^ +tests ' "$log" | tr -s ' ')
    tk_log "iscsi-test-cu SCSI.$s: exit $rc,$sum ($(tk_since "$t1") s)"
    [ $rc = 124 ] && tk_fail "G iscsi-test-cu SCSI.$s finished within 150 s"
    ts_alive || { tk_fail "G tcmu-ts alive after iscsi-test-cu SCSI.$s"; break; }
  done
  tk_timing G_iscsi_test_cu "$(tk_since "$t0")"
  # per suite: the test counts go to the report (results.mjs); a failed test is a finding, listed there.
  # Failures of tests the daemon never sees do not fail the check (they stay in the report):
  # LIO core emulates RESERVE/RELEASE and PERSISTENT RESERVE IN/OUT for user backstores
  # (passthrough_parse_cdb). Reserve6.Logout/ITNexusLoss (the first initiator's SPC-2
  # reservation still held after its logout) fail in most runs here, with cache_dynamic_acls
  # 1 or 0: a race with LIO's session teardown. LIO drops an SPC-2 reservation only in
  # transport_deregister_session, which runs ~15-20 ms (TCG) after it answered the Logout;
  # libiscsi relogs in and sends the second initiator's RESERVE(6) within ~10 ms. With
  # dynamic debug on (target_core_pr.c, target_core_transport.c): "Received logout request
  # CLOSESESSION ... SID: 18" 30.7637, RESERVE(6) from iscsi-test-2 refused (sense_reason 16)
  # at 30.7726-30.7772, "Deregistered fabric_sess" for SID 18 at 30.7848.
  KERNEL_SIDE=" Reserve6.Logout Reserve6.ITNexusLoss "
  for log in "$TCMU_OUT"/iscsi-test-cu/*.log; do
    s=${log##*/}; s=${s%.log}
    # "tests  Total Ran Passed Failed Inactive"; a test's verdict may come lines after its "Test: name ..."
    read -r _ total ran passed failed _ < <(grep -E '^ +tests ' "$log")
    names=$(awk '/Test: [^ ]+ \.\.\./ { for (i = 1; i <= NF; i++) if ($i == "Test:") t = $(i + 1) }
                 /(^|\.\.\.)FAILED$/ { printf "%s ", t }' "$log")
    ours= theirs=
    for t in $names; do if [[ $KERNEL_SIDE == *" $s.$t "* ]]; then theirs+="$t "; else ours+="$t "; fi; done
    if [ -z "$failed" ]; then tk_fail "G iscsi-test-cu SCSI.$s" "no run summary (crashed or timed out)"
    elif [ "$failed" = 0 ]; then tk_pass "G iscsi-test-cu SCSI.$s" "$passed of $total passed (skips count as passed here)"
    elif [ -z "$ours" ]; then tk_pass "G iscsi-test-cu SCSI.$s" "$failed of $total failed, all kernel-side (LIO core, not the daemon): $theirs"
    else tk_fail "G iscsi-test-cu SCSI.$s" "$failed of $total failed: $ours${theirs:+(kernel-side: $theirs)}"
    fi
  done
  # teardown of the iSCSI target, then the backstore
  rm -f "$T/lun/lun_0/tsiscsi_port"; rmdir "$T/lun/lun_0" "$T/np/127.0.0.1:3260" "$T" "$CFG/iscsi/$IQN"
  tk_eq "G iSCSI target removed" 0 $?
  ts_cli delete tsiscsi >/dev/null 2>&1; tk_eq "G delete tsiscsi" 0 $?
fi

# ---------------------------------------------------------------- Q. qcow2 image (qcow handler)
# A qcow2 image made by qemu-img (v3, 64 KiB clusters, nothing preallocated: the first write
# to a cluster allocates it, the first ones an L2 table and refcount entries too), served by
# the A daemon's qcow handler through tcm_loop: fio crc32c verify (4 KiB random, 128 KiB
# sequential, 4-192 KiB random sizes that straddle cluster boundaries), `qemu-img check`
# of the live image (the handler writes metadata through at once, so an idle image is
# consistent; its reserved clusters count as leaks), ext4 as in D (mkfs.ext4 discards, so
# UNMAP frees clusters), a dump of the whole disk, then with the backstore gone (image
# closed): `qemu-img check` with no corruption and no leak, and `qemu-img compare` of the
# image with the dump: qemu, the format's reference, reads what our daemon served.
QCOW_IMG=/tmp/ts-qcow.qcow2
QCOW_SIZE=$((128 * MB))
# q_check NAME IMAGE [OPTIONS...]: `qemu-img check` finds no corruption and no check error
# (exit 0 clean, 3 leaks only: wasted space, no harm to data); the detail has the leak count
# and the allocation line. Sets Q_LEAKS.
q_check() {
  local name=$1 img=$2 out rc; shift 2
  out=$(qemu-img check "$@" "$img" 2>&1); rc=$?
  Q_LEAKS=0
  [[ $out =~ ([0-9]+)\ leaked\ cluster ]] && Q_LEAKS=${BASH_REMATCH[1]}
  local alloc; alloc=$(printf '%s\n' "$out" | grep -m1 'allocated')
  if [ $rc = 0 ] || [ $rc = 3 ]; then
    tk_pass "$name" "exit $rc, $Q_LEAKS leaked clusters; $alloc"
  else
    tk_fail "$name" "exit $rc: $(printf '%s\n' "$out" | grep -v '^Leaked' | head -6)"
  fi
  [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  qemu-img check: /' | head -12
}
_q_released() {   # the daemon closed tsqcow's handler (after `delete`)
  local l
  while IFS= read -r l; do [[ $l == *'tsqcow: uio'*': released'* ]] && return 0; done <"$TS_OUT"
  return 1
}
if phase Q; then
  t0=$EPOCHREALTIME
  rm -f "$QCOW_IMG"
  out=$(qemu-img create -f qcow2 -o cluster_size=64k "$QCOW_IMG" $QCOW_SIZE 2>&1); rc=$?
  tk_eq "Q qemu-img create -f qcow2 -o cluster_size=64k, $((QCOW_SIZE / MB)) MiB" 0 $rc
  [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  qemu-img: /'
  SD_QCOW=$(ts_create tsqcow "qcow/$QCOW_IMG" $QCOW_SIZE)
  tk_match "Q create tsqcow --loop gives a disk" '^sd[a-z]+$' "$SD_QCOW"
  tk_check "Q tsqcow served as qcow2 v3 with 64 KiB clusters (log)" ts_log_has "qcow: qcow2 v3, 64 KiB clusters, 16-bit refcounts, $QCOW_SIZE bytes: $QCOW_IMG"
  tk_timing Q_create "$(tk_since "$t0")"
fi
if phase Q && [ -b "/dev/$SD_QCOW" ]; then
  dev=/dev/$SD_QCOW
  ts_fio verify-4k-randwrite-qd32-tsqcow --filename=$dev "${FIO_COMMON[@]}" --rw=randwrite --bs=4k --iodepth=32 --size=16M --do_verify=1
  tk_eq "Q fio 4 KiB randwrite QD32 + crc32c verify (clusters allocated by 4 KiB writes)" 0 $?
  ts_fio verify-128k-seq-qd8-tsqcow --filename=$dev "${FIO_COMMON[@]}" --rw=write --bs=128k --iodepth=8 --offset=16M --size=32M --do_verify=1
  tk_eq "Q fio 128 KiB sequential write QD8 + crc32c verify" 0 $?
  ts_fio verify-4-192k-randwrite-qd16-tsqcow --filename=$dev "${FIO_COMMON[@]}" --rw=randwrite --bsrange=4k-192k --iodepth=16 --offset=48M --size=32M --do_verify=1
  tk_eq "Q fio 4-192 KiB randwrite QD16 + crc32c verify (writes across cluster boundaries)" 0 $?
  # fio's last writes have completed (and fio flushed); -U: the image is open in the daemon
  q_check "Q qemu-img check -U of the live image: no corruption" "$QCOW_IMG" -U
  t1=$EPOCHREALTIME
  ext4_checks "Q tsqcow" "$SD_QCOW"
  tk_timing Q_ext4 "$(tk_since "$t1")"
  dd if=$dev of=/tmp/qcow-dump.raw bs=1M iflag=direct status=none
  tk_eq "Q dump of /dev/$SD_QCOW ($((QCOW_SIZE / MB)) MiB)" $QCOW_SIZE "$(stat -c %s /tmp/qcow-dump.raw)"
  out=$(ts_cli delete tsqcow 2>&1); tk_eq "Q delete tsqcow" 0 $?
  printf '%s\n' "$out" | sed 's/^/  delete: /'
  # wait for the handler's close (unused reserved clusters go back there), not for a fixed time
  tk_wait 30 _q_released; tk_eq "Q tsqcow released by the daemon (image closed)" 0 $?
  q_check "Q qemu-img check after close: no corruption" "$QCOW_IMG"
  tk_eq "Q qemu-img check after close: no leaked cluster" 0 "$Q_LEAKS"
  out=$(qemu-img compare -f qcow2 -F raw "$QCOW_IMG" /tmp/qcow-dump.raw 2>&1); rc=$?
  tk_eq "Q qemu-img compare: the image reads as the disk served it" 0 $rc
  printf '%s\n' "$out" | sed 's/^/  qemu-img compare: /' | head -4
  qemu-img info "$QCOW_IMG" 2>&1 | grep -E 'disk size|cluster_size|compat' | sed 's/^/  qemu-img info: /'
  rm -f /tmp/qcow-dump.raw "$QCOW_IMG"   # tmpfs: the guest's RAM, H needs its share
  tk_timing Q_total "$(tk_since "$t0")"
fi

# ---------------------------------------------------------------- Z. our teardown (before H: H starts daemons of its own)
for n in tsfile tsram tsqcow; do
  [ -d "$CFG/core/user_0/$n" ] || continue
  out=$(ts_cli delete $n 2>&1); tk_eq "Z delete $n" 0 $?
  printf '%s\n' "$out" | sed 's/^/  delete: /'
done
out=$(ts_cli list 2>&1); tk_match "Z nothing left (list)" '^No user backstores' "$out"
tk_check "Z no uio device left" bash -c '! ls /sys/class/uio/ 2>/dev/null | grep -q .'
tk_check "Z no sd disk left" bash -c '! ls -d /sys/block/sd* 2>/dev/null | grep -q .'
t0=$EPOCHREALTIME
ts_stop; tk_eq "Z tcmu-ts stops on SIGTERM with status 0" 0 $?
tk_timing Z_daemon_stop "$(tk_since "$t0")"
tk_check "Z tcmu-ts said stopped" ts_log_has '] stopped'
errs=$(grep -h '\[ERROR\]' "$TCMU_OUT"/tcmu-ts-*.out 2>/dev/null)
if [ -z "$errs" ]; then tk_pass "Z no ERROR in the daemon's log"; else tk_fail "Z no ERROR in the daemon's log" "$(printf '%s' "$errs" | head -3 | tr '\n' ' ')"; fi

# ---------------------------------------------------------------- H. side by side with tcmu-runner
# After Z: the A-G daemon and its disks are gone, so each side is a fresh daemon serving its
# bench disks and nothing else, one daemon at a time (both want org.kernel.TCMUService1, and
# each logs an error for a device whose handler it lacks). Two bench disks per session (one
# per backend, TS_BENCH_BACKENDS, default file,qcow), made the same way on both sides
# (tk_user_dev + tk_loop_export on a tcm_loop target each, same attributes), on the guest's
# tmpfs:
#   file  the same 64 MiB raw file, zero-filled once (every page allocated before either side
#         runs): `file` for tcmu-ts, `qcow` (raw mode) for tcmu-runner
#   qcow  a 64 MiB qcow2 image, v3, 64 KiB clusters, made once by qemu-img with
#         preallocation=TS_BENCH_QCOW_PREALLOC (default full: L2 tables and data clusters
#         allocated and zero-filled, so the jobs measure the lookup and the data path, not
#         cluster allocation; `off` measures allocation too), copied afresh at every daemon
#         start, served by `qcow` on both sides (tcmu-runner wants the device size to be the
#         virtual size: 64 MiB on both); after each session `qemu-img check` of the copy (a
#         check for tcmu-ts's, a log line for tcmu-runner's)
# Write cache: tcmu-runner's qcow handler reports WCE=1 (write-back) even with the kernel's
# default attrib/emulate_write_cache=0 (sd: "Write cache: enabled"); tcmu-ts follows the
# attribute, and 0 makes it write through (fdatasync after every write). The same
# durability on both sides means write-back:
# attrib/emulate_write_cache=1 before enable (our CLI has no option for it, hence no
# `create --loop` here). TS_BENCH_WCE=0 measures the kernel default instead.
# Jobs, for each backend: fio randrw 50/50 over the first 48 MiB, libaio,
# O_DIRECT, BENCH_S s after a 3 s ramp (JIT warm-up, first-touch work), same random sequence:
#   4k-qd8    per-command cost at a moderate queue depth (the original job)
#   4k-qd32   the same with 4x the commands in flight: how each daemon overlaps and batches
#             (ring reads, completions, worker parallelism)
#   128k-qd8  transfer size instead of depth, the rest as 4k-qd8 (one variable at a time):
#             the data path (copies between the ring's data area and the file). QD8 x 128 KiB
#             = 1 MiB in flight, far inside the data area, so the job stays bound by the data
#             path rather than queueing; QD32 would only lengthen the queue in front of it.
#             All disks get hw_max_sectors=256 so a 128 KiB I/O is one SCSI command (the
#             kernel's default of 128 blocks would split it into two 64 KiB commands).
# (fio names: bench-<job>-<side> for file, bench-qcow-<job>-<side> for qcow.)
# Order: each job runs on both sides back to back (same host load, as far as a shared host
# allows), and the side that goes first alternates from job to job, so neither side always
# goes first, or always runs right after a daemon start; file's three jobs, then qcow's:
#   tcmu-ts[4k-qd8] tcmu-runner[4k-qd8 4k-qd32] tcmu-ts[4k-qd32 128k-qd8]
#   tcmu-runner[128k-qd8 qcow-4k-qd8] tcmu-ts[qcow-4k-qd8 qcow-4k-qd32]
#   tcmu-runner[qcow-4k-qd32 qcow-128k-qd8] tcmu-ts[qcow-128k-qd8]
# Seven daemon sessions, each starting with an untimed warm-up of both disks at once
# (TS_BENCH_WARMUP_SECONDS, 5 s, both block sizes), so that no measured job pays for a
# daemon's cold start (JIT, first touches) and the job right after a start is not at a
# disadvantage. Switching costs ~2 s (tcmu-runner) to ~7 s (tcmu-ts: node start-up) on a
# quiet host. TS_BENCH_FIRST=tcmu-runner mirrors the pattern; TS_BENCH_ROUNDS=N repeats the
# jobs N times, every round mirrored (tcmu-ts first in round 1 is tcmu-runner first in
# round 2), and the report adds the figures up per job across rounds: on a shared host one
# round's ratios move by +-30%.
H_JOBS=(4k-qd8:4k:8 4k-qd32:4k:32 128k-qd8:128k:8)
IFS=, read -ra H_BACKENDS <<<"${TS_BENCH_BACKENDS:-file,qcow}"
H_FIO=(--ioengine=libaio --direct=1 --rw=randrw --rwmixread=50 --size=48M --time_based --runtime=$BENCH_S --ramp_time=3 --randrepeat=1)
H_FILE=/tmp/bench.raw
H_QCOW=/tmp/bench.qcow2
H_QCOW_TEMPLATE=/tmp/bench-template.qcow2
H_QPRE=${TS_BENCH_QCOW_PREALLOC:-full}
H_WCE=${TS_BENCH_WCE:-1}
H_WARM_S=${TS_BENCH_WARMUP_SECONDS:-5}
H_ROUNDS=${TS_BENCH_ROUNDS:-1}
declare -A H_WWN=([file]=naa.50014050000000b1 [qcow]=naa.50014050000000b2)
declare -A H_DISK=()   # backend -> sdX of the current session
H_SIDE= H_SESSION=0 H_TS_OUTS=() RUNNER=
_h_bus_owned() {
  dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner \
    string:org.kernel.TCMUService1 2>/dev/null | grep -q 'boolean true'
}
_h_bus_free() { ! _h_bus_owned; }
# h_name SIDE BACKEND: the bench backstore's name (tsbench, trbench, tsbench-qcow, trbench-qcow)
h_name() { printf '%sbench%s' "$1" "$([ "$2" = qcow ] && echo -qcow)"; }
# h_disk NAME CONFIG WWN: create and enable a bench backstore, export it through tcm_loop;
# prints the disk (sdX)
h_disk() {
  local dir=$CFG/core/user_0/$1
  tk_user_dev "$dir" "$2" $RAM_SIZE hw_max_sectors=256 attrib/emulate_write_cache=$H_WCE || return 1
  tk_loop_export "$dir" "$3"
}
# h_up ts|tr: start that side's daemon and create its bench disks (H_DISK; a missing one on failure)
h_up() {
  local t0=$EPOCHREALTIME who b cfg ct sd ok=1 warm=()
  H_SESSION=$((H_SESSION + 1)) H_SIDE=$1 H_DISK=()
  tk_wait 10 _h_bus_free || tk_log "H org.kernel.TCMUService1 still owned before session $H_SESSION"
  if [ "$1" = ts ]; then
    who=tcmu-ts
    if ts_start && ts_alive; then
      tk_pass "H $H_SESSION tcmu-ts started" "pid $TS_PID"
    else
      tk_fail "H $H_SESSION tcmu-ts started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"; return 1
    fi
    H_TS_OUTS+=("$TS_OUT")
  else
    who=tcmu-runner
    mkdir -p /tmp/tr-log
    tcmu-runner -l /tmp/tr-log >>"$TCMU_OUT/tcmu-runner.out" 2>&1 &
    RUNNER=$!
    if tk_wait 30 _h_bus_owned; then
      tk_pass "H $H_SESSION tcmu-runner ready (owns org.kernel.TCMUService1)" "pid $RUNNER"
    else
      tk_fail "H $H_SESSION tcmu-runner ready (owns org.kernel.TCMUService1)" "not within 30 s"; return 1
    fi
  fi
  for b in "${H_BACKENDS[@]}"; do
    case $1:$b in
      ts:file) cfg=file/$H_FILE${TS_BENCH_FILE_OPTIONS:-} ;;
      tr:file) cfg=qcow/$H_FILE ;;   # not a qcow image: served raw
      *:qcow)
        # a fresh copy of the template for every daemon: both sides start from the same image
        cp "$H_QCOW_TEMPLATE" "$H_QCOW" || { tk_fail "H $H_SESSION fresh copy of the qcow2 template"; ok=0; continue; }
        cfg=qcow/$H_QCOW ;;
    esac
    sd=$(h_disk "$(h_name "$1" "$b")" "$cfg" "${H_WWN[$b]}")
    tk_match "H $H_SESSION create $(h_name "$1" "$b") ($who, $cfg), tcm_loop disk" '^sd[a-z]+$' "$sd"
    if [ -n "$sd" ]; then
      H_DISK[$b]=$sd
      read -r ct </sys/block/$sd/device/scsi_disk/*/cache_type
      tk_log "H $H_SESSION $b: /dev/$sd: max_sectors_kb $(</sys/block/$sd/queue/max_sectors_kb), cache_type $ct (emulate_write_cache=$H_WCE)"
      warm+=(--name="warmup-$b" --filename="/dev/$sd")
    else
      ok=0
    fi
  done
  tk_timing "H_${H_SESSION}_${1}_up" "$(tk_since "$t0")"
  [ $ok = 1 ] || return 1
  # untimed warm-up of every disk at once, both block sizes: no measured job pays for a
  # daemon's cold start (JIT, first touch of the data area and of the file's pages)
  t0=$EPOCHREALTIME
  fio "${H_FIO[@]}" --runtime=$H_WARM_S --ramp_time=0 --bsrange=4k-128k --iodepth=8 "${warm[@]}" \
    --output-format=json --output=/tmp/warmup.json 2>/dev/null || tk_log "H $H_SESSION warm-up fio failed"
  tk_timing "H_${H_SESSION}_${1}_warmup" "$(tk_since "$t0")"
}
# h_rm NAME WWN: remove a bench disk's tcm_loop export and backstore (bash only: a CLI run
# costs seconds of node start-up under TCG)
h_rm() {
  [ -d "$CFG/loopback/$2" ] && { tk_loop_remove "$2" || return 1; }
  [ -d "$CFG/core/user_0/$1" ] && { rmdir "$CFG/core/user_0/$1" || return 1; }
  return 0
}
# h_down: delete the bench disks, stop the daemon; then (image closed) check the qcow2 copy
h_down() {
  local t0=$EPOCHREALTIME rc b out
  for b in "${H_BACKENDS[@]}"; do
    h_rm "$(h_name "$H_SIDE" "$b")" "${H_WWN[$b]}"; tk_eq "H $H_SESSION remove $(h_name "$H_SIDE" "$b")" 0 $?
  done
  if [ "$H_SIDE" = ts ]; then
    ts_stop; tk_eq "H $H_SESSION tcmu-ts stops on SIGTERM with status 0" 0 $?
  elif [ "$H_SIDE" = tr ]; then
    kill "$RUNNER" 2>/dev/null; wait "$RUNNER" 2>/dev/null; rc=$?
    tk_log "H $H_SESSION tcmu-runner exit status $rc after SIGTERM"
  fi
  if [[ " ${H_BACKENDS[*]} " == *" qcow "* ]] && [ -f "$H_QCOW" ]; then
    if [ "$H_SIDE" = ts ]; then
      q_check "H $H_SESSION qemu-img check of tcmu-ts's qcow2 image after its session" "$H_QCOW"
    else
      # not ours to judge: the report shows it
      out=$(qemu-img check "$H_QCOW" 2>&1); rc=$?
      tk_log "H $H_SESSION qemu-img check of tcmu-runner's qcow2 image: exit $rc, $(printf '%s\n' "$out" | grep -v '^Leaked' | head -3 | tr '\n' ' ')"
    fi
    rm -f "$H_QCOW"
  fi
  tk_timing "H_${H_SESSION}_${H_SIDE}_down" "$(tk_since "$t0")"
  H_SIDE= H_DISK=()
}
if phase H; then
  t0h=$EPOCHREALTIME
  dd if=/dev/zero of=$H_FILE bs=1M count=$((RAM_SIZE / MB)) status=none
  if [[ " ${H_BACKENDS[*]} " == *" qcow "* ]]; then
    rm -f "$H_QCOW_TEMPLATE"
    out=$(qemu-img create -f qcow2 -o cluster_size=64k,preallocation=$H_QPRE "$H_QCOW_TEMPLATE" $RAM_SIZE 2>&1); rc=$?
    tk_eq "H qemu-img create the qcow2 bench template (64 KiB clusters, preallocation=$H_QPRE, $((RAM_SIZE / MB)) MiB)" 0 $rc
    [ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  qemu-img: /'
    qemu-img info "$H_QCOW_TEMPLATE" 2>&1 | grep -E 'disk size|compat' | sed 's/^/  qemu-img info: /'
  fi
  first0=ts
  [ "${TS_BENCH_FIRST:-tcmu-ts}" = tcmu-runner ] && first0=tr
  : >"$TCMU_OUT/compare.tsv"
  order=()
  for ((r = 1; r <= H_ROUNDS; r++)); do
    first=$first0   # odd rounds as TS_BENCH_FIRST says, even rounds mirrored
    (( r % 2 == 0 )) && { [ $first0 = ts ] && first=tr || first=ts; }
    for b in "${H_BACKENDS[@]}"; do
      for j in "${H_JOBS[@]}"; do
        IFS=: read -r name bs qd <<<"$j"
        id=$name; [ "$b" = qcow ] && id=qcow-$name; [ "$H_ROUNDS" -gt 1 ] && id=$id-r$r
        if [ $first = ts ]; then order+=("ts:$id:$bs:$qd:$b" "tr:$id:$bs:$qd:$b"); first=tr; else order+=("tr:$id:$bs:$qd:$b" "ts:$id:$bs:$qd:$b"); first=ts; fi
        case $b in
          file) what="${bs/k/ KiB} randrw QD$qd, $BENCH_S s, file vs qcow-raw on tmpfs, WCE $H_WCE" ;;
          qcow) what="${bs/k/ KiB} randrw QD$qd, $BENCH_S s, qcow vs qcow on a qcow2 image (64 KiB clusters, preallocation=$H_QPRE) on tmpfs, WCE $H_WCE" ;;
        esac
        # label, A, B [, group: rows with the same group are also summed up across rounds]
        printf 'tcmu-ts / tcmu-runner, %s%s, %s first\tbench-%s-tcmu-ts\tbench-%s-tcmu-runner%s\n' "$what" \
          "$([ "$H_ROUNDS" -gt 1 ] && echo ", round $r")" "$([ ${order[-2]%%:*} = ts ] && echo tcmu-ts || echo tcmu-runner)" "$id" "$id" \
          "$([ "$H_ROUNDS" -gt 1 ] && printf '\t%s' "tcmu-ts / tcmu-runner, $what, $H_ROUNDS rounds")" >>"$TCMU_OUT/compare.tsv"
      done
    done
  done
  tk_log "H order: ${order[*]}"
  for o in "${order[@]}"; do
    IFS=: read -r side id bs qd b <<<"$o"
    who=$([ "$side" = ts ] && echo tcmu-ts || echo tcmu-runner)
    if [ "$side" != "$H_SIDE" ]; then
      [ -n "$H_SIDE" ] && h_down
      h_up "$side"
    fi
    sd=${H_DISK[$b]:-}
    if [ -n "$sd" ]; then
      ts_fio "bench-$id-$who" --filename="/dev/$sd" "${H_FIO[@]}" --bs=$bs --iodepth=$qd
      tk_eq "H fio $bs randrw QD$qd through $who ($b)" 0 $?
    else
      tk_fail "H fio $bs randrw QD$qd through $who ($b)" "no bench disk"
    fi
  done
  h_down
  rmdir "$CFG/core/user_0" 2>/dev/null
  cp /tmp/tr-log/tcmu-runner.log "$TCMU_OUT/" 2>/dev/null
  errs=$(grep -h '\[ERROR\]' "${H_TS_OUTS[@]}" 2>/dev/null)
  if [ -z "$errs" ]; then tk_pass "H no ERROR in tcmu-ts's log (bench sessions)"; else tk_fail "H no ERROR in tcmu-ts's log (bench sessions)" "$(printf '%s' "$errs" | head -3 | tr '\n' ' ')"; fi
  tk_timing H_total "$(tk_since "$t0h")"
fi

ts_kernel_log_clean
tk_finish
