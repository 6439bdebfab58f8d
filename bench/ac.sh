#!/usr/bin/env bash
# g8-ac request rate (unlock, mTLS heartbeat; 16 concurrent clients over one
# HTTP/2 connection each way) against a plain Go TLS server that answers the
# same requests with a fixed body: the baseline is TLS + HTTP + JSON alone,
# so the ratio is what the store (SQLite, fsync per write) and the checks
# cost. Both servers run as separate processes on loopback in this run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

go build -o "$tmp/acload" ./bench/acload
"$BIN/g8-ac" init --data "$tmp/ac" --name 127.0.0.1 >/dev/null
"$BIN/g8-ac" ca --data "$tmp/ac" >"$tmp/ca.pem"
"$BIN/g8-ac" node add --data "$tmp/ac" --mac 52:54:00:be:00:01 --approve >/dev/null

# port prints the address a server logged, waiting for it.
port() {
	for _ in $(seq 100); do
		a=$(grep -oE "$2" "$1" | head -1 | grep -oE '127\.0\.0\.1:[0-9]+' || true)
		[ -n "$a" ] && { echo "$a"; return; }
		sleep 0.1
	done
	echo "server did not start: $(cat "$1")" >&2; exit 1
}

"$BIN/g8-ac" serve --data "$tmp/ac" --listen 127.0.0.1:0 --unlock-rate 1000000 --unlock-burst 1000000 --node-rate 1000000 --node-burst 1000000 2>"$tmp/ac.log" &
pids+=($!)
ac=$(port "$tmp/ac.log" 'addr=127\.0\.0\.1:[0-9]+')
"$tmp/acload" baseline --cert "$tmp/ac/server.pem" --key "$tmp/ac/server.key" >"$tmp/base.log" &
pids+=($!)
base=$(port "$tmp/base.log" 'listening 127\.0\.0\.1:[0-9]+')

"$tmp/acload" run --url "https://$ac" --ca "$tmp/ca.pem" --mac 52:54:00:be:00:01 >"$tmp/ac.out"
"$tmp/acload" run --url "https://$base" --ca "$tmp/ca.pem" --mac 52:54:00:be:00:01 >"$tmp/base.out"

row() {
	g=$(awk -v k="$1" '$1==k{print $2}' "$tmp/ac.out")
	b=$(awk -v k="$1" '$1==k{print $2}' "$tmp/base.out")
	awk -v n="$2" -v g="$g" -v b="$b" -v t="$3" 'BEGIN{printf "| %s | %d req/s | %d req/s | %.2f | %s |\n", n, g, b, g/b, t}'
}
row unlock "g8-ac POST /v1/unlock (16 clients)" "≥ 0.10"
row heartbeat "g8-ac POST /v1/node/heartbeat, mTLS (16 clients)" "≥ 0.10"
