#!/bin/bash
# Zoned and optical LUNs on the real kernel (npm run test:kernel), ours and Debian's
# tcmu-runner's side by side:
#   R. tcmu-runner serves a `zbc` and an `fbo` LUN through tcm_loop; the same CDBs
#      (test/kernel/scsi-compare.mjs) go to both over SG_IO, answers kept as JSON
#   T. tcmu-ts serves the same two LUNs on fresh, identical backing files; the same
#      CDBs; then the answers compared field by field (responses/<set>.tsv: a field
#      that differs must be explained in docs/SCSI.md, else the check fails)
#   K. the kernel on our LUNs: the zbc LUN is a host-managed zoned disk
#      (queue/zoned, nr_zones, chunk_sectors), blkzone report/open/close/finish/reset
#      behave, direct writes at the write pointer move it, a zoned filesystem (f2fs -m,
#      btrfs -O zoned) is made, filled, checked after a remount; the fbo LUN is /dev/srN,
#      an ISO9660 image made with genisoimage mounts and its files check out,
#      dvd+rw-mediainfo answers
#   kernel log clean
# Env (run.mjs --env NAME=VALUE): ZO_PHASES (default RTK; T always runs when K does), ZO_SETS
# (default "zbc fbo"), ZO_TR_LOG_LEVEL (tcmu-runner's log_level, e.g. 5 to log every CDB).
# Alone: node test/kernel/run.mjs --skip-prepare --timeout 900 test/kernel/zbc-fbo.sh
. "$TCMU_REPO/test/kernel/lib.sh"
. "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"

PHASES=${ZO_PHASES:-RTK}
ZO_SETS=${ZO_SETS:-zbc fbo}   # which comparison sets zo_probe sends
phase() { [[ $PHASES == *"$1"* ]]; }
MB=$((1024 * 1024))
CMP="node $TCMU_REPO/test/kernel/scsi-compare.mjs"
RESP=$TCMU_OUT/responses
mkdir -p "$RESP" /mnt/iso /mnt/zfs
# The comparison LUNs (scsi-compare.mjs's steps assume exactly these)
ZBC_CMP_CFG='model-HM/zsize-1/conv-2/open-4'
ZBC_CMP_SIZE=$((16 * MB))
tk_log "kernel $(uname -r), node $(node --version), daemon from $TCMU_BUILD, phases $PHASES"

tk_check "system dbus-daemon" ts_dbus
tk_check "modprobe sr_mod (an fbo LUN is a CD/DVD drive)" modprobe sr_mod

# The ISO9660 image both daemons serve (a fresh copy each): a few files of known content
ISO_SRC=/tmp/iso-src
rm -rf "$ISO_SRC" && mkdir -p "$ISO_SRC/dir"
head -c $((3 * MB + 123)) /dev/urandom >"$ISO_SRC/random.bin"
seq 1 20000 >"$ISO_SRC/dir/numbers.txt"
printf 'tcmu-ts optical test\n' >"$ISO_SRC/README.TXT"
out=$(genisoimage -quiet -r -J -V TCMUTS -o /tmp/iso-master.iso "$ISO_SRC" 2>&1); rc=$?
tk_eq "genisoimage makes an ISO9660 image" 0 $rc
[ $rc = 0 ] || printf '%s\n' "$out" | sed 's/^/  genisoimage: /'
ISO_SIZE=$(stat -c %s /tmp/iso-master.iso)
tk_log "ISO image: $ISO_SIZE bytes ($((ISO_SIZE / 2048)) blocks of 2048)"

