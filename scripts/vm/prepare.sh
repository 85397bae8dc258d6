#!/usr/bin/env bash
# Build (or reuse) everything the real-kernel test VM needs, under .vm-cache/:
#
#   .vm-cache/vm/vmlinuz          Debian's bookworm kernel (linux-image-<abi>-amd64-unsigned)
#   .vm-cache/vm/initramfs.cpio.gz busybox + the modules needed to reach the root
#                                 (virtio, ext4, 9p) + scripts/vm/initramfs-init.sh as /init
#   .vm-cache/vm/root.img         ext4 image of a debootstrap minbase bookworm root with
#                                 sg3-utils, fio, libiscsi-bin, tcmu-runner, targetcli-fb,
#                                 dbus, qemu-utils (qemu-img: creates and checks the qcow2
#                                 images of tcmu-ts.sh; 1.4 MB more to download, 7 MB
#                                 installed; a prepare from nothing took 75 s with it),
#                                 f2fs-tools, btrfs-progs (zoned filesystems on a zbc LUN),
#                                 genisoimage, dvd+rw-tools (an ISO9660 image and
#                                 dvd+rw-mediainfo for an fbo LUN), open-iscsi,
#                                 multipath-tools and udev (the kernel initiator of
#                                 iscsi-initiator.sh; systemd-udevd runs without systemd), the
#                                 host's node binary and the target modules
#   .vm-cache/vm/modules.load     guest paths of the .ko files to insmod, in order
#   .vm-cache/vm/manifest.env     kernel release, node version, sizes (sourced by run.sh)
#
# Idempotent: every step is keyed by a stamp of its inputs and skipped when the
# stamp matches, so a warm run touches neither apt nor the network.
# Every long step is bounded by a timeout. Needs root (apt-get, debootstrap).
#
# Options: --refresh   re-resolve the kernel ABI through apt (may fetch a newer kernel)
#          --rebuild   forget all stamps (keeps downloaded .debs)
# Env:     TCMU_VM_CACHE (default <repo>/.vm-cache), TCMU_VM_MIRROR (default: host's apt mirror),
#          TCMU_VM_KERNEL_ABI (e.g. 6.1.0-56), TCMU_VM_NODE (default: command -v node)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=${TCMU_VM_CACHE:-$REPO/.vm-cache}
VM=$CACHE/vm
STAMPS=$CACHE/stamps
SUITE=bookworm
# Bump when the layout of the root image or the initramfs changes in a way the
# stamps (which hash the inputs below) would not notice.
LAYOUT=4
GUEST_PACKAGES=kmod,sg3-utils,fio,libiscsi-bin,e2fsprogs,tcmu-runner,targetcli-fb,dbus,procps,util-linux,qemu-utils,f2fs-tools,btrfs-progs,genisoimage,dvd+rw-tools,open-iscsi,multipath-tools,udev
# Modules the initramfs loads to reach the root image and the 9p share.
BOOT_MODULES=(virtio_pci virtio_blk crc32c_generic ext4 9pnet_virtio 9p)
# The target stack (what /init loads in stage 2, in the order modprobe resolves).
TARGET_MODULES=(configfs target_core_mod target_core_user uio tcm_loop iscsi_target_mod sd_mod sg)
# Shipped in the guest's /lib/modules too (with their dependencies) for scenarios to modprobe:
# all of drivers/target (targetcli modprobes every fabric) plus a few block helpers,
# sr_mod (an fbo LUN is a CD/DVD drive), the filesystems zbc/fbo LUNs are tested with, and the
# initiator side of iscsi-initiator.sh: open-iscsi's transport (iscsi_tcp pulls libiscsi,
# libiscsi_tcp, scsi_transport_iscsi), dm-multipath with its path selectors (dm_mod) and
# the ALUA device handler.
EXTRA_MODULES=(loop scsi_debug null_blk sr_mod isofs f2fs btrfs zonefs iscsi_tcp dm_multipath dm_round_robin dm_service_time dm_queue_length scsi_dh_alua)

REFRESH=0
for a in "$@"; do
  case $a in
    --refresh) REFRESH=1 ;;
    --rebuild) rm -rf "$STAMPS" ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "prepare.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

T0NS=$(date +%s%N)
log() { local now; now=$(date +%s%N); printf '[vm-prepare %5.1fs] %s\n' "$(( (now - T0NS) / 1000000 ))e-3" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, debootstrap, image ownership)"
mkdir -p "$CACHE" "$VM" "$STAMPS" "$CACHE/debs"

