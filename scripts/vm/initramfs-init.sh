#!/bin/busybox sh
# Stage 1 of the test VM, /init of the initramfs built by prepare.sh (busybox only).
# Loads the modules needed to reach the root (virtio, ext4, 9p) in the order
# prepare.sh computed (/etc/modules.boot), mounts the ext4 root image (/dev/vda)
# and the project's 9p share (mount_tag "repo") at /repo inside it, then hands
# over to stage 2, /repo/scripts/vm/guest-init.sh (or tcmu.init=<path in repo>),
# which runs the scenario. Any failure here powers the guest off: run.sh then
# finds no status file and reports the tail of the console log.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
T_INIT=$(cut -d' ' -f1 /proc/uptime)
echo "[stage1 ${T_INIT}s] initramfs /init"

fail() {
  echo "TCMU-VM-STAGE1-FAILED: $*"
  sync
  echo o >/proc/sysrq-trigger
  sleep 10
  poweroff -f
}

param() {
  for w in $(cat /proc/cmdline); do
    case $w in "$1="*) echo "${w#*=}"; return 0 ;; esac
  done
  return 1
}

while read -r ko; do
  [ -n "$ko" ] || continue
  insmod "$ko" || fail "insmod $ko"
done </etc/modules.boot

wait_for() { # path, tenths of a second
  n=0
  while [ ! -e "$1" ] && [ $n -lt "$2" ]; do sleep 0.1; n=$((n + 1)); done
  [ -e "$1" ]
}
wait_for /dev/vda 100 || fail "no /dev/vda (root image) after 10 s"
mount -t ext4 -o rw,noatime /dev/vda /newroot || fail "mount root image"
MSIZE=$(param tcmu.msize || echo 512000)
ok=0
for i in 1 2 3 4 5 6 7 8 9 10; do
  if mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE,access=client repo /newroot/repo 2>/dev/null; then ok=1; break; fi
  sleep 0.2
done
[ $ok = 1 ] || fail "mount 9p share 'repo' (trans=virtio,version=9p2000.L)"

INIT=$(param tcmu.init || echo scripts/vm/guest-init.sh)
[ -f "/newroot/repo/$INIT" ] || fail "no /repo/$INIT on the share"
T_SWITCH=$(cut -d' ' -f1 /proc/uptime)
echo "[stage1 ${T_SWITCH}s] switching to the root image, stage 2: /repo/$INIT"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash "/repo/$INIT" "$T_INIT" "$T_SWITCH"
fail "switch_root failed"