# zo_sg SDX: the sg node of a disk or drive (sgN)
zo_sg() { local s; for s in /sys/block/$1/device/scsi_generic/*; do [ -e "$s" ] && { printf '%s' "${s##*/}"; return 0; }; done; return 1; }
# zo_wwn SIDE N: the tcm_loop target of SIDE's LUN N (1 zbc, 2 fbo)
zo_wwn() { printf 'naa.500140500000%s0%s' "$([ "$1" = ts ] && echo 01 || echo 02)" "$2"; }
# zo_luns SIDE: create SIDE's zbc and fbo backstores (fresh backing files), export them
# through tcm_loop; sets ZO_ZBC_SD, ZO_FBO_SR (block names) and ZO_ZBC_SG, ZO_FBO_SG
zo_luns() {
  local side=$1 p="$1" zf=/tmp/zbc-cmp-$1.raw iso=/tmp/iso-$1.iso
  rm -f "$zf"; cp /tmp/iso-master.iso "$iso"
  ZO_ZBC_SD=$(tk_user_dev "$CFG/core/user_0/${side}zbc" "zbc/$ZBC_CMP_CFG@$zf" $ZBC_CMP_SIZE hw_max_sectors=128 \
    && tk_loop_export "$CFG/core/user_0/${side}zbc" "$(zo_wwn "$side" 1)")
  tk_match "$p zbc LUN ($ZBC_CMP_CFG, $((ZBC_CMP_SIZE / MB)) MiB) behind tcm_loop" '^sd[a-z]+$' "$ZO_ZBC_SD"
  ZO_FBO_SR=$(tk_user_dev "$CFG/core/user_0/${side}fbo" "fbo/$iso" "$ISO_SIZE" hw_block_size=2048 hw_max_sectors=64 \
    && tk_loop_export "$CFG/core/user_0/${side}fbo" "$(zo_wwn "$side" 2)")
  tk_match "$p fbo LUN behind tcm_loop is a CD/DVD drive" '^sr[0-9]+$' "$ZO_FBO_SR"
  ZO_ZBC_SG=$(zo_sg "$ZO_ZBC_SD") ZO_FBO_SG=$(zo_sg "$ZO_FBO_SR")
}
zo_unluns() {
  local side=$1 n w
  for n in zbc:1 fbo:2; do
    w=$(zo_wwn "$side" "${n#*:}")
    [ -d "$CFG/loopback/$w" ] && { tk_loop_remove "$w"; tk_eq "$side remove the ${n%%:*} export" 0 $?; }
    [ -d "$CFG/core/user_0/$side${n%%:*}" ] && { rmdir "$CFG/core/user_0/$side${n%%:*}"; tk_eq "$side remove the ${n%%:*} backstore" 0 $?; }
  done
}
# zo_probe SIDE [RESTART]: the comparison CDBs to both LUNs, answers to responses/<set>-SIDE.json.
# A LUN that stops answering ends its probe (exit 3); with RESTART (a function that restarts
# the daemon and makes the LUNs again) the probe resumes after the silent step, twice at most.
zo_probe() {
  local set sg rc tries
  for set in $ZO_SETS; do
    tries=0
    while :; do
      sg=$([ $set = zbc ] && echo "$ZO_ZBC_SG" || echo "$ZO_FBO_SG")
      [ -n "$sg" ] || { rc=no-sg; break; }
      $CMP probe $set /dev/$sg "$RESP/$set-$1.json" --resume 2>&1 | sed 's/^/  probe: /'
      rc=${PIPESTATUS[0]}
      [ "$rc" = 3 ] && [ -n "${2:-}" ] && [ $tries -lt 2 ] || break
      tries=$((tries + 1))
      tk_log "$1 $set: the LUN stopped answering; restarting the daemon and resuming (restart $tries)"
      $2
    done
    tk_eq "$1 $set: the comparison CDBs sent over SG_IO, every step answered or, after a restart, resumed" 0 "$rc"
  done
}

