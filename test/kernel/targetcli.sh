#!/bin/bash
# targetcli (Debian's targetcli-fb) driving our daemon, as administrators do (npm run test:kernel):
#   A. tcmu-ts owns org.kernel.TCMUService1 on the guest's system bus; targetcli lists a
#      user:<subtype> backstore for every handler we register
#   B. `targetcli /backstores/user:<subtype> create ...` for each of our handlers (file, ram,
#      qcow, zbc, fbo when built in) succeeds through CheckConfig, and the daemon serves it;
#      bad cfgstrings are refused with our reason (nothing is created)
#   C. tcm_loop LUNs for file and qcow through targetcli, data written through /dev/sdX
#   D. saveconfig, daemon stopped, clearconfig, daemon started, restoreconfig: the LUNs are
#      back (the daemon serves them again) and read back what was written
#   kernel log clean
# Alone: node test/kernel/run.mjs --skip-prepare --timeout 600 test/kernel/targetcli.sh
. "$TCMU_REPO/test/kernel/lib.sh"
. "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"

MB=$((1024 * 1024))
LOOP=naa.5001405aaaaaaaa1
SAVED=/etc/rtslib-fb-target/saveconfig.json
tk_log "kernel $(uname -r), node $(node --version), daemon from $TCMU_BUILD"

# tc ARGS...: one targetcli command; its output to the log (indented), its status returned
tc() {
  local out rc
  out=$(targetcli "$@" 2>&1); rc=$?
  printf '%s\n' "$out" | grep -v 'Could not load preferences' | sed 's/^/  targetcli: /'
  TC_OUT=$out
  return $rc
}
# served NAME: the daemon said it serves backstore NAME (from its log, all starts)
served() { ts_log_has "$1: uio"; }
_served_again() {   # NAME: served by the daemon started last
  local l; while IFS= read -r l; do [[ $l == *"$1: uio"*serving* ]] && return 0; done <"$TS_OUT"; return 1
}

# Debian's tcmu-runner package makes the bus start tcmu-runner whenever something asks for
# org.kernel.TCMUService1 and nobody owns it: targetcli does, while our daemon is stopped in D,
# and tcmu-runner then takes the name and the UIO devices (measured: restoreconfig's devices
# went to it, and ours found /dev/uioN busy). An administrator running tcmu-ts turns that off
# (or installs our packaging/dbus activation file instead); so does this scenario.
ACTIVATION=/usr/share/dbus-1/system-services/org.kernel.TCMUService1.service
[ -f "$ACTIVATION" ] && mv "$ACTIVATION" "$ACTIVATION.off"
restore_activation() { [ -f "$ACTIVATION.off" ] && mv "$ACTIVATION.off" "$ACTIVATION"; }
trap restore_activation EXIT

# ---------------------------------------------------------------- A
tk_check "A system dbus-daemon" ts_dbus
tk_check "A no bus activation of tcmu-runner" test ! -e "$ACTIVATION"
if ts_start && ts_alive; then tk_pass "A tcmu-ts started" "pid $TS_PID"; else tk_fail "A tcmu-ts started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"; tk_finish; fi
HANDLERS=$(cd "$TCMU_BUILD" && node --input-type=module -e "import('@tcmu-ts/core').then((m) => console.log(m.BUILTIN_HANDLERS.join(' ')))" 2>/dev/null)
tk_match "A our handlers (BUILTIN_HANDLERS)" 'file' "$HANDLERS"
tc ls /backstores; tk_eq "A targetcli ls /backstores" 0 $?
for h in $HANDLERS; do tk_match "A targetcli lists user:$h" "o- user:$h " "$TC_OUT"; done

# ---------------------------------------------------------------- B
truncate -s $((64 * MB)) /tmp/tc-file.img
qemu-img create -q -f qcow2 /tmp/tc-qcow.qcow2 64M
mkdir -p /tmp/tc-iso && printf 'targetcli fbo\n' >/tmp/tc-iso/README.TXT && genisoimage -quiet -o /tmp/tc-fbo.iso /tmp/tc-iso
for h in $HANDLERS; do
  case $h in
    file) args=(name=tcfile size=64M cfgstring=/tmp/tc-file.img) ;;
    ram) args=(name=tcram size=16M cfgstring=16M) ;;
    qcow) args=(name=tcqcow size=64M cfgstring=/tmp/tc-qcow.qcow2) ;;
    zbc) args=(name=tczbc size=16M cfgstring=model-HM/zsize-1/conv-2@/tmp/tc-zbc.raw) ;;
    # an optical drive has 2048-byte blocks: targetcli passes control= to the kernel before enable
    fbo) args=(name=tcfbo size=$(stat -c %s /tmp/tc-fbo.iso) cfgstring=/tmp/tc-fbo.iso control=hw_block_size=2048) ;;
    *) continue ;;   # rbd needs a cluster: handler-rbd.test.ts
  esac
  t0=$EPOCHREALTIME
  tc /backstores/user:$h create "${args[@]}"; tk_eq "B targetcli create user:$h ${args[*]}" 0 $?
  tk_timing "B_create_$h" "$(tk_since "$t0")"
  tk_wait 30 served "${args[0]#name=}"; tk_eq "B tcmu-ts serves ${args[0]#name=}" 0 $?
done
if [[ " $HANDLERS " == *" fbo "* ]]; then
  tc /backstores/user:fbo create name=tcbad0 size=$(stat -c %s /tmp/tc-fbo.iso) cfgstring=/tmp/tc-fbo.iso
  tk_eq "B an fbo device with the kernel's default 512-byte blocks is refused" 1 $?
  tk_check "B ... and the daemon's log says why" ts_log_has 'fbo needs 2048-byte blocks (set hw_block_size=2048)'
