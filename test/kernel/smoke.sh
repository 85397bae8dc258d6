#!/bin/bash
# Smoke scenario for the real-kernel VM (scripts/vm/run.sh test/kernel/smoke.sh):
# proves the path configfs -> target_core_user -> UIO -> a userspace handler
# -> tcm_loop -> /dev/sdX end to end, without our daemon.
#   A. a user backstore with no daemon: uio name and map size as the kernel sets them
#   B. Debian's tcmu-runner (qcow handler serving a raw file) behind tcm_loop:
#      sg_inq / sg_readcap on the new disk, a direct write read back from the file
#   C. teardown in the right order, nothing left behind
. "$TCMU_REPO/test/kernel/lib.sh"

HBA=$CFG/core/user_0
LOOP=$CFG/loopback
WWN=naa.5001405000000001   # target port
IWWN=naa.5001405000000002  # initiator (nexus)
SIZE=$((64 * 1024 * 1024))

tk_log "kernel $(uname -r), node $(node --version 2>/dev/null || echo missing)"

# ---- modules and configfs (guest-init loads them unless --no-modules)
if [ ! -d /sys/module/target_core_user ]; then
  tk_time load_modules_in_scenario bash -c 'while read -r ko; do [ -n "$ko" ] && { insmod "$ko" 2>/dev/null || [ -d /sys/module/$(basename "$ko" .ko | tr - _) ]; } || exit 1; done <"$TCMU_MODULES_LOAD"'
fi
mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
for m in configfs target_core_mod target_core_user uio tcm_loop iscsi_target_mod sd_mod sg; do
  tk_check "module $m loaded" test -d "/sys/module/$m"
done
tk_check "configfs target dir" test -d "$CFG/core"

# ---- A. backstore without a daemon
t0=$EPOCHREALTIME
tk_user_dev "$HBA/dev0" file//tmp/x $SIZE max_data_area_mb=64; tk_eq "A create + enable dev0" 0 $?
tk_timing A_create_enable "$(tk_since "$t0")"
if tk_wait 5 tk_uio_of dev0 >/dev/null; then
  tk_timing A_enable_to_uio "$(tk_since "$t0")"
  U=$(tk_uio_of dev0)
  read -r name <"/sys/class/uio/$U/name"
  read -r map <"/sys/class/uio/$U/maps/map0/size"
  tk_match "A uio name" '^tcm-user/[0-9]+/dev0/file//tmp/x$' "$name"
  tk_eq "A map0 size (64 MiB data + 8 MiB ring)" 0x0000000004800000 "$map"
  tk_check "A /dev/$U exists" test -c "/dev/$U"
  read -r v <"$HBA/dev0/attrib/cmd_time_out"; tk_log "attrib/cmd_time_out=$v"
  read -r v <"$HBA/dev0/attrib/qfull_time_out"; tk_log "attrib/qfull_time_out=$v"
  read -r v <"$HBA/dev0/attrib/hw_block_size"; tk_eq "A hw_block_size" 512 "$v"
else
  tk_fail "A uio device appears" "no /sys/class/uio entry for dev0 within 5 s"
fi
t0=$EPOCHREALTIME
rmdir "$HBA/dev0"; tk_eq "A rmdir dev0" 0 $?
tk_timing A_rmdir "$(tk_since "$t0")"
tk_check "A uio gone" bash -c '! ls /sys/class/uio/ 2>/dev/null | grep -q .'

# ---- B. tcmu-runner + tcm_loop
mkdir -p /run/dbus /var/log
t0=$EPOCHREALTIME
dbus-daemon --system --fork --nopidfile || tk_fail "B dbus-daemon started"
tcmu-runner -l /tmp >/tmp/tcmu-runner.out 2>&1 &
RUNNER=$!
# Ready once it owns its bus name: it takes the name after loading every
# handler (rbd alone takes ~1 s under TCG) and opening the netlink socket.
runner_ready() {
  dbus-send --system --print-reply --dest=org.freedesktop.DBus / org.freedesktop.DBus.NameHasOwner \
    string:org.kernel.TCMUService1 2>/dev/null | grep -q 'boolean true'
}
if tk_wait 20 runner_ready; then
  tk_timing B_runner_ready "$(tk_since "$t0")"; tk_pass "B tcmu-runner owns org.kernel.TCMUService1"
