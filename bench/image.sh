#!/usr/bin/env bash
# The bootstrap OS image: size and VM power-on to g8os.target (median of
# repeated boots of an enrolled node under QEMU, KVM where it runs, TCG
# otherwise), beside the same image without the g8os package. Root only;
# the first run builds the image's root tree with mkosi (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "| bootstrap image | skipped: needs root | | | |"; exit 0; }
command -v qemu-system-x86_64 >/dev/null && command -v mkosi >/dev/null ||
	{ echo "| bootstrap image | skipped: no QEMU or mkosi (make vm-deps) | | | |"; exit 0; }
tools/e2e-root.sh >/dev/null
exec go run ./tools/imagebench "$@"
