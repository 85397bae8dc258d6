#!/bin/bash
# Minimal scenario: the guest boots, sees the share, and runs node.
set -eu
echo "kernel $(uname -r), repo at $TCMU_REPO, results in $TCMU_OUT"
lsmod | grep -E '^(target_core_user|tcm_loop|iscsi_target_mod|uio) ' || true
mountpoint -q /sys/kernel/config && ls /sys/kernel/config/target
node -e 'console.log("node", process.version, process.arch)'