# ---------------------------------------------------------------- R. tcmu-runner
_tr_bus() { dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner string:org.kernel.TCMUService1 2>/dev/null | grep -q 'boolean true'; }
_tr_gone() { ! _tr_bus; }
tr_start() {
  tcmu-runner -l "$TCMU_OUT/tr-log" >>"$TCMU_OUT/tcmu-runner.out" 2>&1 &
  RUNNER=$!
  tk_wait 30 _tr_bus
}
tr_stop() {   # a handler thread spinning forever ignores SIGTERM: -9 after 5 s
  kill "$RUNNER" 2>/dev/null
  local i; for i in $(seq 50); do kill -0 "$RUNNER" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$RUNNER" 2>/dev/null; wait "$RUNNER" 2>/dev/null
  tk_wait 10 _tr_gone
}
# tcmu-runner 1.5.4's fbo never answers some commands (its VERIFY without data loops
# forever) and then nothing else on the LUN: restart it with fresh LUNs and go on
tr_restart() { zo_unluns tr; tr_stop; tr_start && zo_luns tr; }
if phase R; then
  # its log straight into the run directory: a run that hangs still leaves it
  mkdir -p "$TCMU_OUT/tr-log" /etc/tcmu
  [ -n "${ZO_TR_LOG_LEVEL:-}" ] && printf 'log_level = %s\n' "$ZO_TR_LOG_LEVEL" >/etc/tcmu/tcmu.conf
  tr_start; tk_eq "R tcmu-runner owns org.kernel.TCMUService1" 0 $?
  t0=$EPOCHREALTIME
  zo_luns tr
  tk_timing R_luns "$(tk_since "$t0")"
  zo_probe tr tr_restart
  zo_unluns tr
  tr_stop
  tk_log "R tcmu-runner stopped"
fi

# ---------------------------------------------------------------- T. tcmu-ts
if phase T || phase K; then
  if ts_start && ts_alive; then tk_pass "T tcmu-ts started" "pid $TS_PID"; else tk_fail "T tcmu-ts started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"; tk_finish; fi
  t0=$EPOCHREALTIME
  zo_luns ts
  tk_timing T_luns "$(tk_since "$t0")"
  zo_probe ts
  for set in zbc fbo; do
    [ -f "$RESP/$set-tr.json" ] && [ -f "$RESP/$set-ts.json" ] || continue
    $CMP diff $set "$RESP/$set-tr.json" "$RESP/$set-ts.json" "$RESP/$set.tsv" 2>&1 | tee "$RESP/$set-summary.txt" | sed 's/^/  compare: /'
    tk_eq "T $set: every answer that differs from tcmu-runner's is explained in docs/SCSI.md ($(head -1 "$RESP/$set-summary.txt"))" 0 "${PIPESTATUS[0]}"
  done
fi

