#!/usr/bin/env bash
# Boot chain under real systemd: start g8os.target to all phases active per
# path (median of repeated boots) beside the container's own boot; idle RSS
# and stripped size of each daemon beside a minimal Go program. Root only.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "| boot chain | skipped: needs root | | | |"; exit 0; }
tools/e2e-root.sh >/dev/null
exec go run ./tools/bootbench "$@"
