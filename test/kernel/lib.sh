# Helpers for kernel scenarios (source it: . "$TCMU_REPO/test/kernel/lib.sh").
# Checks go to $TCMU_OUT/checks.tsv (ok|FAIL, name, detail), timings to
# $TCMU_OUT/timings.tsv (name, seconds); test/kernel/run.mjs turns both into
# the JSON and markdown report. Only bash builtins in the hot paths: every
# fork+exec costs tens of milliseconds under TCG.
: "${TCMU_OUT:?run this inside the VM (scripts/vm/run.sh)}"
TK_CHECKS=$TCMU_OUT/checks.tsv
TK_TIMINGS=$TCMU_OUT/timings.tsv
TK_FAILED=0
: >"$TK_CHECKS"
CFG=/sys/kernel/config/target

tk_log() { printf '[%s] %s\n' "$(tk_up)" "$*"; }
tk_up() { local u; read -r u _ </proc/uptime; printf '%s' "$u"; }
tk_now() { printf '%s' "$EPOCHREALTIME"; }
# tk_since T0: seconds since T0 (an $EPOCHREALTIME value), 3 decimals, no fork
tk_since() { local us=$(( ${EPOCHREALTIME/./} - ${1/./} )); printf '%d.%03d' $((us / 1000000)) $(( (us % 1000000) / 1000 )); }
# tk_sleep S: sleep without forking (read with a timeout on a private fifo)
mkfifo /tmp/.tk_sleep 2>/dev/null; exec {TK_SLEEP_FD}<>/tmp/.tk_sleep
tk_sleep() { read -rt "$1" -u "$TK_SLEEP_FD" _ 2>/dev/null; return 0; }
tk_timing() { printf '%s\t%s\n' "$1" "$2" >>"$TK_TIMINGS"; tk_log "timing $1 = $2 s"; }

