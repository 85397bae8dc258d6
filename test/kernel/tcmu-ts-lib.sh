# Helpers for scenarios that run our daemon (tcmu-ts) in the VM; source after lib.sh:
#   . "$TCMU_REPO/test/kernel/lib.sh"; . "$TCMU_REPO/test/kernel/tcmu-ts-lib.sh"
#
# TCMU_BUILD (set by guest-init.sh) is the built tree: run.sh's frozen copy
# unpacked on the guest's disk, or /repo with --live.
: "${TCMU_BUILD:=$TCMU_REPO}"
TS_CLI_JS=$TCMU_BUILD/packages/workers/dist/cli/main.js
TS_LOGDIR=$TCMU_OUT/tcmu-ts-log     # the daemon's -l (its tcmu-ts.log)
TS_PID=
TS_START_N=0
TS_OUT=                             # stdout+stderr of the latest daemon start
mkdir -p "$TS_LOGDIR" "$TCMU_OUT/fio"
cd /tmp || exit 125                  # fio leaves verify-state files in its cwd: not in the repo

# ts_cli ARGS...: the admin CLI (create, list, delete)
ts_cli() { node "$TS_CLI_JS" "$@"; }

# ts_dbus: a system bus, as a service manager would provide (the daemon owns
# org.kernel.TCMUService1 there; tcmu-runner needs it to start)
ts_dbus() {
  [ -S /run/dbus/system_bus_socket ] && return 0
  mkdir -p /run/dbus /var/run
  dbus-daemon --system --fork --nopidfile || return 1
  tk_wait 10 test -S /run/dbus/system_bus_socket
}

# ts_start [ARGS...]: start the daemon in the background (TS_PID), wait until it
# says "serving N device(s)" (after adopting what the kernel has). Its output
# goes to $TCMU_OUT/tcmu-ts-<n>.out. Returns 1 if it is not ready within 60 s.
ts_start() {
  TS_START_N=$((TS_START_N + 1))
  TS_OUT=$TCMU_OUT/tcmu-ts-$TS_START_N.out
  : >"$TS_OUT"
  # TS_CPU_PROF=1: V8 CPU profiles of every daemon thread in $TCMU_OUT/prof (bench/dist/prof-summary.js reads them).
  node ${TS_CPU_PROF:+--cpu-prof --cpu-prof-interval 500 --cpu-prof-dir="$TCMU_OUT/prof"} "$TS_CLI_JS" -l "$TS_LOGDIR" "$@" >"$TS_OUT" 2>&1 &
  TS_PID=$!
  tk_wait 60 _ts_ready
}
_ts_ready() {
  kill -0 "$TS_PID" 2>/dev/null || return 0   # died: stop waiting (the caller checks)
  local l
  while IFS= read -r l; do [[ $l == *'] serving '*' device(s)'* ]] && return 0; done <"$TS_OUT"
  return 1
}
# ts_alive: the daemon started last is running
ts_alive() { [ -n "$TS_PID" ] && kill -0 "$TS_PID" 2>/dev/null; }
# ts_stop: SIGTERM, wait up to 30 s (then SIGKILL); returns the daemon's exit status
ts_stop() {
  [ -n "$TS_PID" ] || return 0
  kill -TERM "$TS_PID" 2>/dev/null
  if ! tk_wait 30 _ts_gone; then kill -KILL "$TS_PID" 2>/dev/null; fi
  wait "$TS_PID" 2>/dev/null; local rc=$?
  TS_PID=
  return $rc
}
_ts_gone() { ! kill -0 "$TS_PID" 2>/dev/null; }
# ts_log_has TEXT: the daemon's output (all starts) contains TEXT
ts_log_has() {
  local f l
  for f in "$TCMU_OUT"/tcmu-ts-*.out; do
    while IFS= read -r l; do [[ $l == *"$1"* ]] && return 0; done <"$f"
  done
  return 1
}

