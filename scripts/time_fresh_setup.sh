#!/usr/bin/env bash
# The README's first-run and warm times: `make demo` (and, with --test, `make test` after it) from a
# clean clone of this checkout, with a fresh LOCALSERVE_HOME and an empty pip cache — nothing built or
# downloaded before, as on a new machine. (Debian packages the set-up installs, such as golang-go,
# stay installed: remove them first for a machine that never had them.)
#
#   scripts/time_fresh_setup.sh [--test] [WORK_DIR]
#
# Prints one line per command: its wall time in minutes and seconds. Logs go to WORK_DIR/*.log.
set -euo pipefail

with_test=0
if [ "${1:-}" = "--test" ]; then with_test=1; shift; fi
work="${1:-$(mktemp -d)}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

rm -rf "$work/clone" "$work/home" "$work/pip-cache"
git clone -q "$here" "$work/clone"
export LOCALSERVE_HOME="$work/home" PIP_CACHE_DIR="$work/pip-cache"

timed() {  # name, then the command; prints "name: M min S s"
  local name="$1" start
  shift
  start=$(date +%s)
  if ! (cd "$work/clone" && "$@") >"$work/$name.log" 2>&1; then
    echo "$name: failed after $(( $(date +%s) - start )) s, see $work/$name.log" >&2
    exit 1
  fi
  local took=$(( $(date +%s) - start ))
  echo "$name: $((took / 60)) min $((took % 60)) s"
}

timed "make-demo-first" make demo
timed "make-demo-warm" make demo
if [ "$with_test" = 1 ]; then
  timed "make-test-after-demo" make test
fi
