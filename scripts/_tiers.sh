# shellcheck shell=bash
# Sourced by scripts/test: run tiers one after another whatever happened before, keep a
# summary, and the busy pass's CPU hogs, stopped on every way out of the script.
#   run_tier NAME COMMAND...   run it; record passed, FAILED (exit N) or skipped (a VM
#                              script's "NAME: SKIPPED (...)" line) and its wall time
#   start_hogs / stop_hogs     BUSY_HOGS (default 2) spinning processes, each bounded by
#                              BUSY_HOG_LIMIT seconds (default 1800) even after a SIGKILL
#   print_summary              one line per tier; returns 1 if any tier failed
# Sourcing it sets EXIT, INT, TERM and HUP traps that stop the hogs.

tier_logs=$(mktemp -d "${TMPDIR:-/tmp}/hvsock-test.XXXXXX")
summary=()
tiers_failed=0
hogs=()

stop_hogs() {
  local pid
  for pid in ${hogs[@]+"${hogs[@]}"}; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in ${hogs[@]+"${hogs[@]}"}; do
    wait "$pid" 2>/dev/null || true
  done
  hogs=()
}

tiers_cleanup() { stop_hogs; rm -rf "$tier_logs"; }
trap tiers_cleanup EXIT
trap 'tiers_cleanup; trap - INT; kill -INT $$' INT
trap 'tiers_cleanup; exit 143' TERM
trap 'tiers_cleanup; exit 129' HUP

# Started in the calling shell, never inside run_tier's pipeline (a subshell, whose
# pids the traps above would never see). `timeout` passes our SIGTERM on to its child.
start_hogs() {
  local i
  for ((i = 0; i < ${BUSY_HOGS:-2}; i++)); do
    timeout -k 5 "${BUSY_HOG_LIMIT:-1800}" sh -c 'while :; do :; done' &
    hogs+=("$!")
  done
}

run_tier() {
  local name=$1 log status verdict started=$SECONDS
  shift
  log=$tier_logs/tier.log
  echo
  echo "== $name"
  set +e
  "$@" 2>&1 | tee "$log"
  status=${PIPESTATUS[0]}
  set -e
  if ((status != 0)); then
    verdict="FAILED (exit $status)"
    tiers_failed=1
  elif grep -q '^[a-z-]*: SKIPPED' "$log"; then
    verdict="skipped: $(grep -m1 '^[a-z-]*: SKIPPED' "$log" | sed 's/^[a-z-]*: SKIPPED *//; s/^(\(.*\))$/\1/')"
  else
    verdict=passed
  fi
  summary+=("$(printf '%-34s %6s s  %s' "$name" "$((SECONDS - started))" "$verdict")")
}

# note_tier NAME TEXT: a summary line for a tier that was not run.
note_tier() {
  summary+=("$(printf '%-34s %6s    %s' "$1" "-" "$2")")
}

print_summary() {
  echo
  echo "== summary (wall time per tier)"
  printf '  %s\n' "${summary[@]}"
  if ((tiers_failed)); then
    echo "test: FAILED: at least one tier failed (see above)"
    return 1
  fi
  echo "test: every tier that ran passed"
}
