#!/usr/bin/env bash
# g8-acsession at scale: one real g8-ac on loopback holding N node sessions
# (the real internal/acsession code, N instances in one process, each with
# its own certificate, state directory, on-disk queue and HTTP/2
# connection, heartbeats every 10 s, job long-polls), at N = 1,000: the
# cross-check that bench/acfleet.sh's simulated nodes cost the controller
# what real sessions do (at larger N the sessions compete with the
# controller for the machine; acfleet.sh measures fleet sizes). Reports
# the controller's CPU and memory per 1000 nodes and the job round trip
# (queued -> result stored), beside a baseline in the same run: the same
# sessions against a trivial Go mTLS server speaking the same API and
# storing nothing. Source: tools/acsessionbench. About 2 minutes.
# Tunables: ACSESSION_BENCH_NODES (default 1000), ACSESSION_BENCH_SETTLE
# (default 12s: how long a large batch of sessions may take to connect
# before the window; raise it on a busy machine to measure steady state).
# Prints markdown rows: | benchmark | g8 | baseline | ratio | target |
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
BIN=${BIN:-$PWD/bin}
nodes=${ACSESSION_BENCH_NODES:-1000}
[ -x "$BIN/g8-ac" ] || { mkdir -p "$BIN"; go build -o "$BIN/" ./cmd/g8-ac; }
# Each session holds a connection: the process needs a descriptor per node.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
max=${nodes##*,}
if [ "$(ulimit -n)" -lt $((max + 1000)) ]; then
	echo "| acsession | skipped: open files limit $(ulimit -n) below $((max + 1000)) for N=$max | | | |"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/acsessionbench" ./tools/acsessionbench
"$tmp/acsessionbench" --g8-ac "$BIN/g8-ac" --nodes "$nodes" --settle "${ACSESSION_BENCH_SETTLE:-12s}"