fi
tc /backstores/user:file create name=tcbad1 size=64M cfgstring=/nonexistent/dir/x.img
tk_eq "B a file cfgstring in a missing directory is refused" 1 $?
tk_match "B ... with our reason" 'directory "/nonexistent/dir" does not exist' "$TC_OUT"
tc /backstores/user:ram create name=tcbad2 size=16M "cfgstring=16M;chunk=3"
tk_eq "B a ram cfgstring with a bad chunk size is refused" 1 $?
tk_match "B ... with our reason" 'chunk=3 must be a power of two' "$TC_OUT"
tk_check "B nothing created for the refused ones" bash -c "! ls -d $CFG/core/user_*/tcbad* 2>/dev/null | grep -q ."

# ---------------------------------------------------------------- C
tc /loopback create $LOOP; tk_eq "C targetcli /loopback create" 0 $?
DISKS=()
for n in tcfile tcqcow; do
  ls -d $CFG/core/user_*/$n >/dev/null 2>&1 || continue
  sub=$([ $n = tcfile ] && echo file || echo qcow)
  tc /loopback/$LOOP/luns create /backstores/user:$sub/$n; tk_eq "C LUN for $n" 0 $?
done
read -r addr <"$CFG/loopback/$LOOP/tpgt_1/address" 2>/dev/null
_disks() { local b; DISKS=(); for b in /sys/class/scsi_device/"$addr":*/device/block/*; do [ -b "/dev/${b##*/}" ] && DISKS+=("${b##*/}"); done; [ ${#DISKS[@]} -ge 2 ]; }
tk_wait 20 _disks; tk_eq "C two disks behind the loopback target" 0 $?
head -c $((8 * MB)) /dev/urandom >/tmp/tc-data.bin
SUMS=()
for d in "${DISKS[@]}"; do
  dd if=/tmp/tc-data.bin of=/dev/$d bs=1M oflag=direct status=none; tk_eq "C 8 MiB written to /dev/$d" 0 $?
done
WANT=$(sha256sum </tmp/tc-data.bin | cut -c1-64)

# ---------------------------------------------------------------- D
tc saveconfig; tk_eq "D targetcli saveconfig" 0 $?
tk_check "D $SAVED written" test -s "$SAVED"
ts_stop; tk_eq "D tcmu-ts stops on SIGTERM with status 0" 0 $?
t0=$EPOCHREALTIME
tc clearconfig confirm=True; tk_eq "D targetcli clearconfig (daemon stopped)" 0 $?
tk_check "D no user backstore left" bash -c "! ls -d $CFG/core/user_*/* 2>/dev/null | grep -q ."
if ts_start && ts_alive; then tk_pass "D tcmu-ts started again" "pid $TS_PID"; else tk_fail "D tcmu-ts started again"; fi
tc restoreconfig "$SAVED"; tk_eq "D targetcli restoreconfig" 0 $?
tk_timing D_clear_restart_restore "$(tk_since "$t0")"
for n in tcfile tcram tcqcow tczbc tcfbo; do
  grep -q "\"name\": \"$n\"" "$SAVED" || continue
  tk_wait 30 _served_again $n; tk_eq "D $n served again after restoreconfig" 0 $?
done
# restoreconfig made the loopback target anew: a new SCSI host, so a new address. Only
# LUN 0 came back by itself (measured: rtslib links the LUNs before it makes the nexus, so
# tcm_loop's scsi_add_device of LUN 1 had no nexus to send INQUIRY through, and the host
# scan stops at LUN 0: "lun1 has a LUN larger than allowed by the host adapter"; this
# kernel has no /proc/scsi/scsi). Link such a LUN again, as an administrator would: with
# the nexus there, tcm_loop adds the disk.
read -r addr <"$CFG/loopback/$LOOP/tpgt_1/address" 2>/dev/null
for l in "$CFG/loopback/$LOOP/tpgt_1/lun"/lun_*; do
  n=${l##*_}
  [ -e "/sys/class/scsi_device/$addr:$n" ] && continue
  for link in "$l"/*; do
    [ -L "$link" ] || continue
    so=$(readlink -f "$link")
    tk_log "D relinking LUN $n (${so##*/}): no SCSI device after restoreconfig"
    rm "$link" && ln -s "$so" "$link"
  done
done
tk_wait 20 _disks; tk_eq "D the two loopback disks are back (${addr:-no address})" 0 $?
for d in "${DISKS[@]}"; do
  got=$(dd if=/dev/$d bs=1M count=8 iflag=direct status=none | sha256sum | cut -c1-64)
  tk_eq "D /dev/$d reads back what was written before the restart" "$WANT" "$got"
done

# ---------------------------------------------------------------- teardown
tc clearconfig confirm=True; tk_eq "targetcli clearconfig" 0 $?
ts_stop; tk_eq "tcmu-ts stops on SIGTERM with status 0" 0 $?
errs=$(grep -h '\[ERROR\]' "$TCMU_OUT"/tcmu-ts-*.out 2>/dev/null | grep -v 'tcbad0: .*fbo needs 2048-byte blocks')
if [ -z "$errs" ]; then tk_pass "no ERROR in the daemon's log"; else tk_fail "no ERROR in the daemon's log" "$(printf '%s' "$errs" | head -3 | tr '\n' ' ')"; fi
ts_kernel_log_clean
tk_finish
