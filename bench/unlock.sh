#!/usr/bin/env bash
# g8-unlock: time from start to READY=1 (key fetch over HTTPS + FUSE mount)
# for encfs and gocryptfs, each beside the same work by hand in the same run
# (curl for the unlock request, then the tool's own CLI mounting the same
# directory). Prints table rows. Source: tests/unlock/bench_test.go (build
# tag "bench"). Needs root.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
	echo "| unlock | skipped: needs root (network namespaces, FUSE) | | | |"
	exit 0
fi
out=$(go test -tags bench -count=1 -run '^TestBenchUnlock$' -v ./tests/unlock/ 2>&1)
rc=$?
grep '^| ' <<<"$out"
if [ $rc -ne 0 ]; then
	echo "| unlock | FAILED (go test -tags bench -run TestBenchUnlock ./tests/unlock/) | | | |"
	grep -E -- '--- FAIL|unlock_test.go|bench_test.go' <<<"$out" | head -20 >&2
	exit 1
fi
