#!/bin/bash
# Device processes on the real kernel (tcmu-ts --isolate-process): the child
# maps /dev/uioN through the fd it inherits from the daemon and serves a file
# LUN through tcm_loop; kill -9 of that child under a fio write job is a
# restart on a reset ring in a new child: the daemon keeps running, the job
# completes, and a verify-only pass finds every acknowledged write.
#   node test/kernel/run.mjs test/kernel/tcmu-ts-isolate.sh   (after npm run build)
. "$TCMU_REPO/test/kernel/lib.sh"
. "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"

SIZE=$((64 * 1024 * 1024))
tk_log "kernel $(uname -r), node $(node --version), daemon from $TCMU_BUILD"

tk_check "system dbus-daemon" ts_dbus
if ts_start --isolate-process && ts_alive; then
  tk_pass "tcmu-ts --isolate-process started" "pid $TS_PID"
else
  tk_fail "tcmu-ts --isolate-process started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"
  tk_finish
fi

SD=$(ts_create iso file//tmp/ts-iso.img $SIZE)
tk_match "create iso file --loop gives a disk" '^sd[a-z]+$' "$SD"
[ -b "/dev/$SD" ] || tk_finish

# _device_process: the pid of the daemon's child running device-process.js
_device_process() {
  local p ppid
  for p in /proc/[0-9]*; do
    read -r _ _ _ ppid _ <"$p/stat" 2>/dev/null || continue
    [ "$ppid" = "$TS_PID" ] || continue
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q device-process.js && { printf '%s' "${p#/proc/}"; return 0; }
  done
  return 1
}
CHILD=$(_device_process)
tk_match "the LUN is served by a child process of the daemon" '^[0-9]+$' "$CHILD"
tk_match "the child holds /dev/uioN (inherited from the daemon)" '/dev/uio[0-9]+' "$(ls -l "/proc/$CHILD/fd" 2>/dev/null)"

JOB=(--filename="/dev/$SD" --ioengine=libaio --direct=1 --randrepeat=1 --verify=crc32c --verify_fatal=1 --runtime=120
  --rw=randwrite --bs=4k --iodepth=16 --size=32M)
ts_fio_writing iso "$SD" 1500 "${JOB[@]}"
tk_check "fio still writing when the device process dies" kill -0 $FIO
kill -KILL "$CHILD"
tk_log "killed the device process (pid $CHILD) with SIGKILL $(tk_since "$FIO_T0") s into the write job"
_restarted() { grep -q 'worker exited (signal SIGKILL); resetting the ring and restarting' "$TS_OUT"; }
tk_wait 60 _restarted; tk_eq "the daemon restarts the LUN on a reset ring (log)" 0 $?
_new_child() { local c; c=$(_device_process) && [ "$c" != "$CHILD" ]; }
tk_wait 60 _new_child; tk_eq "a new device process serves the LUN" 0 $?
tk_check "the daemon itself kept running" ts_alive
ts_fio_survived iso "" "${JOB[@]}"

out=$(ts_cli delete iso 2>&1); tk_eq "delete iso" 0 $?
printf '%s\n' "$out" | sed 's/^/  delete: /'
ts_stop; tk_eq "tcmu-ts stops on SIGTERM with status 0" 0 $?
# (a node whose script is device-process.js: a grep for the name would find itself)
_no_device_process() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qE '^[^ ]*node .*device-process\.js' && return 1
  done
  return 0
}
tk_check "no device process left" _no_device_process
errs=$(grep -h '\[ERROR\]' "$TCMU_OUT"/tcmu-ts-*.out 2>/dev/null)
if [ -z "$errs" ]; then tk_pass "no ERROR in the daemon's log"; else tk_fail "no ERROR in the daemon's log" "$(printf '%s' "$errs" | head -3 | tr '\n' ' ')"; fi
tk_finish