# ---------------------------------------------------------------- K. the kernel on our LUNs
zones_of() { blkzone report "/dev/$1" 2>/dev/null; }
# zone_field SD ZONE FIELD: a field (wptr, cond, ...) of zone ZONE in `blkzone report`
zone_field() {
  local l
  l=$(blkzone report -o $(($2 * ZONE_SECTORS)) -c 1 "/dev/$1" 2>/dev/null) || return 1
  [[ $l =~ $3\ (0x[0-9a-f]+|[0-9]+) ]] && printf '%s' "${BASH_REMATCH[1]}"
}
if phase K && [ -b "/dev/$ZO_ZBC_SD" ]; then
  sd=$ZO_ZBC_SD
  tk_eq "K /sys/block/$sd/queue/zoned" host-managed "$(cat /sys/block/$sd/queue/zoned)"
  tk_eq "K /sys/block/$sd/queue/nr_zones" 16 "$(cat /sys/block/$sd/queue/nr_zones)"
  tk_eq "K /sys/block/$sd/queue/chunk_sectors (zone size in 512 B sectors)" 2048 "$(cat /sys/block/$sd/queue/chunk_sectors)"
  ZONE_SECTORS=2048
  out=$(zones_of "$sd"); rc=$?
  tk_eq "K blkzone report exit" 0 $rc
  tk_eq "K blkzone report: 16 zones" 16 "$(printf '%s\n' "$out" | grep -c 'start:')"
  tk_eq "K blkzone report: 2 conventional zones" 2 "$(printf '%s\n' "$out" | grep -c 'CONVENTIONAL')"
  tk_eq "K blkzone report: 14 sequential write required zones" 14 "$(printf '%s\n' "$out" | grep -c 'SEQ_WRITE_REQUIRED')"
  printf '%s\n' "$out" | head -4 | sed 's/^/  blkzone: /'
  # direct writes at zone 5's write pointer move it; a write elsewhere in the zone fails
  dd if=/dev/urandom of=/tmp/z5.bin bs=64k count=4 status=none
  blkzone reset -o $((5 * ZONE_SECTORS)) -c 1 /dev/$sd
  dd if=/tmp/z5.bin of=/dev/$sd bs=64k seek=$((5 * ZONE_SECTORS * 512 / 65536)) oflag=direct status=none; rc=$?
  tk_eq "K dd 256 KiB O_DIRECT at zone 5's write pointer" 0 $rc
  wp=$(zone_field "$sd" 5 wptr)   # blkzone prints it in hex, relative to the zone start
  tk_eq "K zone 5 write pointer moved by 512 sectors (blkzone: ${wp:-none})" 512 "$((${wp:-0}))"
  # 512 KiB into zone 5: past its write pointer (256 KiB), inside the zone
  dd if=/tmp/z5.bin of=/dev/$sd bs=64k count=1 seek=$(((5 * ZONE_SECTORS * 512 + 512 * 1024) / 65536)) oflag=direct status=none 2>/dev/null
  tk_eq "K dd O_DIRECT past zone 5's write pointer fails" 1 $?
  cmp -n $((256 * 1024)) /tmp/z5.bin <(dd if=/dev/$sd bs=64k skip=$((5 * ZONE_SECTORS * 512 / 65536)) count=4 iflag=direct status=none)
  tk_eq "K what was written at zone 5 reads back" 0 $?
  blkzone open -o $((6 * ZONE_SECTORS)) -c 1 /dev/$sd; tk_eq "K blkzone open zone 6" 0 $?
  tk_match "K zone 6 explicitly open" 'oe|exp' "$(blkzone report -o $((6 * ZONE_SECTORS)) -c 1 /dev/$sd)"
  blkzone close -o $((6 * ZONE_SECTORS)) -c 1 /dev/$sd; tk_eq "K blkzone close zone 6" 0 $?
  blkzone finish -o $((5 * ZONE_SECTORS)) -c 1 /dev/$sd; tk_eq "K blkzone finish zone 5" 0 $?
  tk_match "K zone 5 full after finish" '\(fu\)|full' "$(blkzone report -o $((5 * ZONE_SECTORS)) -c 1 /dev/$sd)"
  blkzone reset /dev/$sd; tk_eq "K blkzone reset (every zone)" 0 $?
  tk_eq "K after reset: 14 empty sequential zones" 14 "$(zones_of "$sd" | grep -c '(em)')"