# One prepare at a time (a second caller waits, then finds everything cached).
exec 9>"$CACHE/prepare.lock"
if ! flock -w 1800 9; then die "another prepare.sh holds $CACHE/prepare.lock for 30 min"; fi

stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" >"$STAMPS/$1"; }
hash_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }

# ---------------------------------------------------------------- host tools
APT_UPDATED=0
apt_update_once() {
  [ $APT_UPDATED = 1 ] && return 0
  log "apt-get update"
  timeout 300 apt-get update -qq || die "apt-get update failed or timed out"
  APT_UPDATED=1
}
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
static_busybox() { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 && /bin/busybox --list | grep -qx switch_root; }
static_busybox || need_pkgs+=(busybox-static)
command -v depmod >/dev/null && command -v modprobe >/dev/null || need_pkgs+=(kmod)
command -v debootstrap >/dev/null || need_pkgs+=(debootstrap)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v flock >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing host packages: ${need_pkgs[*]}"
  if [ -z "$(ls /var/lib/apt/lists/*_Packages* 2>/dev/null | head -1)" ]; then apt_update_once; fi
  if ! DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >"$CACHE/apt-install.log" 2>&1; then
    apt_update_once
    DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >"$CACHE/apt-install.log" 2>&1 \
      || { tail -20 "$CACHE/apt-install.log" >&2; die "apt-get install ${need_pkgs[*]} failed"; }
  fi
else
  log "host packages present"
fi

# ---------------------------------------------------------------- kernel
ABI=${TCMU_VM_KERNEL_ABI:-}
if [ -z "$ABI" ] && [ $REFRESH = 0 ] && [ -f "$STAMPS/kernel-abi" ]; then ABI=$(cat "$STAMPS/kernel-abi"); fi
if [ -z "$ABI" ]; then
  dep=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*\)-amd64$/\1/p' | head -1)
  if [ -z "$dep" ] || [ $REFRESH = 1 ]; then
    apt_update_once
    dep=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*\)-amd64$/\1/p' | head -1)
  fi
  [ -n "$dep" ] || die "cannot resolve the ABI linux-image-amd64 depends on"
  ABI=$dep
fi
KPKG=linux-image-$ABI-amd64-unsigned
KDIR=$CACHE/kernel/$ABI
if ! stamp_ok "kernel-$ABI" "$KPKG" || [ ! -d "$KDIR/lib/modules" ]; then
  deb=$(ls "$CACHE/debs/${KPKG}_"*.deb 2>/dev/null | tail -1 || true)
  if [ -z "$deb" ]; then
    log "downloading $KPKG (about 70 MB)"
    apt-cache show "$KPKG" >/dev/null 2>&1 || apt_update_once
    (cd "$CACHE/debs" && timeout 900 apt-get download -q "$KPKG" 2>&1 | grep -v 'unsandboxed' >&2) || true
    deb=$(ls "$CACHE/debs/${KPKG}_"*.deb 2>/dev/null | tail -1 || true)
    [ -n "$deb" ] || die "apt-get download $KPKG failed"
  fi
  log "unpacking $(basename "$deb")"
  rm -rf "$KDIR.tmp" "$KDIR"
  mkdir -p "$KDIR.tmp"
  timeout 300 dpkg-deb -x "$deb" "$KDIR.tmp"
  mv "$KDIR.tmp" "$KDIR"
  stamp_set "kernel-$ABI" "$KPKG"
fi
printf '%s' "$ABI" >"$STAMPS/kernel-abi"
KVER=$(ls "$KDIR/lib/modules" | head -1)
[ -n "$KVER" ] && [ -f "$KDIR/boot/vmlinuz-$KVER" ] || die "no kernel in $KDIR"
KMOD=$KDIR/lib/modules/$KVER
if [ ! -s "$KMOD/modules.dep" ] || [ "$KMOD/modules.dep" -ot "$KMOD/modules.order" ]; then
  log "depmod -b $KDIR $KVER"
  depmod -b "$KDIR" "$KVER"
fi
cp -f "$KDIR/boot/vmlinuz-$KVER" "$VM/vmlinuz.tmp" && mv -f "$VM/vmlinuz.tmp" "$VM/vmlinuz"
log "kernel $KVER ($KPKG)"

