#!/bin/bash
# Stage 2 of the test VM: PID 1 in the Debian root image, started by the
# initramfs (scripts/vm/initramfs-init.sh) with the project's 9p share at /repo.
# Read from the share at every boot, so editing it needs no image rebuild.
#
# Kernel command line (set by run.sh):
#   tcmu.scenario=<path in repo>  script to run with bash (required)
#   tcmu.out=<path in repo>       results directory (created; status written there)
#   tcmu.timeout=<s>              scenario timeout inside the guest (default 240)
#   tcmu.modules=all|none         insmod the target stack before the scenario (default all)
#   tcmu.hostrepo=<abs path>      the repo's path on the host: symlinked to /repo
#   tcmu.build=<path in repo>     tar of the built tree (run.sh): unpacked to /opt/tcmu-ts = TCMU_BUILD
#   tcmu.env.NAME=VALUE           exported to the scenario (run.sh --env NAME=VALUE)
#
# Writes into the results directory: status (the scenario's exit code, last),
# scenario.log, timings.tsv (boot phases, appended to by the scenario),
# modules.tsv (per-module insmod time), dmesg.txt. Then powers the guest off.
# Never exits (it is PID 1): every path ends in power-off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TERM=dumb
T_INIT=${1:-0} T_SWITCH=${2:-0}
up() { cut -d' ' -f1 /proc/uptime; }
echo "[stage2 $(up)s] guest-init"

param() {
  local w
  for w in $(</proc/cmdline); do
    case $w in "$1="*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}

poweroff_now() {
  sync
  umount /repo 2>/dev/null
  echo o >/proc/sysrq-trigger
  sleep 10
  busybox poweroff -f
  while :; do sleep 60; done
}

SCENARIO=$(param tcmu.scenario)
OUT_REL=$(param tcmu.out || echo .vm-cache/results/runs/unnamed)
TMO=$(param tcmu.timeout || echo 240)
MODS=$(param tcmu.modules || echo all)
HOSTREPO=$(param tcmu.hostrepo || true)
BUILD_REL=$(param tcmu.build || true)
OUT=/repo/$OUT_REL
mkdir -p "$OUT" || { echo "TCMU-VM: cannot create $OUT"; poweroff_now; }
TIMINGS=$OUT/timings.tsv
: >"$TIMINGS"
tsv() { printf '%s\t%s\n' "$1" "$2" >>"$TIMINGS"; }
finish() {
  dmesg >"$OUT/dmesg.txt" 2>/dev/null
  tsv guest_uptime_at_poweroff "$(up)"
  echo "$1" >"$OUT/status.tmp" && mv "$OUT/status.tmp" "$OUT/status"
  echo "TCMU-VM-STATUS: $1"
  poweroff_now
}
tsv kernel_to_stage1 "$T_INIT"
tsv kernel_to_stage2 "$T_SWITCH"

mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /dev/pts /dev/shm /run/lock
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
hostname tcmu-vm
busybox ip link set lo up
if [ -n "$HOSTREPO" ] && [ "$HOSTREPO" != /repo ] && [ ! -e "$HOSTREPO" ]; then
  mkdir -p "$(dirname "$HOSTREPO")" && ln -s /repo "$HOSTREPO"
fi

KVER=$(uname -r)
export TCMU_REPO=/repo TCMU_OUT=$OUT TCMU_KVER=$KVER TCMU_MODULES_LOAD=/etc/tcmu-vm/modules.load
export TCMU_HOSTREPO=${HOSTREPO:-/repo}
for w in $(</proc/cmdline); do
  case $w in tcmu.env.[A-Za-z_]*=*) w=${w#tcmu.env.}; export "${w%%=*}=${w#*=}" ;; esac
done
# where the scenario finds the built daemon: run.sh's frozen copy on the guest's
# disk (node loads modules ~8x faster than through 9p), else the live tree
export TCMU_BUILD=/repo
if [ -n "$BUILD_REL" ] && [ -f "/repo/$BUILD_REL" ]; then
  t0=$(up)
  if mkdir -p /opt/tcmu-ts && tar -C /opt/tcmu-ts -xf "/repo/$BUILD_REL" && [ -f /opt/tcmu-ts/packages/workers/dist/cli/main.js ]; then
    export TCMU_BUILD=/opt/tcmu-ts
    tsv build_unpacked_at "$(up)"
    echo "[stage2 $(up)s] built tree unpacked to /opt/tcmu-ts (from $BUILD_REL)"
  else
    echo "TCMU-VM: cannot unpack /repo/$BUILD_REL: the scenario uses the live tree"
  fi
fi

# Load the target stack in prepare.sh's order (modprobe --show-depends on the host).
load_modules() {
  # bash builtins only (no date/basename forks): each fork costs ~30 ms under TCG
  local ko name t0 tsv=
  while read -r ko; do
    [ -n "$ko" ] || continue
    name=${ko##*/}; name=${name%.ko}; name=${name//-/_}
    [ -d "/sys/module/$name" ] && continue
    t0=$EPOCHREALTIME
    insmod "$ko" || { echo "TCMU-VM: insmod $ko failed"; return 1; }
    tsv+="$name	$t0	$EPOCHREALTIME"$'\n'
  done <"$TCMU_MODULES_LOAD"
  # name, seconds
  printf '%s' "$tsv" | awk -F'\t' '{printf "%s\t%.3f\n", $1, $3 - $2}' >"$OUT/modules.tsv"
}
if [ "$MODS" != none ]; then
  t0=$(up)
  load_modules || finish 125
  mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config || finish 125
  tsv modules_loaded_at "$(up)"
  echo "[stage2 $(up)s] target modules loaded, configfs mounted"
fi

if [ -z "$SCENARIO" ] || [ ! -f "/repo/$SCENARIO" ]; then
  echo "TCMU-VM: no scenario (tcmu.scenario=$SCENARIO)"
  finish 126
fi
tsv scenario_start "$(up)"
echo "[stage2 $(up)s] running $SCENARIO (timeout ${TMO}s)"
cd /repo || finish 125
timeout -k 5 "$TMO" bash "/repo/$SCENARIO" </dev/null 2>&1 | tee "$OUT/scenario.log"
rc=${PIPESTATUS[0]}
tsv scenario_end "$(up)"
[ "$rc" = 124 ] && echo "TCMU-VM: scenario timed out after ${TMO}s in the guest"
echo "[stage2 $(up)s] scenario exit $rc"
finish "$rc"
