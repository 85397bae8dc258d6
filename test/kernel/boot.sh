#!/bin/bash
# Minimal scenario: the guest boots, sees the share, runs node, and node can
# load the built project (workspace packages and koffi's native addon) from /repo.
. "$TCMU_REPO/test/kernel/lib.sh"
tk_log "kernel $(uname -r), repo at $TCMU_REPO (host path $TCMU_HOSTREPO), results in $TCMU_OUT"
tk_check "configfs mounted" mountpoint -q /sys/kernel/config
tk_check "target_core_user loaded" test -d /sys/module/target_core_user
t0=$EPOCHREALTIME
v=$(node -e 'process.stdout.write(process.version)'); tk_match "node runs" '^v[0-9]+' "$v"
tk_timing node_e "$(tk_since "$t0")"
if [ -f "$TCMU_REPO/packages/core/dist/index.js" ]; then
  t0=$EPOCHREALTIME
  out=$(cd "$TCMU_REPO" && node --input-type=module -e '
    const k = (await import("koffi")).default;
    const core = await import("@tcmu-ts/core");
    console.log("koffi", k.version ?? "loaded", "core exports", Object.keys(core).length);' 2>&1)
  tk_match "built project imports (koffi + @tcmu-ts/core)" '^koffi .* core exports [1-9]' "$out"
  tk_timing node_import_core "$(tk_since "$t0")"
else
  tk_log "project not built (npm run build): import check skipped"
fi
tk_finish