# Module order: modprobe --show-depends prints "insmod <path>" lines (deps first)
# and "builtin <name>" for built-in ones. Guest paths = host paths less $KDIR.
show_order() {
  local m line
  for m in "$@"; do
    modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" 2>/dev/null \
      || die "modprobe --show-depends $m failed (module missing from $KPKG?)"
  done | while read -r kind path _; do
    case $kind in insmod) echo "${path#"$KDIR"}" ;; esac
  done | awk '!seen[$0]++'
}
BOOT_ORDER=$(show_order "${BOOT_MODULES[@]}")
TARGET_ORDER=$(show_order "${TARGET_MODULES[@]}")
# every module under drivers/target, plus extras, with all dependencies
ALL_TARGET=$(cd "$KMOD/kernel" && find drivers/target -name '*.ko*' -printf '%f\n' | sed 's/\.ko.*//')
# shellcheck disable=SC2086
SHIP_ORDER=$(show_order "${BOOT_MODULES[@]}" "${TARGET_MODULES[@]}" $ALL_TARGET "${EXTRA_MODULES[@]}")
builtins=$(for m in "${BOOT_MODULES[@]}" "${TARGET_MODULES[@]}"; do modprobe -d "$KDIR" -S "$KVER" --show-depends "$m" | awk '$1=="builtin"{print $2}'; done | sort -u | tr '\n' ' ')
printf '%s\n' "$BOOT_ORDER" >"$VM/modules.boot"
printf '%s\n' "$TARGET_ORDER" >"$VM/modules.load"
log "boot modules: $(echo "$BOOT_ORDER" | wc -l), target modules: $(echo "$TARGET_ORDER" | wc -l), shipped: $(echo "$SHIP_ORDER" | wc -l), built in: ${builtins:-none}"

