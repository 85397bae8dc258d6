#!/bin/bash
# CI smoke subset of tcmu-ts.sh (npm run test:kernel:smoke): boot, start
# tcmu-ts, create a ram backstore exported through tcm_loop with our CLI,
# INQUIRY answers, one short fio write + crc32c verify, delete, clean stop.
. "$TCMU_REPO/test/kernel/lib.sh"
. "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"

SIZE=$((32 * 1024 * 1024))
tk_log "kernel $(uname -r), node $(node --version), daemon from $TCMU_BUILD"

tk_check "system dbus-daemon" ts_dbus
t0=$EPOCHREALTIME
if ts_start && ts_alive; then
  tk_pass "tcmu-ts started" "pid $TS_PID"
  tk_timing daemon_ready "$(tk_since "$t0")"
else
  tk_fail "tcmu-ts started" "$(tail -5 "$TS_OUT" | tr '\n' ' ')"
  tk_finish
fi

t0=$EPOCHREALTIME
SD=$(ts_create smoke ram/32M $SIZE)
tk_match "create smoke ram/32M --loop gives a disk" '^sd[a-z]+$' "$SD"
tk_timing create_loop "$(tk_since "$t0")"
if [ -b "/dev/$SD" ]; then
  out=$(sg_inq "/dev/$SD" 2>&1); rc=$?
  tk_eq "sg_inq exit" 0 $rc
  tk_match "sg_inq vendor LIO-ORG" 'Vendor identification: LIO-ORG' "$out"
  tk_match "sg_inq product TCMU" 'Product identification: TCMU' "$out"
  out=$(sg_inq -p 0x83 "/dev/$SD" 2>&1)
  tk_match "VPD 83h NAA designator" 'designator_type: NAA' "$out"
  out=$(sg_readcap --16 "/dev/$SD" 2>&1)
  tk_match "READ CAPACITY(16)" "Number of logical blocks=$((SIZE / 512))" "$out"
  ts_fio smoke-verify --filename="/dev/$SD" --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --iodepth=16 --size=8M \
    --verify=crc32c --do_verify=1 --verify_fatal=1 --runtime=60
  tk_eq "fio 4 KiB randwrite QD16 + crc32c verify" 0 $?
fi

t0=$EPOCHREALTIME
out=$(ts_cli delete smoke 2>&1); tk_eq "delete smoke" 0 $?
printf '%s\n' "$out" | sed 's/^/  delete: /'
tk_check "no uio device left" bash -c '! ls /sys/class/uio/ 2>/dev/null | grep -q .'
ts_stop; tk_eq "tcmu-ts stops on SIGTERM with status 0" 0 $?
tk_timing teardown "$(tk_since "$t0")"
errs=$(grep -h '\[ERROR\]' "$TCMU_OUT"/tcmu-ts-*.out 2>/dev/null)
if [ -z "$errs" ]; then tk_pass "no ERROR in the daemon's log"; else tk_fail "no ERROR in the daemon's log" "$(printf '%s' "$errs" | head -3 | tr '\n' ' ')"; fi
ts_kernel_log_clean
tk_finish