# tk_pass NAME [DETAIL] / tk_fail NAME [DETAIL] (newlines and tabs in DETAIL become spaces: one line per check)
_tk_flat() { _tk_d=${1//$'\n'/ }; _tk_d=${_tk_d//$'\t'/ }; _tk_d=${_tk_d:0:400}; }   # sets _tk_d, no fork
tk_pass() { _tk_flat "${2:-}"; printf 'ok\t%s\t%s\n' "$1" "$_tk_d" >>"$TK_CHECKS"; tk_log "ok   $1${_tk_d:+: $_tk_d}"; }
tk_fail() { _tk_flat "${2:-}"; printf 'FAIL\t%s\t%s\n' "$1" "$_tk_d" >>"$TK_CHECKS"; tk_log "FAIL $1${_tk_d:+: $_tk_d}"; TK_FAILED=$((TK_FAILED + 1)); }
# tk_check NAME CMD...: pass when CMD succeeds
tk_check() { local n=$1; shift; if "$@"; then tk_pass "$n"; else tk_fail "$n" "command failed: $*"; fi; }
# tk_eq NAME EXPECTED ACTUAL
tk_eq() { if [ "$2" = "$3" ]; then tk_pass "$1" "$3"; else tk_fail "$1" "expected '$2', got '$3'"; fi; }
# tk_match NAME REGEX ACTUAL
tk_match() { if [[ $3 =~ $2 ]]; then tk_pass "$1" "${BASH_REMATCH[0]}"; else tk_fail "$1" "'${3:0:200}' does not match /$2/"; fi; }
# tk_time NAME CMD...: run CMD, record its duration; returns CMD's status
tk_time() { local n=$1 t0 rc; shift; t0=$EPOCHREALTIME; "$@"; rc=$?; tk_timing "$n" "$(tk_since "$t0")"; return $rc; }
# tk_wait SECONDS CMD...: poll CMD every 10 ms until it succeeds
tk_wait() {
  local lim=$1 t0=${EPOCHREALTIME/./}; shift
  until "$@"; do
    (( ${EPOCHREALTIME/./} - t0 > lim * 1000000 )) && return 1
    tk_sleep 0.01
  done
}
# tk_put FILE VALUE: configfs write with a readable failure
tk_put() { if ! printf '%s' "$2" >"$1" 2>/dev/null; then tk_log "write '$2' > $1 failed"; return 1; fi; }
# tk_finish: exit status of the scenario (number of failed checks, capped)
tk_finish() {
  local n; n=$(grep -c . "$TK_CHECKS" || true)
  tk_log "$((n - TK_FAILED)) passed, $TK_FAILED failed"
  [ "$TK_FAILED" = 0 ] && exit 0
  exit $(( TK_FAILED > 100 ? 100 : TK_FAILED ))
}

# ---- LIO helpers (configfs), for scenarios that put a handler behind tcm_loop

# tk_uio_of DEV: print uioN whose name is tcm-user/<hba>/DEV/...
tk_uio_of() {
  local d n
  for d in /sys/class/uio/uio*; do
    [ -e "$d/name" ] || continue
    read -r n <"$d/name"
    [[ $n == tcm-user/*/"$1"/* ]] && { printf '%s' "${d##*/}"; return 0; }
  done
  return 1
}
# tk_pid_has_uio PID [uioN]: PID has /dev/uioN (any uio if not given) open
tk_pid_has_uio() {
  local f u
  for f in /proc/$1/fd/*; do
    for u in /dev/${2:-uio*}; do [[ $f -ef $u ]] && return 0; done   # -ef: same inode, no fork
  done
  return 1
}
# tk_user_dev DIR CONFIG SIZE [KEY=VALUE ...]: create and enable a user backstore,
# e.g. tk_user_dev $CFG/core/user_0/dev0 file//tmp/x 67108864 max_data_area_mb=64 attrib/cmd_time_out=5
# KEY=VALUE goes to `control`; attrib/NAME=VALUE to that attrib file (before enable).
# With nl_reply_supported, the enable write returns after the daemon answered ADDED_DEVICE.
# A low attrib/cmd_time_out makes a handler that never answers fail fast: linking a
# LUN blocks in the kernel's INQUIRY/TUR scan for cmd_time_out per command (30 s default).
tk_user_dev() {
  local dir=$1 cfg=$2 size=$3 kv; shift 3
  mkdir -p "$dir" || return 1
  tk_put "$dir/control" "dev_config=$cfg" || return 1
  tk_put "$dir/control" "dev_size=$size" || return 1
  for kv in "$@"; do
    case $kv in
      attrib/*=*) tk_put "$dir/${kv%%=*}" "${kv#*=}" || return 1 ;;
      *) tk_put "$dir/control" "$kv" || return 1 ;;
    esac
  done
  tk_put "$dir/enable" 1
}
# tk_loop_export DEVDIR WWN [INITIATOR_WWN]: export DEVDIR as LUN 0 of a tcm_loop
# target port (tpgt_1); waits up to 15 s for its disk and prints its name (sdX)
tk_loop_export() {
  local dev=$1 wwn=$2 iwwn=${3:-naa.50014059999999ff} tpg addr
  tpg=$CFG/loopback/$wwn/tpgt_1
  mkdir -p "$tpg/lun/lun_0" || return 1
  tk_put "$tpg/nexus" "$iwwn" || return 1
  ln -s "$dev" "$tpg/lun/lun_0/${dev##*/}_port" || return 1
  read -r addr <"$tpg/address" || return 1   # host:channel:target of the nexus
  _tk_sd_at() { local b; for b in /sys/class/scsi_device/"$addr":0/device/block/*; do [ -b "/dev/${b##*/}" ] && { printf '%s' "${b##*/}"; return 0; }; done; return 1; }
  tk_wait 15 _tk_sd_at >/dev/null && _tk_sd_at
}
# tk_loop_remove WWN: undo tk_loop_export in the order the kernel needs
# (unlink the LUN, drop the nexus, then the directories)
tk_loop_remove() {
  local tpg=$CFG/loopback/$1/tpgt_1 l rc=0
  for l in "$tpg"/lun/lun_0/*_port; do [ -L "$l" ] && { rm -f "$l" || rc=1; }; done
  [ -e "$tpg/nexus" ] && { tk_put "$tpg/nexus" NULL || rc=1; }
  rmdir "$tpg/lun/lun_0" "$tpg" "$CFG/loopback/$1" || rc=1
  return $rc
}
