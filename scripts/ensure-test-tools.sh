#!/usr/bin/env bash
# The tests run real programs, not mocks: a private dbus-daemon (Debian
# package dbus), gdbus (libglib2.0-bin), qemu-img/qemu-io (qemu-utils) as
# the referee of the qcow handler, and a one-node Ceph cluster for the rbd
# handler (ceph-mon, ceph-osd, the ceph/rbd/rados CLIs of ceph-common, librbd1), and
# the Prometheus server (prometheus: a static Go binary plus the web UI's
# JavaScript, about 100 MB installed) that scrapes the daemon's /metrics, and
# a one-brick Gluster volume for the glfs handler (glusterd and the gluster
# CLI of glusterfs-server, glusterfsd of glusterfs-common, libgfapi0).
# Install what is missing when we
# can (root with apt-get); otherwise say what to install and let the tests
# that need it fail with the same advice (the Prometheus test is skipped).
#
# On a host with an init system the prometheus package starts its own
# service (127.0.0.1:9090, /etc/prometheus, /var/lib/prometheus). The tests
# never use it: test/fixtures/prometheus.ts runs a prometheus of its own on
# a free port with its config and data in a temp dir, so the two coexist.
set -euo pipefail
need=()
command -v dbus-daemon >/dev/null 2>&1 || need+=(dbus)
command -v gdbus >/dev/null 2>&1 || need+=(libglib2.0-bin)
{ command -v qemu-img && command -v qemu-io; } >/dev/null 2>&1 || need+=(qemu-utils)
command -v ceph-mon >/dev/null 2>&1 || need+=(ceph-mon)
command -v ceph-osd >/dev/null 2>&1 || need+=(ceph-osd)
command -v rbd >/dev/null 2>&1 || need+=(ceph-common)
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'librbd\.so\.1 ' || need+=(librbd1)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
{ command -v glusterd && command -v gluster; } >/dev/null 2>&1 || need+=(glusterfs-server)
command -v glusterfsd >/dev/null 2>&1 || need+=(glusterfs-common)
{ ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q 'libgfapi\.so\.0 ' || need+=(libgfapi0)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing test tools: ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
else
  echo "[setup] missing test tools: ${need[*]} (install them: apt-get install ${need[*]})" >&2
fi
