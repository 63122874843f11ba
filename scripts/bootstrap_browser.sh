#!/usr/bin/env bash
# Debian's Chromium, for the test that opens the HTML evaluation report in a real browser (headless).
# Idempotent; without root it says what to run and the test skips with that reason.
set -euo pipefail
log() { printf '\033[1m[bootstrap-browser]\033[0m %s\n' "$*" >&2; }
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  log "installing Debian chromium (headless, for the HTML report test)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || log "could not install chromium: the HTML report test will be skipped"
else
  log "not root: install chromium yourself (sudo apt-get install chromium) or the HTML report test skips"
fi
