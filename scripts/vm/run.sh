#!/usr/bin/env bash
# Boot the test VM (after scripts/vm/prepare.sh) and run one scenario in it.
#
#   scripts/vm/run.sh [options] <scenario-script>
#
# The scenario is a bash script inside the repo (it reaches the guest through a
# 9p share at /repo). It runs as root in a Debian bookworm guest with the
# target modules loaded and configfs mounted; see scripts/vm/guest-init.sh for
# its environment (TCMU_OUT, TCMU_REPO, ...). Exits with the scenario's status;
# 124 if the guest hung and was killed, 125 if the guest died before writing a
# status (the console log's tail is printed).
#
# Options: --timeout S   hard limit for the whole VM, host wall clock (default 300)
#          --out DIR     results directory inside the repo (default .vm-cache/results/runs/<stamp>-<name>)
#          --no-modules  do not load the target stack before the scenario
#          --mem MB, --smp N, --append "k=v ..." (extra kernel parameters)
#          --env NAME=VALUE  export NAME to the scenario (no spaces; repeatable)
#          --live        let the guest run the working tree's dist/ (default: a
#                        frozen copy, see below)
#          -v            stream the serial console to stderr
#
# The guest reads the repo live over 9p, so a rebuild on the host during a run
# could hand the daemon a half-written dist/ file, and node loads modules
# through 9p about 8 times slower than from a local disk. Unless --live, run.sh
# first packs the built tree (scripts/vm/snapshot-build.mjs: dist/ and the
# production node_modules) into .vm-cache/build/<run>.tar; guest-init.sh
# unpacks it to /opt/tcmu-ts and the scenario gets that path as TCMU_BUILD
# (/repo with --live). The tar is deleted after the run.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TCMU_VM_CACHE:-$REPO/.vm-cache}
VM=$CACHE/vm
TIMEOUT=300 OUT_REL= MODS=all MEM=2048 SMP=2 EXTRA= VERBOSE=0 SCEN= LIVE=0 ENVS=
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) TIMEOUT=$2; shift 2 ;;
    --out) OUT_REL=$2; shift 2 ;;
    --no-modules) MODS=none; shift ;;
    --mem) MEM=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --append) EXTRA=$2; shift 2 ;;
    --live) LIVE=1; shift ;;
    --env) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*=[^[:space:]]*$ ]] || { echo "run.sh: --env wants NAME=VALUE without spaces" >&2; exit 2; }
      ENVS+=" tcmu.env.$2"; shift 2 ;;
    -v) VERBOSE=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) SCEN=$1; shift ;;
  esac
done
[ -n "$SCEN" ] || { echo "usage: run.sh [options] <scenario-script>" >&2; exit 2; }
for f in vmlinuz initramfs.cpio.gz root.img; do
  [ -f "$VM/$f" ] || { echo "run.sh: $VM/$f missing: run scripts/vm/prepare.sh first" >&2; exit 2; }
