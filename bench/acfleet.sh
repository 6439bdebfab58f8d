#!/usr/bin/env bash
# One g8-ac holding a fleet: N = 1k, 10k, 30k, 100k simulated nodes (the
# real API over mTLS and HTTP/2 from a small load generator, each node
# with its own certificate from the real enrolment, heartbeating every
# 10 s with a jobs long-poll open, reconnecting with the session's
# jittered backoff; sources spread over 127.1.0.0/16 so ports never run
# out). Per N: nodes connected, controller CPU per 1,000 nodes, memory per
# node, job round trip p50/p99 (queued -> result stored), and the
# reconnect storm (controller restarted under the fleet -> all connected),
# each beside the baseline: the same simulator against a trivial mTLS
# server that stores nothing, in the same run. The simulator's own cost is
# its own row. Sizes the run cannot hold (open files, memory, the
# 9-minute budget) are reported as such. Source: tools/acsessionbench
# (fleet.go, simnode.go). Root raises the open-files limit to
# fs.nr_open; identities are enrolled once and cached in ACFLEET_CACHE.
# Tunables: ACFLEET_NODES (default 1000,10000,30000,100000),
# ACFLEET_WINDOW (default 20s), ACFLEET_BUDGET (default 9m).
# Prints markdown rows: | benchmark | g8 | baseline | ratio | target |
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
BIN=${BIN:-$PWD/bin}
[ -x "$BIN/g8-ac" ] || { mkdir -p "$BIN"; go build -o "$BIN/" ./cmd/g8-ac; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/acsessionbench" ./tools/acsessionbench
"$tmp/acsessionbench" fleet --g8-ac "$BIN/g8-ac" --nodes "${ACFLEET_NODES:-1000,10000,30000,100000}" \
	--window "${ACFLEET_WINDOW:-20s}" --budget "${ACFLEET_BUDGET:-9m}" --cache "${ACFLEET_CACHE:-/var/tmp/g8-acfleet}"
