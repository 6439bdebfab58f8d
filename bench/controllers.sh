#!/usr/bin/env bash
# Several controllers on PostgreSQL against the single SQLite controller,
# measured in the same run on this machine:
# - heartbeat throughput of one g8-ac whose store is a PostgreSQL database
#   (a server started here: initdb into a temp dir, unix socket only)
#   against one on its SQLite file (bench/acload, 16 mTLS clients, median
#   of 3 runs each);
# - failover time, job round trip and lost/doubled jobs and events over 20
#   SIGKILLs: tests/acsession/bench_test.go (build tag "bench"), a node's
#   real g8-acsession against 3 controllers on PostgreSQL and against 1 on
#   SQLite.
# Needs root (PostgreSQL runs as the postgres user).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
if [ "$(id -u)" != 0 ]; then
	echo "| controllers | skipped: needs root (a real PostgreSQL) | | | |"
	exit 0
fi
PG=/usr/lib/postgresql/15/bin
[ -x "$PG/postgres" ] || { echo "| controllers | FAILED: $PG/postgres missing (make deps) | | | |"; exit 1; }
tmp=$(mktemp -d)
chown postgres "$tmp"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	runuser -u postgres -- "$PG/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT

runuser -u postgres -- "$PG/initdb" -D "$tmp/pg" -A trust -U postgres --no-sync >/dev/null
runuser -u postgres -- "$PG/pg_ctl" -D "$tmp/pg" -o "-k $tmp -p 5432 -c listen_addresses=" -l "$tmp/pg.log" -w start >/dev/null
runuser -u postgres -- "$PG/psql" -h "$tmp" -p 5432 -U postgres -qc "CREATE DATABASE g8ac" >/dev/null
url="postgres://postgres@/g8ac?host=$tmp&port=5432"

go build -o "$tmp/acload" ./bench/acload
"$BIN/g8-ac" init --data "$tmp/lite" --name 127.0.0.1 >/dev/null
"$BIN/g8-ac" init --data "$tmp/pgac" --name 127.0.0.1 --database "$url" >/dev/null
for d in lite pgac; do
	"$BIN/g8-ac" ca --data "$tmp/$d" >"$tmp/$d.ca"
	# One node per run: each acload run enrols with a fresh identity key,
	# which binds to the node it first unlocks (the trust model).
	for i in 1 2 3; do
		"$BIN/g8-ac" node add --data "$tmp/$d" --mac 52:54:00:be:20:0$i --approve >/dev/null
	done
	"$BIN/g8-ac" serve --data "$tmp/$d" --listen 127.0.0.1:0 --unlock-rate 1000000 --unlock-burst 1000000 2>"$tmp/$d.log" &
	pids+=($!)
done
port() {
	for _ in $(seq 100); do
		a=$(grep -oE 'addr=127\.0\.0\.1:[0-9]+' "$1" | head -1 | cut -d= -f2 || true)
		[ -n "$a" ] && { echo "$a"; return; }
		sleep 0.1
	done
	echo "server did not start: $(cat "$1")" >&2; exit 1
}
lite=$(port "$tmp/lite.log")
pgac=$(port "$tmp/pgac.log")
for i in 1 2 3; do # interleaved: both see the same load
	"$tmp/acload" run --url "https://$pgac" --ca "$tmp/pgac.ca" --mac 52:54:00:be:20:0$i | awk '$1=="heartbeat"{print $2}' >>"$tmp/pg.hb"
	"$tmp/acload" run --url "https://$lite" --ca "$tmp/lite.ca" --mac 52:54:00:be:20:0$i | awk '$1=="heartbeat"{print $2}' >>"$tmp/lite.hb"
done
med() { sort -n "$1" | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
g=$(med "$tmp/pg.hb")
b=$(med "$tmp/lite.hb")
awk -v g="$g" -v b="$b" 'BEGIN{printf "| controllers: heartbeats per controller, PostgreSQL store vs SQLite (16 mTLS clients, median of 3) | %d req/s | %d req/s | %.2f | measured (the issue sets none) |\n", g, b, g/b}'

out=$(go test -tags bench -count=1 -timeout 30m -run '^TestBenchControllers$' -v ./tests/acsession/ 2>&1)
rc=$?
grep '^| ' <<<"$out"
if [ $rc -ne 0 ]; then
	echo "| controllers | FAILED (go test -tags bench -run TestBenchControllers ./tests/acsession/) | | | |"
	grep -E -- '--- FAIL|_test.go:' <<<"$out" | head -20 >&2
	exit 1
fi