# ts_create NAME CONFIG SIZE [CLI OPTIONS...]: `tcmu-ts create ... --loop`;
# prints the disk's name (sdX). The CLI's output goes to the scenario log.
ts_create() {
  local name=$1 cfg=$2 size=$3 out rc; shift 3
  out=$(ts_cli create "$name" "$cfg" --size "$size" --loop "$@" 2>&1); rc=$?
  printf '%s\n' "$out" | sed 's/^/  create: /' >&2
  [ $rc = 0 ] || return $rc
  [[ $out =~ SCSI\ disk:\ /dev/(sd[a-z]+) ]] || return 1
  printf '%s' "${BASH_REMATCH[1]}"
}

# ts_dev_block_link SD: /dev/block/MAJ:MIN -> ../SD, as udev would make it (the guest has
# no udev); sg_xcopy, given a block device, opens /dev/block/MAJ:MIN for SG_IO
ts_dev_block_link() {
  local mm
  read -r mm <"/sys/block/$1/dev" || return 1
  mkdir -p /dev/block && ln -sfn "../$1" "/dev/block/$mm" && [ -b "/dev/block/$mm" ]
}

# ts_fio NAME FIO-ARGS...: run fio with JSON output to $TCMU_OUT/fio/NAME.json
# (run.mjs puts IOPS and latency into the report); returns fio's status.
ts_fio() {
  local name=$1 rc t0=$EPOCHREALTIME; shift
  fio --name="$name" --output-format=json --output="$TCMU_OUT/fio/$name.json" "$@" 2>"$TCMU_OUT/fio/$name.err"
  rc=$?
  tk_timing "fio_$name" "$(tk_since "$t0")"
  [ -s "$TCMU_OUT/fio/$name.err" ] && sed 's/^/  fio: /' "$TCMU_OUT/fio/$name.err" | head -20
  return $rc
}

# ts_fio_writing NAME DEV N FIO-ARGS...: start fio job NAME (FIO-ARGS, no verify yet) in the
# background and return once DEV has completed N more writes, fio still running; FIO is its pid,
# FIO_T0 when it started. For killing something under a write job.
ts_fio_writing() {
  local name=$1 dev=$2 n=$3 w0; shift 3
  read -r _ _ _ _ w0 _ <"/sys/block/$dev/stat"
  FIO_T0=$EPOCHREALTIME
  ts_fio "$name-write" "$@" --do_verify=0 &
  FIO=$!
  _ts_writes_done() { local w; read -r _ _ _ _ w _ <"/sys/block/$dev/stat"; (( w - w0 >= n )); }
  tk_wait 60 _ts_writes_done
}

# ts_fio_survived NAME PHASE FIO-ARGS...: wait for the job ts_fio_writing started, then check it
# ended without error and that a verify-only pass finds every write it had acknowledged. PHASE
# (a letter, or empty) prefixes the check names and the timing, as each script names them.
ts_fio_survived() {
  local name=$1 phase=$2 label=${2:+$2 }; shift 2
  _ts_fio_done() { ! kill -0 "$FIO" 2>/dev/null; }
  tk_wait 180 _ts_fio_done
  wait "$FIO"; tk_eq "${label}fio write job across the kill completes without error" 0 $?
  tk_timing "${phase:+${phase}_}write_job" "$(tk_since "$FIO_T0")"
  ts_fio "$name-verify" "$@" --verify_only=1
  tk_eq "${label}verify-only pass: every acknowledged write is there" 0 $?
}

# ts_serial NAME: the unit serial LIO keeps for user_0/NAME (VPD page 80h source)
ts_serial() {
  local l
  read -r l <"$CFG/core/user_0/$1/wwn/vpd_unit_serial" || return 1
  printf '%s' "${l#T10 VPD Unit Serial Number: }"
}

# ts_kernel_log_clean: no oops, BUG, WARNING or refcount complaint in dmesg
ts_kernel_log_clean() {
  if dmesg | grep -E 'BUG:|WARNING:|Oops|general protection|refcount_t|list_del corruption' >/tmp/.tk_bad; then
    tk_fail "kernel log: no BUG/WARNING/Oops" "$(head -3 /tmp/.tk_bad | tr '\n' ' ')"
  else
    tk_pass "kernel log: no BUG/WARNING/Oops"
  fi
}
