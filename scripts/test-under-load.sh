#!/bin/bash
# `npm test` several times in a row in a fresh clone while CPU hogs keep cores
# busy: the check of issue 17 item 8, and the way to hunt a flaky test.
# Each run's whole output is kept; the summary names the failing tests.
set -u
usage() {
  cat <<'EOF'
usage: scripts/test-under-load.sh [--runs N] [--hogs K] [--keep] [--ref REF]

Clones REF (default HEAD) of this repository into a new temp directory and
runs `npm test` there N times in a row (default 5) while K processes of
`sha256sum /dev/zero` (default 1: one of two cores kept busy) run beside it.
Prints one line per run (exit status, passing/failing counts, seconds) and the
titles of failing tests; the logs stay in the temp directory, which is removed
at the end unless --keep is given or a run failed.
Exit status: 0 when every run passed, 1 otherwise, 2 for bad arguments.
EOF
}
runs=5 hogs=1 keep=0 ref=HEAD
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:-}; shift 2 ;;
    --hogs) hogs=${2:-}; shift 2 ;;
    --ref) ref=${2:-}; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "test-under-load: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$runs$hogs" in *[!0-9]*|'') echo "test-under-load: --runs and --hogs take a whole number" >&2; exit 2 ;; esac
[ "$runs" -ge 1 ] || { echo "test-under-load: --runs must be at least 1" >&2; exit 2; }

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel) || exit 2
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}") || { echo "test-under-load: no commit '$ref'" >&2; exit 2; }
work=$(mktemp -d /tmp/tcmu-under-load.XXXXXX)
git clone -q "$repo" "$work/clone" && git -C "$work/clone" checkout -q "$commit" || exit 1

hog_pids=()
stop_hogs() { [ ${#hog_pids[@]} -gt 0 ] && kill "${hog_pids[@]}" 2>/dev/null; hog_pids=(); }
trap stop_hogs EXIT
for _ in $(seq 1 "$hogs"); do sha256sum /dev/zero & hog_pids+=($!); done

echo "commit $commit, $runs runs, $hogs CPU hog(s) (sha256sum /dev/zero) on $(nproc) cores, logs in $work"
failed=0
for i in $(seq 1 "$runs"); do
  log="$work/run-$i.log"
  t0=$(date +%s)
  (cd "$work/clone" && npm test) >"$log" 2>&1
  rc=$?
  counts=$(grep -E '^ +[0-9]+ (passing|failing|pending)' "$log" | xargs)
  echo "run $i: exit $rc, ${counts:-no mocha summary}, $(( $(date +%s) - t0 )) s"
  if [ $rc -ne 0 ]; then
    failed=$((failed + 1))
    grep -E '^ +[0-9]+\) ' "$log" | sed 's/^/    /' | sort -u | head -20
  fi
done
stop_hogs
echo "$((runs - failed)) of $runs runs passed"
if [ $failed -eq 0 ] && [ $keep -eq 0 ]; then rm -rf "$work"; else echo "logs kept in $work"; fi
[ $failed -eq 0 ]