else
  tk_fail "B tcmu-runner owns org.kernel.TCMUService1" "not within 20 s"
fi
tk_check "B tcmu-runner running" kill -0 $RUNNER

truncate -s $SIZE /tmp/disk.raw
t0=$EPOCHREALTIME
tk_user_dev "$HBA/dev1" qcow//tmp/disk.raw $SIZE max_data_area_mb=64 attrib/cmd_time_out=10; tk_eq "B create + enable dev1" 0 $?
read -r v <"$HBA/dev1/attrib/cmd_time_out"; tk_eq "B attrib/cmd_time_out set before enable" 10 "$v"
tk_timing B_create_enable "$(tk_since "$t0")"
if tk_wait 10 tk_pid_has_uio $RUNNER; then
  tk_timing B_enable_to_runner_open "$(tk_since "$t0")"; tk_pass "B tcmu-runner opened the uio device"
else
  tk_fail "B tcmu-runner opened the uio device"
fi

t0=$EPOCHREALTIME
if SD=$(tk_loop_export "$HBA/dev1" $WWN $IWWN) && [ -n "$SD" ]; then
  tk_timing B_export_to_blockdev "$(tk_since "$t0")"
  tk_pass "B /dev/$SD appeared"
  out=$(sg_inq "/dev/$SD" 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/  sg_inq: /' | head -20
  tk_eq "B sg_inq exit" 0 $rc
  tk_match "B sg_inq vendor" 'Vendor identification: LIO-ORG' "$out"
  tk_match "B sg_inq product" 'Product identification: TCMU device' "$out"
  out=$(sg_readcap "/dev/$SD" 2>&1); rc=$?
  tk_eq "B sg_readcap exit" 0 $rc
  tk_match "B capacity" "Last LBA=$((SIZE / 512 - 1)) " "$out"
  SG=$(ls "/sys/block/$SD/device/scsi_generic/" 2>/dev/null)
  [ -n "$SG" ] && { sg_inq "/dev/$SG" >/dev/null 2>&1; tk_eq "B sg_inq on /dev/$SG" 0 $?; }
  # data path: 1 MiB at 4 MiB, O_DIRECT, then compare with the backing file
  head -c 1048576 /dev/urandom >/tmp/pat
  t0=$EPOCHREALTIME
  dd if=/tmp/pat of="/dev/$SD" bs=1M seek=4 count=1 oflag=direct conv=fsync status=none; tk_eq "B dd write" 0 $?
  tk_timing B_write_1MiB_direct "$(tk_since "$t0")"
  tk_check "B backing file has the data" cmp -s /tmp/pat <(dd if=/tmp/disk.raw bs=1M skip=4 count=1 status=none)
  tk_check "B read back through the disk" cmp -s /tmp/pat <(dd if="/dev/$SD" bs=1M skip=4 count=1 iflag=direct status=none)
else
  tk_fail "B /dev/sdX appeared" "no disk within 15 s of linking the LUN (tcm_loop)"
fi

# ---- C. teardown: LUN link, nexus, lun dir, tpg, wwn, device, hba, daemon
t0=$EPOCHREALTIME
tk_loop_remove $WWN; tk_eq "C remove tcm_loop port (unlink LUN, NULL nexus, rmdir)" 0 $?
tk_check "C loopback gone" test ! -e "$LOOP/$WWN"
rmdir "$HBA/dev1"; tk_eq "C rmdir dev1" 0 $?
rmdir "$HBA"; tk_eq "C rmdir hba" 0 $?
tk_timing C_teardown "$(tk_since "$t0")"
tk_check "C no sd left" bash -c '! ls -d /sys/block/sd* 2>/dev/null | grep -q .'
tk_check "C no uio left" bash -c '! ls /sys/class/uio/ 2>/dev/null | grep -q .'
kill $RUNNER 2>/dev/null; wait $RUNNER 2>/dev/null
cp /tmp/tcmu-runner.log "$TCMU_OUT/tcmu-runner.log" 2>/dev/null
cp /tmp/tcmu-runner.out "$TCMU_OUT/tcmu-runner.out" 2>/dev/null
if dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|refcount_t' >/tmp/bad; then
  tk_fail "kernel log clean" "$(head -3 /tmp/bad | tr '\n' ' ')"
else
  tk_pass "kernel log clean"
fi
tk_finish