# ---------------------------------------------------------------- guest root (debootstrap)
mirror() {
  if [ -n "${TCMU_VM_MIRROR:-}" ]; then echo "$TCMU_VM_MIRROR"; return; fi
  local u
  u=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- '-security' | grep '/debian/\?$' | head -1)
  [ -n "$u" ] || u=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}' | grep '/debian/\?$' | head -1)
  echo "${u:-http://deb.debian.org/debian}"
}
MIRROR=$(mirror)
ROOT=$CACHE/rootfs
ROOT_KEY=$(hash_of "$SUITE" "$MIRROR" "$GUEST_PACKAGES")
if ! stamp_ok rootfs "$ROOT_KEY" || [ ! -x "$ROOT/bin/bash" ]; then
  log "debootstrap --variant=minbase $SUITE from $MIRROR (+ $GUEST_PACKAGES)"
  rm -rf "$ROOT.tmp" "$ROOT"
  mkdir -p "$CACHE/debs/debootstrap"
  if ! timeout 1200 debootstrap --variant=minbase --include="$GUEST_PACKAGES" \
      --cache-dir="$CACHE/debs/debootstrap" "$SUITE" "$ROOT.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -30 "$CACHE/debootstrap.log" >&2
    [ -f "$ROOT.tmp/debootstrap/debootstrap.log" ] && tail -30 "$ROOT.tmp/debootstrap/debootstrap.log" >&2
    # debootstrap mounts proc/sys in the target; leave none behind
    for m in proc sys dev/pts dev; do umount -l "$ROOT.tmp/$m" 2>/dev/null || true; done
    die "debootstrap failed (log: $CACHE/debootstrap.log)"
  fi
  for m in proc sys dev/pts dev; do umount -l "$ROOT.tmp/$m" 2>/dev/null || true; done
  # no downloaded .debs inside the image
  rm -rf "$ROOT.tmp"/var/cache/apt/archives/*.deb "$ROOT.tmp"/var/lib/apt/lists/*_Packages 2>/dev/null || true
  mv "$ROOT.tmp" "$ROOT"
  stamp_set rootfs "$ROOT_KEY"
  rm -f "$STAMPS/image"
else
  log "debootstrap root cached"
fi

# ---------------------------------------------------------------- overlays + ext4 image
NODE=${TCMU_VM_NODE:-$(command -v node || true)}
[ -n "$NODE" ] && [ -x "$NODE" ] || die "no node binary on the host (set TCMU_VM_NODE)"
NODE=$(readlink -f "$NODE")
NODE_SUM=$(sha256sum "$NODE" | cut -c1-16)
NODE_VER=$("$NODE" --version)
IMG_KEY=$(hash_of "$LAYOUT" "$ROOT_KEY" "$KVER" "$NODE_SUM" "$SHIP_ORDER" "$TARGET_ORDER" "$(sha256sum /bin/busybox)")
if ! stamp_ok image "$IMG_KEY" || [ ! -f "$VM/root.img" ]; then
  log "overlaying node $NODE_VER, busybox and $(echo "$SHIP_ORDER" | wc -l) modules into the root"
  install -m 0755 "$NODE" "$ROOT/usr/local/bin/node"
  # node needs only libc/libstdc++/libm/libgcc_s/libdl/libpthread; fail now, not in the guest
  for lib in $(ldd "$NODE" | awk '/=>/{print $1}'); do
    ls "$ROOT"/lib/x86_64-linux-gnu/"$lib" "$ROOT"/usr/lib/x86_64-linux-gnu/"$lib" >/dev/null 2>&1 \
      || die "guest root lacks $lib needed by node"
  done
  install -m 0755 /bin/busybox "$ROOT/usr/local/bin/busybox"
  rm -rf "$ROOT/lib/modules" && mkdir -p "$ROOT/lib/modules/$KVER"
  while read -r p; do
    [ -n "$p" ] || continue
    mkdir -p "$ROOT$(dirname "$p")"
    cp "$KDIR$p" "$ROOT$p"
  done <<<"$SHIP_ORDER"
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$KMOD/$f" ] && cp "$KMOD/$f" "$ROOT/lib/modules/$KVER/"
  done
  depmod -b "$ROOT" "$KVER"
  mkdir -p "$ROOT/etc/tcmu-vm"
  printf '%s\n' "$TARGET_ORDER" >"$ROOT/etc/tcmu-vm/modules.load"
  printf '%s\n' "$KVER" >"$ROOT/etc/tcmu-vm/kernel-release"
  echo tcmu-vm >"$ROOT/etc/hostname"
  printf '127.0.0.1\tlocalhost tcmu-vm\n::1\tlocalhost\n' >"$ROOT/etc/hosts"
  : >"$ROOT/etc/fstab"
  mkdir -p "$ROOT/repo" "$ROOT/etc/target"
  # size: contents + 25% + 256 MiB of headroom for scenarios writing to / (snapshot=on keeps it off the image)
  used=$(du -sm "$ROOT" | cut -f1)
  size=$(( used + used / 4 + 256 ))
  log "mkfs.ext4 -d rootfs (${used} MiB used, image ${size} MiB)"
  rm -f "$VM/root.img.tmp"
  truncate -s "${size}M" "$VM/root.img.tmp"
  timeout 600 mkfs.ext4 -q -F -L tcmu-root -E lazy_itable_init=0,lazy_journal_init=0 -d "$ROOT" "$VM/root.img.tmp" \
    || die "mkfs.ext4 -d failed"
  mv -f "$VM/root.img.tmp" "$VM/root.img"
  stamp_set image "$IMG_KEY"
else
  log "root image cached"
fi

# ---------------------------------------------------------------- initramfs
INIT_SRC=$REPO/scripts/vm/initramfs-init.sh
INITRD_KEY=$(hash_of "$LAYOUT" "$KVER" "$BOOT_ORDER" "$(sha256sum "$INIT_SRC" /bin/busybox)")
if ! stamp_ok initramfs "$INITRD_KEY" || [ ! -f "$VM/initramfs.cpio.gz" ]; then
  log "building initramfs"
  IR=$CACHE/initramfs.tmp
  rm -rf "$IR" && mkdir -p "$IR"/{bin,sbin,dev,proc,sys,newroot,etc,lib/modules/"$KVER"}
  cp /bin/busybox "$IR/bin/busybox"
  install -m 0755 "$INIT_SRC" "$IR/init"
  while read -r p; do
    [ -n "$p" ] || continue
    mkdir -p "$IR$(dirname "$p")"
    cp "$KDIR$p" "$IR$p"
  done <<<"$BOOT_ORDER"
  for f in modules.builtin modules.builtin.modinfo modules.order; do
    [ -f "$KMOD/$f" ] && cp "$KMOD/$f" "$IR/lib/modules/$KVER/"
  done
  depmod -b "$IR" "$KVER"
  printf '%s\n' "$BOOT_ORDER" >"$IR/etc/modules.boot"
  (cd "$IR" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0 | gzip -1 >"$VM/initramfs.cpio.gz.tmp")
  mv -f "$VM/initramfs.cpio.gz.tmp" "$VM/initramfs.cpio.gz"
  rm -rf "$IR"
  stamp_set initramfs "$INITRD_KEY"
else
  log "initramfs cached"
fi

cat >"$VM/manifest.env.tmp" <<EOF
KVER=$KVER
KPKG=$KPKG
NODE_VERSION=$NODE_VER
MIRROR=$MIRROR
ROOT_IMG_MB=$(( $(stat -c %s "$VM/root.img") / 1048576 ))
INITRD_KB=$(( $(stat -c %s "$VM/initramfs.cpio.gz") / 1024 ))
EOF
mv -f "$VM/manifest.env.tmp" "$VM/manifest.env"
log "ready: $VM (kernel $KVER, node $NODE_VER)"
