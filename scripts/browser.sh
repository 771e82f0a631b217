#!/usr/bin/env bash
# Make sure a Chromium for the browser tests exists (Debian's package; Playwright's own download
# needs internet access that CI does not have).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ -n "${FORGETTING_LAB_CHROMIUM:-}" ] && [ -x "$FORGETTING_LAB_CHROMIUM" ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "==> installing chromium for the browser tests"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
