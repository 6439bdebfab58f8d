#!/usr/bin/env bash
# g8-netup: time from start to READY=1 on the static, DHCP (2nd interface)
# and fallback paths, each against the same steps done by hand (ip, curl, a
# minimal DHCP client, arping -D) in the same run. Prints table rows.
# Source: tests/netup/bench_test.go (build tag "bench"). Needs root.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "| netup | skipped: needs root (network namespaces) | | | |"
	exit 0
fi
out=$(go test -tags bench -count=1 -run '^TestBenchNetup$' -v ./tests/netup/ 2>&1)
rc=$?
grep '^| ' <<<"$out"
if [ $rc -ne 0 ]; then
	echo "| netup | FAILED (go test -tags bench -run TestBenchNetup ./tests/netup/) | | | |"
	grep -E -- '--- FAIL|netup_test.go|bench_test.go' <<<"$out" | head -20 >&2
	exit 1
fi