done
SCEN_ABS=$(readlink -f "$SCEN")
case $SCEN_ABS in "$REPO"/*) ;; *) echo "run.sh: $SCEN must be inside $REPO (the guest sees the repo only)" >&2; exit 2 ;; esac
SCEN_REL=${SCEN_ABS#"$REPO"/}
NAME=$(basename "$SCEN_REL" .sh)
[ -n "$OUT_REL" ] || OUT_REL=.vm-cache/results/runs/$(date +%Y%m%d-%H%M%S)-$$-$NAME
OUT_REL=${OUT_REL#"$REPO"/}
OUT=$REPO/$OUT_REL
mkdir -p "$OUT"
rm -f "$OUT/status"
CONSOLE=$OUT/console.log
# the guest's own limit for the scenario leaves room for boot (~10-15 s) and power-off,
# so a scenario that merely runs too long still reports (status 124) instead of being killed
GUEST_TMO=$(( TIMEOUT > 80 ? TIMEOUT - 40 : TIMEOUT / 2 ))

# Frozen copy of the built daemon (see the header and scripts/vm/snapshot-build.mjs).
BUILD_REL=
if [ $LIVE = 0 ] && [ -f "$REPO/packages/workers/dist/cli/main.js" ]; then
  BUILD_TAR=$REPO/.vm-cache/build/${OUT_REL##*/}.tar   # inside the share, whatever TCMU_VM_CACHE says
  if node "$REPO/scripts/vm/snapshot-build.mjs" "$BUILD_TAR" >&2; then
    BUILD_REL=${BUILD_TAR#"$REPO"/}
    trap 'rm -f "$BUILD_TAR"' EXIT
  else
    echo "[vm-run] WARNING: no frozen build; the guest runs the live tree" >&2
  fi
fi

APPEND="console=ttyS0 loglevel=4 panic=-1 mitigations=off tsc=reliable no_timer_check i8042.noaux=1 i8042.nokbd=1 edd=off rdinit=/init"
APPEND+=" tcmu.scenario=$SCEN_REL tcmu.out=$OUT_REL tcmu.timeout=$GUEST_TMO tcmu.modules=$MODS tcmu.hostrepo=$REPO"
[ -n "$BUILD_REL" ] && APPEND+=" tcmu.build=$BUILD_REL"
APPEND+=$ENVS
[ -n "$EXTRA" ] && APPEND+=" $EXTRA"

QEMU=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -m "$MEM" -smp "$SMP"
  -nographic -no-reboot -nic none -monitor none -serial "file:$CONSOLE"
  -kernel "$VM/vmlinuz" -initrd "$VM/initramfs.cpio.gz" -append "$APPEND"
  -drive "file=$VM/root.img,if=virtio,format=raw,snapshot=on,cache=unsafe"
  -virtfs "local,path=$REPO,mount_tag=repo,security_model=passthrough,id=repo")

echo "[vm-run] $SCEN_REL: booting (tcg, ${SMP} cpus, ${MEM} MiB, limit ${TIMEOUT}s); results in $OUT_REL" >&2
tail_pid=
if [ $VERBOSE = 1 ]; then : >"$CONSOLE"; tail -n +1 -F "$CONSOLE" >&2 2>/dev/null & tail_pid=$!; fi
t0=$(date +%s%N)
set +e
timeout -k 5 "$TIMEOUT" "${QEMU[@]}" </dev/null >"$OUT/qemu.log" 2>&1
qrc=$?
set -e
t1=$(date +%s%N)
[ -n "$tail_pid" ] && { sleep 0.2; kill "$tail_pid" 2>/dev/null || true; wait "$tail_pid" 2>/dev/null || true; }
WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}')
printf 'host_wall_boot_to_exit\t%s\n' "$WALL" >"$OUT/host.tsv"
printf 'qemu_exit\t%s\n' "$qrc" >>"$OUT/host.tsv"

if [ $qrc = 124 ] || [ $qrc = 137 ]; then
  echo "[vm-run] HUNG: guest killed after ${TIMEOUT}s (qemu exit $qrc); console tail:" >&2
  tail -25 "$CONSOLE" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >&2
  echo 124 >"$OUT/status.host"
  exit 124
fi
if [ ! -f "$OUT/status" ]; then
  echo "[vm-run] FAILED: guest stopped without a status (qemu exit $qrc) after ${WALL}s; console tail:" >&2
  tail -25 "$CONSOLE" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g; s/\x1bc//g' >&2
  [ -s "$OUT/qemu.log" ] && { echo "[vm-run] qemu said:" >&2; cat "$OUT/qemu.log" >&2; }
  echo 125 >"$OUT/status.host"
  exit 125
fi
status=$(cat "$OUT/status")
echo "$status" >"$OUT/status.host"
echo "[vm-run] $SCEN_REL: exit $status after ${WALL}s host wall clock" >&2
exit "$status"