fi
if phase K && ts_alive; then
  # a zoned filesystem on a bigger zbc LUN: 4 MiB zones, 16 conventional for f2fs's metadata
  ZF=/tmp/zbc-fs.raw; rm -f "$ZF"
  ZFS_SD=$(tk_user_dev "$CFG/core/user_0/tszfs" "zbc/model-HM/zsize-4/conv-16@$ZF" $((512 * MB)) hw_max_sectors=512 \
    && tk_loop_export "$CFG/core/user_0/tszfs" naa.50014050000000f3)
  tk_match "K zbc LUN for a filesystem (512 MiB, 4 MiB zones)" '^sd[a-z]+$' "$ZFS_SD"
  zfs_check() {   # NAME MKFS-CMD... : mkfs, files, umount, mount, sha256 of every file
    local name=$1 rc; shift
    wipefs -a /dev/$ZFS_SD >/dev/null 2>&1; blkzone reset /dev/$ZFS_SD
    out=$("$@" /dev/$ZFS_SD 2>&1); rc=$?
    tk_eq "K $name: mkfs on the zoned disk" 0 $rc
    [ $rc = 0 ] || { printf '%s\n' "$out" | tail -8 | sed "s/^/  $name mkfs: /"; return; }
    mount -t $name /dev/$ZFS_SD /mnt/zfs; tk_eq "K $name: mount" 0 $? || return
    cp -r "$ISO_SRC" /mnt/zfs/a && dd if=/dev/urandom of=/mnt/zfs/big.bin bs=1M count=48 status=none && sync
    (cd /mnt/zfs && find . -type f -exec sha256sum {} + | sort -k2) >/tmp/zfs.sum
    umount /mnt/zfs; tk_eq "K $name: umount" 0 $?
    mount -t $name /dev/$ZFS_SD /mnt/zfs; tk_eq "K $name: mount again" 0 $?
    (cd /mnt/zfs && sha256sum -c --quiet /tmp/zfs.sum); tk_eq "K $name: $(wc -l </tmp/zfs.sum) files read back the same after the remount" 0 $?
    umount /mnt/zfs
    [ $name = f2fs ] && { out=$(fsck.f2fs /dev/$ZFS_SD 2>&1); tk_eq "K f2fs: fsck.f2fs" 0 $?; [ $? = 0 ] || printf '%s\n' "$out" | tail -5; }
    [ $name = btrfs ] && { out=$(btrfs check /dev/$ZFS_SD 2>&1); tk_eq "K btrfs: btrfs check" 0 $?; }
  }
  if [ -b "/dev/$ZFS_SD" ]; then
    modprobe f2fs && zfs_check f2fs mkfs.f2fs -f -m
    modprobe btrfs && zfs_check btrfs mkfs.btrfs -f -O zoned -d single -m single
  fi
fi
if phase K && [ -b "/dev/$ZO_FBO_SR" ]; then
  sr=$ZO_FBO_SR
  # the comparison's write10 step wrote block 100 of this disc: put the image's own block
  # back (the handler reads and writes the file through the page cache, as dd does here)
  dd if=/tmp/iso-master.iso of=/tmp/iso-ts.iso bs=2048 skip=100 seek=100 count=1 conv=notrunc status=none
  modprobe isofs
  mount -t iso9660 -o ro /dev/$sr /mnt/iso; tk_eq "K mount -t iso9660 /dev/$sr" 0 $?
  for f in random.bin dir/numbers.txt README.TXT; do
    cmp "$ISO_SRC/$f" "/mnt/iso/$f"; tk_eq "K /dev/$sr: $f reads as the file put into the image" 0 $?
  done
  umount /mnt/iso
  out=$(dvd+rw-mediainfo /dev/$sr 2>&1); rc=$?
  tk_eq "K dvd+rw-mediainfo /dev/$sr exit" 0 $rc
  printf '%s\n' "$out" | head -12 | sed 's/^/  mediainfo: /'
  tk_match "K dvd+rw-mediainfo: a mounted media profile" 'Mounted Media:[[:space:]]+[0-9A-F]+h' "$out"
  cmp <(dd if=/dev/$sr bs=2048 iflag=direct status=none) /tmp/iso-master.iso; tk_eq "K the whole /dev/$sr reads as the ISO image genisoimage made" 0 $?
fi

# ---------------------------------------------------------------- teardown
if ts_alive; then
  if [ -d "$CFG/loopback/naa.50014050000000f3" ]; then tk_loop_remove naa.50014050000000f3; rmdir "$CFG/core/user_0/tszfs"; fi
  zo_unluns ts
  ts_stop; tk_eq "tcmu-ts stops on SIGTERM with status 0" 0 $?
fi
ts_kernel_log_clean
tk_finish
